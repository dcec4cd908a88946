//! Project automation: `cargo xtask setup | build | test | bench | demo`.
//!
//! Every command first runs `setup`, which installs (idempotently) what building and
//! testing need on a fresh machine: nightly rust-src, bpf-linker built against nightly's
//! LLVM, cargo-fuzz, and the Debian packages the tests use.
mod bench;
mod cmd;
mod dist;
mod layering;
mod setup;
mod test;
mod test_binaries;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "policyroute build, test and benchmark automation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the eBPF toolchain and test dependencies (idempotent).
    Setup,
    /// Build the release binary target/release/policyroute (eBPF object embedded).
    Build,
    /// Check formatting and lints, run every test (needs root for the kernel tests), the
    /// kernel tests once more with classic tc attach, the Debian 6.1 VM lane, then fuzz
    /// the policy reader and explain's arguments for 30 s; ends with the 10 slowest tests
    /// and the time of each lane.
    Test {
        /// Only the kernel tests in a VM booting this kernel (`debian-6.1`: Debian 12's).
        #[arg(long)]
        kernel: Option<String>,
        /// What a developer runs between commits: checks, unit tests and one kernel test
        /// per feature on this kernel (no classic tc pass, VM lane, package or fuzzing).
        #[arg(long, conflicts_with = "kernel")]
        quick: bool,
        /// Extra arguments passed to `cargo test` (a test name filter, for example).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Benchmarks (never part of the test suite); without a subcommand, all of them.
    Bench {
        #[command(subcommand)]
        which: Option<bench::Which>,
    },
    /// Build, run a throwaway multi-uplink topology and show where each flow went.
    Demo,
    /// Build the Debian package target/debian/policyroute.deb (binary, systemd unit and
    /// maintainer scripts, completions, manual pages, example policy).
    Dist,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    setup::ensure()?;
    match cli.command {
        Command::Setup => Ok(()),
        Command::Build => cmd::cargo(&["build", "--release", "--package", "policyroute"]),
        Command::Test {
            kernel: Some(kernel),
            ..
        } => {
            let results = vm::run(&kernel)?;
            println!(
                "xtask: {} passed, {} failed",
                results.passed, results.failed
            );
            Ok(())
        }
        Command::Test {
            kernel: None,
            quick,
            args,
        } => test::run(&args, quick),
        Command::Bench { which } => bench::run(which),
        Command::Demo => bench::demo(),
        Command::Dist => dist::build().map(|_| ()),
    }
}
