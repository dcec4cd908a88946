//! `cargo xtask bench e2e`: small-packet UDP forwarded LAN → router → upstream through veth
//! pairs: no policy (baseline); the fwmark ip rules alone with nothing marking (what policy
//! routing costs before classification); and the same policy expressed four ways:
//! policyroute (the real CLI), iptables mangle PREROUTING `-j MARK` rules, an nftables
//! concatenated-key map, and `ip rule` selectors. Every variant is first checked to send
//! exactly the expected packets to each uplink; then repetitions run interleaved
//! (A B C D E F A B C ...) and each is reported as a ratio to the baseline of the same
//! repetition. A load that passes the time cap is stopped and that size (and larger ones)
//! skipped for that variant.
//!
//! The sender (an AF_PACKET socket in the LAN namespace) runs on CPU 0; receive packet
//! steering sends everything the router receives on lan0 to CPU 1, where the router's
//! forwarding (classification included) and the upstream's receive run in softirq. So the
//! router's CPU is the bottleneck: packets/s is its forwarding capacity, and CPU 1's busy
//! time per packet is what one forwarded packet costs.
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use policyroute_tests::{
    bench::{
        self, entry, env_or, measure, perf_symbols, pin_to_cpu, policy_toml, Spread, Table, MARK,
        SIZES, TABLE,
    },
    bench_net::{cpu_busy_ns, mac_of, settle, udp_frame, Flow, FrameSender, IpReceived},
    cli,
    fixture::TempFile,
    netns::NetNs,
    topology::Topology,
};
use serde_json::{json, Value};

/// Distinct flows in the traffic: 3/4 hit entries spread over the policy, 1/4 miss.
const FLOWS: usize = 1024;
const HITS: usize = 768;
/// The router's CPU (receive packet steering target) and the sender's.
const ROUTER_CPU: usize = 1;
const SENDER_CPU: usize = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Baseline,
    /// The fwmark rules and table 102 the policy variants route with, but nothing marks:
    /// what policy routing costs before any classification.
    Rules,
    Policyroute,
    Iptables,
    Nftables,
    IpRule,
}

const VARIANTS: [Variant; 6] = [
    Variant::Baseline,
    Variant::Rules,
    Variant::Policyroute,
    Variant::Iptables,
    Variant::Nftables,
    Variant::IpRule,
];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline (no policy)",
            Variant::Rules => "fwmark rules only, no marking",
            Variant::Policyroute => "policyroute",
            Variant::Iptables => "iptables MARK",
            Variant::Nftables => "nftables map",
            Variant::IpRule => "ip rule selectors",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Rules => "rules-only",
            Variant::Policyroute => "policyroute",
            Variant::Iptables => "iptables",
            Variant::Nftables => "nftables",
            Variant::IpRule => "iprule",
        }
    }
}

/// The traffic: hits spread evenly over the entries, misses to entries' addresses on a
/// port no entry has, and misses to addresses no entry has; interleaved so consecutive
/// packets go to different entries. Returns the flows and how many hit.
fn flows(n: usize) -> (Vec<Flow>, usize) {
    let src = Ipv4Addr::new(192, 0, 2, 10);
    let mut all = Vec::with_capacity(FLOWS);
    for k in 0..FLOWS {
        let sport = 20_000 + ((k * 37) % 40_000) as u16;
        let (dst, dport) = if k < HITS {
            entry(k * n / HITS)
        } else if k < HITS + (FLOWS - HITS) / 2 {
            (entry((k * 7919) % n).0, 9_000 + (k % 1000) as u16)
        } else {
            (
                Ipv4Addr::new(198, 19, 200, (k % 250) as u8),
                10_000 + k as u16 % 1000,
            )
        };
        all.push(Flow {
            src,
            sport,
            dst,
            dport,
        });
    }
    // 389 is coprime with 1024: a permutation that spreads hits and misses.
    let order: Vec<Flow> = (0..FLOWS).map(|j| all[(j * 389) % FLOWS]).collect();
    (order, HITS)
}

struct Setup {
    variant: Variant,
    /// Keeps the namespaces alive.
    _topo: Topology,
    load: Option<Duration>,
    skipped: Option<String>,
    up1: IpReceived,
    up2: IpReceived,
    sender: FrameSender,
    frames: Vec<Vec<u8>>,
    verified: Option<(u64, u64, bool)>,
    pps: Vec<f64>,
    cpu_ns: Vec<f64>,
}

/// Routing shared by the classic variants, as policyroute installs it: main routes first,
/// then the mark (or, for `ip rule`, the selectors) to table 102 with a default via up2.
fn classic_routing(r: &NetNs, with_fwmark: bool) {
    r.ip("rule add pref 10000 lookup main suppress_prefixlength 0");
    r.ip(&format!("route add default via 203.0.113.2 table {TABLE}"));
    if with_fwmark {
        r.ip(&format!(
            "rule add pref 10001 fwmark {MARK:#x}/0xffffffff lookup {TABLE}"
        ));
    }
}

fn iptables_rules(n: usize) -> String {
    let mut s = String::from("*mangle\n:PREROUTING ACCEPT [0:0]\n");
    for i in 0..n {
        let (dst, port) = entry(i);
        let _ = writeln!(
            s,
            "-A PREROUTING -d {dst}/32 -p udp -m udp --dport {port} -j MARK --set-mark {MARK:#x}"
        );
    }
    s.push_str("COMMIT\n");
    s
}

fn nft_ruleset(n: usize) -> String {
    let mut s = String::from(
        "table ip bench {\n  map m {\n    type ipv4_addr . inet_service : mark\n    elements = {\n",
    );
    for i in 0..n {
        let (dst, port) = entry(i);
        let sep = if i + 1 < n { "," } else { "" };
        let _ = writeln!(s, "      {dst} . {port} : {MARK:#x}{sep}");
    }
    s.push_str(
        "    }\n  }\n  chain prerouting {\n    type filter hook prerouting priority mangle; policy accept;\n    meta mark set ip daddr . udp dport map @m\n  }\n}\n",
    );
    s
}

fn ip_rule_batch(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let (dst, port) = entry(i);
        let _ = writeln!(
            s,
            "rule add pref 10001 to {dst}/32 ipproto udp dport {port} lookup {TABLE}"
        );
    }
    s
}

/// Loads variant `v` at `n` entries into the router; returns the load time or why it was
/// skipped.
fn load(v: Variant, r: &NetNs, n: usize, cap: Duration) -> Result<Option<Duration>, String> {
    let ns_exec = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &r.name]).args(args);
        c
    };
    let (mut cmd, file) = match v {
        Variant::Baseline => return Ok(None),
        Variant::Rules => {
            classic_routing(r, true);
            return Ok(None);
        }
        Variant::Policyroute => {
            let f = TempFile::new("policy.toml", &policy_toml(n, None));
            let bin = cli::bin();
            (ns_exec(&[bin.to_str().unwrap(), "apply", "-c", f.arg()]), f)
        }
        Variant::Iptables => {
            classic_routing(r, true);
            let f = TempFile::new("iptables.rules", &iptables_rules(n));
            (ns_exec(&["iptables-restore", f.arg()]), f)
        }
        Variant::Nftables => {
            classic_routing(r, true);
            let f = TempFile::new("ruleset.nft", &nft_ruleset(n));
            (ns_exec(&["nft", "-f", f.arg()]), f)
        }
        Variant::IpRule => {
            classic_routing(r, false);
            let f = TempFile::new("ip-rule.batch", &ip_rule_batch(n));
            (ns_exec(&["ip", "-batch", f.arg()]), f)
        }
    };
    let m = measure(&mut cmd, cap);
    drop(file);
    if m.timed_out {
        return Err(format!("loading took over the {} s cap", cap.as_secs()));
    }
    if !m.status.success() {
        panic!("{} load failed: {}{}", v.name(), m.stderr, m.stdout);
    }
    Ok(Some(m.wall))
}

/// The router sends all it receives on lan0 to one CPU (receive packet steering); the
/// upstreams take packets through veth NAPI (GRO on), so what the router forwards never
/// competes with its input for CPU 1's backlog queue, and drop them with a blackhole route
/// after counting (`Ip: InReceives`).
fn prepare(t: &Topology) {
    t.router.exec(
        "sh",
        &[
            "-c",
            &format!(
                "echo {:x} > /sys/class/net/lan0/queues/rx-0/rps_cpus",
                1u32 << ROUTER_CPU
            ),
        ],
    );
    for up in [&t.up1, &t.up2] {
        up.exec("ethtool", &["-K", "eth0", "gro", "on"]);
        up.ip("route add blackhole 198.18.0.0/15");
    }
}

fn setup(v: Variant, n: usize, cap: Duration, skip: Option<String>) -> Setup {
    let topo = Topology::new(&format!("e2e-{}", v.key()));
    prepare(&topo);
    let (load, skipped) = match skip {
        Some(why) => (None, Some(why)),
        None => match load(v, &topo.router, n, cap) {
            Ok(d) => (d, None),
            Err(why) => (None, Some(why)),
        },
    };
    let dst_mac = mac_of(&topo.router, "lan0");
    let src_mac = mac_of(&topo.lan, "eth0");
    let frames = flows(n)
        .0
        .iter()
        .map(|f| udp_frame(dst_mac, src_mac, f))
        .collect();
    Setup {
        variant: v,
        up1: IpReceived::new(&topo.up1),
        up2: IpReceived::new(&topo.up2),
        sender: FrameSender::new(&topo.lan, "eth0"),
        _topo: topo,
        load,
        skipped,
        frames,
        verified: None,
        pps: Vec::new(),
        cpu_ns: Vec::new(),
    }
}

/// Sends every flow once, batch by batch, each batch only after the previous one arrived
/// (no drops); returns what reached up1 (main table) and up2 (table 102).
fn verify(s: &mut Setup) -> (u64, u64) {
    let (a0, b0) = (s.up1.get(), s.up2.get());
    let (up1, up2) = (&mut s.up1, &mut s.up2);
    s.sender.send_each(&s.frames, |sent| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while up1.get() + up2.get() - a0 - b0 < sent as u64 && Instant::now() < deadline {
            std::thread::yield_now();
        }
    });
    // Stragglers (or packets nobody expected) show up in the counts below.
    settle(
        || up1.get() + up2.get(),
        Duration::from_millis(20),
        Duration::from_secs(5),
    );
    (s.up1.get() - a0, s.up2.get() - b0)
}

/// One timed repetition: returns (packets/s forwarded, CPU ns per packet on the router CPU),
/// both over the sending window only; then waits until the router's queue has drained so
/// the next measurement starts clean.
fn blast(s: &mut Setup, run: Duration) -> (f64, f64) {
    let before = s.up1.get() + s.up2.get();
    let cpu0 = cpu_busy_ns(ROUTER_CPU);
    let (_sent, elapsed) = s.sender.blast(&s.frames, run);
    let at_stop = s.up1.get() + s.up2.get();
    let cpu1 = cpu_busy_ns(ROUTER_CPU);
    let received = (at_stop - before).max(1);
    // Drained when nothing arrives for ten packet times (at least 20 ms).
    let per_packet = elapsed / received as u32;
    let quiet = (per_packet * 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let (up1, up2) = (&mut s.up1, &mut s.up2);
    settle(|| up1.get() + up2.get(), quiet, Duration::from_secs(30));
    (
        received as f64 / elapsed.as_secs_f64(),
        (cpu1 - cpu0) as f64 / received as f64,
    )
}

/// Profiles the router CPU (`perf record -C 1 -e cpu-clock -g`) while `s` forwards at full
/// rate; returns the top self-time symbols, or None without a usable perf.
fn profile(s: &mut Setup, run: Duration) -> Option<Vec<String>> {
    let data = TempFile::new("e2e.perf", "");
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-g", "-e", "cpu-clock", "-C"])
        .arg(ROUTER_CPU.to_string())
        .arg("-o")
        .arg(&data.path)
        .args(["--", "sleep"])
        .arg(format!("{:.3}", run.as_secs_f64()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    blast(s, run + Duration::from_millis(300));
    let ok = perf.wait().ok()?.success();
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "sym",
            "-g",
            "none",
            "-i",
        ])
        .arg(&data.path)
        .output()
        .ok()?;
    ok.then(|| perf_symbols(&report.stdout, |_| true))
}

fn main() {
    let reps: usize = env_or("POLICYROUTE_BENCH_REPS", 7);
    let run = Duration::from_millis(env_or("POLICYROUTE_BENCH_RUN_MS", 1500));
    let cap = Duration::from_secs(env_or("POLICYROUTE_BENCH_LOAD_CAP", 150));
    let sizes: Vec<usize> = std::env::var("POLICYROUTE_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').map(|x| x.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| SIZES.to_vec());
    assert!(
        std::thread::available_parallelism().map_or(1, |n| n.get()) > ROUTER_CPU,
        "needs at least 2 CPUs"
    );
    // The whole process (sender included) and the tools it starts stay off the router CPU.
    pin_to_cpu(SENDER_CPU);
    let env = bench::environment();
    eprintln!(
        "e2e: {} reps x {} ms per variant and size, load cap {} s",
        reps,
        run.as_millis(),
        cap.as_secs()
    );
    let mut rows: Vec<Value> = Vec::new();
    let mut verify_table = Table::new(&[
        ">entries",
        "variant",
        ">to up1 (main)",
        ">to up2 (table 102)",
        ">expected up1/up2",
        "same marking",
    ]);
    let mut table = Table::new(&[
        ">entries",
        "variant",
        ">load s",
        ">kpps median (min–max)",
        ">pps / baseline",
        ">router CPU ns/packet",
        ">CPU / baseline",
    ]);
    let mut exceeded: Vec<Variant> = Vec::new();
    // The size the end-to-end target is set at; the router CPU is profiled there.
    let profile_size = 10_000;
    let mut profiles: Vec<(usize, Variant, Vec<String>)> = Vec::new();
    for &n in &sizes {
        let mut setups: Vec<Setup> = VARIANTS
            .iter()
            .map(|&v| {
                let skip = exceeded
                    .contains(&v)
                    .then(|| "a smaller size already exceeded the load cap".to_string());
                eprintln!("e2e: {n} entries: setting up {}", v.name());
                let s = setup(v, n, cap, skip);
                if let Some(why) = &s.skipped {
                    eprintln!("e2e: {n} entries: {} skipped: {why}", v.name());
                }
                s
            })
            .collect();
        for s in &setups {
            if s.skipped.is_some() && !exceeded.contains(&s.variant) {
                exceeded.push(s.variant);
            }
        }
        let (_, hits) = flows(n);
        for s in setups.iter_mut().filter(|s| s.skipped.is_none()) {
            let (up1, up2) = verify(s);
            let expect = if matches!(s.variant, Variant::Baseline | Variant::Rules) {
                (FLOWS as u64, 0)
            } else {
                ((FLOWS - hits) as u64, hits as u64)
            };
            let ok = (up1, up2) == expect;
            eprintln!(
                "e2e: {n} entries: {} verified: up1 {up1} up2 {up2} (expected {expect:?})",
                s.variant.name()
            );
            s.verified = Some((up1, up2, ok));
            verify_table.row(vec![
                n.to_string(),
                s.variant.name().into(),
                up1.to_string(),
                up2.to_string(),
                format!("{}/{}", expect.0, expect.1),
                if ok { "yes" } else { "**NO**" }.into(),
            ]);
        }
        for rep in 0..reps {
            for s in setups.iter_mut().filter(|s| s.skipped.is_none()) {
                let (pps, cpu) = blast(s, run);
                s.pps.push(pps);
                s.cpu_ns.push(cpu);
            }
            eprintln!(
                "e2e: {n} entries: rep {}/{reps}: {}",
                rep + 1,
                setups
                    .iter()
                    .filter(|s| s.skipped.is_none())
                    .map(|s| format!("{} {:.0} kpps", s.variant.key(), s.pps[rep] / 1e3))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if n == profile_size {
            for s in setups
                .iter_mut()
                .filter(|s| s.skipped.is_none())
                .filter(|s| s.variant != Variant::Iptables && s.variant != Variant::IpRule)
            {
                eprintln!(
                    "e2e: {n} entries: profiling the router CPU under {}",
                    s.variant.name()
                );
                if let Some(top) = profile(s, run) {
                    profiles.push((n, s.variant, top));
                }
            }
        }
        let base_pps = setups[0].pps.clone();
        let base_cpu = setups[0].cpu_ns.clone();
        for s in &setups {
            if let Some(why) = &s.skipped {
                table.row(vec![
                    n.to_string(),
                    s.variant.name().into(),
                    "–".into(),
                    format!("skipped: {why}"),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                ]);
                rows.push(json!({"entries": n, "variant": s.variant.key(), "skipped": why}));
                continue;
            }
            let ratio: Vec<f64> = s.pps.iter().zip(&base_pps).map(|(a, b)| a / b).collect();
            let cpu_ratio: Vec<f64> = s.cpu_ns.iter().zip(&base_cpu).map(|(a, b)| a / b).collect();
            let kpps: Vec<f64> = s.pps.iter().map(|p| p / 1e3).collect();
            let (pps, ratio, cpu, cpu_ratio) = (
                Spread::of(&kpps),
                Spread::of(&ratio),
                Spread::of(&s.cpu_ns),
                Spread::of(&cpu_ratio),
            );
            let load = s.load.map(|d| d.as_secs_f64());
            table.row(vec![
                n.to_string(),
                s.variant.name().into(),
                load.map_or("–".into(), |l| format!("{l:.2}")),
                pps.show(0),
                ratio.show(3),
                cpu.show(0),
                cpu_ratio.show(3),
            ]);
            rows.push(json!({
                "entries": n,
                "variant": s.variant.key(),
                "load_s": load,
                "kpps": pps.json(),
                "ratio": ratio.json(),
                "cpu_ns": cpu.json(),
                "cpu_ratio": cpu_ratio.json(),
                "verified": s.verified.map(|v| v.2),
            }));
        }
        drop(setups);
    }
    let backend = env["iptables"].as_str().unwrap_or("").to_string();
    let md = format!(
        "### End to end: UDP forwarding LAN → router → upstream ({} reps × {} ms, interleaved)\n\n\
         Marking check (each of the {FLOWS} flows sent once; {HITS} hit an entry → table 102 → up2):\n\n{}\n\
         Throughput and router CPU per packet (median (min–max) over repetitions; ratios are \
         to the baseline of the same repetition; iptables: `{backend}`):\n\n{}",
        reps,
        run.as_millis(),
        verify_table.markdown(),
        table.markdown()
    );
    let mut md = md;
    let mut full = String::new();
    for (n, v, top) in &profiles {
        let _ = write!(
            md,
            "\nRouter CPU profile, {} at {n} entries (`perf record -C {ROUTER_CPU} -e cpu-clock`, \
             self time, top symbols; full lists in `e2e-perf.txt`):\n\n```\n{}\n```\n",
            v.name(),
            top.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
        );
        let _ = write!(
            full,
            "## {} at {n} entries\n\n{}\n\n",
            v.name(),
            top.join("\n")
        );
    }
    if !full.is_empty() {
        bench::write_result("e2e-perf.txt", &full);
    }
    bench::write_results(
        "e2e",
        &md,
        &json!({
            "environment": env,
            "reps": reps,
            "run_ms": run.as_millis() as u64,
            "load_cap_s": cap.as_secs(),
            "flows": FLOWS,
            "hits": HITS,
            "rows": rows,
            "profiles": profiles.iter().map(|(n, v, top)| json!({
                "entries": n, "variant": v.key(), "top": top,
            })).collect::<Vec<_>>(),
        }),
    );
}
