//! The router topology ([`crate::topology`]) with a VPN uplink: a tun link (`tun0` in the
//! router, no Ethernet header) to a VPN server namespace, as an OpenVPN or WireGuard
//! tunnel to a provider looks.
//!
//! ```text
//!  router tun0 198.19.64.1/24  ══ tun ══  vpn tun0 198.19.64.2/24, default dev tun0
//!              2001:db8:64::1/64                   2001:db8:64::2/64
//! ```
//! The VPN namespace owns [`VPN_OWNED`], internet addresses of the upstreams too (so a
//! flow to them is received by whichever of up1, up2 and the VPN the router chose), and the
//! VPN's clients, [`VPN_CLIENT`] and [`VPN_CLIENT6`], on its loopback: their traffic to the
//! other internet addresses ([`VPN_NOT_OWNED`]) enters the router on `tun0`. The router has
//! no route to the clients: only a sticky gateway sends their replies back into the
//! tunnel.
use crate::{
    fixture::address,
    netns::NetNs,
    topology::{router_sysctls, Place, Receivers, Topology, INTERNET},
    tun::TunLink,
};

pub const VPN_CLIENT: &str = "198.19.65.10";
/// Internet addresses the VPN owns too, IPv4 and IPv6.
pub const VPN_OWNED: [&str; 2] = [INTERNET[0], INTERNET[2]];
/// Internet addresses only the upstreams own, IPv4 and IPv6.
pub const VPN_NOT_OWNED: [&str; 2] = [INTERNET[1], INTERNET[3]];
pub const VPN_CLIENT6: &str = "2001:db8:65::10";

pub struct VpnTopology {
    pub t: Topology,
    pub vpn: NetNs,
    _link: TunLink,
}

impl VpnTopology {
    pub fn new(tag: &str) -> Self {
        let t = Topology::new(tag);
        let vpn = NetNs::new(&format!("{tag}-vpn"));
        router_sysctls(&vpn);
        let link = TunLink::new(&t.router, "tun0", &vpn, "tun0");
        for (ns, cidr) in [
            (&t.router, "198.19.64.1/24"),
            (&t.router, "2001:db8:64::1/64"),
            (&vpn, "198.19.64.2/24"),
            (&vpn, "2001:db8:64::2/64"),
        ] {
            address(ns, "tun0", cidr);
        }
        for a in VPN_OWNED.iter().chain(&[VPN_CLIENT, VPN_CLIENT6]) {
            let len = if a.contains(':') { "128" } else { "32" };
            address(&vpn, "lo", &format!("{a}/{len}"));
        }
        vpn.ip("route add default dev tun0");
        vpn.ip("-6 route add default dev tun0");
        Self {
            t,
            vpn,
            _link: link,
        }
    }
}

impl Receivers for VpnTopology {
    fn receivers(&self) -> Vec<(Place, &NetNs)> {
        vec![
            (Place::Up1, &self.t.up1),
            (Place::Up2, &self.t.up2),
            (Place::Vpn, &self.vpn),
        ]
    }
}
