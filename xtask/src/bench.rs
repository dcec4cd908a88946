//! `cargo xtask bench ...`: benchmarks run as release binaries of the tests crate.
use clap::Subcommand;

use crate::cmd::cargo;

#[derive(Subcommand, Clone, Copy)]
pub enum Which {
    /// Classifier cost per packet by BPF_PROG_TEST_RUN at 1, 1k and 100k rules.
    Classify,
}

pub fn run(which: Which) -> anyhow::Result<()> {
    let bin = match which {
        Which::Classify => "bench-classify",
    };
    cargo(&[
        "run",
        "--release",
        "--quiet",
        "-p",
        "policyroute-tests",
        "--bin",
        bin,
    ])
}
