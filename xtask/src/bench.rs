//! `cargo xtask bench ...` and `cargo xtask demo`: release binaries of the tests crate
//! (xtask itself must build before the eBPF toolchain exists, so it links none of it).
use clap::Subcommand;

use std::process::Command;

use crate::cmd::{self, cargo, root};

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

/// Builds the release CLI and runs the demo against it.
pub fn demo() -> anyhow::Result<()> {
    cargo(&["build", "--release", "--package", "policyroute"])?;
    cmd::run(
        Command::new(env!("CARGO"))
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "policyroute-tests",
                "--bin",
                "demo",
            ])
            .env("POLICYROUTE_BIN", root().join("target/release/policyroute"))
            .current_dir(root()),
    )
}
