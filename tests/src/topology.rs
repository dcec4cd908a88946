//! A throwaway router topology in network namespaces, and real-packet probes that tell
//! which namespace a flow reached and what source address it saw there.
//!
//! ```text
//!  lan  192.0.2.10, .99 /25   ── lan0  router  wan1 198.51.100.1 ── up1 198.51.100.2
//!       2001:db8:1::10/64            │          wan2 203.0.113.1  ── up2 203.0.113.2
//!  lan2 192.0.2.130/25        ── lan1┘          wan3 198.19.3.1   ── up3 198.19.3.2
//!                                      main default via up1      (wan3/up3: with_lte only)
//! ```
//! Every upstream owns the "internet" addresses 198.18.0.1, 198.18.1.1, 2001:db8:ffff::1 and
//! 2001:db8:ffff:1::1, so a flow to them is received by whichever upstream the router chose,
//! and the health-check targets [`CHECK_TARGETS`], so a check sent through an uplink is
//! answered by that uplink's upstream alone. Faults of an upstream (the link staying up)
//! are in [`crate::faults`]; many flows at once and failover timing in [`crate::spread`].
use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::atomic::AtomicU16,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    fixture::{address, veth},
    netns::NetNs,
};

pub const LAN_HOST: &str = "192.0.2.10";
pub const LAN_HOST_ALT: &str = "192.0.2.99";
pub const LAN_HOST6: &str = "2001:db8:1::10";
pub const LAN2_HOST: &str = "192.0.2.130";
pub const LAN2_HOST6: &str = "2001:db8:2::130";
pub const INTERNET: [&str; 4] = [
    "198.18.0.1",
    "198.18.1.1",
    "2001:db8:ffff::1",
    "2001:db8:ffff:1::1",
];
/// Health-check targets, on every upstream's loopback: IPv4 and IPv6.
pub const CHECK_TARGETS: [&str; 2] = ["198.18.0.53", "2001:db8:ff::53"];

pub struct Topology {
    pub lan: NetNs,
    pub lan2: NetNs,
    pub router: NetNs,
    pub up1: NetNs,
    pub up2: NetNs,
    /// The third uplink (an LTE modem, say) of [`Topology::with_lte`].
    pub up3: Option<NetNs>,
    /// The next source port [`Topology::fresh_sports`] hands out.
    pub(crate) next_sport: AtomicU16,
}

/// Where a probe arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    Up1,
    Up2,
    Up3,
    Lan2,
    /// The far end of a VPN tunnel ([`crate::vpn`]).
    Vpn,
}

/// An upstream and the router's side of its link.
struct Uplink {
    /// The router's device.
    dev: &'static str,
    router4: &'static str,
    router6: &'static str,
    up4: &'static str,
    up6: &'static str,
}

const UPLINKS: [(Place, Uplink); 3] = [
    (
        Place::Up1,
        Uplink {
            dev: "wan1",
            router4: "198.51.100.1",
            router6: "2001:db8:a::1",
            up4: "198.51.100.2",
            up6: "2001:db8:a::2",
        },
    ),
    (
        Place::Up2,
        Uplink {
            dev: "wan2",
            router4: "203.0.113.1",
            router6: "2001:db8:b::1",
            up4: "203.0.113.2",
            up6: "2001:db8:b::2",
        },
    ),
    (
        Place::Up3,
        Uplink {
            dev: "wan3",
            router4: "198.19.3.1",
            router6: "2001:db8:c::1",
            up4: "198.19.3.2",
            up6: "2001:db8:c::2",
        },
    ),
];

fn uplink(place: Place) -> &'static Uplink {
    UPLINKS
        .iter()
        .find(|(p, _)| *p == place)
        .map(|(_, u)| u)
        .unwrap_or_else(|| panic!("{place:?} is no upstream"))
}

impl Place {
    /// Where the router's device `dev` leads (`wan1`..`wan3`, and `lan1` to the second
    /// LAN), as `explain` names the device a flow leaves by.
    pub fn of_dev(dev: &str) -> Place {
        match dev {
            "lan1" => Place::Lan2,
            _ => UPLINKS
                .iter()
                .find(|(_, u)| u.dev == dev)
                .map(|(p, _)| *p)
                .unwrap_or_else(|| panic!("the router has no device {dev}")),
        }
    }

    /// The router's device towards this upstream (`wan1`, `wan2`, `wan3`).
    pub fn dev(self) -> &'static str {
        uplink(self).dev
    }

    /// The router's address on the link to this upstream: what the upstream sees as the
    /// source of the router's own flows through it.
    pub fn router_address(self, v6: bool) -> &'static str {
        let u = uplink(self);
        [u.router4, u.router6][usize::from(v6)]
    }

    /// The upstream's address on the link: a gateway's `via`.
    pub fn via(self, v6: bool) -> &'static str {
        let u = uplink(self);
        [u.up4, u.up6][usize::from(v6)]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub at: Place,
    /// The source address and port the receiver saw.
    pub peer: SocketAddr,
}

/// Forwarding on, reverse-path filtering off (replies from the second uplink come back on
/// a device the main table does not point at). Only these namespaces' own sysctls.
pub(crate) fn router_sysctls(ns: &NetNs) {
    for kv in [
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        // IPv6 addresses of devices made from now on are usable at once, also after a
        // link change (no duplicate address detection delays the neighbour solicitation).
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
        // ICMP echo sockets (crate::faults::ping) for root.
        "net.ipv4.ping_group_range=0 0",
    ] {
        ns.exec("sysctl", &["-qw", kv]);
    }
}

impl Topology {
    pub fn new(tag: &str) -> Self {
        let t = Self {
            lan: NetNs::new(&format!("{tag}-lan")),
            lan2: NetNs::new(&format!("{tag}-lan2")),
            router: NetNs::new(&format!("{tag}-rtr")),
            up1: NetNs::new(&format!("{tag}-up1")),
            up2: NetNs::new(&format!("{tag}-up2")),
            up3: None,
            next_sport: AtomicU16::new(crate::spread::FRESH_SPORTS.start),
        };
        for ns in [&t.lan, &t.lan2, &t.router, &t.up1, &t.up2] {
            router_sysctls(ns);
        }
        t.wire();
        t
    }

    /// [`Topology::new`] with a third uplink: router `wan3` 198.19.3.1/24 and
    /// 2001:db8:c::1/64, namespace `up3` (`eth0` 198.19.3.2/24 and 2001:db8:c::2/64) owning
    /// the internet addresses and the check targets too. Nothing routes through it until a
    /// test or a policy does.
    pub fn with_lte(tag: &str) -> Self {
        let mut t = Self::new(tag);
        let up3 = NetNs::new(&format!("{tag}-up3"));
        router_sysctls(&up3);
        veth(&t.router, "wan3", &up3, "eth0");
        wire_upstream(&t.router, &up3, Place::Up3);
        t.up3 = Some(up3);
        t
    }

    /// The namespace of `place`.
    pub fn ns(&self, place: Place) -> &NetNs {
        match place {
            Place::Up1 => &self.up1,
            Place::Up2 => &self.up2,
            Place::Up3 => self.up3.as_ref().expect("a topology with_lte"),
            Place::Lan2 => &self.lan2,
            Place::Vpn => panic!("a VPN is no part of the router topology"),
        }
    }

    /// The upstreams this topology has.
    pub fn upstreams(&self) -> Vec<Place> {
        let mut all = vec![Place::Up1, Place::Up2];
        all.extend(self.up3.as_ref().map(|_| Place::Up3));
        all
    }

    fn wire(&self) {
        let (lan, lan2, r, up1, up2) = (&self.lan, &self.lan2, &self.router, &self.up1, &self.up2);
        veth(r, "lan0", lan, "eth0");
        veth(r, "lan1", lan2, "eth0");
        veth(r, "wan1", up1, "eth0");
        veth(r, "wan2", up2, "eth0");
        for (ns, dev, cidr) in [
            (r, "lan0", "192.0.2.1/25"),
            (r, "lan0", "2001:db8:1::1/64"),
            (r, "lan1", "192.0.2.129/25"),
            (r, "lan1", "2001:db8:2::1/64"),
            (lan, "eth0", "192.0.2.10/25"),
            (lan, "eth0", "192.0.2.99/25"),
            (lan, "eth0", "2001:db8:1::10/64"),
            (lan2, "eth0", "192.0.2.130/25"),
            (lan2, "eth0", "2001:db8:2::130/64"),
        ] {
            address(ns, dev, cidr);
        }
        for (up, place) in [(up1, Place::Up1), (up2, Place::Up2)] {
            wire_upstream(r, up, place);
        }
        for (ns, via) in [
            (lan, "192.0.2.1"),
            (lan, "2001:db8:1::1"),
            (lan2, "192.0.2.129"),
            (lan2, "2001:db8:2::1"),
            (r, "198.51.100.2"),
            (r, "2001:db8:a::2"),
        ] {
            ns.ip(&format!("route add default via {via}"));
        }
    }

    /// [`Self::tcp`] or [`Self::udp`], as `proto` ("tcp" or "udp") says.
    pub fn flow(
        &self,
        proto: &str,
        src: &str,
        sport: u16,
        dst: &str,
        dport: u16,
    ) -> Option<Arrival> {
        match proto {
            "tcp" => self.tcp(src, sport, dst, dport),
            "udp" => self.udp(src, sport, dst, dport),
            other => panic!("no probe for {other}"),
        }
    }

    /// Sends one UDP datagram from the LAN host (`src`, `sport`) to `dst:dport` and reports
    /// which namespace received it.
    pub fn udp(&self, src: &str, sport: u16, dst: &str, dport: u16) -> Option<Arrival> {
        self.udp_from((&self.lan, src, sport), dst, dport)
    }

    /// Opens a TCP connection from the LAN host (`src`, `sport`) to `dst:dport`, checks that
    /// data flows both ways, and reports which namespace accepted it.
    pub fn tcp(&self, src: &str, sport: u16, dst: &str, dport: u16) -> Option<Arrival> {
        self.tcp_from((&self.lan, src, sport), dst, dport)
    }
}

/// The link of `place` (its veth already made): addresses on both ends, the internet and
/// check-target addresses on the upstream's loopback, its routes back to the LANs.
fn wire_upstream(router: &NetNs, up: &NetNs, place: Place) {
    let u = uplink(place);
    // An upstream keeps its IPv6 address while its link is down (crate::faults::carrier).
    up.exec("sysctl", &["-qw", "net.ipv6.conf.all.keep_addr_on_down=1"]);
    address(router, u.dev, &format!("{}/24", u.router4));
    address(router, u.dev, &format!("{}/64", u.router6));
    address(up, "eth0", &format!("{}/24", u.up4));
    address(up, "eth0", &format!("{}/64", u.up6));
    for a in INTERNET.iter().chain(&CHECK_TARGETS) {
        let len = if a.contains(':') { "128" } else { "32" };
        address(up, "lo", &format!("{a}/{len}"));
    }
    upstream_routes(up, place);
}

/// The upstream's routes back to the LANs (the kernel drops them when its link goes down).
pub(crate) fn upstream_routes(up: &NetNs, place: Place) {
    let u = uplink(place);
    up.ip(&format!("route replace 192.0.2.0/24 via {}", u.router4));
    for lan in ["2001:db8:1::/64", "2001:db8:2::/64"] {
        up.ip(&format!("route replace {lan} via {}", u.router6));
    }
}

/// Where a probe is sent from: a namespace, a source address in it and a source port (0:
/// any).
pub type Sender<'a> = (&'a NetNs, &'a str, u16);

/// Namespaces where a probe may arrive, each labelled with its [`Place`]: listeners there
/// tell where a flow went.
pub trait Receivers {
    fn receivers(&self) -> Vec<(Place, &NetNs)>;

    /// A socket bound to `dst:port` in every receiver namespace that owns `dst`.
    fn listeners<S>(
        &self,
        dst: IpAddr,
        port: u16,
        bind: impl Fn(SocketAddr) -> std::io::Result<S>,
    ) -> Vec<(Place, S)> {
        self.try_listeners(dst, port, bind)
            .into_iter()
            .filter_map(|(place, s)| Some((place, s.ok()?)))
            .collect()
    }

    /// [`Self::listeners`] with each receiver's bind result (for messages).
    fn try_listeners<S>(
        &self,
        dst: IpAddr,
        port: u16,
        bind: impl Fn(SocketAddr) -> std::io::Result<S>,
    ) -> Vec<(Place, std::io::Result<S>)> {
        self.receivers()
            .into_iter()
            .map(|(place, ns)| {
                let _in = ns.enter();
                (place, bind_when_free(SocketAddr::new(dst, port), &bind))
            })
            .collect()
    }

    /// Listens for UDP on `dst:dport` in the receivers, runs `send`, and collects `count`
    /// datagrams (fewer if they stop arriving within the probe timeout).
    fn expect_udp(&self, dst: &str, dport: u16, count: usize, send: impl FnOnce()) -> Vec<Arrival> {
        let listeners = self.listeners(dst.parse().unwrap(), dport, UdpSocket::bind);
        send();
        let mut got = Vec::new();
        while got.len() < count {
            let Some(ready) = wait_readable(listeners.iter().map(|(_, s)| s.as_raw_fd())) else {
                break;
            };
            let (place, sock) = &listeners[ready];
            let mut buf = [0u8; 64];
            let (_, peer) = sock.recv_from(&mut buf).expect("recv");
            got.push(Arrival { at: *place, peer });
        }
        got
    }

    /// Listens for TCP on `dst:dport` in the receivers, starts `client` (which connects,
    /// sends 4 bytes and waits for 4), answers it, and reports where it came in.
    fn expect_tcp(
        &self,
        dst: &str,
        dport: u16,
        client: impl FnOnce() -> std::process::Child,
    ) -> (Option<Arrival>, String) {
        let listeners = self.listeners(dst.parse().unwrap(), dport, TcpListener::bind);
        let child = client();
        let arrival = wait_readable(listeners.iter().map(|(_, l)| l.as_raw_fd())).map(|ready| {
            let (place, listener) = &listeners[ready];
            let (mut conn, peer) = listener.accept().expect("accept");
            let mut buf = [0u8; 4];
            conn.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
            conn.read_exact(&mut buf).expect("client data");
            conn.write_all(b"pong").expect("answer");
            Arrival { at: *place, peer }
        });
        let out = child.wait_with_output().expect("client exits");
        (arrival, String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sends one UDP datagram from `(ns, src, sport)` to `dst:dport` and reports which
    /// receiver got it.
    fn udp_from(&self, (ns, src, sport): Sender<'_>, dst: &str, dport: u16) -> Option<Arrival> {
        let sender = {
            let _in = ns.enter();
            UdpSocket::bind((src.parse::<IpAddr>().unwrap(), sport)).expect("bind the source")
        };
        let to = SocketAddr::new(dst.parse().unwrap(), dport);
        self.expect_udp(dst, dport, 1, || {
            sender.send_to(b"policyroute probe", to).expect("send");
        })
        .pop()
    }

    /// Opens a TCP connection from `(ns, src, sport)` to `dst:dport`, checks that data
    /// flows both ways, and reports which receiver accepted it.
    fn tcp_from(&self, (ns, src, sport): Sender<'_>, dst: &str, dport: u16) -> Option<Arrival> {
        let dst: IpAddr = dst.parse().unwrap();
        let listeners = self.listeners(dst, dport, TcpListener::bind);
        let mut client = {
            let _in = ns.enter();
            connect_from(src.parse().unwrap(), sport, SocketAddr::new(dst, dport))?
        };
        let ready = wait_readable(listeners.iter().map(|(_, l)| l.as_raw_fd()))?;
        let (place, listener) = &listeners[ready];
        let (mut conn, peer) = listener.accept().expect("accept");
        conn.write_all(b"pong").expect("server write");
        let mut buf = [0u8; 4];
        client.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
        client
            .read_exact(&mut buf)
            .expect("the reply reaches the client");
        Some(Arrival { at: *place, peer })
    }
}

impl Receivers for Topology {
    /// The upstreams and lan2.
    fn receivers(&self) -> Vec<(Place, &NetNs)> {
        let mut all: Vec<(Place, &NetNs)> = self
            .upstreams()
            .into_iter()
            .map(|p| (p, self.ns(p)))
            .collect();
        all.push((Place::Lan2, &self.lan2));
        all
    }
}

/// How long a probe waits for a packet before calling it lost.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A TCP connection from `src:sport` (in the calling thread's namespace) to `dst`.
pub fn connect(src: IpAddr, sport: u16, dst: SocketAddr) -> Option<TcpStream> {
    connect_from(src, sport, dst)
}

fn connect_from(src: IpAddr, sport: u16, dst: SocketAddr) -> Option<TcpStream> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::new(src, sport).into())
        .expect("bind LAN source");
    match s.connect_timeout(&dst.into(), PROBE_TIMEOUT) {
        Ok(()) => Some(s.into()),
        Err(e) if e.kind() == ErrorKind::TimedOut => None,
        Err(e) => panic!("connect {dst}: {e}"),
    }
}

/// `bind(addr)`, tried again while the address is in use, for up to a second: tests run
/// as threads of one process, and a child that another test forks copies this thread's
/// sockets until it execs. The listener of the previous probe can so outlive its close by
/// a moment, and would take the next probe's connection unseen.
fn bind_when_free<S>(
    addr: SocketAddr,
    bind: impl Fn(SocketAddr) -> std::io::Result<S>,
) -> std::io::Result<S> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match bind(addr) {
            Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            result => return result,
        }
    }
}

/// Index of the first fd that becomes readable within the probe timeout.
fn wait_readable(fds: impl Iterator<Item = i32>) -> Option<usize> {
    let mut pfds: Vec<libc::pollfd> = fds
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        // SAFETY: pfds is a valid array of pollfd.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as _, left.as_millis() as i32) };
        if n > 0 {
            return pfds.iter().position(|p| p.revents & libc::POLLIN != 0);
        }
    }
}
