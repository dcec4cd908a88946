//! `cargo xtask bench ...` and `cargo xtask demo`: release binaries of the bench crate (demo: of the tests crate)
//! (xtask itself must build before the eBPF toolchain exists, so it links none of it).
//!
//! `cargo xtask bench` runs every benchmark, then the report, which draws
//! `bench/results/bench.png`, writes the full report `bench/results/report.md` and rewrites
//! README.md's short Benchmarks section (headline numbers, the plot, a link to the report).
//! Benchmarks are never part of `cargo xtask test`.
use clap::Subcommand;

use std::process::Command;

use anyhow::bail;

use crate::cmd::{self, cargo, output, root};

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Classifier ns/packet by BPF_PROG_TEST_RUN at 1, 1k, 10k and 100k rules.
    Classify,
    /// UDP forwarding through the router, matched and unmatched traffic: policyroute
    /// (mark-based and fast path) vs iptables, nftables, ip rule, and the ceilings of any
    /// tc program (redirect only; the empty program).
    E2e,
    /// UDP forwarding through a 10k and a 50k mixed-length prefix list: policyroute sets
    /// (mark-based and fast path) vs nftables interval sets and ipset hash:net.
    E2eSets,
    /// Wall time and peak memory of apply (1k, 100k, one rule changed) and flush.
    Control,
    /// Plot, bench/results/report.md and README's Benchmarks section from the results
    /// already in bench/results/ (runs no benchmark).
    Report,
}

impl Which {
    fn bin(self) -> &'static str {
        match self {
            Which::Classify => "bench-classify",
            Which::E2e | Which::E2eSets => "bench-e2e",
            Which::Control => "bench-control",
            Which::Report => "bench-report",
        }
    }
}

/// Runs one benchmark, or (`None`) all of them and then the report.
pub fn run(which: Option<Which>) -> anyhow::Result<()> {
    let all = [
        Which::Classify,
        Which::E2e,
        Which::E2eSets,
        Which::Control,
        Which::Report,
    ];
    let list: Vec<Which> = match which {
        Some(w) => vec![w],
        None => all.to_vec(),
    };
    if list.iter().any(|w| *w != Which::Report)
        && output(Command::new("id").arg("-u"))
            .as_deref()
            .map(str::trim)
            != Some("0")
    {
        bail!("the benchmarks load eBPF programs and create network namespaces: run as root");
    }
    crate::setup::bench_packages()?;
    // The CLI the benchmarks run, as operators do.
    cargo(&["build", "--release", "--package", "policyroute"])?;
    cargo(&[
        "build",
        "--release",
        "--package",
        "policyroute-bench",
        "--bins",
    ])?;
    for w in list {
        eprintln!("xtask: bench {}", w.bin());
        cmd::run(
            release_run("policyroute-bench", w.bin())
                .env("POLICYROUTE_BENCH_DIR", root().join("bench/results"))
                .env(
                    "POLICYROUTE_BENCH_SCENARIO",
                    if w == Which::E2eSets { "sets" } else { "" },
                ),
        )?;
    }
    Ok(())
}

/// Builds the release CLI and runs the demo against it.
pub fn demo() -> anyhow::Result<()> {
    cargo(&["build", "--release", "--package", "policyroute"])?;
    cmd::run(&mut release_run("policyroute-tests", "demo"))
}

/// `cargo run --release` of a package's binary against the release CLI.
fn release_run(package: &str, bin: &str) -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.args(["run", "--release", "--quiet", "-p", package, "--bin", bin])
        .env("POLICYROUTE_BIN", root().join("target/release/policyroute"))
        .current_dir(root());
    c
}
