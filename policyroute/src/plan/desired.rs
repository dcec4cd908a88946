//! What the kernel should hold for a policy besides the classifier's tables: ip rules,
//! routes, hooks, device roles and gateway source addresses.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;

use policyroute_common::{
    names::SOCK_PROGRAMS, DeviceRole, FastGateway, GatewaySource, CONTROL_DEVICE_ROLES,
    CONTROL_STICKY, ROLE_CLASSIFY, ROLE_IP_FRAME, ROLE_RECORD,
};

use crate::{
    plan::{
        compile::addr_words,
        fast_path,
        objects::{Frames, Hook, IpRoute, IpRule, KernelPrefix, TcPath, MAIN_TABLE},
    },
    policy::{matcher::Family, rt_tables::MAIN, Gateway, Policy},
};

/// Kernel objects a policy asks for (besides the classifier's rule tables).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub rules: BTreeSet<IpRule>,
    pub routes: BTreeSet<IpRoute>,
    pub hooks: BTreeSet<Hook>,
    /// What the TC program does on each device (by ifindex).
    pub roles: BTreeMap<u32, DeviceRole>,
    /// Source addresses of gateways for unconnected UDP (by mark).
    pub sources: BTreeMap<u32, GatewaySource>,
    /// `CONTROL_*` flags.
    pub control_flags: u32,
    /// Fast path: each gateway's table by mark.
    pub fast: BTreeMap<u32, FastGateway>,
    /// Fast path: destinations left to the kernel.
    pub kernel_dsts: BTreeSet<IpNet>,
    /// Fast path: this host's addresses on each classifying device (by ifindex).
    pub addresses: BTreeMap<u32, GatewaySource>,
}

/// What `desired` needs from the running system.
pub struct System<'a> {
    pub index_of: &'a BTreeMap<String, u32>,
    /// Global addresses of each device.
    pub addresses: &'a BTreeMap<String, Vec<IpAddr>>,
    /// Devices that exist but are down or without carrier: their routes wait (the kernel
    /// refuses a gateway it cannot reach, and removes the routes of a device going down).
    pub down: &'a BTreeSet<String>,
    /// Destinations of the local table and routes of the main table.
    pub kernel_prefixes: &'a BTreeSet<KernelPrefix>,
    /// How TC programs attach on this kernel.
    pub tc_path: TcPath,
    /// What frames start with on devices without an Ethernet header.
    pub frames: &'a BTreeMap<String, Frames>,
}

/// Families a gateway routes: those of its next hops, or both for a device-only gateway.
fn gateway_families(via: &[IpAddr]) -> Vec<(Family, Option<IpAddr>)> {
    if via.is_empty() {
        return vec![(Family::V4, None), (Family::V6, None)];
    }
    via.iter().map(|a| (Family::of(a), Some(*a))).collect()
}

fn default_route(family: Family) -> IpNet {
    match family {
        Family::V4 => "0.0.0.0/0".parse().expect("valid"),
        Family::V6 => "::/0".parse().expect("valid"),
    }
}

/// The kernel state for `policy`. What needs a device that is missing (routes, hooks,
/// roles) or down (routes) is left out; the rest is the same as with every device there.
pub fn desired(policy: &Policy, sys: &System<'_>) -> Desired {
    let mut d = Desired::default();
    routing(policy, sys, &mut d);
    sticky_and_local(policy, sys, &mut d);
    hooks(policy, sys, &mut d);
    fast_path::fast_path(policy, sys, &mut d);
    if !fast_path::installs_rules(policy, sys.frames) {
        d.rules.clear();
    }
    d
}

fn routing(policy: &Policy, sys: &System<'_>, d: &mut Desired) {
    let prio = policy.rule_priority;
    if policy.main_routes_first {
        // Only where a gateway routes: the rule costs every packet of its family a second
        // lookup (about 16 % of forwarding), for nothing where no mark leads anywhere.
        let routed: BTreeSet<Family> = policy
            .gateways
            .iter()
            .flat_map(|gw| gateway_families(&gw.via))
            .map(|(family, _)| family)
            .collect();
        for family in routed {
            d.rules.insert(IpRule {
                family,
                priority: prio,
                table: MAIN,
                fwmark: None,
                suppress_prefixlen: Some(0),
                src: None,
            });
        }
    }
    for gw in &policy.gateways {
        let oif = sys
            .index_of
            .get(&gw.dev)
            .filter(|_| !sys.down.contains(&gw.dev));
        for (family, gateway) in gateway_families(&gw.via) {
            if let Some(&oif) = oif {
                d.routes.insert(IpRoute {
                    family,
                    table: gw.table,
                    dst: default_route(family),
                    gateway,
                    oif,
                });
            }
            // One priority for all fwmark rules: marks are distinct, so their order does not
            // matter, and reordering gateways in the file changes nothing in the kernel.
            d.rules.insert(IpRule {
                family,
                priority: prio + 1,
                table: gw.table,
                fwmark: Some((gw.mark, policy.mark_mask)),
                suppress_prefixlen: None,
                src: None,
            });
        }
    }
}

/// The families in which `gw`'s device also carries the main table's default route: the
/// gateway shares its device, and so its address, with the main uplink (two routers on
/// one LAN). This host sources everything it sends that way from that address, so a
/// `from <address>` rule would send all of it to the gateway.
pub fn shares_main_uplink(gw: &Gateway, sys: &System<'_>) -> Vec<Family> {
    let Some(&ifindex) = sys.index_of.get(&gw.dev) else {
        return Vec::new();
    };
    [Family::V4, Family::V6]
        .into_iter()
        .filter(|&family| {
            // A lookup, not a walk: the main table may hold a full routing table.
            sys.kernel_prefixes.contains(&KernelPrefix {
                table: MAIN_TABLE,
                dst: default_route(family),
                oif: Some(ifindex),
            })
        })
        .collect()
}

/// Sticky gateways record inbound flows on their device; sticky or local gateways get
/// `from <their address> lookup T` rules so this host's replies (and datagrams the socket
/// hook gives the gateway's source address) leave through them. Not in a family where the
/// gateway shares its device with the main uplink ([`shares_main_uplink`]): there the
/// address is the main uplink's too, and the socket hooks' mark alone steers.
fn sticky_and_local(policy: &Policy, sys: &System<'_>, d: &mut Desired) {
    for gw in &policy.gateways {
        let shared = shares_main_uplink(gw, sys);
        let addrs: Vec<IpAddr> = sys
            .addresses
            .get(&gw.dev)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .copied()
            .filter(|a| !shared.contains(&Family::of(a)))
            .collect();
        let addrs = addrs.as_slice();
        if gw.sticky {
            d.control_flags |= CONTROL_STICKY | CONTROL_DEVICE_ROLES;
            if let Some(&ifindex) = sys.index_of.get(&gw.dev) {
                let role = d.roles.entry(ifindex).or_default();
                role.flags |= ROLE_RECORD;
                role.mark = gw.mark & policy.mark_mask;
            }
        }
        if gw.sticky || policy.attach.local {
            for addr in addrs {
                d.rules.insert(IpRule {
                    family: Family::of(addr),
                    priority: policy.rule_priority + 2,
                    table: gw.table,
                    fwmark: None,
                    suppress_prefixlen: None,
                    src: Some(IpNet::from(*addr)),
                });
            }
        }
        if policy.attach.local {
            d.sources.insert(gw.mark & policy.mark_mask, source(addrs));
        }
    }
    for dev in &policy.attach.ingress {
        if let Some(&ifindex) = sys.index_of.get(dev) {
            d.roles.entry(ifindex).or_default().flags |= ROLE_CLASSIFY;
        }
    }
}

/// A hooked device whose frames start with the IP header gets a role that says so (the
/// programs read frames as Ethernet otherwise).
fn ip_frames(sys: &System<'_>, dev: &str, ifindex: u32, d: &mut Desired) {
    if sys.frames.get(dev) == Some(&Frames::Ip) {
        d.control_flags |= CONTROL_DEVICE_ROLES;
        d.roles.entry(ifindex).or_default().flags |= ROLE_IP_FRAME;
    }
}

/// The first address of each family.
pub(super) fn source(addrs: &[IpAddr]) -> GatewaySource {
    let mut s = GatewaySource::default();
    for a in addrs {
        match a {
            IpAddr::V4(v4) if s.has_v4 == 0 => {
                s.has_v4 = 1;
                s.v4 = u32::from_ne_bytes(v4.octets());
            }
            IpAddr::V6(_) if s.has_v6 == 0 => {
                s.has_v6 = 1;
                s.v6 = addr_words(a);
            }
            _ => {}
        }
    }
    s
}

fn hooks(policy: &Policy, sys: &System<'_>, d: &mut Desired) {
    let sticky = policy.gateways.iter().filter(|g| g.sticky).map(|g| &g.dev);
    for dev in policy.attach.ingress.iter().chain(sticky) {
        if let Some(&ifindex) = sys.index_of.get(dev) {
            d.hooks.insert(sys.tc_path.ingress(dev.clone(), ifindex));
            ip_frames(sys, dev, ifindex, d);
        }
    }
    for dev in &policy.attach.egress {
        if let Some(&ifindex) = sys.index_of.get(dev) {
            d.hooks.insert(sys.tc_path.egress(dev.clone(), ifindex));
            ip_frames(sys, dev, ifindex, d);
        }
    }
    if let Some(cgroup) = local_cgroup(policy) {
        for program in SOCK_PROGRAMS {
            d.hooks.insert(Hook::Cgroup {
                cgroup: cgroup.clone(),
                program,
            });
        }
    }
}

/// The cgroup whose sockets the local hooks classify (a cgroup v2 path; `/` by default),
/// when the policy classifies local traffic.
pub fn local_cgroup(policy: &Policy) -> Option<String> {
    if !policy.attach.local {
        return None;
    }
    let cg = policy.attach.local_cgroup.as_deref().unwrap_or("/");
    Some(format!("/{}", cg.trim_matches('/')))
}
