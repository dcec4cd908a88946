//! Faults of an upstream, made in the upstream's own namespace while the link to the router
//! stays up (an ISP that stops answering behind a modem that still has carrier): nftables
//! rules in a table `inet prt` of that namespace, one fault at a time, replaced atomically.
//! Also what tells that they work: ICMP echo from any namespace ([`ping`]), and a TCP
//! service on the check targets ([`Topology::serve_tcp`]).
use std::{
    collections::BTreeSet,
    mem::MaybeUninit,
    net::{IpAddr, SocketAddr, TcpListener},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    fixture::TempFile,
    netns::NetNs,
    topology::{upstream_routes, Place, Topology, CHECK_TARGETS},
};

/// Neighbour discovery still passes a blackhole, as ARP does (nftables' `inet` family
/// does not see ARP): the next hop answers, nothing behind it does.
const NEIGHBOUR_DISCOVERY: &str = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept";

impl Topology {
    /// Drops every IP packet into, out of and through upstream `place` (neighbour
    /// discovery and ARP aside); its link stays up.
    pub fn blackhole(&self, place: Place) {
        let drop = format!("policy drop;\n    {NEIGHBOUR_DISCOVERY}");
        self.faults(place, &drop, &drop, &drop);
    }

    /// Removes the fault of upstream `place`.
    pub fn restore(&self, place: Place) {
        nft(self.ns(place), "table inet prt {}\ndelete table inet prt\n");
    }

    /// Upstream `place` drops `percent` % of the ICMP echo requests (IPv4 and IPv6) and TCP
    /// SYNs it receives, at random: as many of the round trips are lost.
    pub fn lossy(&self, place: Place, percent: u8) {
        assert!(percent <= 100);
        let pick = format!("numgen random mod 100 < {percent}");
        self.loss(place, &pick, &pick, &pick);
    }

    /// As [`Self::lossy`], but evenly spread instead of at random: exactly `percent` of every
    /// 100 echo requests of each family (and of the SYNs), and for `percent` <= 50 never two
    /// in a row. Loss that a health check with `down` >= 2 must ride out, every time.
    pub fn lossy_spread(&self, place: Place, percent: u8) {
        assert!(percent <= 100);
        let p = u32::from(percent);
        let picked: Vec<String> = (0..100u32)
            .filter(|i| (i + 1) * p / 100 > i * p / 100)
            .map(|i| i.to_string())
            .collect();
        if picked.is_empty() {
            return self.restore(place);
        }
        let pick = format!("numgen inc mod 100 {{ {} }}", picked.join(", "));
        // One expression each, so one counter each: the families do not share the spread.
        self.loss(place, &pick, &pick, &pick);
    }

    fn loss(&self, place: Place, icmp: &str, icmpv6: &str, syn: &str) {
        let input = format!(
            "policy accept;\n    icmp type echo-request {icmp} drop\n    icmpv6 type \
             echo-request {icmpv6} drop\n    tcp flags & (syn | ack) == syn {syn} drop"
        );
        self.faults(place, &input, "policy accept;", "policy accept;");
    }

    /// Upstream `place` answers connections to TCP `port` with a reset, whether something
    /// listens there or not; everything else (ICMP echo too) is answered as before.
    pub fn reset_tcp(&self, place: Place, port: u16) {
        let input = format!("policy accept;\n    tcp dport {port} reject with tcp reset");
        self.faults(place, &input, "policy accept;", "policy accept;");
    }

    /// Takes the upstream's end of the link down (`false`: the router's device stays up
    /// but loses carrier) or up again (`true`, its routes back to the LANs restored).
    pub fn carrier(&self, place: Place, on: bool) {
        let up = self.ns(place);
        up.ip(&format!("link set eth0 {}", if on { "up" } else { "down" }));
        if on {
            upstream_routes(up, place);
        }
    }

    /// The `inet prt` table of upstream `place` with chains for input, forward and output,
    /// each starting with its policy (`policy drop;` or `policy accept;`) then rules.
    fn faults(&self, place: Place, input: &str, forward: &str, output: &str) {
        let chain = |name: &str, body: &str| {
            format!("  chain {name} {{\n    type filter hook {name} priority 0; {body}\n  }}\n")
        };
        let text = format!(
            "table inet prt {{}}\ndelete table inet prt\ntable inet prt {{\n{}{}{}}}\n",
            chain("input", input),
            chain("forward", forward),
            chain("output", output)
        );
        nft(self.ns(place), &text);
    }

    /// Accepts (and closes) TCP connections to `port` on the check targets
    /// ([`CHECK_TARGETS`]) in upstream `place` until the guard drops: what a `tcp:PORT`
    /// health check needs to pass. The internet addresses stay free for the probes.
    pub fn serve_tcp(&self, place: Place, port: u16) -> TcpService {
        let listeners: Vec<TcpListener> = {
            let _in = self.ns(place).enter();
            CHECK_TARGETS
                .iter()
                .map(|a| {
                    let at = SocketAddr::new(a.parse().unwrap(), port);
                    listen(at).unwrap_or_else(|e| panic!("listen on {at}: {e}"))
                })
                .collect()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let mut pfds: Vec<libc::pollfd> = listeners
                    .iter()
                    .map(|l| libc::pollfd {
                        fd: l.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect();
                // SAFETY: pfds is a valid array of pollfd.
                unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as _, 50) };
                for l in &listeners {
                    while let Ok((conn, _)) = l.accept() {
                        drop(conn);
                    }
                }
            }
        });
        TcpService {
            stop,
            thread: Some(thread),
        }
    }
}

/// A non-blocking listener with a long accept queue: checks in quick succession must not
/// find it full while the accepting thread waits for a core.
fn listen(at: SocketAddr) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(at), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&at.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// A TCP service of [`Topology::serve_tcp`]; it stops listening on drop.
pub struct TcpService {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for TcpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `nft -f` of `text` in `ns`.
fn nft(ns: &NetNs, text: &str) {
    let file = TempFile::new("faults.nft", text);
    ns.exec("nft", &["-f", file.arg()]);
}

/// Sends `count` ICMP echo requests from `ns` to `dst`, `gap` apart, and waits up to
/// `wait` after the last for replies; the sequence numbers answered, sorted.
pub fn ping(ns: &NetNs, dst: &str, count: u16, gap: Duration, wait: Duration) -> Vec<u16> {
    let dst: IpAddr = dst.parse().unwrap();
    let (domain, proto, request, reply) = match dst {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128, 129),
    };
    // An ICMP echo socket: the kernel sets identifier and checksum and hands it only the
    // replies to its own requests (ping_group_range allows root in the test namespaces).
    let sock = {
        let _in = ns.enter();
        Socket::new(domain, Type::DGRAM, Some(proto)).expect("ICMP echo socket")
    };
    sock.set_nonblocking(true).unwrap();
    let to = SocketAddr::new(dst, 0).into();
    let mut answered = BTreeSet::new();
    for seq in 0..count {
        let [hi, lo] = seq.to_be_bytes();
        let packet = [request, 0, 0, 0, 0, 0, hi, lo, b'p', b'r', b't', 0];
        // An error (no route) is a lost request like any other.
        let _ = sock.send_to(&packet, &to);
        echo_replies(&sock, reply, &mut answered);
        std::thread::sleep(gap);
    }
    let deadline = Instant::now() + wait;
    while answered.len() < usize::from(count) && Instant::now() < deadline {
        echo_replies(&sock, reply, &mut answered);
        std::thread::sleep(Duration::from_millis(5));
    }
    answered.into_iter().collect()
}

/// Reads the echo replies (ICMP type `reply`) waiting on `sock` into `answered`.
fn echo_replies(sock: &Socket, reply: u8, answered: &mut BTreeSet<u16>) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 128];
    while let Ok(n) = sock.recv(&mut buf) {
        // SAFETY: recv initialised the first n bytes.
        let b: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        if n >= 8 && b[0] == reply {
            answered.insert(u16::from_be_bytes([b[6], b[7]]));
        }
    }
}
