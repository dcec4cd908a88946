//! Foreign state: routes and ip rules policyroute does not own that stand in its way. A
//! route of anyone else's in a gateway's table changes where that gateway's traffic goes
//! (an old recipe's default route, another tool's); an ip rule of anyone else's whose
//! fwmark matches a mark policyroute gives sends that traffic elsewhere, before or after
//! policyroute's own rule. `apply` refuses while there is any, or with `--adopt` takes it
//! over; `run` after its start reports what appears (see `control::apply::OnForeign`).
//!
//! Nothing else counts: routes of other tables (main, local and default are never a
//! gateway's), routes the kernel adds itself (`proto kernel`: it adds them again), rules
//! without a fwmark, and rules whose fwmark looks only at bits outside `mark_mask` or wants
//! values there no gateway has. Rules that match the raw marks of `mark = N` policy rules
//! are what those marks are for, so those marks do not count either.
use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;
use serde::Serialize;

use super::{
    ip_text::{self, DeviceNames},
    objects::{IpRoute, IpRule},
};
use crate::policy::{matcher::Family, rt_tables, Policy};

/// `rtm_protocol` of the routes the kernel adds itself (connected prefixes, link-local
/// routes, a VRF's local routes): never foreign.
pub const RTPROT_KERNEL: u8 = 2;

/// A route in a table policyroute manages that is not policyroute's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForeignRoute {
    pub family: Family,
    pub table: u32,
    /// The route type as `ip -d route` names it: `unicast`, `unreachable`, `blackhole`, ...
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub dst: IpNet,
    /// One for a plain route, several for a multipath one, none for a route without a
    /// next hop (`unreachable`).
    pub nexthops: Vec<NextHop>,
    /// RTA_PRIORITY (`metric`).
    pub metric: u32,
    /// rtm_protocol (`proto`): who added it.
    pub protocol: u8,
    /// The message the kernel dumped, which deletes (or restores) exactly this route.
    #[serde(skip)]
    pub message: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NextHop {
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
}

/// An ip rule that is not policyroute's and has a fwmark selector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForeignRule {
    pub family: Family,
    pub priority: u32,
    /// `not`: the rule matches the packets its selectors do not.
    pub invert: bool,
    pub src: Option<IpNet>,
    /// `fwmark VALUE/MASK` (always there on a foreign rule in the way).
    pub fwmark: Option<(u32, u32)>,
    /// Its other selectors as `ip rule` prints them (`iif eth0`, `ipproto 6`, ...).
    pub selectors: Vec<String>,
    /// `lookup`, `goto`, `nop`, `blackhole`, `unreachable` or `prohibit`.
    pub action: &'static str,
    /// The table of `lookup`; 0 for other actions.
    pub table: u32,
    /// The priority `goto` continues at.
    pub goto: Option<u32>,
    pub suppress_prefixlen: Option<u32>,
    /// FRA_PROTOCOL (`proto`): who added it.
    pub protocol: u8,
    /// The message the kernel dumped, which deletes exactly this rule.
    #[serde(skip)]
    pub message: Vec<u8>,
}

impl ForeignRule {
    /// The same rule as one of policyroute's would be, when it is that plain (a lookup
    /// with no other selector).
    pub fn as_ip_rule(&self) -> Option<IpRule> {
        let plain = self.action == "lookup" && !self.invert && self.selectors.is_empty();
        plain.then_some(IpRule {
            family: self.family,
            priority: self.priority,
            table: self.table,
            fwmark: self.fwmark,
            suppress_prefixlen: self.suppress_prefixlen,
            src: self.src,
        })
    }
}

/// As `ip rule` prints it, with its other selectors, its action and `proto`.
impl std::fmt::Display for ForeignRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        ip_text::rule_selectors(
            f,
            self.family,
            self.priority,
            self.invert,
            self.src,
            self.fwmark,
        )?;
        for selector in &self.selectors {
            write!(f, " {selector}")?;
        }
        match (self.action, self.goto) {
            ("lookup", _) => ip_text::lookup(f, self.table)?,
            ("goto", Some(p)) => write!(f, " goto {p}")?,
            (action, _) => write!(f, " {action}")?,
        }
        ip_text::suppress(f, self.suppress_prefixlen)?;
        write!(f, " proto {}", ip_text::route_protocol(self.protocol))
    }
}

impl ForeignRoute {
    /// As `ip route` prints it, with device names, its type, next hops, `proto` and
    /// `metric`.
    pub fn display<'a>(&'a self, devices: &'a DeviceNames) -> impl std::fmt::Display + 'a {
        std::fmt::from_fn(move |f| {
            let kind = match self.kind {
                "unicast" => String::new(),
                k => format!("{k} "),
            };
            f.write_str(&ip_text::route_head(
                self.family,
                self.table,
                &kind,
                &self.dst,
            ))?;
            let multipath = self.nexthops.len() > 1;
            for hop in &self.nexthops {
                if multipath {
                    f.write_str(" nexthop")?;
                }
                f.write_str(&ip_text::next_hop(hop.gateway, hop.oif, devices))?;
            }
            write!(f, " proto {}", ip_text::route_protocol(self.protocol))?;
            match self.metric {
                0 => Ok(()),
                m => write!(f, " metric {m}"),
            }
        })
    }
}

/// The foreign objects in policyroute's way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Foreign {
    pub routes: Vec<ForeignRoute>,
    pub ip_rules: Vec<ForeignRule>,
}

impl Foreign {
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.ip_rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.routes.len() + self.ip_rules.len()
    }

    /// One line each, as ip(8) prints them: `route ...`, `ip rule ...`.
    pub fn lines(&self, devices: &DeviceNames) -> Vec<String> {
        let routes = self
            .routes
            .iter()
            .map(|r| format!("route {}", r.display(devices)));
        let rules = self.ip_rules.iter().map(|r| format!("ip rule {r}"));
        routes.chain(rules).collect()
    }

    /// The foreign route that holds `route`'s place: same table, destination and metric,
    /// where the kernel keeps one route (adding `route` answers EEXIST, replacing it
    /// takes its place).
    pub fn in_place_of(&self, route: &IpRoute) -> Option<&ForeignRoute> {
        self.routes.iter().find(|f| {
            f.family == route.family
                && f.table == route.table
                && f.dst == route.dst
                && f.metric == default_metric(route.family)
        })
    }
}

/// The metric the kernel gives a route added without one, as policyroute adds its own.
pub fn default_metric(family: Family) -> u32 {
    match family {
        Family::V4 => 0,
        // IP6_RT_PRIO_USER
        Family::V6 => 1024,
    }
}

/// The tables policyroute manages: its gateways' (never a reserved one: the policy
/// refuses those, and main, local and default belong to the system).
pub fn managed_tables(policy: &Policy) -> BTreeSet<u32> {
    policy
        .gateways
        .iter()
        .map(|g| g.table)
        .filter(|&t| rt_tables::reserved(t).is_none())
        .collect()
}

/// Whether a rule with `fwmark value/mask` (`invert`: `not fwmark`) matches a packet
/// that carries `mark` under `mark_mask`, judged by the bits under `mark_mask` alone:
/// the others belong to other tools, which is how tools share a mark. A rule that looks at
/// none of those bits does not depend on policyroute's marks.
pub fn overlaps(fwmark: (u32, u32), invert: bool, mark: u32, mark_mask: u32) -> bool {
    let (value, mask) = fwmark;
    let ours = mask & mark_mask;
    ours != 0 && (((mark ^ value) & ours == 0) != invert)
}

/// What of `routes` and `rules` (the foreign objects observed) is in `policy`'s way.
pub fn in_the_way(policy: &Policy, routes: &[ForeignRoute], rules: &[ForeignRule]) -> Foreign {
    let tables = managed_tables(policy);
    let marks: BTreeSet<u32> = policy
        .gateways
        .iter()
        .map(|g| g.mark & policy.mark_mask)
        .collect();
    Foreign {
        routes: routes
            .iter()
            .filter(|r| tables.contains(&r.table) && r.protocol != RTPROT_KERNEL)
            .cloned()
            .collect(),
        ip_rules: rules
            .iter()
            .filter(|r| {
                let overlap = |f, m| overlaps(f, r.invert, m, policy.mark_mask);
                r.fwmark
                    .is_some_and(|f| marks.iter().any(|&m| overlap(f, m)))
            })
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_overlaps_a_mark_when_the_bits_it_shares_with_the_mask_agree() {
        // An old recipe's `fwmark 0x1` (mask all ones) and a gateway with mark 1.
        assert!(overlaps((0x1, u32::MAX), false, 0x1, u32::MAX));
        assert!(overlaps((0x1, u32::MAX), false, 0x1, 0xff));
        // Another mark.
        assert!(!overlaps((0x2, u32::MAX), false, 0x1, 0xff));
        // A mask of its own, wider than ours: judged by our bits (0x100 is another tool's).
        assert!(overlaps((0x101, 0xffff), false, 0x1, 0xff));
        // Only some of our bits: 0x100 under 0x100 agrees with 0x300, 0x200 under 0x300 not.
        assert!(overlaps((0x100, 0x100), false, 0x300, 0xff00));
        assert!(!overlaps((0x200, 0x300), false, 0x100, 0xff00));
    }

    #[test]
    fn a_rule_on_other_bits_only_does_not_overlap() {
        // Another tool's bits (0xff00) beside ours (0xff): the usual way to share the mark.
        assert!(!overlaps((0x100, 0xff00), false, 0x1, 0xff));
        assert!(!overlaps((0x0, 0xff00), false, 0x1, 0xff));
        // Our mark under 0xff00, a rule of the low byte.
        assert!(!overlaps((0x1, u32::MAX), false, 0x100, 0xff00));
        // No mask: no fwmark condition at all.
        assert!(!overlaps((0x1, 0), false, 0x1, u32::MAX));
    }

    #[test]
    fn not_fwmark_overlaps_the_marks_it_does_not_name() {
        assert!(overlaps((0x5, 0xff), true, 0x1, 0xff));
        assert!(!overlaps((0x1, 0xff), true, 0x1, 0xff));
        assert!(!overlaps((0x100, 0xff00), true, 0x1, 0xff));
    }
}
