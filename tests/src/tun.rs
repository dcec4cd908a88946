//! A point-to-point tun link between two namespaces, as an OpenVPN tunnel looks to the
//! routers at its ends (without the crypto): a tun device (`IFF_TUN`, no Ethernet header)
//! in each, and a relay thread in the test copying every packet from one to the other. The
//! devices live as long as the link; dropping it stops the relay and removes both.
use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    os::fd::{AsRawFd, FromRawFd, IntoRawFd},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use crate::{background::Background, netns::NetNs};

/// `TUNSETIFF` (linux/if_tun.h): `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
/// No packet-information prefix: each read or write is exactly one IP packet.
const IFF_NO_PI: libc::c_short = 0x1000;
/// How often the relay looks at its stop flag while no packet comes.
const POLL: Duration = Duration::from_millis(50);

pub struct TunLink {
    _relay: Background,
}

impl TunLink {
    /// A tun device `a_dev` in `a` and `b_dev` in `b`, both up, joined by the relay.
    pub fn new(a: &NetNs, a_dev: &str, b: &NetNs, b_dev: &str) -> Self {
        let fa = open_tun(a, a_dev);
        let fb = open_tun(b, b_dev);
        a.ip(&format!("link set {a_dev} up"));
        b.ip(&format!("link set {b_dev} up"));
        Self {
            _relay: Background::spawn(move |stop| relay(fa, fb, stop)),
        }
    }
}

/// A tun device named `dev` in `ns`: the file descriptor stays bound to the namespace it
/// was created in.
fn open_tun(ns: &NetNs, dev: &str) -> File {
    let _in = ns.enter();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    // struct ifreq: the name (IFNAMSIZ = 16 bytes), then the flags as a short.
    let mut ifreq = [0u8; 40];
    assert!(dev.len() < 16, "device name {dev} too long");
    ifreq[..dev.len()].copy_from_slice(dev.as_bytes());
    ifreq[16..18].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq (40 bytes on 64-bit Linux), which
    // `ifreq` is, on a descriptor we own.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) };
    assert_eq!(
        rc,
        0,
        "TUNSETIFF {dev}: {}",
        std::io::Error::last_os_error()
    );
    nonblocking(file)
}

fn nonblocking(file: File) -> File {
    let fd = file.into_raw_fd();
    // SAFETY: fd is the open descriptor we just took out of `file`; F_SETFL only changes
    // its status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        assert!(flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0);
        File::from_raw_fd(fd)
    }
}

/// Copies packets both ways until `stop`.
fn relay(mut a: File, mut b: File, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is an array of two pollfd we own, and its length is passed.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, POLL.as_millis() as i32) };
        if ready <= 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            pass(&mut a, &mut b, &mut buf);
        }
        if fds[1].revents & libc::POLLIN != 0 {
            pass(&mut b, &mut a, &mut buf);
        }
    }
}

/// Moves the packets waiting on `from` to `to`. A write the far device refuses (it is
/// down, its queue full) loses the packet, as a lossy tunnel would.
fn pass(from: &mut File, to: &mut File, buf: &mut [u8]) {
    while let Ok(n) = from.read(buf) {
        if n == 0 {
            return;
        }
        let _ = to.write(&buf[..n]);
    }
}
