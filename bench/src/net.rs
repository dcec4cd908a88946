//! Traffic for the end-to-end benchmark: prebuilt small UDP/IPv4 frames sent with
//! `sendmmsg` on an AF_PACKET socket in the LAN namespace (no UDP socket or neighbour
//! lookup on the sending side, so the sender outruns the router), exact per-namespace IPv4
//! receive counters, and per-CPU busy time from /proc/stat.
use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use policyroute_tests::netns::NetNs;

/// One UDP/IPv4 datagram to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
}

/// An Ethernet frame carrying `flow` with an 18-byte payload (a 60-byte frame, the
/// Ethernet minimum). The UDP checksum is 0 (none), which IPv4 allows.
pub fn udp_frame(dst_mac: [u8; 6], src_mac: [u8; 6], flow: &Flow) -> Vec<u8> {
    const PAYLOAD: usize = 18;
    let udp_len = 8 + PAYLOAD;
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // ttl
    ip[9] = 17; // udp
    ip[12..16].copy_from_slice(&flow.src.octets());
    ip[16..20].copy_from_slice(&flow.dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&flow.sport.to_be_bytes());
    f.extend_from_slice(&flow.dport.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(b"policyroute bench!");
    f
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The MAC address of `dev` in `ns`.
pub fn mac_of(ns: &NetNs, dev: &str) -> [u8; 6] {
    let out = ns.exec("ip", &["-o", "link", "show", "dev", dev]);
    let hex = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC for {dev}: {out}"));
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(hex.split(':')) {
        *b = u8::from_str_radix(part, 16).expect("hex MAC");
    }
    mac
}

/// An AF_PACKET socket bound to a device of a namespace, sending prebuilt frames straight
/// to the driver (PACKET_QDISC_BYPASS).
pub struct FrameSender {
    fd: OwnedFd,
}

const BATCH: usize = 64;

/// The ifindex of `dev` in the namespace the calling thread is in; 0 when there is none.
pub fn ifindex(dev: &str) -> u32 {
    let Ok(name) = std::ffi::CString::new(dev) else {
        return 0;
    };
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

impl FrameSender {
    pub fn new(ns: &NetNs, dev: &str) -> Self {
        let _in = ns.enter();
        let ifindex = ifindex(dev);
        assert!(ifindex != 0, "no device {dev} in {}", ns.name);
        // SAFETY: plain libc calls with valid arguments; the fd is owned right away.
        unsafe {
            // Protocol 0: the socket only sends, it never receives a copy of anything.
            let raw = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(raw >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(raw);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            let rc = libc::bind(
                raw,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let one: libc::c_int = 1;
            let rc = libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                &one as *const _ as *const libc::c_void,
                4,
            );
            assert_eq!(
                rc,
                0,
                "PACKET_QDISC_BYPASS: {}",
                std::io::Error::last_os_error()
            );
            Self { fd }
        }
    }

    /// Sends `frames[from..to]` (wrapping around) in sendmmsg batches; returns how many
    /// the kernel accepted.
    fn batch(&self, frames: &[Vec<u8>], start: usize, n: usize) -> usize {
        let mut iov: Vec<libc::iovec> = (0..n)
            .map(|i| {
                let f = &frames[(start + i) % frames.len()];
                libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                }
            })
            .collect();
        // SAFETY: mmsghdr is plain data; every header points at one valid iovec.
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: msgs holds n initialized headers whose buffers outlive the call.
        let r = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // A full device queue is back-pressure, not an error.
            assert!(
                e.raw_os_error() == Some(libc::ENOBUFS) || e.raw_os_error() == Some(libc::EAGAIN),
                "sendmmsg: {e}"
            );
            return 0;
        }
        r as usize
    }

    /// Sends every frame once, in order, batch by batch; `after_batch` runs after each
    /// batch with the number sent so far (to pace against a receiver).
    pub fn send_each(&self, frames: &[Vec<u8>], mut after_batch: impl FnMut(usize)) {
        let mut sent = 0;
        while sent < frames.len() {
            let n = BATCH.min(frames.len() - sent);
            let done = self.batch(frames, sent, n);
            sent += done;
            after_batch(sent);
        }
    }

    /// Sends the frames round-robin as fast as possible for `duration`; returns frames sent
    /// and the time it took.
    pub fn blast(&self, frames: &[Vec<u8>], duration: Duration) -> (u64, Duration) {
        let start = Instant::now();
        let mut next = 0usize;
        let mut sent = 0u64;
        while start.elapsed() < duration {
            for _ in 0..16 {
                let done = self.batch(frames, next, BATCH);
                next = (next + done) % frames.len();
                sent += done as u64;
            }
        }
        (sent, start.elapsed())
    }
}

/// `Ip: InReceives` of one namespace: every IPv4 packet its stack received (IPv6 neighbour
/// discovery and ARP do not count), read from a /proc/net/snmp opened inside it.
pub struct IpReceived {
    file: File,
}

impl IpReceived {
    pub fn new(ns: &NetNs) -> Self {
        let _in = ns.enter();
        // A /proc/net file shows the namespace of the task that opened it, for good.
        let file = File::open("/proc/thread-self/net/snmp").expect("open /proc/net/snmp");
        Self { file }
    }

    pub fn get(&mut self) -> u64 {
        let mut text = String::new();
        self.file.seek(SeekFrom::Start(0)).expect("seek");
        self.file.read_to_string(&mut text).expect("read snmp");
        let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
        let (names, values) = (ip.next().expect("Ip header"), ip.next().expect("Ip values"));
        let col = names
            .split_whitespace()
            .position(|n| n == "InReceives")
            .expect("InReceives column");
        values.split_whitespace().nth(col).unwrap().parse().unwrap()
    }
}

/// Busy time of one CPU (everything but idle, iowait and steal) from /proc/stat, in ns.
pub fn cpu_busy_ns(cpu: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let tag = format!("cpu{cpu} ");
    let line = stat
        .lines()
        .find(|l| l.starts_with(&tag))
        .unwrap_or_else(|| panic!("no {tag} in /proc/stat"));
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = v[0] + v[1] + v[2] + v[5] + v[6];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    busy * 1_000_000_000 / hz
}

/// Waits until `read` returns the same value twice `quiet` apart (packets in flight have
/// drained), at most `limit`; returns the last value.
pub fn settle(mut read: impl FnMut() -> u64, quiet: Duration, limit: Duration) -> u64 {
    let start = Instant::now();
    let mut last = read();
    loop {
        std::thread::sleep(quiet);
        let now = read();
        if now == last || start.elapsed() > limit {
            return now;
        }
        last = now;
    }
}
