//! `cargo xtask test`: formatting, lints, the whole test suite, then a short fuzz run of
//! the policy reader and of explain's arguments. The kernel tests load eBPF programs and create network namespaces,
//! so this must run as root.
use std::{fs, path::Path, process::Command};

use anyhow::bail;

use crate::cmd::{self, cargo, output, root};

/// Prefix of the network namespaces the tests create (`prt-<pid>-...`).
const NETNS_PREFIX: &str = "prt-";
/// Each fuzz target with its seconds: long enough to catch a regression a corpus input
/// now triggers and to mutate around it a little (30 s in all); the real search is the
/// long run fuzz/README.md describes. explain's arguments are a smaller input space.
const FUZZ_TARGETS: [(&str, u32); 2] = [("policy", 20), ("explain", 10)];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if output(Command::new("id").arg("-u"))
        .as_deref()
        .map(str::trim)
        != Some("0")
    {
        bail!("the kernel tests load eBPF programs and create network namespaces: run as root");
    }
    remove_stale_namespaces();
    // Written again by tests/tests/verifier_budget.rs: no older run's table is shown.
    let _ = fs::remove_file(budget_table());
    cargo(&["fmt", "--all", "--", "--check"])?;
    let ebpf_sources = root().join("policyroute-ebpf/src");
    let fuzz_sources = root().join("fuzz/fuzz_targets");
    cmd::run(
        Command::new("rustfmt")
            .args(["--check", "--edition", "2021"])
            .args(rust_files(&ebpf_sources)?)
            .args(rust_files(&fuzz_sources)?),
    )?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // Integration tests run the CLI as operators do (`ip netns exec NS policyroute ...`).
    cargo(&["build", "--package", "policyroute", "--bin", "policyroute"])?;
    let bin = root().join("target/debug/policyroute");
    // The package test unpacks it.
    let deb = crate::dist::build()?;
    let (mut passed, mut failed) = counted(
        Command::new(env!("CARGO"))
            .args(["test", "--workspace", "--"])
            .args(args)
            .env("POLICYROUTE_BIN", &bin)
            .env("POLICYROUTE_DEB", deb)
            .current_dir(root()),
    )?;
    let (p, f) = classic_tc_pass(&bin, args)?;
    (passed, failed) = (passed + p, failed + f);
    let (p, f) = crate::vm::run("debian-6.1")?;
    (passed, failed) = (passed + p, failed + f);
    for (target, seconds) in FUZZ_TARGETS {
        fuzz(target, seconds)?;
    }
    if let Ok(table) = fs::read_to_string(budget_table()) {
        println!("{table}");
    }
    // The summary CI reads last: the fuzzer's log would otherwise end the output.
    println!("xtask: {passed} passed, {failed} failed");
    Ok(())
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

fn classic_tc_pass(bin: &Path, args: &[String]) -> anyhow::Result<(u64, u64)> {
    println!("xtask: the kernel tests again with [attach] mode = \"tc\"");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["test", "-p", "policyroute-tests"]);
    for t in CLASSIC_TC_TESTS {
        cmd.args(["--test", t]);
    }
    counted(
        cmd.arg("--")
            .args(args)
            .env("POLICYROUTE_BIN", bin)
            .env("POLICYROUTE_TEST_ATTACH_MODE", "tc")
            .current_dir(root()),
    )
}

/// Runs `cargo test`, its output passed through as it comes, and adds up its
/// `test result:` lines; a failed run is an error.
fn counted(cmd: &mut Command) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let (mut passed, mut failed) = (0, 0);
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if line.starts_with("test result:") {
            let (p, f) = result_counts(&line);
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok((passed, failed))
}

/// (passed, failed) of one `test result:` line.
pub fn result_counts(line: &str) -> (u64, u64) {
    let count = |word: &str| {
        line.split("; ")
            .find_map(|part| {
                part.trim_start_matches("test result: ok. ")
                    .trim_start_matches("test result: FAILED. ")
                    .strip_suffix(word)
            })
            .and_then(|n| n.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (count(" passed"), count(" failed"))
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
    // build (the same list policyroute/build.rs clears for the eBPF build).
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        run.env_remove(var);
    }
    let result = cmd::run(&mut run);
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn rust_files(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(files)
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
