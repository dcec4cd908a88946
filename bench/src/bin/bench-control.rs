//! `cargo xtask bench control`: wall time and peak memory (the child's ru_maxrss) of the
//! real CLI, run as an operator does (`ip netns exec NS policyroute ...`): `apply` of 1,000
//! and 100,000 rules into a clean namespace, a re-apply of the 100,000-rule policy with one
//! rule changed, and `flush`. With `perf` available, CPU profiles of `apply` at the large size
//! (fresh, then one rule changed; 10,000 rules if the large size is slow) show where the time
//! goes.
use std::{process::Command, time::Duration};

use policyroute_bench::results::{
    self, country_list, env_or, measure, perf_symbols, policy_toml, Measured, Spread, Table,
};
use policyroute_tests::{
    cli,
    daemon::Daemon,
    fixture::{lone_router, TempFile},
    netns::NetNs,
};
use serde_json::{json, Value};

fn policyroute(ns: &NetNs, args: &[&str], cap: Duration) -> Measured {
    let bin = cli::bin();
    let m = measure(
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bin)
            .args(args),
        cap,
    );
    if !m.timed_out {
        assert!(
            m.status.success(),
            "policyroute {args:?} failed: {}{}",
            m.stderr,
            m.stdout
        );
    }
    m
}

/// `inserted/updated/removed` hash entries from `apply --json`.
fn entries(m: &Measured) -> String {
    let v: Value = serde_json::from_str(&m.stdout).unwrap_or(Value::Null);
    let e = &v["entries"];
    format!(
        "+{} ~{} -{}",
        e["inserted"].as_u64().unwrap_or(0),
        e["updated"].as_u64().unwrap_or(0),
        e["removed"].as_u64().unwrap_or(0)
    )
}

struct Op {
    name: String,
    rules: usize,
    target_s: Option<f64>,
    runs: Vec<Measured>,
    note: String,
}

/// SIGHUP to `policyroute run` with one rule changed (alternating between the two files),
/// timed by the daemon from the signal to the end of its pass ("reload done in N ms").
fn reloads(ns: &NetNs, large: &TempFile, changed: &TempFile, rules: usize) -> Op {
    use std::os::unix::process::ExitStatusExt;
    let mut op = Op {
        name: "SIGHUP to run, one rule changed".into(),
        rules,
        target_s: Some(0.15),
        runs: Vec::new(),
        note: String::new(),
    };
    let text = |f: &TempFile| std::fs::read_to_string(&f.path).expect("policy file");
    let file = TempFile::new("control-run.toml", &text(large));
    let daemon = Daemon::start(ns, file.arg(), &[], &[]);
    daemon.ready();
    for i in 0..6 {
        eprintln!("control: SIGHUP {} with one rule changed", i + 1);
        let next = if i % 2 == 0 { changed } else { large };
        std::fs::write(&file.path, text(next)).expect("rewrite the policy");
        daemon.signal(libc::SIGHUP);
        let done = "SIGHUP: reload done in ";
        assert!(
            daemon.wait_log(done, i + 1, Duration::from_secs(60)),
            "{}",
            daemon.log_text()
        );
        let log = daemon.log_text();
        let ms: f64 = log
            .lines()
            .filter_map(|l| l.split(done).nth(1))
            .nth(i)
            .and_then(|rest| rest.trim_end_matches(" ms").parse().ok())
            .expect("a reload time");
        op.runs.push(Measured {
            status: std::process::ExitStatus::from_raw(0),
            wall: Duration::from_secs_f64(ms / 1e3),
            max_rss_kib: peak_rss_kib(daemon.pid()),
            stdout: String::new(),
            stderr: String::new(),
            timed_out: false,
        });
    }
    op
}

/// The peak resident set of a running process (`VmHWM`), in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A country-shaped list (50,000 IPv4 + 37,000 IPv6 prefixes of mixed lengths) in one set:
/// apply into a clean namespace, then the list file rewritten with one prefix replaced and
/// the policy applied again (alternating between the two lists), three of each.
fn country_list_ops(ns: &NetNs, cap: Duration) -> Vec<Op> {
    let list = country_list(7);
    let mut other = list.clone();
    let at = list.len() / 2;
    other[at] = "198.18.77.0/24".parse().unwrap();
    let text = |l: &[ipnet::IpNet]| l.iter().map(|p| format!("{p}\n")).collect::<String>();
    let file = TempFile::new("country.txt", &text(&list));
    let name = file.path.file_name().unwrap().to_str().unwrap().to_owned();
    let policy = format!(
        "{}[[set]]\nname = \"country\"\nfile = \"{name}\"\n\n[[rule]]\nname = \"to-country\"\n\
         dst = \"@country\"\ngateway = \"isp2\"\n",
        policy_toml(0, None)
    );
    let policy = TempFile::new("country.toml", &policy);
    let apply = || policyroute(ns, &["apply", "-c", policy.arg(), "--json"], cap);
    let rows = list.len();
    let mut fresh = Op {
        name: "apply a country list (clean namespace)".into(),
        rules: rows,
        target_s: Some(2.0),
        runs: Vec::new(),
        note: String::new(),
    };
    let mut change = Op {
        name: "re-apply, one list prefix changed".into(),
        rules: rows,
        target_s: Some(0.15),
        runs: Vec::new(),
        note: String::new(),
    };
    for round in 0..3 {
        eprintln!("control: country list, round {}", round + 1);
        policyroute(ns, &["flush"], cap);
        file.write(&text(&list));
        let m = apply();
        fresh.note = list_note(&m);
        fresh.runs.push(m);
        for l in [&other, &list] {
            file.write(&text(l));
            let m = apply();
            change.note = list_note(&m);
            change.runs.push(m);
        }
    }
    policyroute(ns, &["flush"], cap);
    vec![fresh, change]
}

/// [`entries`] and the prefix trie words stored.
fn list_note(m: &Measured) -> String {
    let v: Value = serde_json::from_str(&m.stdout).unwrap_or(Value::Null);
    let words = v["entries"]["trie_words"].as_u64().unwrap_or(0);
    format!("{}, {words} trie words stored", entries(m))
}

fn main() {
    let cap = Duration::from_secs(env_or("POLICYROUTE_BENCH_CONTROL_CAP", 300));
    let big: usize = env_or("POLICYROUTE_BENCH_CONTROL_RULES", 100_000);
    let env = results::environment();
    // The devices the benchmark policies name: lan0 (ingress) and wan2 (the gateway's
    // device, with 203.0.113.2 on-link).
    let ns = lone_router("control");
    let small = TempFile::new("control-1k.toml", &policy_toml(1000, None));
    let large = TempFile::new("control-big.toml", &policy_toml(big, None));
    let large_changed = TempFile::new("control-big-changed.toml", &policy_toml(big, Some(big / 2)));
    let apply = |file: &str| policyroute(&ns, &["apply", "-c", file, "--json"], cap);
    let flush = || policyroute(&ns, &["flush"], cap);
    let mut ops: Vec<Op> = Vec::new();

    // apply of 1k rules into a clean namespace, three times.
    let mut op = Op {
        name: "apply (clean namespace)".into(),
        rules: 1000,
        target_s: None,
        runs: Vec::new(),
        note: String::new(),
    };
    for _ in 0..3 {
        flush();
        let m = apply(small.arg());
        op.note = entries(&m);
        op.runs.push(m);
    }
    ops.push(op);
    let m = flush();
    ops.push(Op {
        name: "flush".into(),
        rules: 1000,
        target_s: None,
        runs: vec![m],
        note: String::new(),
    });

    ops.extend(country_list_ops(&ns, cap));

    // The large policy: apply, re-apply with one rule changed (alternating between the two
    // files, each re-apply is a one-rule change), flush. Fast enough: three of each.
    let mut fresh = Op {
        name: "apply (clean namespace)".into(),
        rules: big,
        target_s: Some(2.0),
        runs: Vec::new(),
        note: String::new(),
    };
    let mut change = Op {
        name: "re-apply, one rule changed".into(),
        rules: big,
        target_s: Some(0.15),
        runs: Vec::new(),
        note: String::new(),
    };
    let mut flushes = Op {
        name: "flush".into(),
        rules: big,
        target_s: None,
        runs: Vec::new(),
        note: String::new(),
    };
    let mut round = 0;
    loop {
        eprintln!("control: apply {big} rules (round {})", round + 1);
        let m = apply(large.arg());
        let timed_out = m.timed_out;
        fresh.note = entries(&m);
        fresh.runs.push(m);
        if timed_out {
            fresh.note = format!("stopped at the {} s cap", cap.as_secs());
            break;
        }
        for file in [&large_changed, &large] {
            eprintln!("control: re-apply {big} rules, one changed");
            let m = apply(file.arg());
            let slow = m.wall > Duration::from_secs(10);
            change.note = entries(&m);
            change.runs.push(m);
            if slow {
                // Back to the unchanged policy without measuring it again.
                if std::ptr::eq(file, &large_changed) {
                    apply(large.arg());
                }
                break;
            }
        }
        eprintln!("control: flush {big} rules");
        flushes.runs.push(flush());
        round += 1;
        let slow = fresh.runs.iter().any(|m| m.wall > Duration::from_secs(10))
            || change.runs.iter().any(|m| m.wall > Duration::from_secs(10));
        if round == 3 || slow {
            break;
        }
    }
    ops.extend([fresh, change]);
    ops.push(reloads(&ns, &large, &large_changed, big));
    ops.push(flushes);

    let mut table = Table::new(&[
        "operation",
        ">rules",
        ">runs",
        ">wall s median (min–max)",
        ">peak RSS MiB",
        ">target",
        "hash entries (+ins ~upd -del)",
    ]);
    let mut rows = Vec::new();
    for op in &ops {
        let done: Vec<&Measured> = op.runs.iter().filter(|m| !m.timed_out).collect();
        let wall: Vec<f64> = done.iter().map(|m| m.wall.as_secs_f64()).collect();
        let rss = done.iter().map(|m| m.max_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        let spread = (!wall.is_empty()).then(|| Spread::of(&wall));
        let target = op.target_s.map(|t| {
            let met = spread.is_some_and(|s| s.median <= t);
            let shown = if t < 1.0 {
                format!("< {} ms", t * 1000.0)
            } else {
                format!("< {t} s")
            };
            format!("{shown}: {}", if met { "met" } else { "**missed**" })
        });
        table.row(vec![
            op.name.clone(),
            op.rules.to_string(),
            op.runs.len().to_string(),
            spread.map_or_else(|| format!("> {} (cap)", cap.as_secs()), |s| s.show(3)),
            format!("{rss:.0}"),
            target.clone().unwrap_or_else(|| "–".into()),
            op.note.clone(),
        ]);
        rows.push(json!({
            "operation": op.name,
            "rules": op.rules,
            "wall_s": spread.map(|s| s.json()),
            "peak_rss_mib": rss,
            "target_s": op.target_s,
            "timed_out": op.runs.iter().any(|m| m.timed_out),
            "entries": op.note,
        }));
    }
    drop(ns);
    // Profile at the large size when an apply there is quick enough, else at 10,000 rules.
    let quick = ops
        .iter()
        .filter(|o| o.rules == big)
        .flat_map(|o| &o.runs)
        .all(|m| !m.timed_out && m.wall < Duration::from_secs(10));
    let profile_rules = if quick { big } else { 10_000 };
    let profile = profile(profile_rules, cap);
    let md = format!(
        "### Control plane: the CLI in a namespace (`ip netns exec NS policyroute ...`)\n\n{}{}",
        table.markdown(),
        profile
            .as_ref()
            .map(|p| format!(
                "\nWhere `apply` spends its time (`perf record -e cpu-clock --call-graph dwarf`, \
                 {profile_rules} rules; full reports with self time in `control-perf.txt`):\n\n{p}"
            ))
            .unwrap_or_default()
    );
    results::write_results(
        "control",
        &md,
        &json!({
            "environment": env,
            "rows": rows,
            "profile": profile,
        }),
    );
}

/// CPU profiles of `apply` at `n` rules (clean namespace, then one rule changed), when perf
/// works here: inclusive time of policyroute's own functions (DWARF call graphs) and the
/// hottest symbols by self time. Returns a markdown summary and writes the full reports.
fn profile(n: usize, cap: Duration) -> Option<String> {
    let works = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-o", "/dev/null", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        eprintln!("control: perf is not usable here; no profile");
        return None;
    }
    let ns = lone_router("control");
    let fresh = TempFile::new("profile-a.toml", &policy_toml(n, None));
    let changed = TempFile::new("profile-b.toml", &policy_toml(n, Some(n / 2)));
    let mut summary = String::new();
    let mut full = String::new();
    for (what, file) in [
        (format!("apply {n} rules, clean namespace"), &fresh),
        (format!("re-apply {n} rules, one changed"), &changed),
    ] {
        eprintln!("control: profiling {what}");
        let data = TempFile::new("control.perf", "");
        let bin = cli::bin();
        let m = measure(
            Command::new("perf")
                .args(["record", "-q", "--call-graph", "dwarf,16384", "-F", "1000"])
                .args(["-e", "cpu-clock", "-o"])
                .arg(&data.path)
                .args(["--", "ip", "netns", "exec", &ns.name])
                .arg(&bin)
                .args(["apply", "-c", file.arg()]),
            cap,
        );
        if !m.status.success() {
            eprintln!("control: perf record failed: {}", m.stderr);
            return None;
        }
        let report = |children: bool| -> Vec<String> {
            let mut cmd = Command::new("perf");
            cmd.args(["report", "--stdio", "-g", "none", "-i"])
                .arg(&data.path);
            if children {
                cmd.args(["--children", "--sort", "sym"]);
            } else {
                cmd.args(["--no-children", "--sort", "dso,sym"]);
            }
            let out = cmd.output().map(|o| o.stdout).unwrap_or_default();
            perf_symbols(&out, |l| !children || l.contains("policyroute::"))
        };
        let (inclusive, own) = (report(true), report(false));
        drop(data);
        full.push_str(&format!(
            "## {what} ({:.2} s under perf)\n\n### inclusive (children), policyroute functions\n\n{}\n\n### self time\n\n{}\n\n",
            m.wall.as_secs_f64(),
            inclusive.join("\n"),
            own.join("\n")
        ));
        summary.push_str(&format!(
            "{what} ({:.2} s under perf), inclusive time of policyroute's functions \
             (children, self):\n\n```\n{}\n```\n\n",
            m.wall.as_secs_f64(),
            inclusive
                .iter()
                .take(14)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    results::write_result("control-perf.txt", &full);
    Some(summary)
}
