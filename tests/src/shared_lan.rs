//! Seed 003's topology: one host with one interface on a LAN that carries two routers.
//!
//! ```text
//!            seg (a bridge)
//!   host  eth0 192.0.2.23, 2001:db8:1::23  ── main default via r1
//!   r1    eth0 192.0.2.1,  2001:db8:1::1   (answers as Place::Up1)
//!   r2    eth0 192.0.2.2,  2001:db8:1::2   (answers as Place::Up2: the SMTP gateway)
//!   lan2  eth0 192.0.2.50, 2001:db8:1::50  ── default via host (forwarded traffic)
//! ```
//! Both routers own the "internet" addresses [`REMOTE`], so a flow to them is received by
//! whichever router the host sent its frames to: on a bridge each router sees only the
//! frames addressed to its own MAC, so where a flow arrives says which router's MAC the
//! host chose.
use crate::{
    fixture::{address, veth},
    netns::NetNs,
    topology::{router_sysctls, Place, Receivers},
};

pub const HOST: &str = "192.0.2.23";
pub const HOST6: &str = "2001:db8:1::23";
pub const LAN2: &str = "192.0.2.50";
pub const LAN2_6: &str = "2001:db8:1::50";
pub const R2: &str = "192.0.2.2";
pub const R2_6: &str = "2001:db8:1::2";
/// Owned by both routers.
pub const REMOTE: [&str; 2] = ["198.51.100.25", "2001:db8:ffff::25"];

pub struct SharedLan {
    pub seg: NetNs,
    pub host: NetNs,
    pub r1: NetNs,
    pub r2: NetNs,
    pub lan2: NetNs,
}

impl SharedLan {
    pub fn new(tag: &str) -> Self {
        let t = Self {
            seg: NetNs::new(&format!("{tag}-seg")),
            host: NetNs::new(&format!("{tag}-host")),
            r1: NetNs::new(&format!("{tag}-r1")),
            r2: NetNs::new(&format!("{tag}-r2")),
            lan2: NetNs::new(&format!("{tag}-lan2")),
        };
        t.seg.ip("link add br0 type bridge");
        t.seg.ip("link set br0 up");
        let members = [
            (&t.host, "p-host", HOST, HOST6),
            (&t.r1, "p-r1", "192.0.2.1", "2001:db8:1::1"),
            (&t.r2, "p-r2", R2, R2_6),
            (&t.lan2, "p-lan2", LAN2, LAN2_6),
        ];
        for (ns, port, v4, v6) in members {
            router_sysctls(ns);
            veth(&t.seg, port, ns, "eth0");
            t.seg.ip(&format!("link set {port} master br0"));
            address(ns, "eth0", &format!("{v4}/24"));
            address(ns, "eth0", &format!("{v6}/64"));
        }
        for ns in [&t.r1, &t.r2] {
            for a in REMOTE {
                let len = if a.contains(':') { "128" } else { "32" };
                address(ns, "lo", &format!("{a}/{len}"));
            }
        }
        // The host routes for lan2 back out of the LAN it came in on: it would tell lan2
        // by ICMP redirects to go to the router directly, around its policy. An operator
        // of such a host turns them off; lan2 ignores them too.
        for kv in [
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.eth0.send_redirects=0",
        ] {
            t.host.exec("sysctl", &["-qw", kv]);
        }
        for kv in [
            "net.ipv4.conf.all.accept_redirects=0",
            "net.ipv6.conf.all.accept_redirects=0",
        ] {
            t.lan2.exec("sysctl", &["-qw", kv]);
        }
        t.host.ip("route add default via 192.0.2.1");
        t.host.ip("route add default via 2001:db8:1::1");
        t.lan2.ip(&format!("route add default via {HOST}"));
        t.lan2.ip(&format!("route add default via {HOST6}"));
        t
    }
}

impl Receivers for SharedLan {
    /// r1 answers as [`Place::Up1`] (the main default), r2 as [`Place::Up2`].
    fn receivers(&self) -> Vec<(Place, &NetNs)> {
        vec![(Place::Up1, &self.r1), (Place::Up2, &self.r2)]
    }
}
