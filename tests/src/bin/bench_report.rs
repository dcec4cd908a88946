//! `cargo xtask bench report` (run last by `cargo xtask bench`): collects the results the
//! benchmark binaries wrote under `bench/results/`, checks them against the project's
//! targets, draws `bench/results/bench.png` with gnuplot, writes `bench/results/summary.md`
//! and replaces the `## Benchmarks` section of README.md with it. The closing analysis is
//! kept by hand in `bench/NOTES.md` and included as it is.
use std::{fmt::Write as _, fs, path::PathBuf, process::Command};

use policyroute_tests::bench::{self, read_json};
use serde_json::Value;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// A [`bench::Spread`] as gnuplot data columns: `median min max`.
fn spread(v: &Value) -> String {
    format!("{} {} {}", f(&v["median"]), f(&v["min"]), f(&v["max"]))
}

/// The e2e row of `variant` at `entries`, if measured.
fn e2e_row<'a>(e2e: &'a Value, variant: &str, entries: u64) -> Option<&'a Value> {
    e2e["rows"].as_array()?.iter().find(|r| {
        r["variant"] == variant && r["entries"].as_u64() == Some(entries) && r["skipped"].is_null()
    })
}

fn targets(classify: Option<&Value>, e2e: Option<&Value>, control: Option<&Value>) -> String {
    let mut out = String::new();
    let mark = |ok: bool| if ok { "met" } else { "**missed**" };
    if let Some(c) = classify {
        let r = f(&c["worst_ratio"]);
        let _ = writeln!(
            out,
            "- Classifier, 100k rules at most 1.5× one rule: worst case {r:.2}× — {} \
             (by {:.0}%).",
            mark(r <= 1.5),
            (r / 1.5 - 1.0).max(0.0) * 100.0
        );
    }
    if let Some(e) = e2e {
        if let Some(p) = e2e_row(e, "policyroute", 10_000) {
            let over = (1.0 - f(&p["ratio"]["median"])) * 100.0;
            let cpu = (f(&p["cpu_ratio"]["median"]) - 1.0) * 100.0;
            let _ = writeln!(
                out,
                "- End to end at 10k entries, overhead over the baseline at most 5%: \
                 {over:.1}% fewer packets/s, {cpu:.1}% more router CPU per packet — {}.",
                mark(over <= 5.0)
            );
            if let Some(r) = e2e_row(e, "rules-only", 10_000) {
                let rules = (1.0 - f(&r["ratio"]["median"])) * 100.0;
                let _ = writeln!(
                    out,
                    "  Of that, the fwmark ip rules alone (no classifier, nothing marked) cost \
                     {rules:.1}% in the same run."
                );
            }
        }
        let sizes: Vec<u64> = e["rows"]
            .as_array()
            .map(|rows| {
                let mut s: Vec<u64> = rows.iter().filter_map(|r| r["entries"].as_u64()).collect();
                s.dedup();
                s
            })
            .unwrap_or_default();
        let mut cmp = Vec::new();
        let mut all = true;
        for n in sizes {
            match (e2e_row(e, "policyroute", n), e2e_row(e, "nftables", n)) {
                (Some(p), Some(q)) => {
                    let (a, b) = (f(&p["ratio"]["median"]), f(&q["ratio"]["median"]));
                    all &= a > b;
                    cmp.push(format!(
                        "{n}: {:.1}% vs {:.1}%",
                        (1.0 - a) * 100.0,
                        (1.0 - b) * 100.0
                    ));
                }
                _ => {
                    all = false;
                    cmp.push(format!("{n}: not both measured"));
                }
            }
        }
        let _ = writeln!(
            out,
            "- End to end, policyroute's overhead below the nftables map's at every size \
             (policyroute vs nftables): {} — {}.",
            cmp.join("; "),
            mark(all)
        );
    }
    if let Some(c) = control {
        for (op, rules, target, label) in [
            (
                "apply (clean namespace)",
                100_000,
                2.0,
                "`apply` of 100k rules under 2 s",
            ),
            (
                "re-apply, one rule changed",
                100_000,
                0.05,
                "one-rule change to an applied 100k policy under 50 ms",
            ),
        ] {
            let row = c["rows"].as_array().and_then(|rows| {
                rows.iter()
                    .find(|r| r["operation"] == op && r["rules"] == rules)
            });
            let Some(row) = row else { continue };
            let med = f(&row["wall_s"]["median"]);
            let text = if med.is_nan() {
                "not finished within the cap — **missed**".to_string()
            } else {
                format!(
                    "{} — {} ({:.2}× the target)",
                    if med < 1.0 {
                        format!("{:.0} ms", med * 1e3)
                    } else {
                        format!("{med:.2} s")
                    },
                    mark(med <= target),
                    med / target
                )
            };
            let _ = writeln!(out, "- {label}: {text}.");
        }
    }
    out
}

/// Writes the data files and runs gnuplot; returns false when gnuplot is missing or fails.
fn plot(
    classify: Option<&Value>,
    e2e: Option<&Value>,
    control: Option<&Value>,
    png: &std::path::Path,
) -> bool {
    let dir = std::env::temp_dir().join(format!("prt-bench-plot-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("plot dir");
    let mut script = format!(
        "set terminal pngcairo size 1600,1100 font 'sans,11'\nset output '{}'\n\
         set multiplot layout 2,2 title 'policyroute benchmarks'\nset key left top\n\
         set grid\nset logscale x\n",
        png.display()
    );
    // 1. Classifier.
    if let Some(c) = classify {
        let mut data = String::new();
        for (fam, case) in [
            ("IPv4", "hit"),
            ("IPv4", "miss"),
            ("IPv6", "hit"),
            ("IPv6", "miss"),
        ] {
            let _ = writeln!(data, "# {fam} {case}");
            for r in c["rows"].as_array().into_iter().flatten() {
                if r["family"] == fam && r["case"] == case {
                    let _ = writeln!(
                        data,
                        "{} {} {}",
                        r["rules"],
                        spread(&r["ns"]),
                        f(&r["empty_ns"]["median"])
                    );
                }
            }
            data.push_str("\n\n");
        }
        fs::write(dir.join("classify.dat"), data).unwrap();
        let d = dir.join("classify.dat");
        let _ = write!(
            script,
            "set title 'Classifier (BPF\\_PROG\\_TEST\\_RUN, different packets)'\n\
             set xlabel 'rules per family'\nset ylabel 'ns/packet'\nunset logscale y\nset yrange [0:*]\n\
             plot '{0}' index 0 using 1:2:3:4 with yerrorlines title 'IPv4 hit', \
             '' index 1 using 1:2:3:4 with yerrorlines title 'IPv4 miss', \
             '' index 2 using 1:2:3:4 with yerrorlines title 'IPv6 hit', \
             '' index 3 using 1:2:3:4 with yerrorlines title 'IPv6 miss', \
             '' index 0 using 1:5 with lines dt 2 title 'empty program'\n",
            d.display()
        );
    } else {
        script.push_str("set multiplot next\n");
    }
    // 2 and 3. End to end.
    let variants = [
        ("baseline", "baseline (no policy)"),
        ("rules-only", "fwmark rules only"),
        ("policyroute", "policyroute"),
        ("iptables", "iptables MARK"),
        ("nftables", "nftables map"),
        ("iprule", "ip rule selectors"),
    ];
    if let Some(e) = e2e {
        let mut data = String::new();
        let mut present = Vec::new();
        for (key, title) in variants {
            let rows: Vec<&Value> = e["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["variant"] == key && r["skipped"].is_null())
                .collect();
            if rows.is_empty() {
                continue;
            }
            present.push(title);
            let _ = writeln!(data, "# {key}");
            for r in rows {
                let _ = writeln!(
                    data,
                    "{} {} {} {}",
                    r["entries"],
                    spread(&r["kpps"]),
                    spread(&r["cpu_ns"]),
                    spread(&r["ratio"])
                );
            }
            data.push_str("\n\n");
        }
        fs::write(dir.join("e2e.dat"), data).unwrap();
        let d = dir.join("e2e.dat");
        let series = |cols: &str| {
            present
                .iter()
                .enumerate()
                .map(|(i, title)| {
                    format!(
                        "'{}' index {i} using {cols} with yerrorlines title '{title}'",
                        d.display()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = write!(
            script,
            "set title 'End to end: packets/s forwarded, as a fraction of the baseline (same repetition)'\n\
             set xlabel 'policy entries'\nset ylabel 'pps / baseline (median, min-max)'\nunset logscale y\n\
             set yrange [0:1.1]\nset key left bottom\n\
             plot {}\n\
             set title 'End to end: router CPU per forwarded packet'\nset ylabel 'ns/packet'\n\
             set logscale y\nset yrange [*:*]\nset key left top\nplot {}\n",
            series("1:8:9:10"),
            series("1:5:6:7")
        );
    } else {
        script.push_str("set multiplot next\nset multiplot next\n");
    }
    // 4. Control plane.
    if let Some(c) = control {
        let mut data = String::new();
        for (i, r) in c["rows"].as_array().into_iter().flatten().enumerate() {
            let wall = f(&r["wall_s"]["median"]);
            let label = format!(
                "{} {}",
                r["operation"]
                    .as_str()
                    .unwrap_or("?")
                    .replace(" (clean namespace)", ""),
                r["rules"]
            );
            let _ = writeln!(
                data,
                "{i} {} \"{}\" {}",
                if wall.is_nan() { 0.0 } else { wall },
                label.replace('"', ""),
                f(&r["target_s"]).max(0.0)
            );
        }
        fs::write(dir.join("control.dat"), data).unwrap();
        let _ = write!(
            script,
            "set title 'Control plane: wall time of the CLI (circles: targets)'\nunset logscale x\n\
             set xlabel ''\nset ylabel 'seconds'\nset logscale y\nset yrange [0.005:*]\n\
             set style fill solid 0.5\nset boxwidth 0.6\nset xtics rotate by -20\n\
             plot '{0}' using 1:2:xtic(3) with boxes title 'median wall time', \
             '' using 1:($4 > 0 ? $4 : 1/0) with points pt 6 ps 2 title 'target'\n",
            dir.join("control.dat").display()
        );
    }
    script.push_str("unset multiplot\n");
    fs::write(dir.join("plot.gp"), &script).unwrap();
    let ok = Command::new("gnuplot")
        .arg(dir.join("plot.gp"))
        .status()
        .is_ok_and(|s| s.success());
    let _ = fs::remove_dir_all(&dir);
    ok
}

fn main() {
    let classify = read_json("classify.json");
    let e2e = read_json("e2e.json");
    let control = read_json("control.json");
    let env = [&classify, &e2e, &control]
        .into_iter()
        .flatten()
        .map(|v| v["environment"].clone())
        .next()
        .unwrap_or_else(bench::environment);
    let results = bench::results_dir();
    let png = results.join("bench.png");
    let plotted = plot(classify.as_ref(), e2e.as_ref(), control.as_ref(), &png);
    if !plotted {
        eprintln!("report: gnuplot failed or is missing; no plot");
    }
    let part = |name: &str| fs::read_to_string(results.join(name)).unwrap_or_default();
    let notes = fs::read_to_string(workspace().join("bench/NOTES.md")).unwrap_or_default();
    let mut s = String::from("## Benchmarks\n\n");
    s.push_str(
        "`cargo xtask bench` (never part of `cargo xtask test`) runs everything below on this \
         machine in one go (about 8 minutes here) and rewrites this section; `cargo xtask bench \
         classify | e2e | control` runs one part, `cargo xtask bench report` redraws. Raw results \
         (markdown, JSON, the perf reports) are in `bench/results/`. Everything runs in \
         throwaway network namespaces (`prt-<pid>-...`); nothing touches the root namespace.\n\n",
    );
    let _ = writeln!(
        s,
        "Latest run: {} on {} cores ({}), kernel {}, `{}`, `{}`; load average when the \
         classifier, end-to-end and control-plane parts started (the machine is shared; the \
         later parts also see the earlier ones'): {}.\n",
        env["date"].as_str().unwrap_or("?"),
        env["cores"],
        env["cpu"].as_str().unwrap_or("?"),
        env["kernel"].as_str().unwrap_or("?"),
        env["iptables"]
            .as_str()
            .unwrap_or("iptables: not installed"),
        env["nft"].as_str().unwrap_or("nft: not installed"),
        [&classify, &e2e, &control]
            .into_iter()
            .flatten()
            .map(|v| v["environment"]["loadavg"]
                .as_str()
                .unwrap_or("?")
                .to_string())
            .collect::<Vec<_>>()
            .join(" / "),
    );
    if plotted {
        s.push_str("![benchmark plot](bench/results/bench.png)\n\n");
    }
    s.push_str("### Targets\n\n");
    s.push_str(&targets(classify.as_ref(), e2e.as_ref(), control.as_ref()));
    s.push('\n');
    s.push_str(METHOD);
    for name in ["classify.md", "e2e.md", "control.md"] {
        let text = part(name);
        if !text.is_empty() {
            s.push('\n');
            s.push_str(text.trim_end());
            s.push('\n');
        }
    }
    if !notes.is_empty() {
        s.push('\n');
        s.push_str(notes.trim_end());
        s.push('\n');
    }
    bench::write_result("summary.md", &s);
    let readme = workspace().join("README.md");
    let text = fs::read_to_string(&readme).expect("README.md");
    let start = text.find("\n## Benchmarks\n").map(|i| i + 1);
    let new = match start {
        Some(i) => {
            let rest = &text[i + 1..];
            let end = rest.find("\n## ").map(|j| i + 1 + j + 1);
            match end {
                Some(e) => format!("{}{}\n{}", &text[..i], s, &text[e..]),
                None => format!("{}{}", &text[..i], s),
            }
        }
        None => format!("{}\n{}", text.trim_end(), s),
    };
    fs::write(&readme, new).expect("write README.md");
    eprintln!("report: README.md's Benchmarks section updated");
}

const METHOD: &str = "### Method\n\n\
- **Classifier**: `policyroute apply` (the real CLI) installs N rules per family of one \
  shape (`tcp`, a /32 or /128 source, one destination port; maps sized by apply for the \
  policy); the program it attached to lan0 is found with a tcx query and run by fd through \
  `BPF_PROG_TEST_RUN`. No hot packet: each measurement runs 4,096 different packets once each \
  in shuffled order (hits on random rules across the whole policy, misses on a port no rule \
  has), and the kernel times every single run; the empty TC program runs the same packets in \
  the same round, alternating which goes first. Every mark is checked. The split of a hit's \
  cost loads a second copy of the dataplane in which all rules share one counter slot.\n\
- **End to end**: a LAN namespace, a router with two uplinks, two upstream namespaces (veth \
  pairs; `tests/src/topology.rs`). The same policy in every variant: N entries `udp, dst \
  198.18.x.y/32, dport P → table 102 (uplink 2)`, plus `lookup main suppress_prefixlength 0` \
  first and the `fwmark 2 lookup 102` rule for the marking variants, exactly as policyroute \
  installs them. Variants: no policy (baseline); the fwmark rules alone with nothing marking \
  (what policy routing costs before classification); policyroute (the real CLI); iptables \
  mangle PREROUTING `-j MARK` rules (`iptables-restore`); an nftables \
  `meta mark set ip daddr . udp dport map @m` map (`nft -f`); `ip rule ... to X ipproto udp \
  dport P lookup 102` selectors (`ip -batch`). A load that takes longer than the cap (150 s) \
  is stopped and that size skipped (and larger ones). The traffic is 1,024 different 60-byte \
  frames: 768 hit entries spread evenly over the policy, 128 go to an entry's address on \
  another port, 128 to addresses no entry has. First each variant gets every frame once, \
  paced, and the upstreams' `Ip: InReceives` counters must show exactly 256 via uplink 1 and \
  768 via uplink 2 (all 1,024 via uplink 1 without marking). Then the sender, an AF_PACKET \
  socket (`sendmmsg`, qdisc bypass) pinned to CPU 0, sends as fast as it can for 1.5 s; \
  receive packet steering hands everything the router receives on lan0 to CPU 1, where the \
  router's forwarding and the upstream's receive run, so the router CPU is the bottleneck. \
  packets/s = packets the upstreams received / sending time; router CPU per packet = CPU 1's \
  busy time (`/proc/stat`, all but idle/iowait/steal) / packets received. Seven repetitions, \
  interleaved (A B C D E F A B C ...); each variant's ratio to the baseline is taken within \
  the same repetition, then min/median/max.\n\
- **Control plane**: the release CLI as an operator runs it (`ip netns exec NS policyroute \
  apply -c FILE --json`) in a namespace with the policy's devices; wall time and the \
  process's peak RSS (`wait4` `ru_maxrss`). A one-rule change alternates between two files \
  that differ in one rule's port. `perf record -e cpu-clock --call-graph dwarf` profiles \
  `apply` at 100,000 rules (10,000 when that is slow; this VM has no hardware counters), and \
  `perf record -C 1` the router CPU during end-to-end runs at 10,000 entries.\n";
