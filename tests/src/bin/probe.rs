//! A traffic source for tests of this host's own sockets: it joins a cgroup (where the
//! policy's socket hooks are attached), enters a network namespace, then opens one
//! connection or sends datagrams, and prints each socket's SO_MARK afterwards.
//!
//! probe CGROUP_DIR NETNS tcp DST PORT            connect, send "ping", expect an answer
//! probe CGROUP_DIR NETNS udp DST PORT COUNT      COUNT datagrams from one unconnected socket
//! probe CGROUP_DIR NETNS udp-connected DST PORT  connect, then send one datagram
//! probe CGROUP_DIR NETNS udp-echo BIND PORT      answer one datagram on BIND:PORT
//! Output: `mark 0x..` per socket; exits non-zero on failure.
use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use anyhow::{bail, Context};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cgroup, netns, mode, rest @ ..] = args.as_slice() else {
        bail!("usage: probe CGROUP_DIR NETNS MODE ARGS...");
    };
    std::fs::write(
        format!("{cgroup}/cgroup.procs"),
        std::process::id().to_string(),
    )
    .context("joining the cgroup")?;
    let ns = File::open(format!("/run/netns/{netns}")).context("opening the netns")?;
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    match (mode.as_str(), rest) {
        ("tcp", [dst, port]) => tcp(target(dst, port)?),
        ("udp", [dst, port, count]) => udp(target(dst, port)?, count.parse()?),
        ("udp-connected", [dst, port]) => udp_connected(target(dst, port)?),
        ("udp-echo", [bind, port]) => udp_echo(target(bind, port)?),
        _ => bail!("bad arguments {args:?}"),
    }
}

fn target(dst: &str, port: &str) -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::new(dst.parse::<IpAddr>()?, port.parse()?))
}

const TIMEOUT: Duration = Duration::from_secs(3);

fn mark(fd: i32) -> u32 {
    let mut mark: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mut mark as *mut u32).cast(),
            &mut len,
        );
    }
    mark
}

fn tcp(to: SocketAddr) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, TIMEOUT).context("connect")?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).context("answer")?;
    println!("mark {:#x}", mark(s.as_raw_fd()));
    Ok(())
}

fn unbound(to: SocketAddr) -> anyhow::Result<UdpSocket> {
    let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
    Ok(UdpSocket::bind(any)?)
}

fn udp(to: SocketAddr, count: u32) -> anyhow::Result<()> {
    let s = unbound(to)?;
    for i in 0..count {
        s.send_to(format!("datagram {i}").as_bytes(), to)?;
    }
    println!("mark {:#x}", mark(s.as_raw_fd()));
    Ok(())
}

fn udp_connected(to: SocketAddr) -> anyhow::Result<()> {
    let s = unbound(to)?;
    s.connect(to)?;
    s.send(b"datagram")?;
    println!("mark {:#x}", mark(s.as_raw_fd()));
    Ok(())
}

fn udp_echo(bind: SocketAddr) -> anyhow::Result<()> {
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut buf = [0u8; 64];
    let (n, peer) = s.recv_from(&mut buf).context("no datagram")?;
    s.send_to(&buf[..n], peer)?;
    println!("mark {:#x}", mark(s.as_raw_fd()));
    Ok(())
}
