//! `cargo xtask test --kernel debian-6.1`: the kernel tests on Debian 12's own kernel, in a
//! VM (virtme-ng, qemu with TCG: KVM fails on these machines) that sees the host's root
//! filesystem, so the test binaries built here run there unchanged.
//!
//! The kernel package is fetched by name from the Debian archive (the newest
//! `linux-image-6.1.0-N-amd64-unsigned`), unpacked under `~/.cache/policyroute/kernels`
//! (the guest gets fresh, empty overlays over /var, /tmp, /etc, /usr, ..., so nothing it
//! needs may live there), and its modules copied to the host's `/lib/modules/<version>`,
//! where the guest loads them from: that only adds a directory for a kernel the host does
//! not run. The guest writes its output and exit status to a directory passed with
//! `--rwdir` (vng returns 255 whatever the command did).
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::{
    cmd::{self, output, root},
    setup,
    test_binaries::{self, Results, TestBinary},
};

/// The test files run on the old kernel, in this order, each with the
/// tests of it to run (empty: all). Only what differs on an older kernel: the verifier
/// accepting every program in its largest configuration, classic tc attach and its
/// refusals, the socket hooks, the fast path's helpers and the test-run explain uses, with
/// real packets once per seed scenario (apply, re-apply and flush through classic tc are
/// attach_mode's); what the host lane proves is not run again here,
/// where TCG makes every program load and process start many times slower.
pub const TESTS: &[(&str, &[&str])] = &[
    ("verifier_budget", &[]),
    ("attach_mode", &[]),
    ("forwarding", &[]),
    ("local", &[]),
    (
        "sticky",
        &[
            "replies_leave_through_the_gateway_the_connection_came_in",
            "with_the_fast_path_sticky_replies_are_forwarded_by_the_dataplane",
        ],
    ),
    ("explain", &["explain_agrees_with_real_packets"]),
];
/// Set in the guest: tests that repeat what the host lane already proves (many random
/// flows, say) run a handful there (the same name as `policyroute_tests::fixture::EMULATED_ENV`:
/// xtask builds before the tests crate can).
const EMULATED_ENV: &str = "POLICYROUTE_TEST_EMULATED";
/// Generous: TCG runs the tests several times slower than the host.
const GUEST_TIMEOUT: Duration = Duration::from_secs(45 * 60);

pub fn run(kernel: &str) -> anyhow::Result<Results> {
    if kernel != "debian-6.1" {
        bail!("unknown kernel {kernel:?} (known: debian-6.1)");
    }
    setup::vm_tools()?;
    let started = Instant::now();
    let image = debian_kernel()?;
    let lane = root().join("target/vm-lane");
    let _ = fs::remove_dir_all(&lane);
    fs::create_dir_all(lane.join("bin"))?;
    let binaries = copy_binaries(&build()?, &lane.join("bin"))?;
    fs::write(lane.join("guest.sh"), guest_script(&binaries, &lane))?;
    boot(&image, &lane)?;
    let results = report(&lane, &binaries)?;
    let rc = fs::read_to_string(lane.join("rc")).unwrap_or_default();
    println!(
        "xtask: the {kernel} lane took {} s (guest exit status {})",
        started.elapsed().as_secs(),
        rc.trim()
    );
    if rc.trim() != "0" {
        bail!(
            "the tests in the {kernel} VM failed (logs in {})",
            lane.display()
        );
    }
    Ok(results)
}

/// A kernel unpacked from its Debian package.
struct Image {
    vmlinuz: PathBuf,
}

/// The newest Debian 12 generic kernel (the `cloud` flavour has no 9p, so the guest could
/// not mount the host's root), unpacked once, its modules where the guest finds them.
fn debian_kernel() -> anyhow::Result<Image> {
    let package = newest_package()?;
    let version = package
        .trim_start_matches("linux-image-")
        .trim_end_matches("-unsigned")
        .to_string();
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let dir = Path::new(&home)
        .join(".cache/policyroute/kernels")
        .join(&package);
    let vmlinuz = dir.join(format!("boot/vmlinuz-{version}"));
    if !vmlinuz.exists() {
        eprintln!("xtask: fetching {package}");
        // The package name has dots: `with_extension` would cut it.
        let download = dir.with_file_name(format!("{package}.download"));
        let _ = fs::remove_dir_all(&download);
        fs::create_dir_all(&download)?;
        cmd::run(
            Command::new("apt-get")
                .args(["download", &package])
                .current_dir(&download),
        )?;
        let deb = fs::read_dir(&download)?
            .filter_map(|e| Some(e.ok()?.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        let unpacked = dir.with_file_name(format!("{package}.unpacking"));
        let _ = fs::remove_dir_all(&unpacked);
        cmd::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&unpacked, &dir)?;
        fs::remove_dir_all(&download)?;
    }
    install_modules(&dir, &version)?;
    Ok(Image { vmlinuz })
}

/// `linux-image-6.1.0-N-amd64-unsigned` with the largest N the archive has.
fn newest_package() -> anyhow::Result<String> {
    let search = |update: bool| {
        if update {
            let _ = Command::new("apt-get").args(["update", "-q"]).status();
        }
        output(Command::new("apt-cache").args([
            "search",
            "--names-only",
            r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
        ]))
        .unwrap_or_default()
    };
    let newest = |list: String| {
        list.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|p| {
                let n = p.strip_prefix("linux-image-6.1.0-")?.split('-').next()?;
                Some((n.parse::<u32>().ok()?, p.to_string()))
            })
            .max()
            .map(|(_, p)| p)
    };
    newest(search(false))
        .or_else(|| newest(search(true)))
        .context("apt-cache finds no linux-image-6.1.0-*-amd64-unsigned (is this Debian 12?)")
}

/// The guest loads modules from the host's tree (`modprobe veth`, `sch_clsact`, ...).
fn install_modules(dir: &Path, version: &str) -> anyhow::Result<()> {
    let target = Path::new("/lib/modules").join(version);
    if target.join("modules.dep").exists() {
        return Ok(());
    }
    fs::create_dir_all("/lib/modules")?;
    let source = dir.join("lib/modules").join(version);
    cmd::run(
        Command::new("cp")
            .arg("-a")
            .arg(&source)
            .arg("/lib/modules/"),
    )?;
    cmd::run(Command::new("depmod").arg(version))
}

/// Builds the CLI, the probe and the chosen test files; returns the test executables.
fn build() -> anyhow::Result<Vec<TestBinary>> {
    cmd::cargo(&["build", "-p", "policyroute", "--bin", "policyroute"])?;
    cmd::cargo(&["build", "-p", "policyroute-tests", "--bin", "probe"])?;
    let mut args = vec!["-p", "policyroute-tests"];
    for (t, _) in TESTS {
        args.extend(["--test", t]);
    }
    let mut found = test_binaries::build(&args)?;
    if found.len() != TESTS.len() {
        bail!(
            "building the VM lane's tests gave {} of {}",
            found.len(),
            TESTS.len()
        );
    }
    found.sort_by_key(|b| TESTS.iter().position(|(t, _)| *t == b.name));
    Ok(found)
}

/// The guest runs copies: a build on the host while it runs (the guest reads the host's
/// files as they are now) would swap the binaries under it. The layout is cargo's (tests
/// in `deps/`), where the tests look for the `probe` binary.
fn copy_binaries(built: &[TestBinary], bin: &Path) -> anyhow::Result<Vec<TestBinary>> {
    let target = root().join("target/debug");
    for name in ["policyroute", "probe"] {
        fs::copy(target.join(name), bin.join(name))?;
    }
    fs::create_dir_all(bin.join("deps"))?;
    let mut copies = Vec::new();
    for b in built {
        let path = bin.join("deps").join(&b.name);
        fs::copy(&b.path, &path)?;
        copies.push(TestBinary { path, ..b.clone() });
    }
    Ok(copies)
}

/// What the guest runs: each test file (two threads: the VM has two CPUs);
/// their output and status go to `lane`.
fn guest_script(binaries: &[TestBinary], lane: &Path) -> String {
    let target = lane.join("bin");
    let mut s = format!(
        "#!/bin/sh\n\
         # Written by cargo xtask test --kernel: runs inside the VM.\n\
         lane={lane}\n\
         uname -r > $lane/uname\n\
         export POLICYROUTE_BIN={bin}\n\
         export {emulated}=1\n\
         # libtest prints each test's time with -Z unstable-options --report-time.\n\
         export RUSTC_BOOTSTRAP=1\n\
         mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf\n\
         rc=0\n\
         run() {{ name=$1; shift; start=$(date +%s); \"$@\" > $lane/$name.log 2>&1; r=$?; \
         echo \"$name $r $(( $(date +%s) - start ))\" >> $lane/summary; \
         [ $r -eq 0 ] || rc=1; }}\n",
        lane = lane.display(),
        bin = target.join("policyroute").display(),
        emulated = EMULATED_ENV,
    );
    let tests = root().join("tests");
    for b in binaries {
        let filters = TESTS
            .iter()
            .find(|(t, _)| *t == b.name)
            .map_or(&[][..], |(_, f)| *f);
        s += &format!(
            "cd {} && run {} {} --test-threads=2 {} {}\n",
            tests.display(),
            b.name,
            b.path.display(),
            test_binaries::REPORT_TIME.join(" "),
            filters.join(" ")
        );
    }
    s += "echo $rc > $lane/rc\n";
    s
}

/// Boots the kernel with the host's root filesystem and runs the guest script.
fn boot(image: &Image, lane: &Path) -> anyhow::Result<()> {
    let script = lane.join("guest.sh");
    let console = fs::File::create(lane.join("console.log"))?;
    eprintln!(
        "xtask: booting {} under TCG (console: {})",
        image.vmlinuz.display(),
        lane.join("console.log").display()
    );
    let mut child = Command::new("vng")
        .arg("--run")
        .arg(&image.vmlinuz)
        .args([
            "--memory",
            "3G",
            "--cpus",
            "2",
            "--disable-kvm",
            "--verbose",
        ])
        .arg("--rwdir")
        .arg(lane)
        .arg("--exec")
        .arg(format!("sh {}", script.display()))
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .current_dir(root())
        .spawn()
        .context("starting vng (virtme-ng)")?;
    let deadline = Instant::now() + GUEST_TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the VM ran longer than {GUEST_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

/// Prints each test file's output and adds up its results and test times.
fn report(lane: &Path, binaries: &[TestBinary]) -> anyhow::Result<Results> {
    let mut results = Results::default();
    for name in binaries.iter().map(|b| b.name.as_str()) {
        let log = fs::read_to_string(lane.join(format!("{name}.log"))).unwrap_or_default();
        println!("==== {name} (in the VM)\n{log}");
        results.read("debian-6.1", name, &log);
    }
    let summary = fs::read_to_string(lane.join("summary")).unwrap_or_default();
    println!("==== in the VM: file, exit status, seconds\n{summary}");
    for line in summary.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(file), Some(status)) = (fields.next(), fields.next()) {
            if status != "0" {
                results.failed_files.push(format!("debian-6.1: {file}"));
            }
        }
    }
    Ok(results)
}
