//! Idempotent installation of the build and test prerequisites.
//!
//! - nightly's rust-src (the eBPF crate is built with `-Z build-std=core`);
//! - bpf-linker 0.13 built against the LLVM that nightly rustc ships, found through a
//!   directory of symlinks outside `target/` so `cargo clean` cannot break the linker;
//! - cargo-fuzz, for the fuzz smoke run in `cargo xtask test` (`cargo +nightly fuzz`);
//! - cargo-deb, for the Debian package of `cargo xtask dist` (tested by `cargo xtask test`);
//! - Debian packages the tests use as independent witnesses.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::cmd::{output, run};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Pinned so a new release cannot change how the fuzz target is built or run under CI.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Builds the .deb of `cargo xtask dist` (and of the package test in `cargo xtask test`).
const CARGO_DEB_VERSION: &str = "3.8.0";
/// Debian packages (binary, package) the tests call as independent witnesses, or need.
/// (systemd-analyze checks the shipped unit file; nft makes upstream faults and health-check
/// peers that stop answering.)
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    // The import tests build each recipe with real iptables rules first.
    ("iptables", "iptables"),
    ("nft", "nftables"),
    ("setpriv", "util-linux"),
    ("systemd-analyze", "systemd"),
    // The manual page tests render the pages as `man` does, with groff's warnings on.
    ("man", "man-db"),
    ("groff", "groff-base"),
    // The package test installs the .deb into a throwaway root whose /bin/sh it is
    // (dpkg runs the maintainer scripts chrooted there).
    ("busybox", "busybox-static"),
];
/// What only the benchmarks need: the classic tools policyroute is compared with, GRO on
/// veth, plots, profiles. Installed by `cargo xtask bench`, not by every command.
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("ethtool", "ethtool"),
    ("gnuplot", "gnuplot-nox"),
    // The prefix-list benchmark's iptables peer: `-m set` with a hash:net set.
    ("ipset", "ipset"),
    ("perf", "linux-perf"),
];

pub fn ensure() -> anyhow::Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_subcommand("fuzz", "cargo-fuzz", CARGO_FUZZ_VERSION)?;
    cargo_subcommand("deb", "cargo-deb", CARGO_DEB_VERSION)?;
    debian_packages(PACKAGES)?;
    print_toolchain();
    Ok(())
}

/// What the eBPF programs are built with: another compiler inlines, spills and passes
/// values differently, so a build failure is read against these (README.md names the
/// versions verified).
fn print_toolchain() {
    let first_line = |cmd: &mut Command| {
        output(cmd)
            .and_then(|o| o.lines().next().map(str::to_string))
            .unwrap_or_else(|| "not found".into())
    };
    // `-vV`: the version line first, the LLVM version among the rest.
    let nightly = output(Command::new("rustc").args(["+nightly", "-vV"])).unwrap_or_default();
    let llvm = nightly
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .unwrap_or("unknown");
    eprintln!(
        "xtask: eBPF toolchain: {} (LLVM {llvm}), {}; host: {}",
        nightly.lines().next().unwrap_or("nightly rustc not found"),
        first_line(Command::new("bpf-linker").arg("--version")),
        first_line(Command::new("rustc").arg("--version")),
    );
}

/// What the VM lane (`cargo xtask test --kernel`) boots its kernel with: qemu, depmod for
/// the kernel's modules, busybox for virtme-ng's initramfs, and virtme-ng from PyPI.
const VM_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("depmod", "kmod"),
    ("busybox", "busybox-static"),
];
const VIRTME_NG_VERSION: &str = "1.42";

pub fn vm_tools() -> anyhow::Result<()> {
    debian_packages(VM_PACKAGES)?;
    if output(Command::new("vng").arg("--version")).is_some() {
        return Ok(());
    }
    eprintln!("xtask: installing virtme-ng {VIRTME_NG_VERSION}");
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "-q"])
            .args(extra)
            .arg(format!("virtme-ng=={VIRTME_NG_VERSION}"))
            .status()
            .is_ok_and(|s| s.success())
    };
    // Debian's own python3 refuses pip installs outside a virtualenv (PEP 668).
    if !pip(&[]) && !pip(&["--break-system-packages"]) {
        bail!("pip could not install virtme-ng");
    }
    if output(Command::new("vng").arg("--version")).is_none() {
        bail!("virtme-ng was installed but `vng` does not run; is pip's bin directory on PATH?");
    }
    Ok(())
}

pub fn bench_packages() -> anyhow::Result<()> {
    debian_packages(BENCH_PACKAGES)
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    // Add rust-src to the nightly the machine has rather than updating it: a newer nightly
    // can ship a newer LLVM, which means rebuilding bpf-linker for it (and a nightly the
    // pinned aya-ebpf was not tried with).
    if output(Command::new("rustc").args(["+nightly", "--version"])).is_some() {
        eprintln!("xtask: adding rust-src to the installed nightly toolchain");
        return run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]));
    }
    eprintln!("xtask: installing nightly toolchain with rust-src");
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

/// Nightly's sysroot and the file name of the LLVM shared library inside its lib/.
fn nightly_llvm() -> anyhow::Result<(PathBuf, String, String)> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly --print sysroot")?;
    let sysroot = PathBuf::from(sysroot.trim());
    let verbose = output(Command::new("rustc").args(["+nightly", "-vV"])).context("rustc -vV")?;
    let major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc reports no LLVM version")?
        .to_string();
    let lib = fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM.so."))
        .context("nightly ships no libLLVM.so.*")?;
    Ok((sysroot, major, lib))
}

fn bpf_linker() -> anyhow::Result<()> {
    let (sysroot, major, lib) = nightly_llvm()?;
    let stamp = format!("bpf-linker {BPF_LINKER_VERSION} llvm {lib}");
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home)
        .join(".cache/policyroute")
        .join(lib.trim_start_matches("libLLVM.so."));
    let stamp_file = prefix.join("bpf-linker.stamp");
    let works = output(Command::new("bpf-linker").arg("--version")).is_some();
    if works && fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major}");
    let libdir = prefix.join("lib");
    fs::create_dir_all(&libdir)?;
    let target = sysroot.join("lib").join(&lib);
    for name in ["libLLVM.so", lib.as_str()] {
        let link = libdir.join(name);
        let _ = fs::remove_file(&link);
        symlink(&target, &link).with_context(|| format!("symlink {}", link.display()))?;
    }
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--locked", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))?;
    if output(Command::new("bpf-linker").arg("--version")).is_none() {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    fs::write(&stamp_file, stamp)?;
    Ok(())
}

/// cargo-fuzz and cargo-deb are plain binaries (cargo-fuzz drives whichever toolchain runs
/// it), so `--version` tells whether the pinned version is there.
fn cargo_subcommand(subcommand: &str, krate: &str, version: &str) -> anyhow::Result<()> {
    let want = format!("{krate} {version}");
    let have = || output(Command::new("cargo").args([subcommand, "--version"])).unwrap_or_default();
    if have().trim() == want {
        return Ok(());
    }
    eprintln!("xtask: installing {want}");
    run(Command::new("cargo")
        .args(["install", krate, "--version", version])
        .args(["--locked", "--force"]))?;
    let now = have();
    if now.trim() != want {
        bail!(
            "installed {want} but `cargo {subcommand} --version` says {now:?}; is ~/.cargo/bin \
             on PATH?"
        );
    }
    Ok(())
}

fn debian_packages(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(bin, _)| output(Command::new("which").arg(bin)).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages {missing:?}");
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
