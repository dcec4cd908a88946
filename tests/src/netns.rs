//! Throwaway network namespaces. Kernel tests run in a namespace of their own so nothing
//! they do can reach the host's root namespace; the namespace is deleted on drop, also
//! when the test panics.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// Prefix of every namespace the tests create: `prt-<pid>-<n>`.
pub const PREFIX: &str = "prt";

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates `prt-<pid>-<n>[-tag]` with `ip netns add` and brings its loopback up.
    pub fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}-{}-{n}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.exec("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace and panics if it fails.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `ip ARGS` inside the namespace, the arguments split at white space.
    pub fn ip(&self, args: &str) -> String {
        self.exec("ip", &args.split_whitespace().collect::<Vec<_>>())
    }

    /// Moves the calling thread into the namespace until the guard drops.
    pub fn enter(&self) -> Entered<'_> {
        let home = File::open("/proc/thread-self/ns/net").expect("open own netns");
        let target = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        setns(&target);
        Entered { _ns: self, home }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The calling thread is inside a [`NetNs`]; dropping it returns the thread home.
pub struct Entered<'a> {
    _ns: &'a NetNs,
    home: File,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        setns(&self.home);
    }
}

fn setns(f: &File) {
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Runs a command and returns its stdout; panics with its stderr on failure.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
