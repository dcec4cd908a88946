//! A traffic source for tests of this host's own sockets: it joins a cgroup (where the
//! policy's socket hooks are attached), enters a network namespace, then opens one
//! connection or sends datagrams, and prints each socket's SO_MARK afterwards.
//!
//! probe CGROUP_DIR NETNS tcp DST PORT            connect, send "ping", expect an answer
//! probe CGROUP_DIR NETNS udp DST PORT COUNT      COUNT datagrams from one unconnected socket
//! probe CGROUP_DIR NETNS udp-connected DST PORT  connect, then send one datagram
//! probe CGROUP_DIR NETNS udp-echo BIND PORT      answer one datagram on BIND:PORT
//! probe CGROUP_DIR NETNS tcp-many DST PORT COUNT MS  COUNT connections at once, each given
//!                                                     MS milliseconds to be established
//! Output: `mark 0x..` per socket; exits non-zero on failure. tcp-many prints instead
//! `PORT ok|refused|lost` per connection (its local port), or `- denied` for a connect a
//! socket hook refused (EPERM), and fails only if it cannot try.
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
        ("tcp-many", [dst, port, count, ms]) => tcp_many(
            target(dst, port)?,
            count.parse()?,
            Duration::from_millis(ms.parse()?),
        ),
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

/// Non-blocking connects of `count` sockets at once (each its own ephemeral port), then
/// waits up to `wait` for them together.
fn tcp_many(to: SocketAddr, count: usize, wait: Duration) -> anyhow::Result<()> {
    use socket2::{Domain, Socket, Type};
    let domain = if to.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let mut socks = Vec::new();
    for _ in 0..count {
        let s = Socket::new(domain, Type::STREAM, None)?;
        s.set_nonblocking(true)?;
        // A port of its own before connect: connect alone may give two sockets the same
        // port when their routes pick different source addresses (the 4-tuples differ),
        // and the caller tells connections apart by port.
        let any: SocketAddr = if to.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        s.bind(&any.into())?;
        match s.connect(&to.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            // Refused by a socket hook before any port was taken.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                println!("- denied");
                continue;
            }
            Err(e) => bail!("connect {to}: {e}"),
        }
        // The port is chosen by connect, before the SYN leaves.
        let port = s
            .local_addr()?
            .as_socket()
            .context("an inet socket")?
            .port();
        socks.push((port, s, None::<&str>));
    }
    let deadline = std::time::Instant::now() + wait;
    loop {
        let mut pending: Vec<libc::pollfd> = socks
            .iter()
            .filter(|(_, _, done)| done.is_none())
            .map(|(_, s, _)| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if pending.is_empty() || left.is_zero() {
            break;
        }
        // SAFETY: pending is a valid array of pollfd.
        unsafe {
            libc::poll(
                pending.as_mut_ptr(),
                pending.len() as _,
                left.as_millis().max(1) as i32,
            )
        };
        for p in pending.iter().filter(|p| p.revents != 0) {
            let (_, s, done) = socks
                .iter_mut()
                .find(|(_, s, _)| s.as_raw_fd() == p.fd)
                .expect("a socket of ours");
            *done = Some(match s.take_error()? {
                None if s.peer_addr().is_ok() => "ok",
                None => continue,
                Some(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => "refused",
                Some(_) => "lost",
            });
        }
    }
    for (port, _, done) in &socks {
        println!("{port} {}", done.unwrap_or("lost"));
    }
    Ok(())
}
