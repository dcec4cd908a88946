//! What the build scripts of `policyroute` (the product's programs, `policyroute-ebpf`)
//! and `policyroute-bench` (the benchmarks' own, `bench/ebpf`) share: build an eBPF crate
//! (nightly, `-Z build-std=core`, bpfel-unknown-none) and copy the named objects into
//! OUT_DIR, where the calling crate embeds them. `cargo xtask setup` installs what this
//! needs (nightly rust-src, bpf-linker).
//!
//! Why not aya-build: the version that goes with the pinned aya 0.14 set (aya-build 0.2.0;
//! 0.2.1 needs rustc 1.98) runs `cargo build --package ...` in the *calling* workspace,
//! with no manifest path and no `--locked`. That needs the eBPF crate as a member and a
//! build-dependency of this stable workspace: its nightly-only, `no_std` binaries would
//! then be built for the host by `cargo clippy --workspace --all-targets`, and its
//! dependencies would be resolved by this workspace's lockfile instead of its own (which
//! pins aya-ebpf 0.2.1). Here each eBPF crate stays a workspace of its own, built with its
//! own lockfile.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const TARGET: &str = "bpfel-unknown-none";

/// Builds the eBPF crate at `ebpf_dir` (relative to the workspace root) and copies
/// `objects` (its binaries) into OUT_DIR. Call it from a build script.
pub fn build_and_copy(ebpf_dir: &str, objects: &[&str]) {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap();
    let ebpf_dir = root.join(ebpf_dir);
    for watched in ["src", "Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            ebpf_dir.join(watched).display()
        );
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("policyroute-common/src").display()
    );
    // One target directory for every eBPF crate: they build `core` the same way, once.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("ebpf");
    build(&ebpf_dir, &target_dir);
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    for name in objects {
        let built = target_dir.join(TARGET).join("release").join(name);
        std::fs::copy(&built, out_dir.join(name))
            .unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
    }
}

/// Keeps the outer (stable) cargo's settings out of a nightly cargo it starts.
pub fn clear_stable_settings(cmd: &mut Command) {
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
        cmd.env_remove(var);
    }
}

fn build(ebpf_dir: &Path, target_dir: &Path) {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--locked", "--release"])
        .args(["-Z", "build-std=core", "--target", TARGET, "--target-dir"])
        .arg(target_dir)
        .current_dir(ebpf_dir)
        // Lines a build script prints on stdout are cargo directives; keep the child off it.
        .stdout(std::io::stderr());
    clear_stable_settings(&mut cmd);
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run rustup ({e}); run `cargo xtask setup` to install the eBPF toolchain")
    });
    assert!(
        status.success(),
        "building {} failed ({status}).\n\
         - `cargo xtask setup` installs nightly rust-src and bpf-linker, built against the LLVM \
         that nightly ships, and prints the versions it builds with; compare them with the \
         ones README.md names as verified.\n\
         - \"stack arguments are not supported\" or \"too many arguments\": an out-of-line \
         eBPF function takes more than 5 arguments, counting the hidden return pointer of a \
         non-scalar result (see the rules in policyroute-ebpf/src/main.rs).\n\
         - \"cannot find tool bpf-linker\" or a missing libLLVM: run `cargo xtask setup` again \
         (it rebuilds bpf-linker when nightly's LLVM changed).",
        ebpf_dir.display()
    );
}
