//! Running the `probe` binary (a socket of this host, in a cgroup, in a namespace).
use std::process::{Child, Command, Stdio};

use crate::{
    cgroup::Cgroup,
    netns::NetNs,
    topology::{Arrival, Topology},
};

/// The probe binary next to the test executable's `deps/` directory.
pub fn bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("probe");
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p policyroute-tests --bins",
        bin.display()
    );
    bin
}

pub fn spawn(cg: &Cgroup, ns: &NetNs, args: &[&str]) -> Child {
    Command::new(bin())
        .arg(cg.dir_arg())
        .arg(&ns.name)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn probe")
}

/// Runs a probe to completion; returns its stdout (the marks of its sockets).
pub fn run(cg: &Cgroup, ns: &NetNs, args: &[&str]) -> String {
    let out = spawn(cg, ns, args).wait_with_output().expect("probe");
    assert!(out.status.success(), "probe {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP connection from a probe in `cg` and `ns` to `dst:port`, answered in `t`: where it
/// arrived, and the probe's output (the marks of its socket).
pub fn tcp(
    t: &Topology,
    cg: &Cgroup,
    ns: &NetNs,
    dst: &str,
    port: u16,
) -> (Option<Arrival>, String) {
    let port_s = port.to_string();
    t.expect_tcp(dst, port, || spawn(cg, ns, &["tcp", dst, &port_s]))
}

/// `count` unconnected UDP datagrams from a probe in `cg` and `ns` to `dst:port`: where
/// they arrived in `t`.
pub fn udp(
    t: &Topology,
    cg: &Cgroup,
    ns: &NetNs,
    dst: &str,
    port: u16,
    count: usize,
) -> Vec<Arrival> {
    let (port_s, count_s) = (port.to_string(), count.to_string());
    t.expect_udp(dst, port, count, || {
        run(cg, ns, &["udp", dst, &port_s, &count_s]);
    })
}
