//! What the fast path (`fast_path = true`) needs in the kernel besides the classifier:
//! each gateway's table by mark, the destinations the kernel routes itself, this host's
//! addresses on the classifying devices (the source of its ICMP errors), and whether ip
//! rules are needed at all.
//!
//! `main_routes_first` without the suppress rule: every non-default route of the main
//! table goes into the kernel-routed LPM map, and a packet whose destination it covers is
//! left to the kernel, which (without our rules) routes it by the main table, exactly as
//! `lookup main suppress_prefixlength 0` would. The alternative, copying those routes into
//! each gateway's table, would need every route attribute copied faithfully (multipath,
//! nexthop objects, metrics, route types) and kept in sync per table; the map needs only
//! prefixes, the main table keeps deciding how they are routed, and the gateway tables
//! stay as they are in the mark-based mode. The cost is one LPM lookup per matched packet.
use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use policyroute_common::{FastGateway, GatewaySource, CONTROL_FAST_PATH};

use crate::{
    plan::{
        desired::{source, Desired, System},
        objects::{Frames, LOCAL_TABLE, MAIN_TABLE},
    },
    policy::{Policy, Target},
};

/// Destinations the kernel always handles: multicast and the limited broadcast (the
/// local table lists this host's addresses and subnet broadcasts, not these).
const ALWAYS_KERNEL: [&str; 4] = ["224.0.0.0/4", "255.255.255.255/32", "ff00::/8", "fe80::/10"];

/// Said wherever the fast path is on (apply's report, status, README): matched traffic
/// never meets netfilter.
pub const BYPASS: &str = "fast path: matched traffic bypasses netfilter (no conntrack, no NAT \
     or masquerade, no FORWARD-chain filtering, no rp_filter)";

/// Apply's warnings for a fast-path policy: the bypass, and what ip rules cost if some
/// feature needs them.
pub fn warnings(policy: &Policy, frames: &BTreeMap<String, Frames>) -> Vec<String> {
    if !policy.fast_path {
        return Vec::new();
    }
    let mut out = vec![BYPASS.to_string()];
    let why = rules_needed_by(policy, frames);
    if !why.is_empty() {
        out.push(format!(
            "fast path: ip rules are installed anyway for {}; with any ip rule every packet, \
             matched or not, takes the kernel's fib rules walk",
            why.join("; ")
        ));
    }
    out
}

/// Why the policy needs ip rules even with the fast path (empty: it needs none), given
/// what frames start with on devices without an Ethernet header.
pub fn rules_needed_by(policy: &Policy, frames: &BTreeMap<String, Frames>) -> Vec<String> {
    let mut why = Vec::new();
    if policy.attach.local {
        why.push("[attach] local = true (the socket hooks route by mark)".to_string());
    }
    if policy.gateways.iter().any(|g| g.sticky) {
        why.push("sticky gateways (from rules route this host's replies)".to_string());
    }
    if policy
        .rules
        .iter()
        .any(|r| matches!(r.target, Target::Mark(m) if m != 0))
    {
        why.push("rules with a raw mark (routed by fwmark rules)".to_string());
    }
    let ip = ip_ingress(policy, frames);
    if !ip.is_empty() {
        why.push(format!(
            "ingress on IP devices ({}: no Ethernet header; the fast path forwards Ethernet \
             frames only, and leaves what arrives there to the fwmark rules)",
            ip.join(", ")
        ));
    }
    why
}

/// The ingress devices whose frames start with the IP header.
pub fn ip_ingress<'a>(policy: &'a Policy, frames: &BTreeMap<String, Frames>) -> Vec<&'a str> {
    policy
        .attach
        .ingress
        .iter()
        .filter(|dev| frames.get(*dev) == Some(&Frames::Ip))
        .map(String::as_str)
        .collect()
}

/// Whether `desired` installs ip rules for `policy`.
pub fn installs_rules(policy: &Policy, frames: &BTreeMap<String, Frames>) -> bool {
    !policy.fast_path || !rules_needed_by(policy, frames).is_empty()
}

/// Fills the fast path's part of `d`.
pub fn fast_path(policy: &Policy, sys: &System<'_>, d: &mut Desired) {
    if !policy.fast_path {
        return;
    }
    d.control_flags |= CONTROL_FAST_PATH;
    for gw in &policy.gateways {
        let fast = FastGateway {
            table: gw.table,
            _pad: 0,
        };
        d.fast.insert(gw.mark & policy.mark_mask, fast);
    }
    d.kernel_dsts = kernel_destinations(policy, sys);
    d.addresses = ingress_addresses(policy, sys);
}

fn kernel_destinations(policy: &Policy, sys: &System<'_>) -> BTreeSet<IpNet> {
    let mut dsts: BTreeSet<IpNet> = ALWAYS_KERNEL
        .iter()
        .map(|p| p.parse().expect("valid"))
        .collect();
    for p in sys.kernel_prefixes {
        let main_route = p.table == MAIN_TABLE && p.dst.prefix_len() > 0;
        if p.table == LOCAL_TABLE || (policy.main_routes_first && main_route) {
            dsts.insert(p.dst.trunc());
        }
    }
    dsts
}

fn ingress_addresses(policy: &Policy, sys: &System<'_>) -> BTreeMap<u32, GatewaySource> {
    let mut out = BTreeMap::new();
    for dev in &policy.attach.ingress {
        let (Some(&index), Some(addrs)) = (sys.index_of.get(dev), sys.addresses.get(dev)) else {
            continue;
        };
        out.insert(index, source(addrs));
    }
    out
}
