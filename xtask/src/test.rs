//! `cargo xtask test`: formatting, lints, the whole test suite, then a short fuzz run of
//! the policy reader and of explain's arguments. The kernel tests load eBPF programs and
//! create network namespaces, so this must run as root.
use std::{
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::{
    cmd::{self, cargo, output, root},
    test_binaries::{self, Results},
};

/// Prefix of the network namespaces the tests create (`prt-<pid>-...`).
const NETNS_PREFIX: &str = "prt-";
/// Each fuzz target with its seconds: long enough to catch a regression a corpus input
/// now triggers and to mutate around it a little (30 s in all); the real search is the
/// long run fuzz/README.md describes. explain's arguments are a smaller input space.
const FUZZ_TARGETS: [(&str, u32); 2] = [("policy", 20), ("explain", 10)];

pub fn run(args: &[String], quick: bool) -> anyhow::Result<()> {
    if output(Command::new("id").arg("-u"))
        .as_deref()
        .map(str::trim)
        != Some("0")
    {
        bail!("the kernel tests load eBPF programs and create network namespaces: run as root");
    }
    let started = Instant::now();
    let mut lanes: Vec<(&str, Duration)> = Vec::new();
    remove_stale_namespaces();
    // Written again by tests/tests/verifier_budget.rs: no older run's table is shown.
    let _ = fs::remove_file(budget_table());
    let lane = Instant::now();
    checks()?;
    // Integration tests run the CLI as operators do (`ip netns exec NS policyroute ...`).
    cargo(&["build", "--package", "policyroute", "--bin", "policyroute"])?;
    let bin = root().join("target/debug/policyroute");
    // The package test unpacks it.
    let deb = if quick {
        None
    } else {
        Some(crate::dist::build()?)
    };
    let mut binaries = test_binaries::build(&["--workspace"])?;
    if quick {
        binaries.retain(|b| b.kind != "test" || QUICK.iter().any(|(f, _)| *f == b.name));
    }
    lanes.push(("checks and build", lane.elapsed()));

    let lane = Instant::now();
    let mut env: Vec<(&str, &Path)> = vec![("POLICYROUTE_BIN", &bin)];
    if let Some(deb) = &deb {
        env.push(("POLICYROUTE_DEB", deb));
    }
    let mut results = Results::default();
    for b in &binaries {
        let mut filters = args.to_vec();
        if quick {
            filters.extend(quick_filters(&b.name));
        }
        results.add(test_binaries::run(
            "host",
            std::slice::from_ref(b),
            &filters,
            &env,
        )?);
    }
    results.add(doc_tests(args)?);
    lanes.push(("host", lane.elapsed()));

    if !quick {
        let lane = Instant::now();
        println!("xtask: the kernel tests again with [attach] mode = \"tc\"");
        let classic: Vec<_> = binaries
            .into_iter()
            .filter(|b| b.kind == "test" && CLASSIC_TC_TESTS.contains(&b.name.as_str()))
            .collect();
        env.push(("POLICYROUTE_TEST_ATTACH_MODE", Path::new("tc")));
        results.add(test_binaries::run("classic tc", &classic, args, &env)?);
        lanes.push(("classic tc", lane.elapsed()));

        // One after the other: the guest's TCG threads take both cores, so beside the
        // fuzzer's build both lanes ran slower (6.1: 689 s against 636 s alone).
        let lane = Instant::now();
        results.add(crate::vm::run("debian-6.1")?);
        lanes.push(("debian-6.1", lane.elapsed()));

        let lane = Instant::now();
        for (target, seconds) in FUZZ_TARGETS {
            fuzz(target, seconds)?;
        }
        lanes.push(("fuzz", lane.elapsed()));
    }

    if let Ok(table) = fs::read_to_string(budget_table()) {
        println!("{table}");
    }
    println!("xtask: the 10 slowest tests:");
    for line in results.slowest(10) {
        println!("{line}");
    }
    println!("xtask: time per lane:");
    for (name, took) in &lanes {
        println!("{:>8} s  {name}", took.as_secs());
    }
    println!("{:>8} s  in all", started.elapsed().as_secs());
    for file in &results.failed_files {
        println!("xtask: failed: {file}");
    }
    // The summary CI reads last: the fuzzer's log would otherwise end the output.
    println!(
        "xtask: {} passed, {} failed",
        results.passed, results.failed
    );
    if !results.failed_files.is_empty() {
        bail!("{} test files failed", results.failed_files.len());
    }
    Ok(())
}

/// Formatting (the workspace, the eBPF crates and the fuzz targets), lints and the layering.
fn checks() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    let mut outside = Vec::new();
    for dir in [
        "policyroute-ebpf/src",
        "bench/ebpf/src",
        "fuzz/fuzz_targets",
    ] {
        outside.extend(crate::layering::rust_files(&root().join(dir))?);
    }
    cmd::run(
        Command::new("rustfmt")
            .args(["--check", "--edition", "2021"])
            .args(outside),
    )?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    crate::layering::check(&root())
}

/// The documentation examples (rustdoc runs them; the harness above cannot).
fn doc_tests(args: &[String]) -> anyhow::Result<Results> {
    let out = Command::new(env!("CARGO"))
        .args(["test", "--workspace", "--doc", "--"])
        .args(args)
        .current_dir(root())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    let mut results = Results::default();
    results.read("doc", "doc-tests", &text);
    if !out.status.success() {
        results.failed_files.push("doc: doc-tests".into());
    }
    Ok(results)
}

/// Where tests/tests/verifier_budget.rs leaves its table (its `CARGO_TARGET_TMPDIR`).
fn budget_table() -> std::path::PathBuf {
    root().join("target/tmp/verifier-budget.txt")
}

/// Kernel test files run again with every policy forcing `[attach] mode = "tc"`: the
/// suite above attaches through tcx (this kernel has it), so both paths are covered.
const CLASSIC_TC_TESTS: &[&str] = &[
    "forwarding",
    "local",
    "sticky",
    "lifecycle",
    "reapply",
    "explain",
    "daemon",
];

/// `--quick`: the unit tests, and of the kernel test files, one test per feature (a name
/// filter; empty: the whole file).
const QUICK: &[(&str, &str)] = &[
    ("differential", "kernel_agrees_with_reference_model"),
    ("classifier", ""),
    ("verifier_budget", ""),
    ("netlink", ""),
    ("forwarding", ""),
    (
        "lifecycle",
        "apply_is_idempotent_and_flush_removes_everything",
    ),
    ("reapply", ""),
    ("attach_mode", "switching_modes_moves_the_hook"),
    ("local", ""),
    (
        "sticky",
        "replies_leave_through_the_gateway_the_connection_came_in",
    ),
    (
        "explain",
        "impossible_questions_are_refused_with_exit_status_2",
    ),
    (
        "failover",
        "a_failed_gateway_falls_back_to_main_and_comes_back",
    ),
    ("health", "icmp_follows_the_peer_dropping_pings"),
    (
        "fast_path",
        "matched_flows_are_forwarded_with_ttl_minus_one_and_no_ip_rules",
    ),
    ("sets", "a_list_routes_its_destinations_and_follows_edits"),
    (
        "trace",
        "trace_names_rule_gateway_and_tuple_of_real_packets",
    ),
    ("import", "seed_001_office_web_via_provider_2"),
    ("daemon", "link_flaps_are_repaired_within_two_seconds"),
    (
        "shared_lan",
        "only_smtp_reaches_the_second_router_on_a_shared_lan",
    ),
    ("ip_devices", "a_vpn_tunnel_with_the_fast_path"),
    (
        "foreign_state",
        "apply_refuses_foreign_state_by_name_and_adopt_takes_it_over",
    ),
    (
        "topology_faults",
        "blackhole_silences_an_upstream_until_restored",
    ),
];

/// The `--quick` name filter of a test file (none for unit tests and whole files).
fn quick_filters(file: &str) -> Vec<String> {
    QUICK
        .iter()
        .filter(|(f, filter)| *f == file && !filter.is_empty())
        .map(|(_, filter)| filter.to_string())
        .collect()
}

/// Fuzzes `target` for `seconds`; a crash, timeout or failed assertion fails the run,
/// leaving its input in fuzz/artifacts/TARGET/ (ignored by git).
///
/// libFuzzer writes new inputs only to the first corpus directory, so that one is a
/// scratch directory and the corpus, seeds and regression inputs kept in the repository
/// are only read: the run leaves the tree as it found it.
fn fuzz(target: &str, seconds: u32) -> anyhow::Result<()> {
    let fuzz = root().join("fuzz");
    let scratch =
        std::env::temp_dir().join(format!("policyroute-fuzz-{target}-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    // git keeps no empty directory, and libFuzzer refuses a missing one.
    let kept = ["corpus", "seeds", "regressions"]
        .map(|dir| fuzz.join(dir).join(target))
        .into_iter()
        .filter(|dir| dir.is_dir());
    let mut run = Command::new("cargo");
    run.args(["+nightly", "fuzz", "run", target])
        .arg(&scratch)
        .args(kept)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // Each input takes microseconds; seconds mean a hang.
        .arg("-timeout=10")
        .arg(format!(
            "-dict={}",
            fuzz.join(format!("{target}.dict")).display()
        ))
        .current_dir(root());
    // `cargo xtask` runs under stable cargo, whose settings must not reach the nightly
    // build (the same ones the eBPF build clears).
    policyroute_ebpf_build::clear_stable_settings(&mut run);
    let result = cmd::run(&mut run);
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// Namespaces left by a test run that was killed before its guards could clean up.
fn remove_stale_namespaces() {
    let list = output(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            eprintln!("xtask: removing stale test namespace {name}");
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
