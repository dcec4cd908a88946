//! Shared pieces of the benchmark binaries (`cargo xtask bench`, never part of the test
//! suite): where results go, min/median/max, markdown tables, the machine's description,
//! and child processes measured for wall time and peak memory.
use std::{
    fs,
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use policyroute_tests::fixture::TempFile;

/// `bench/results/` of the workspace (or `$POLICYROUTE_BENCH_DIR`), created when missing.
pub fn results_dir() -> PathBuf {
    let dir = std::env::var_os("POLICYROUTE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
    fs::create_dir_all(&dir).expect("create the results directory");
    dir
}

/// Writes `bench/results/NAME`.
pub fn write_result(name: &str, contents: &str) {
    let path = results_dir().join(name);
    fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    eprintln!("wrote {}", path.display());
}

/// Prints `md` and writes it to `bench/results/NAME.md`, and `json` to `NAME.json`.
pub fn write_results(name: &str, md: &str, json: &Value) {
    println!("{md}");
    write_result(&format!("{name}.md"), md);
    let json = serde_json::to_string_pretty(json).expect("results as JSON");
    write_result(&format!("{name}.json"), &json);
}

/// Reads `bench/results/NAME` as JSON, if a run wrote it.
pub fn read_json(name: &str) -> Option<Value> {
    let text = fs::read_to_string(results_dir().join(name)).ok()?;
    serde_json::from_str(&text).ok()
}

/// An environment variable as a number, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Policy sizes the classifier and end-to-end benchmarks measure at.
pub const SIZES: [usize; 4] = [1, 1_000, 10_000, 100_000];

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        assert!(!values.is_empty(), "no samples");
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            min: v[0],
            median,
            max: v[n - 1],
        }
    }

    pub fn json(&self) -> Value {
        json!({"min": self.min, "median": self.median, "max": self.max})
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// A markdown table; columns whose header starts with `>` are right-aligned.
pub struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[&str]) -> Self {
        Self {
            header: columns
                .iter()
                .map(|c| c.trim_start_matches('>').to_string())
                .collect(),
            right: columns.iter().map(|c| c.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len(), "row width");
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("| {} |\n|", self.header.join(" | "));
        for &r in &self.right {
            out.push_str(if r { "---:|" } else { "---|" });
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        out
    }
}

/// Where and when a run happened: shown next to every table.
pub fn environment() -> Value {
    let sh = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    json!({
        "date": sh("date", &["-u", "+%Y-%m-%d"]),
        "kernel": sh("uname", &["-r"]),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "iptables": sh("iptables", &["-V"]),
        "nft": sh("nft", &["-v"]),
        // Other work on the machine skews results: shown next to them.
        "loadavg": fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    })
}

/// The symbol lines of a `perf report --stdio` (they start with the percentage) that `keep`
/// accepts, trimmed: the first 25.
pub fn perf_symbols(report: &[u8], keep: impl Fn(&str) -> bool) -> Vec<String> {
    String::from_utf8_lossy(report)
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .filter(|l| keep(l))
        .take(25)
        .map(|l| l.trim().to_string())
        .collect()
}

/// A child process's exit, wall time and peak resident memory.
pub struct Measured {
    pub status: ExitStatus,
    pub wall: Duration,
    /// `ru_maxrss` of the child (the largest of the processes it exec'ed), in KiB.
    pub max_rss_kib: u64,
    pub stdout: String,
    pub stderr: String,
    /// Killed because it ran past the time cap.
    pub timed_out: bool,
}

/// Runs `cmd` (stdin closed, output captured through files so a chatty child cannot block)
/// and reaps it with wait4 for its resource usage; kills it past `cap`.
pub fn measure(cmd: &mut Command, cap: Duration) -> Measured {
    let (out_file, err_file) = (
        TempFile::new("bench.out", ""),
        TempFile::new("bench.err", ""),
    );
    let out = fs::File::create(&out_file.path).expect("temp file");
    let err = fs::File::create(&err_file.path).expect("temp file");
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    // A pidfd names this child even after it is reaped, so a late kill cannot hit a
    // recycled pid.
    // SAFETY: plain syscall on our own child's pid.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    // A thread blocks in wait4 (for the child's resource usage); this one waits for it
    // with the cap as timeout and kills the child when the cap passes.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: rusage is plain data, filled by the kernel.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our own child; status and usage are valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
        let _ = tx.send((status, usage.ru_maxrss as u64, start.elapsed()));
    });
    let mut timed_out = false;
    let (status, max_rss_kib, wall) = match rx.recv_timeout(cap) {
        Ok(done) => done,
        Err(_) => {
            timed_out = true;
            // SAFETY: pidfd is our open pidfd; signalling a reaped child fails harmlessly.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd,
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            rx.recv().expect("the waiting thread reports")
        }
    };
    drop(child);
    // SAFETY: closing the pidfd we opened.
    unsafe { libc::close(pidfd) };
    let read = |f: &TempFile| fs::read_to_string(&f.path).unwrap_or_default();
    Measured {
        status: ExitStatus::from_raw(status),
        wall,
        max_rss_kib,
        stdout: read(&out_file),
        stderr: read(&err_file),
        timed_out,
    }
}

/// Pins the calling thread (and what it spawns later) to one CPU.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0) applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Entry `i` of the benchmark policies: UDP to one address from 198.18.4.0 upwards (100,000
/// entries end at 198.19.138.159, inside 198.18.0.0/15) and one port of 10000-10999.
pub fn entry(i: usize) -> (std::net::Ipv4Addr, u16) {
    let base = u32::from(std::net::Ipv4Addr::new(198, 18, 4, 0));
    (
        std::net::Ipv4Addr::from(base + i as u32),
        10_000 + (i % 1000) as u16,
    )
}

/// Gateway isp2 (mark 2, table 102, via 203.0.113.2 on wan2).
pub const MARK: u32 = 2;
pub const TABLE: u32 = 102;

/// A policyroute policy of `n` rules `e<i>`: `proto = "udp"`, `dst = entry(i)/32`,
/// `dport = entry(i)`, via isp2, attached to lan0. `changed` gives that one rule port 9999.
pub fn policy_toml(n: usize, changed: Option<usize>) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "[[gateway]]\nname = \"isp2\"\ndev = \"wan2\"\nvia = \"203.0.113.2\"\n\
         table = {TABLE}\nmark = {MARK}\n\n[attach]\ningress = [\"lan0\"]\n\n"
    );
    for i in 0..n {
        let (dst, port) = entry(i);
        let port = if changed == Some(i) { 9999 } else { port };
        let _ = write!(
            s,
            "[[rule]]\nname = \"e{i}\"\nproto = \"udp\"\ndst = \"{dst}/32\"\n\
             dport = {port}\ngateway = \"isp2\"\n\n"
        );
    }
    s
}

/// Address ranges (first -> last, as numbers, per family) of prefixes drawn so that none
/// holds another.
#[derive(Default)]
pub struct Disjoint([std::collections::BTreeMap<u128, u128>; 2]);

impl Disjoint {
    /// Takes `net` unless it overlaps one taken before.
    pub fn take(&mut self, net: &ipnet::IpNet) -> bool {
        let (taken, first, last) = match net {
            ipnet::IpNet::V4(n) => (
                &mut self.0[0],
                u128::from(u32::from(n.network())),
                u128::from(u32::from(n.broadcast())),
            ),
            ipnet::IpNet::V6(n) => (
                &mut self.0[1],
                u128::from(n.network()),
                u128::from(n.broadcast()),
            ),
        };
        // Ranges taken never overlap: only the last one starting at or before `last` can
        // reach into this one.
        let before = taken.range(..=last).next_back();
        if before.is_some_and(|(_, &end)| end >= first) {
            return false;
        }
        taken.insert(first, last);
        true
    }
}

/// A list shaped like a real country list (about 50,000 IPv4 prefixes over 24 lengths,
/// mostly /16 to /24, and 37,000 IPv6 prefixes over about 110 lengths, mostly /29, /32 and
/// /48), drawn from `seed`; IPv4 in 2.0.0.0/7 to 95.0.0.0/8, IPv6 in 2a00::/12. Like a
/// real (aggregated) list, no prefix holds another: each one is an entry of the classifier.
/// No packet is sent to these: tests add documentation prefixes for that.
pub fn country_list(seed: u64) -> Vec<ipnet::IpNet> {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    // (length, weight in thousandths) of the IPv4 part.
    const V4: [(u8, u32); 24] = [
        (8, 1),
        (9, 1),
        (10, 3),
        (11, 5),
        (12, 10),
        (13, 15),
        (14, 20),
        (15, 20),
        (16, 60),
        (17, 30),
        (18, 40),
        (19, 60),
        (20, 70),
        (21, 80),
        (22, 120),
        (23, 100),
        (24, 350),
        (25, 5),
        (26, 4),
        (27, 3),
        (28, 3),
        (29, 3),
        (30, 2),
        (32, 1),
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    let total: u32 = V4.iter().map(|(_, w)| w).sum();
    let mut set = std::collections::BTreeSet::new();
    let mut taken = Disjoint::default();
    while set.len() < 50_000 {
        let mut pick = rng.gen_range(0..total);
        let len = V4
            .iter()
            .find(|(_, w)| {
                let hit = pick < *w;
                pick = pick.saturating_sub(*w);
                hit
            })
            .map_or(24, |(l, _)| *l);
        let addr = rng.gen_range(0x0200_0000u32..0x5f00_0000);
        let net = ipnet::IpNet::V4(ipnet::Ipv4Net::new(addr.into(), len).unwrap().trunc());
        if taken.take(&net) {
            set.insert(net);
        }
    }
    while set.len() < 87_000 {
        let len = match rng.gen_range(0..10) {
            0..=5 => [29u8, 32, 48][rng.gen_range(0..3)],
            6..=8 => rng.gen_range(19..=64),
            _ => rng.gen_range(65..=128),
        };
        let addr = (0x2a00u128 << 112) | (rng.gen::<u128>() >> 12);
        let net = ipnet::IpNet::V6(ipnet::Ipv6Net::new(addr.into(), len).unwrap().trunc());
        if taken.take(&net) {
            set.insert(net);
        }
    }
    set.into_iter().collect()
}
