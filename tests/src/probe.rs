//! Running the `probe` binary (a socket of this host, in a cgroup, in a namespace).
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::Duration,
};

use socket2::{Domain, Socket, Type};

use crate::{
    cgroup::Cgroup,
    netns::NetNs,
    topology::{Arrival, Receivers, Topology},
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
    t: &impl Receivers,
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
    t: &impl Receivers,
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

/// How one of [`tcp_spread`]'s connections ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connect {
    /// Established, and accepted there.
    Arrived(Arrival),
    /// Answered with a reset.
    Refused,
    /// No answer in time.
    Lost,
    /// connect() failed with EPERM: a socket hook refused it (keyed 0, 1, ... in
    /// [`tcp_spread`]'s map, as it never had a port).
    Denied,
}

/// `count` TCP connections at once from a probe in `cg` and `ns` (the router's own
/// traffic, when `ns` is the router), each from its own ephemeral port, to `dst:port`,
/// each given `wait` to be established: how each ended, by the probe's local port.
pub fn tcp_spread(
    t: &Topology,
    cg: &Cgroup,
    ns: &NetNs,
    dst: &str,
    port: u16,
    count: usize,
    wait: Duration,
) -> HashMap<u16, Connect> {
    let listeners = t.listeners(dst.parse().unwrap(), port, |at| backlog(at, count));
    let (port_s, count_s, ms) = (
        port.to_string(),
        count.to_string(),
        wait.as_millis().to_string(),
    );
    let out = run(cg, ns, &["tcp-many", dst, &port_s, &count_s, &ms]);
    // Established connections wait in the accept queues (closed ones too).
    let mut accepted = HashMap::new();
    for (place, l) in &listeners {
        while let Ok((_, peer)) = l.accept() {
            accepted.insert(peer.port(), Arrival { at: *place, peer });
        }
    }
    let mut denied = 0u16;
    out.lines()
        .map(|l| {
            if l == "- denied" {
                denied += 1;
                return (denied - 1, Connect::Denied);
            }
            let (p, how) = l.split_once(' ').expect("PORT RESULT");
            let p: u16 = p.parse().expect("a port");
            let c = match how {
                "ok" => Connect::Arrived(
                    *accepted
                        .get(&p)
                        .unwrap_or_else(|| panic!("port {p} connected but nobody accepted it")),
                ),
                "refused" => Connect::Refused,
                _ => Connect::Lost,
            };
            (p, c)
        })
        .collect()
}

/// A non-blocking TCP listener on `at` whose accept queue holds `count` connections.
fn backlog(at: SocketAddr, count: usize) -> std::io::Result<TcpListener> {
    let domain = match at.ip() {
        IpAddr::V4(_) => Domain::IPV4,
        IpAddr::V6(_) => Domain::IPV6,
    };
    let s = Socket::new(domain, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&at.into())?;
    s.listen(count.max(16) as i32)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}
