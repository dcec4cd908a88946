//! What the kernel should hold for a policy, and the difference to what it holds.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use serde::Serialize;

use crate::{
    config::Policy,
    netlink::{Family, IpRoute, IpRule},
};

const MAIN_TABLE: u32 = 254;

/// Kernel objects a policy asks for (besides the classifier's maps).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub rules: BTreeSet<IpRule>,
    pub routes: BTreeSet<IpRoute>,
    /// Ingress devices by name, with their index.
    pub ingress: BTreeMap<String, u32>,
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

/// `index_of` maps device names to interface indexes (all were checked to exist).
pub fn desired(policy: &Policy, index_of: &BTreeMap<String, u32>) -> Desired {
    let mut d = Desired::default();
    let prio = policy.rule_priority;
    if policy.main_routes_first {
        for family in [Family::V4, Family::V6] {
            d.rules.insert(IpRule {
                family,
                priority: prio,
                table: MAIN_TABLE,
                fwmark: None,
                suppress_prefixlen: Some(0),
                src: None,
            });
        }
    }
    for gw in &policy.gateways {
        let oif = index_of[&gw.dev];
        for (family, gateway) in gateway_families(&gw.via) {
            d.routes.insert(IpRoute {
                family,
                table: gw.table,
                dst: default_route(family),
                gateway,
                oif,
            });
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
    for dev in &policy.attach.ingress {
        d.ingress.insert(dev.clone(), index_of[dev]);
    }
    d
}

/// Changes that turn `have` into `want`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diff<T> {
    pub add: Vec<T>,
    pub remove: Vec<T>,
}

impl<T> Default for Diff<T> {
    fn default() -> Self {
        Self {
            add: Vec::new(),
            remove: Vec::new(),
        }
    }
}

impl<T: Ord + Clone> Diff<T> {
    pub fn between(have: &BTreeSet<T>, want: &BTreeSet<T>) -> Self {
        Self {
            add: want.difference(have).cloned().collect(),
            remove: have.difference(want).cloned().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}
