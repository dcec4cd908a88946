//! UDP probes that see what forwarding did to a packet: the TTL / hop limit it arrived
//! with, and the ICMP error (if any) that came back to the sender, as the sender's kernel
//! reports it (IP_RECVERR / IPV6_RECVERR).
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use crate::topology::{Arrival, Receivers, Topology, PROBE_TIMEOUT};

/// A datagram as a receiver got it.
#[derive(Clone, Copy, Debug)]
pub struct Hop {
    pub arrival: Arrival,
    /// TTL (IPv4) or hop limit (IPv6) on arrival.
    pub ttl: u8,
}

/// An ICMP error the sender's kernel matched to its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpError {
    pub kind: u8,
    pub code: u8,
    /// The MTU for "fragmentation needed" / "packet too big".
    pub info: u32,
    /// Who sent it.
    pub from: Option<IpAddr>,
}

/// What one probe saw: where it arrived (if anywhere) and what came back.
#[derive(Debug)]
pub struct Probe {
    pub hops: Vec<Hop>,
    pub error: Option<IcmpError>,
}

/// How to send the probe.
#[derive(Clone, Copy, Debug)]
pub struct Send {
    pub ttl: u32,
    /// Bytes of UDP payload.
    pub size: usize,
    /// Don't fragment (IPv4 DF; IPv6 never fragments on the way anyway).
    pub df: bool,
}

impl Default for Send {
    fn default() -> Self {
        Self {
            ttl: 64,
            size: 32,
            df: false,
        }
    }
}

fn setsockopt(fd: i32, level: i32, name: i32, value: i32) {
    // SAFETY: fd is an open socket and value a live int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt {level}/{name}: {}",
        std::io::Error::last_os_error()
    );
}

fn v6(a: &SocketAddr) -> bool {
    a.is_ipv6()
}

impl Topology {
    /// Sends one UDP datagram from the LAN host as `how` says; reports the arrivals (with
    /// their TTL) and the ICMP error the sender got, each waited for up to the probe timeout
    /// (the error only as long as nothing arrived).
    pub fn udp_probe(&self, src: &str, sport: u16, dst: &str, dport: u16, how: Send) -> Probe {
        let to = SocketAddr::new(dst.parse().unwrap(), dport);
        let listeners = self.listeners(to.ip(), dport, |a| {
            let s = UdpSocket::bind(a)?;
            let (level, name) = if v6(&a) {
                (libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT)
            } else {
                (libc::IPPROTO_IP, libc::IP_RECVTTL)
            };
            setsockopt(s.as_raw_fd(), level, name, 1);
            Ok(s)
        });
        let sender = {
            let _in = self.lan.enter();
            UdpSocket::bind((src.parse::<IpAddr>().unwrap(), sport)).expect("bind LAN source")
        };
        configure_sender(&sender, &to, how);
        sender.send_to(&vec![0x5a; how.size], to).expect("send");
        let mut hops = Vec::new();
        let deadline = Instant::now() + PROBE_TIMEOUT;
        let mut error = None;
        while Instant::now() < deadline && hops.is_empty() && error.is_none() {
            for (place, sock) in &listeners {
                if let Some((peer, ttl)) = recv_with_ttl(sock) {
                    let arrival = Arrival { at: *place, peer };
                    hops.push(Hop { arrival, ttl });
                }
            }
            error = icmp_error(&sender, v6(&to));
            std::thread::sleep(Duration::from_millis(5));
        }
        Probe { hops, error }
    }
}

fn configure_sender(s: &UdpSocket, to: &SocketAddr, how: Send) {
    let fd = s.as_raw_fd();
    if v6(to) {
        setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_UNICAST_HOPS,
            how.ttl as i32,
        );
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1);
        setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        );
    } else {
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, how.ttl as i32);
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_RECVERR, 1);
        // Without DF: the interface's MTU, so the sender does not fragment by a path MTU
        // an earlier probe taught it (the router's answer is what is being tested).
        let pmtu = if how.df {
            libc::IP_PMTUDISC_DO
        } else {
            libc::IP_PMTUDISC_INTERFACE
        };
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, pmtu);
    }
    s.set_nonblocking(true).expect("nonblocking");
}

/// One datagram and its TTL / hop limit, if one is waiting.
fn recv_with_ttl(s: &UdpSocket) -> Option<(SocketAddr, u8)> {
    s.set_nonblocking(true).ok()?;
    let mut data = [0u8; 2048];
    let mut control = [0u8; 128];
    let mut from: libc::sockaddr_storage = unsafe_zeroed();
    let (n, msg) = recvmsg(s.as_raw_fd(), &mut data, &mut control, &mut from, 0)?;
    let _ = n;
    let mut ttl = None;
    for_each_cmsg(&msg, |level, kind, body| {
        let is_ttl = (level == libc::IPPROTO_IP && kind == libc::IP_TTL)
            || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_HOPLIMIT);
        if is_ttl && body.len() >= 4 {
            ttl = Some(i32::from_ne_bytes(body[..4].try_into().unwrap()) as u8);
        }
    });
    Some((sockaddr(&from)?, ttl?))
}

/// The first ICMP error queued on the socket, if any.
fn icmp_error(s: &UdpSocket, is_v6: bool) -> Option<IcmpError> {
    let mut data = [0u8; 2048];
    let mut control = [0u8; 256];
    let mut from: libc::sockaddr_storage = unsafe_zeroed();
    let (_, msg) = recvmsg(
        s.as_raw_fd(),
        &mut data,
        &mut control,
        &mut from,
        libc::MSG_ERRQUEUE,
    )?;
    let (level, kind) = if is_v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    };
    let mut error = None;
    for_each_cmsg(&msg, |l, k, body| {
        if l == level && k == kind && body.len() >= std::mem::size_of::<libc::sock_extended_err>() {
            // SAFETY: the kernel put a sock_extended_err here (checked length); read unaligned.
            let e: libc::sock_extended_err =
                unsafe { std::ptr::read_unaligned(body.as_ptr().cast()) };
            // The offender's address follows the struct (SO_EE_OFFENDER).
            let offender = &body[std::mem::size_of::<libc::sock_extended_err>()..];
            error = Some(IcmpError {
                kind: e.ee_type,
                code: e.ee_code,
                info: e.ee_info,
                from: offender_address(offender),
            });
        }
    });
    error
}

fn unsafe_zeroed<T>() -> T {
    // SAFETY: only used for plain C structs (sockaddr_storage) for which zero is valid.
    unsafe { std::mem::zeroed() }
}

fn recvmsg(
    fd: i32,
    data: &mut [u8],
    control: &mut [u8],
    from: &mut libc::sockaddr_storage,
    flags: i32,
) -> Option<(usize, libc::msghdr)> {
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut msg: libc::msghdr = unsafe_zeroed();
    msg.msg_name = (from as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: msg points at live buffers of the lengths it states.
    let n = unsafe { libc::recvmsg(fd, &mut msg, flags | libc::MSG_DONTWAIT) };
    (n >= 0).then_some((n as usize, msg))
}

fn for_each_cmsg(msg: &libc::msghdr, mut f: impl FnMut(i32, i32, &[u8])) {
    // SAFETY: msg was filled by recvmsg; the CMSG macros walk its control buffer within
    // msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            let body = std::slice::from_raw_parts(libc::CMSG_DATA(c), len);
            f((*c).cmsg_level, (*c).cmsg_type, body);
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
}

fn sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let bytes: &[u8] = {
        // SAFETY: sockaddr_storage is plain bytes of its size.
        unsafe {
            std::slice::from_raw_parts(
                (s as *const libc::sockaddr_storage).cast::<u8>(),
                std::mem::size_of::<libc::sockaddr_storage>(),
            )
        }
    };
    let family = i32::from(s.ss_family);
    let port = u16::from_be_bytes([bytes[2], bytes[3]]);
    match family {
        libc::AF_INET => {
            let a: [u8; 4] = bytes[4..8].try_into().ok()?;
            Some(SocketAddr::new(IpAddr::from(a), port))
        }
        libc::AF_INET6 => {
            let a: [u8; 16] = bytes[8..24].try_into().ok()?;
            Some(SocketAddr::new(IpAddr::from(a), port))
        }
        _ => None,
    }
}

fn offender_address(bytes: &[u8]) -> Option<IpAddr> {
    if bytes.len() < 8 {
        return None;
    }
    let family = i32::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
    match family {
        libc::AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(&bytes[4..8]).ok()?)),
        libc::AF_INET6 if bytes.len() >= 24 => {
            Some(IpAddr::from(<[u8; 16]>::try_from(&bytes[8..24]).ok()?))
        }
        _ => None,
    }
}
