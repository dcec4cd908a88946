//! `cargo xtask bench report` (run last by `cargo xtask bench`): collects the results the
//! benchmark binaries wrote under `bench/results/`, checks them against the project's
//! targets, draws `bench/results/bench.png` with gnuplot and writes the full report,
//! `bench/results/report.md` (every table, the perf profiles, the method, and the closing
//! analysis kept by hand in `bench/NOTES.md`, included as it is). README.md's `## Benchmarks`
//! section is replaced by a short one built from the same JSON: the machine and date, the
//! headline numbers against the targets, the plot, and a link to the report. Results kept
//! elsewhere (`$POLICYROUTE_BENCH_DIR`, a trial run) leave README.md alone and get that
//! section as `readme-section.md` beside them.
use std::{fmt::Write as _, fs, path::PathBuf, process::Command};

use policyroute_bench::results::{self, read_json};
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

/// The traffic mix the comparisons with earlier runs and with the other tools are judged
/// on: every packet is classified and marked (or forwarded) by the policy, as the earlier
/// runs' mostly-hit mix was.
const MATCHED: &str = "matched";
const UNMATCHED: &str = "unmatched";

/// Issue 12's goals for the fast path: its packets/s over the baseline's on the same mix,
/// at every one of these sizes.
const GOAL_SIZES: [u64; 4] = [1, 1_000, 10_000, 100_000];
const GOAL_MATCHED: f64 = 1.3;
const GOAL_UNMATCHED: f64 = 0.97;

/// Whether an e2e row was measured on `mix`. Rows of runs from before the mixes were split
/// carry no mix: their traffic was 3/4 matched, so they stand for the matched mix.
fn of_mix(row: &Value, mix: &str) -> bool {
    row["mix"] == mix || (row["mix"].is_null() && mix == MATCHED)
}

/// The e2e row of `variant` at `entries` on traffic `mix`, if measured.
fn e2e_row<'a>(e2e: &'a Value, variant: &str, mix: &str, entries: u64) -> Option<&'a Value> {
    e2e["rows"].as_array()?.iter().find(|r| {
        r["variant"] == variant
            && r["entries"].as_u64() == Some(entries)
            && of_mix(r, mix)
            && r["skipped"].is_null()
    })
}

/// The policy sizes the run measured, in order.
fn e2e_sizes(e2e: &Value) -> Vec<u64> {
    let mut sizes: Vec<u64> = e2e["rows"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["entries"].as_u64()).collect())
        .unwrap_or_default();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Whether policyroute's (mark-based) overhead over the baseline is below the nftables
/// map's at every measured size on matched traffic, and the two overheads per size.
fn versus_nftables(e2e: &Value) -> (bool, Vec<String>) {
    let mut cmp = Vec::new();
    let mut all = true;
    for n in e2e_sizes(e2e) {
        match (
            e2e_row(e2e, "policyroute", MATCHED, n),
            e2e_row(e2e, "nftables", MATCHED, n),
        ) {
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
    (all, cmp)
}

/// Whether the fast path reaches `min` times the baseline's packets/s on `mix` at every
/// goal size, and its ratio per size (a size not measured misses the goal).
fn fast_path_goal(e2e: &Value, mix: &str, min: f64) -> (bool, Vec<String>) {
    let mut all = true;
    let per_size = GOAL_SIZES
        .iter()
        .map(|&n| match e2e_row(e2e, "fast-path", mix, n) {
            Some(r) => {
                let ratio = f(&r["ratio"]["median"]);
                all &= ratio >= min;
                format!("{}: {ratio:.3}×", short(n))
            }
            _ => {
                all = false;
                format!("{}: not measured", short(n))
            }
        })
        .collect();
    (all, per_size)
}

/// 100000 as `100k`.
fn short(n: u64) -> String {
    if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// 100000 as `100,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `readme` with its `## Benchmarks` section (up to the next `## ` heading or the end)
/// replaced by `section`, or `section` appended when there is none.
fn replace_section(readme: &str, section: &str) -> String {
    let Some(start) = readme.find("\n## Benchmarks\n").map(|i| i + 1) else {
        return format!("{}\n\n{section}", readme.trim_end());
    };
    let body = start + "## Benchmarks\n".len();
    match readme[body..].find("\n## ") {
        Some(j) => format!("{}{section}\n{}", &readme[..start], &readme[body + j + 1..]),
        None => format!("{}{section}", &readme[..start]),
    }
}

/// The end-to-end targets: issue 12's fast-path goals, and the earlier ones (the
/// mark-based mode's overhead and the nftables comparison), judged on matched traffic.
fn e2e_targets(e: &Value) -> String {
    let mut out = String::new();
    for (mix, min) in [(MATCHED, GOAL_MATCHED), (UNMATCHED, GOAL_UNMATCHED)] {
        let (all, per_size) = fast_path_goal(e, mix, min);
        let _ = writeln!(
            out,
            "- Issue 12, fast path, {mix} traffic at least {min}× the packets/s of the baseline \
             (the same traffic, no policy, no ip rules; same run and repetition) at 1, 1k, 10k \
             and 100k entries: {} — {}.",
            per_size.join("; "),
            met(all)
        );
    }
    if let Some(p) = e2e_row(e, "policyroute", MATCHED, 10_000) {
        let over = (1.0 - f(&p["ratio"]["median"])) * 100.0;
        let cpu = (f(&p["cpu_ratio"]["median"]) - 1.0) * 100.0;
        let _ = writeln!(
            out,
            "- End to end at 10k entries, matched traffic, mark-based policyroute's overhead \
             over the baseline at most 5%: {over:.1}% fewer packets/s, {cpu:.1}% more router \
             CPU per packet — {}.",
            met(over <= 5.0)
        );
        if let Some(r) = e2e_row(e, "rules-only", MATCHED, 10_000) {
            let rules = (1.0 - f(&r["ratio"]["median"])) * 100.0;
            let _ = writeln!(
                out,
                "  Of that, the fwmark ip rules alone (no classifier, nothing marked) cost \
                 {rules:.1}% in the same run."
            );
        }
    }
    let (all, cmp) = versus_nftables(e);
    let _ = writeln!(
        out,
        "- End to end, mark-based policyroute's overhead below the nftables map's at every \
         size, on matched traffic (every packet looked up and marked by both; policyroute vs \
         nftables): {} — {}.",
        cmp.join("; "),
        met(all)
    );
    out
}

fn targets(classify: Option<&Value>, e2e: Option<&Value>, control: Option<&Value>) -> String {
    let mut out = String::new();
    if let Some(c) = classify {
        let r = f(&c["worst_ratio"]);
        let _ = writeln!(
            out,
            "- Classifier, 100k rules at most 1.5× one rule: worst case {r:.2}× — {} \
             (by {:.0}%).",
            met(r <= 1.5),
            (r / 1.5 - 1.0).max(0.0) * 100.0
        );
    }
    if let Some(e) = e2e {
        out.push_str(&e2e_targets(e));
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
                0.15,
                "one-rule change to an applied 100k policy under 150 ms",
            ),
            (
                "SIGHUP to run, one rule changed",
                100_000,
                0.15,
                "SIGHUP to `run` with one rule of 100k changed under 150 ms",
            ),
        ] {
            let Some(row) = control_row(c, op, rules) else {
                continue;
            };
            let med = f(&row["wall_s"]["median"]);
            let text = if med.is_nan() {
                "not finished within the cap — **missed**".to_string()
            } else {
                format!(
                    "{} — {} ({:.2}× the target)",
                    duration(med),
                    met(med <= target),
                    med / target
                )
            };
            let _ = writeln!(out, "- {label}: {text}.");
        }
    }
    out
}

const E2E_VARIANTS: [(&str, &str); 9] = [
    ("baseline", "baseline (no policy)"),
    ("rules-only", "fwmark rules only"),
    ("policyroute", "policyroute"),
    ("fast-path", "policyroute fast path"),
    ("iptables", "iptables MARK"),
    ("nftables", "nftables map"),
    ("iprule", "ip rule selectors"),
    ("redirect", "tc redirect only"),
    ("hook", "empty tc program"),
];

/// Writes `e2e-MIX.dat` (one block per variant measured: entries, kpps, CPU ns and ratio
/// spreads) into `dir`; returns its path and the titles of its blocks in order.
fn e2e_data(e: &Value, mix: &str, dir: &std::path::Path) -> (PathBuf, Vec<&'static str>) {
    let mut data = String::new();
    let mut present = Vec::new();
    for (key, title) in E2E_VARIANTS {
        let rows: Vec<&Value> = e["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["variant"] == key && r["skipped"].is_null())
            .filter(|r| of_mix(r, mix))
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
    let path = dir.join(format!("e2e-{mix}.dat"));
    fs::write(&path, data).unwrap();
    (path, present)
}

/// gnuplot `plot` arguments: columns `cols` of every block of `data`.
fn e2e_series(data: &std::path::Path, titles: &[&str], cols: &str) -> String {
    titles
        .iter()
        .enumerate()
        .map(|(i, title)| {
            format!(
                "'{}' index {i} using {cols} with yerrorlines title '{title}'",
                data.display()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Three panels: packets/s over the baseline for matched and for unmatched traffic (with
/// issue 12's goal for the fast path as a dashed line), and router CPU per packet on
/// matched traffic.
fn e2e_plot(e: &Value, dir: &std::path::Path) -> String {
    let mut script = String::new();
    for (mix, goal) in [(MATCHED, GOAL_MATCHED), (UNMATCHED, GOAL_UNMATCHED)] {
        let (data, titles) = e2e_data(e, mix, dir);
        let _ = write!(
            script,
            "set title 'End to end, {mix} traffic: packets/s forwarded over the baseline (same mix and repetition)'\n\
             set xlabel 'policy entries'\nset ylabel 'pps / baseline (median, min-max)'\nunset logscale y\n\
             set yrange [0:*]\nset key left bottom\n\
             plot {}, {goal} with lines dt 2 lc rgb 'black' title 'fast path goal ({goal}×)'\n",
            e2e_series(&data, &titles, "1:8:9:10")
        );
    }
    let (data, titles) = e2e_data(e, MATCHED, dir);
    let _ = write!(
        script,
        "set title 'End to end, matched traffic: router CPU per forwarded packet'\nset ylabel 'ns/packet'\n\
         set logscale y\nset yrange [*:*]\nset key left top\nplot {}\n",
        e2e_series(&data, &titles, "1:5:6:7")
    );
    script
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
        "set terminal pngcairo size 1600,1600 font 'sans,11'\nset output '{}'\n\
         set multiplot layout 3,2 title 'policyroute benchmarks'\nset key left top\n\
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
    // 2, 3 and 4. End to end.
    match e2e {
        Some(e) => script.push_str(&e2e_plot(e, &dir)),
        None => script.push_str("set multiplot next\nset multiplot next\nset multiplot next\n"),
    }
    // 5. Control plane.
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
    let e2e_sets = read_json("e2e-sets.json");
    let env = [&classify, &e2e, &control]
        .into_iter()
        .flatten()
        .map(|v| v["environment"].clone())
        .next()
        .unwrap_or_else(results::environment);
    let results = results::results_dir();
    let png = results.join("bench.png");
    let plotted = plot(classify.as_ref(), e2e.as_ref(), control.as_ref(), &png);
    if !plotted {
        // A bench.png left from an earlier run may not match these results: not shown.
        eprintln!("report: gnuplot failed or is missing; no plot");
    }
    let part = |name: &str| fs::read_to_string(results.join(name)).unwrap_or_default();
    let parts: Vec<String> = ["classify.md", "e2e.md", "e2e-sets.md", "control.md"]
        .into_iter()
        .map(part)
        .collect();
    let notes = fs::read_to_string(workspace().join("bench/NOTES.md")).unwrap_or_default();
    let loadavgs: Vec<String> = [&classify, &e2e, &control]
        .into_iter()
        .flatten()
        .map(|v| {
            v["environment"]["loadavg"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    let report = full_report(
        &env,
        &loadavgs,
        plotted,
        &targets(classify.as_ref(), e2e.as_ref(), control.as_ref()),
        &parts,
        &notes,
    );
    results::write_result("report.md", &report);
    let mut section = readme_section(
        &env,
        plotted,
        classify.as_ref(),
        e2e.as_ref(),
        control.as_ref(),
    );
    if let Some(rows) = e2e_sets.as_ref().map(sets_readme_rows) {
        // At the end of the headline table.
        let table = section.find("| measured |");
        if let Some(end) = table.and_then(|t| section[t..].find("\n\n").map(|e| t + e + 1)) {
            section.insert_str(end, &rows);
        }
    }
    if !results_are_the_repos(&results) {
        results::write_result("readme-section.md", &section);
        eprintln!(
            "report: results in {}, not bench/results/: README.md left as it is",
            results.display()
        );
        return;
    }
    let readme = workspace().join("README.md");
    let text = fs::read_to_string(&readme).expect("README.md");
    fs::write(&readme, replace_section(&text, &section)).expect("write README.md");
    eprintln!("report: README.md's Benchmarks section updated");
}

/// The README's section links to `bench/results/`: results kept anywhere else (a trial
/// run's `$POLICYROUTE_BENCH_DIR`) must not replace it.
fn results_are_the_repos(results: &std::path::Path) -> bool {
    let repos = workspace().join("bench/results");
    match (results.canonicalize(), repos.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `date on N cores (CPU), kernel K, iptables, nft`: what every number depends on.
/// When the parts were not all run on one day (one benchmark re-run alone), each part's.
fn part_dates(classify: Option<&Value>, e2e: Option<&Value>, control: Option<&Value>) -> String {
    let parts = [
        ("classifier", classify),
        ("end to end", e2e),
        ("control plane", control),
    ];
    let dated: Vec<(&str, &str)> = parts
        .iter()
        .filter_map(|(name, v)| Some((*name, (*v)?["environment"]["date"].as_str()?)))
        .collect();
    if dated.windows(2).all(|w| w[0].1 == w[1].1) {
        return String::new();
    }
    let list: Vec<String> = dated.iter().map(|(n, d)| format!("{n} {d}")).collect();
    format!(" (parts run on: {})", list.join(", "))
}

fn machine(env: &Value) -> String {
    format!(
        "{} on {} cores ({}), kernel {}, `{}`, `{}`",
        env["date"].as_str().unwrap_or("?"),
        env["cores"],
        env["cpu"].as_str().unwrap_or("?"),
        env["kernel"].as_str().unwrap_or("?"),
        env["iptables"]
            .as_str()
            .unwrap_or("iptables: not installed"),
        env["nft"].as_str().unwrap_or("nft: not installed"),
    )
}

/// `bench/results/report.md`: everything the run measured, the method, and the notes.
fn full_report(
    env: &Value,
    loadavgs: &[String],
    plot: bool,
    targets: &str,
    parts: &[String],
    notes: &str,
) -> String {
    let mut s = String::from("# policyroute benchmarks\n\n");
    s.push_str(
        "`cargo xtask bench` (never part of `cargo xtask test`) runs everything below on this \
         machine in one go (about 15 minutes here) and rewrites this report and README.md's \
         Benchmarks section; `cargo xtask bench classify | e2e | control` runs one part, \
         `cargo xtask bench report` rewrites both from the results already here. The parts \
         this report is assembled from (markdown, JSON, the perf reports) are beside it in \
         `bench/results/`. Everything runs in throwaway network namespaces (`prt-<pid>-...`); \
         nothing touches the root namespace.\n\n",
    );
    let _ = writeln!(
        s,
        "Latest run: {}; load average when the classifier, end-to-end and control-plane parts \
         started (the machine is shared; the later parts also see the earlier ones'): {}.\n",
        machine(env),
        loadavgs.join(" / "),
    );
    if plot {
        s.push_str("![benchmark plot](bench.png)\n\n");
    }
    s.push_str("## Targets\n\n");
    s.push_str(targets);
    s.push('\n');
    s.push_str(METHOD);
    for text in parts.iter().map(String::as_str).chain([notes]) {
        if !text.trim().is_empty() {
            s.push('\n');
            s.push_str(promote(text).trim_end());
            s.push('\n');
        }
    }
    s
}

/// The parts and the notes are written as `###` sections; under the report's `#` title they
/// become `##` sections.
fn promote(text: &str) -> String {
    let mut fenced = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        let line = match line.strip_prefix('#') {
            Some(rest) if !fenced && line.starts_with("###") => rest,
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A duration as the targets state them: ms below a second.
fn duration(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// The README table's end-to-end rows: every variant at 10k entries on matched traffic,
/// the fast path on unmatched traffic, each with the target it is judged by.
/// The prefix-list benchmark's headline rows: at each list size, policyroute (mark-based and
/// fast path) against nftables' interval set and ipset's hash:net, matched traffic.
fn sets_readme_rows(e: &Value) -> String {
    let mut s = String::new();
    for n in e2e_sizes(e) {
        let ratio = |key| e2e_row(e, key, MATCHED, n).map(|r| f(&r["ratio"]["median"]));
        let (Some(pr), Some(fast), Some(nft), Some(ipset)) = (
            ratio("policyroute"),
            ratio("fast-path"),
            ratio("nftables"),
            ratio("iptables"),
        ) else {
            continue;
        };
        let _ = writeln!(
            s,
            "| forwarding through a {}-prefix list (mixed lengths), matched traffic, × the \
             baseline | policyroute {pr:.3}, fast path {fast:.3}; nftables interval set \
             {nft:.3}, ipset hash:net {ipset:.3} | at least nftables and ipset: {} |",
            thousands(n),
            met(pr >= nft && pr >= ipset)
        );
    }
    s
}

fn e2e_readme_rows(e: &Value) -> String {
    let n = 10_000;
    let mut s = String::new();
    let overhead = |r: &Value| (1.0 - f(&r["ratio"]["median"])) * 100.0;
    let goal = |mix, min| {
        format!(
            "at least {min}× the baseline at 1, 1k, 10k and 100k entries: {}",
            met(fast_path_goal(e, mix, min).0)
        )
    };
    for (key, mix, title) in [
        ("baseline", MATCHED, "no policy (baseline)"),
        ("policyroute", MATCHED, "policyroute"),
        ("fast-path", MATCHED, "policyroute fast path"),
        ("iptables", MATCHED, "iptables MARK"),
        ("nftables", MATCHED, "nftables map"),
        (
            "redirect",
            MATCHED,
            "a tc program that only redirects, nothing decided (the ceiling of a tc fast path)",
        ),
        ("baseline", UNMATCHED, "no policy (baseline)"),
        ("fast-path", UNMATCHED, "policyroute fast path"),
        (
            "hook",
            UNMATCHED,
            "the empty tc program attached (what the hook alone costs)",
        ),
    ] {
        let Some(r) = e2e_row(e, key, mix, n) else {
            continue;
        };
        let result = if key == "baseline" {
            format!("{:.0} kpps", f(&r["kpps"]["median"]))
        } else if matches!(key, "redirect" | "hook") {
            format!(
                "{:.0} kpps, {:.3}× the baseline; router CPU per packet {:.3}× the baseline's",
                f(&r["kpps"]["median"]),
                f(&r["ratio"]["median"]),
                f(&r["cpu_ratio"]["median"])
            )
        } else {
            format!(
                "{:.0} kpps, {:.3}× the baseline",
                f(&r["kpps"]["median"]),
                f(&r["ratio"]["median"])
            )
        };
        let target = match (key, mix) {
            ("policyroute", _) => format!(
                "at most 5% fewer packets/s than the baseline: {}",
                met(overhead(r) <= 5.0)
            ),
            ("fast-path", MATCHED) => goal(MATCHED, GOAL_MATCHED),
            ("fast-path", _) => goal(UNMATCHED, GOAL_UNMATCHED),
            ("nftables", _) => format!(
                "policyroute's overhead below this at every size: {}",
                met(versus_nftables(e).0)
            ),
            ("hook", _) => format!(
                "the fast path's unmatched goal ({GOAL_UNMATCHED}×) against the hook alone: {}",
                if f(&r["ratio"]["median"]) >= GOAL_UNMATCHED {
                    "within reach"
                } else {
                    "**the hook alone is below it in this run**"
                }
            ),
            // 1.3x the packets/s needs at most 1/1.3 of the baseline's CPU per packet.
            ("redirect", _) => format!(
                "1.3× needs at most {:.2}× the baseline's CPU per packet: {}",
                1.0 / GOAL_MATCHED,
                if f(&r["cpu_ratio"]["median"]) <= 1.0 / GOAL_MATCHED {
                    "within reach"
                } else {
                    "**out of reach for any tc program here**"
                }
            ),
            _ => "–".to_string(),
        };
        let _ = writeln!(
            s,
            "| forwarding at {} entries, {mix} traffic: {title} | {result} | {target} |",
            thousands(n)
        );
    }
    s
}

/// README rows for issue 15's and issue 14's classifier targets: the worst hit at 100,000
/// set prefixes per family (ratio to one rule, same rounds), and what idle trace costs in
/// the kernel's test-run loop (the worst with-minus-without median).
fn classify_extra_rows(c: &Value) -> String {
    let mut s = String::new();
    let none = Vec::new();
    let sets = c["sets"].as_array().unwrap_or(&none);
    let worst = sets
        .iter()
        .filter(|r| {
            let list = r["prefixes"].as_str().unwrap_or_default();
            list.ends_with(" 100000") && r["case"] == "hit"
        })
        .max_by(|a, b| f(&a["vs_one_rule"]).total_cmp(&f(&b["vs_one_rule"])));
    if let Some(w) = worst {
        let ratio = f(&w["vs_one_rule"]);
        let _ = writeln!(
            s,
            "| classifier, a set of 100,000 prefixes per family (disjoint, or lengths drawn \
             freely), worst hit ({} {} {}) | {:.0} ns, {ratio:.2}× one rule in the same rounds | \
             at most 2×: {} |",
            w["prefixes"].as_str().unwrap_or("?"),
            w["family"].as_str().unwrap_or("?"),
            w["rule"].as_str().unwrap_or("?"),
            f(&w["ns"]["median"]),
            met(ratio <= 2.0),
        );
    }
    let trace = c["trace"].as_array().unwrap_or(&none);
    let looped: Vec<&Value> = trace
        .iter()
        .filter(|r| r["packets"] == "one packet, 1,000 runs per call")
        .collect();
    let worst = |key: &str, abs: bool| {
        looped
            .iter()
            .map(|r| f(&r[key]["median"]))
            .map(|v| if abs { v.abs() } else { v })
            .reduce(f64::max)
    };
    if let (Some(cost), Some(same)) = (
        worst("difference_ns", false),
        worst("same_code_difference_ns", true),
    ) {
        // Two loads of identical code differ too: a difference within 2 ns plus that
        // scatter cannot be told from 2 ns in this run.
        let verdict = if cost <= 2.0 {
            "met".to_string()
        } else if cost <= 2.0 + same {
            "not resolved in this run".to_string()
        } else {
            met(false).to_string()
        };
        let _ = writeln!(
            s,
            "| what `trace` costs while none runs, 1 rule, kernel test-run loop (worst of 4 \
             cases) | {cost:+.1} ns (two loads of identical code: up to {same:.1} ns apart) \
             | within 2 ns: {verdict} |",
        );
    }
    s
}

/// README.md's `## Benchmarks`: the run's machine, the headline numbers against the targets,
/// the plot, and a pointer to the full report. Built from the same JSON as the report, so
/// the two cannot disagree.
fn readme_section(
    env: &Value,
    plot: bool,
    classify: Option<&Value>,
    e2e: Option<&Value>,
    control: Option<&Value>,
) -> String {
    let mut s = String::from("## Benchmarks\n\n");
    let _ = writeln!(
        s,
        "Latest run: {}{}.\n",
        machine(env),
        part_dates(classify, e2e, control)
    );
    s.push_str("| measured | result | target |\n|---|---|---|\n");
    if let Some(c) = classify {
        let rows = c["rows"].as_array().map(Vec::as_slice).unwrap_or_default();
        let most = rows.iter().filter_map(|r| r["rules"].as_u64()).max();
        // The row the target is judged by: the largest policy's worst ratio to one rule.
        let worst = rows
            .iter()
            .filter(|r| r["rules"].as_u64() == most)
            .max_by(|a, b| f(&a["vs_one_rule"]).total_cmp(&f(&b["vs_one_rule"])));
        if let (Some(w), Some(most)) = (worst, most) {
            let one = rows.iter().find(|r| {
                r["rules"].as_u64() == Some(1)
                    && r["family"] == w["family"]
                    && r["case"] == w["case"]
            });
            let ratio = f(&w["vs_one_rule"]);
            let target = f(&c["target_ratio"]);
            let _ = writeln!(
                s,
                "| classifier, ns/packet, 1 rule → {} rules per family (worst case: {} {}) \
                 | {:.0} → {:.0} ({ratio:.2}×) | at most {target}×: {} |",
                thousands(most),
                w["family"].as_str().unwrap_or("?"),
                w["case"].as_str().unwrap_or("?"),
                one.map_or(f64::NAN, |r| f(&r["ns"]["median"])),
                f(&w["ns"]["median"]),
                met(ratio <= target),
            );
        }
    }
    if let Some(c) = classify {
        s.push_str(&classify_extra_rows(c));
    }
    if let Some(e) = e2e {
        s.push_str(&e2e_readme_rows(e));
    }
    if let Some(c) = control {
        for (op, rules, title, target, stated) in [
            (
                "apply (clean namespace)",
                100_000,
                "`apply` of 100,000 rules",
                2.0,
                "under 2 s",
            ),
            (
                "re-apply, one rule changed",
                100_000,
                "`apply` changing one rule of 100,000",
                0.15,
                "under 150 ms",
            ),
            (
                "SIGHUP to run, one rule changed",
                100_000,
                "SIGHUP to `run` changing one rule of 100,000",
                0.15,
                "under 150 ms",
            ),
            (
                "apply a country list (clean namespace)",
                87_000,
                "`apply` of a 50,000 + 37,000 prefix list",
                2.0,
                "under 2 s",
            ),
            (
                "re-apply, one list prefix changed",
                87_000,
                "`apply` changing one prefix of that list",
                0.15,
                "under 150 ms",
            ),
        ] {
            let Some(row) = control_row(c, op, rules) else {
                continue;
            };
            let med = f(&row["wall_s"]["median"]);
            let result = if med.is_nan() {
                "not finished within the cap".to_string()
            } else {
                duration(med)
            };
            let _ = writeln!(
                s,
                "| {title} | {result} | {stated}: {} |",
                met(med <= target)
            );
        }
    }
    s.push('\n');
    if let Some(e) = e2e {
        if let (Some(p), Some(r)) = (
            e2e_row(e, "policyroute", MATCHED, 10_000),
            e2e_row(e, "rules-only", MATCHED, 10_000),
        ) {
            let _ = writeln!(
                s,
                "Of mark-based policyroute's {:.1}% forwarding overhead (matched traffic), the \
                 fwmark ip rules alone (nothing marked) cost {:.1}% in the same run.\n",
                (1.0 - f(&p["ratio"]["median"])) * 100.0,
                (1.0 - f(&r["ratio"]["median"])) * 100.0,
            );
        }
    }
    if plot {
        s.push_str("![benchmark plot](bench/results/bench.png)\n\n");
    }
    s.push_str(
        "The method, every table, the perf profiles and the analysis of the misses are in \
         [bench/results/report.md](bench/results/report.md). `cargo xtask bench` reruns \
         everything (as root, about 15 minutes here; never part of `cargo xtask test`) and \
         rewrites that report and this section; `cargo xtask bench report` rewrites both from \
         the results already there.\n",
    );
    s
}
const METHOD: &str = "## Method\n\n\
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
  (what policy routing costs before classification); policyroute (the real CLI, marking for \
  the fwmark rules); policyroute with `fast_path = true` (the same policy; its tc program \
  forwards matched packets itself with `bpf_fib_lookup` in table 102 and \
  `bpf_redirect_neigh`, and installs no ip rules); iptables mangle PREROUTING `-j MARK` rules \
  (`iptables-restore`); an nftables `meta mark set ip daddr . udp dport map @m` map \
  (`nft -f`); `ip rule ... to X ipproto udp dport P lookup 102` selectors (`ip -batch`); \
  and a tc program that sends every packet to uplink 2's next hop with `bpf_redirect_neigh` \
  and decides nothing (no parsing, no lookup; `bench/ebpf/src/redirect.rs`, both mixes \
  go to uplink 2): the least any tc-ingress fast path does per packet, so its router CPU per \
  packet bounds what the fast path can reach on this machine; and the empty tc program \
  attached at lan0 ingress (every packet goes on to the kernel, as the baseline): what the \
  hook alone costs, the ceiling for unmatched traffic. A \
  load that takes longer than the cap (150 s) is stopped and that size skipped (and larger \
  ones). Each setup is loaded once and measured on two traffic mixes of 1,024 different \
  60-byte frames each, reported apart: **matched**, every frame hits an entry (spread evenly \
  over the policy), and **unmatched**, no frame does (512 to an entry's address on a port no \
  entry has, 512 to addresses no entry has). First each variant gets every frame of each mix \
  once, paced, and the upstreams' `Ip: InReceives` counters must show all 1,024 matched \
  frames via uplink 2 for the policy variants (via uplink 1 for the baseline and the \
  rules-only variant) and all 1,024 unmatched frames via uplink 1. Then the sender, an \
  AF_PACKET socket (`sendmmsg`, qdisc bypass) pinned to CPU 0, sends one mix as fast as it \
  can for 1.5 s; receive packet steering hands everything the router receives on lan0 to CPU \
  1, where the router's forwarding and the upstream's receive run, so the router CPU is the \
  bottleneck. packets/s = packets the upstreams received / sending time; router CPU per \
  packet = CPU 1's busy time (`/proc/stat`, all but idle/iowait/steal) / packets received. \
  Seven repetitions, interleaved (per repetition and mix: A B C D E F G, then the next mix); \
  each variant's ratio to the baseline is taken on the same mix within the same repetition, \
  then min/median/max.\n\
- **Control plane**: the release CLI as an operator runs it (`ip netns exec NS policyroute \
  apply -c FILE --json`) in a namespace with the policy's devices; wall time and the \
  process's peak RSS (`wait4` `ru_maxrss`). A one-rule change alternates between two files \
  that differ in one rule's port. `perf record -e cpu-clock --call-graph dwarf` profiles \
  `apply` at 100,000 rules (10,000 when that is slow; this VM has no hardware counters), and \
  `perf record -C 1` the router CPU during end-to-end runs at 10,000 entries (matched \
  traffic).\n";

/// The control-plane benchmark's row of `operation` at `rules` rules, if it ran.
fn control_row<'a>(control: &'a Value, operation: &str, rules: u64) -> Option<&'a Value> {
    control["rows"]
        .as_array()?
        .iter()
        .find(|r| r["operation"] == operation && r["rules"] == rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_benchmarks_section_is_replaced_wherever_it_is() {
        let section = "## Benchmarks\n\nnew\n";
        let middle = "# t\n\n## A\n\na\n\n## Benchmarks\n\nold\n### sub\n\nold\n\n## Z\n\nz\n";
        assert_eq!(
            replace_section(middle, section),
            "# t\n\n## A\n\na\n\n## Benchmarks\n\nnew\n\n## Z\n\nz\n"
        );
        let last = "# t\n\n## A\n\na\n\n## Benchmarks\n\nold\n";
        assert_eq!(
            replace_section(last, section),
            "# t\n\n## A\n\na\n\n## Benchmarks\n\nnew\n"
        );
        let none = "# t\n\n## A\n\na\n";
        assert_eq!(
            replace_section(none, section),
            "# t\n\n## A\n\na\n\n## Benchmarks\n\nnew\n"
        );
    }

    #[test]
    fn only_headings_outside_code_are_promoted() {
        assert_eq!(
            promote("### A\n\ntext\n```\n### not a heading\n```\n#### B\n"),
            "## A\n\ntext\n```\n### not a heading\n```\n### B\n"
        );
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(1), "1");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    fn spread(median: f64) -> Value {
        json!({"min": median, "median": median, "max": median})
    }

    #[test]
    fn the_short_table_reads_the_headline_rows() {
        let env = json!({"date": "2026-01-02", "cores": 2, "cpu": "CPU", "kernel": "6.6",
            "iptables": "iptables v1", "nft": "nftables v1"});
        let row = |rules: u64, family: &str, case: &str, ns: f64, vs: f64| json!({"rules": rules, "family": family, "case": case, "ns": spread(ns), "vs_one_rule": vs});
        let classify = json!({"target_ratio": 1.5, "rows": [
            row(1, "IPv4", "hit", 100.0, 1.0),
            row(1, "IPv6", "miss", 90.0, 1.0),
            row(100_000, "IPv4", "hit", 130.0, 1.3),
            row(100_000, "IPv6", "miss", 126.0, 1.4),
        ]});
        let e2e_row = |variant: &str, mix: &str, kpps: f64, ratio: f64| json!({"variant": variant, "mix": mix, "entries": 10_000, "kpps": spread(kpps), "ratio": spread(ratio)});
        let e2e = json!({"rows": [
            e2e_row("baseline", "matched", 700.0, 1.0),
            e2e_row("rules-only", "matched", 560.0, 0.8),
            e2e_row("policyroute", "matched", 679.0, 0.97),
            e2e_row("fast-path", "matched", 980.0, 1.4),
            e2e_row("iptables", "matched", 7.0, 0.01),
            e2e_row("nftables", "matched", 600.0, 0.86),
            e2e_row("baseline", "unmatched", 710.0, 1.0),
            e2e_row("fast-path", "unmatched", 700.0, 0.986),
        ]});
        let control = json!({"rows": [
            {"operation": "apply (clean namespace)", "rules": 100_000, "wall_s": spread(2.5)},
            {"operation": "re-apply, one rule changed", "rules": 100_000, "wall_s": spread(0.04)},
        ]});
        let s = readme_section(&env, true, Some(&classify), Some(&e2e), Some(&control));
        assert!(
            s.starts_with("## Benchmarks\n\nLatest run: 2026-01-02 on 2 cores (CPU), kernel 6.6")
        );
        assert!(s.contains("worst case: IPv6 miss) | 90 → 126 (1.40×) | at most 1.5×: met |"));
        assert!(s.contains("| forwarding at 10,000 entries, matched traffic: no policy (baseline) | 700 kpps | – |"));
        assert!(s.contains("matched traffic: policyroute | 679 kpps, 0.970× the baseline | at most 5% fewer packets/s than the baseline: met |"));
        assert!(s.contains("matched traffic: nftables map | 600 kpps, 0.860× the baseline | policyroute's overhead below this at every size: met |"));
        assert!(s.contains("| `apply` of 100,000 rules | 2.50 s | under 2 s: **missed** |"));
        assert!(s.contains("| `apply` changing one rule of 100,000 | 40 ms | under 150 ms: met |"));
        assert!(s.contains("policyroute's 3.0% forwarding overhead (matched traffic), the fwmark ip rules alone (nothing marked) cost 20.0%"));
        // Only 10k measured: the goals at every size are missed.
        assert!(s.contains("matched traffic: policyroute fast path | 980 kpps, 1.400× the baseline | at least 1.3× the baseline at 1, 1k, 10k and 100k entries: **missed** |"));
        assert!(s.contains("unmatched traffic: policyroute fast path | 700 kpps, 0.986× the baseline | at least 0.97× the baseline at 1, 1k, 10k and 100k entries: **missed** |"));
        assert!(s.contains("![benchmark plot](bench/results/bench.png)"));
        assert!(s.contains("(bench/results/report.md)"));
        assert!(!s.contains("\n## ",), "one section: {s}");
    }

    #[test]
    fn the_fast_path_goals_are_judged_per_mix_at_every_size() {
        let row = |mix: &str, entries: u64, ratio: f64| json!({"variant": "fast-path", "mix": mix, "entries": entries, "ratio": spread(ratio)});
        let mut rows: Vec<Value> = GOAL_SIZES.iter().map(|&n| row(MATCHED, n, 1.35)).collect();
        rows.extend(GOAL_SIZES.iter().map(|&n| row(UNMATCHED, n, 0.98)));
        let e2e = json!({ "rows": rows });
        assert_eq!(
            fast_path_goal(&e2e, MATCHED, GOAL_MATCHED),
            (
                true,
                vec![
                    "1: 1.350×".into(),
                    "1k: 1.350×".into(),
                    "10k: 1.350×".into(),
                    "100k: 1.350×".into()
                ]
            )
        );
        assert!(fast_path_goal(&e2e, UNMATCHED, GOAL_UNMATCHED).0);
        // One size below the goal, or not measured, misses it.
        let mut low = e2e.clone();
        low["rows"][GOAL_SIZES.len() + 2]["ratio"] = spread(0.96);
        assert!(!fast_path_goal(&low, UNMATCHED, GOAL_UNMATCHED).0);
        let mut gone = e2e.clone();
        gone["rows"].as_array_mut().unwrap().remove(3);
        let (ok, per_size) = fast_path_goal(&gone, MATCHED, GOAL_MATCHED);
        assert!(!ok);
        assert_eq!(per_size[3], "100k: not measured");
    }

    #[test]
    fn rows_without_a_mix_stand_for_the_matched_mix() {
        let e2e = json!({"rows": [{"variant": "nftables", "entries": 1, "ratio": spread(0.9)}]});
        assert!(e2e_row(&e2e, "nftables", MATCHED, 1).is_some());
        assert!(e2e_row(&e2e, "nftables", UNMATCHED, 1).is_none());
    }
}
