//! `cargo xtask test`: formatting, lints, then the whole test suite. The kernel tests load
//! eBPF programs and create network namespaces, so this must run as root.
use std::{path::Path, process::Command};

use anyhow::bail;

use crate::cmd::{self, cargo, output, root};

/// Prefix of the network namespaces the tests create (`prt-<pid>-...`).
const NETNS_PREFIX: &str = "prt-";

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if output(Command::new("id").arg("-u"))
        .as_deref()
        .map(str::trim)
        != Some("0")
    {
        bail!("the kernel tests load eBPF programs and create network namespaces: run as root");
    }
    remove_stale_namespaces();
    cargo(&["fmt", "--all", "--", "--check"])?;
    let ebpf_sources = root().join("policyroute-ebpf/src");
    cmd::run(
        Command::new("rustfmt")
            .args(["--check", "--edition", "2021"])
            .args(rust_files(&ebpf_sources)?),
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
    cmd::run(
        Command::new(env!("CARGO"))
            .args(["test", "--workspace", "--"])
            .args(args)
            .env("POLICYROUTE_BIN", bin)
            .current_dir(root()),
    )
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
