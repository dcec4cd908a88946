//! `from PREFIX lookup T` ip rules as policy rules with that `src` and T's gateway. The
//! kernel tries ip rules by priority: one before every fwmark rule decides before any mark
//! does, so its policy rule comes first; one after them all decides for what no mark
//! routes, so its rule comes last, and a copy narrowed to a rule that leaves packets
//! unmarked (mark 0, or a mark no fwmark rule tests) goes before that rule. One between
//! fwmark rules is listed.
use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::attach::Arrives;
use super::both::both;
use super::gateways::{self, Gateways};
use super::ip_route::Route;
use super::ip_rule::{FromRule, FwmarkRule};
use super::{Note, RuleOut};
use crate::policy::matcher::{Family, Match};
use crate::policy::{Target, MAIN_RULE_PRIORITY};

/// Tables `lookup` can name that are not a gateway's: main's own, and the other kernel
/// tables.
const MAIN: [&str; 2] = ["main", "254"];
const OTHER_KERNEL_TABLES: [&str; 6] = ["local", "default", "unspec", "255", "253", "0"];

#[derive(Debug, Default)]
pub struct FromRules {
    /// Before every rule from the chains.
    pub first: Vec<RuleOut>,
    /// After them.
    pub last: Vec<RuleOut>,
    /// Where the traffic of each of those rules arrives.
    pub arrives: Vec<Arrives>,
    pub notes: Vec<Note>,
    pub remarks: Vec<String>,
}

/// Where each rule goes, or why it does not. `local`: the policy hooks this host's sockets.
pub fn build(
    from: &[FromRule],
    fwmarks: &[FwmarkRule],
    gws: &mut Gateways,
    routes: &[Route],
    local: bool,
) -> FromRules {
    let mut out = FromRules::default();
    let mut sorted: Vec<&FromRule> = from.iter().collect();
    sorted.sort_by_key(|r| r.priority);
    for rule in sorted {
        let note = |why: String| Note::at(&rule.origin.0, rule.origin.1, why);
        let p = rule.priority;
        let before = fwmarks.iter().all(|f| p < f.priority);
        let after = !before && fwmarks.iter().all(|f| p > f.priority);
        let what = format!("ip rule {p}: from {} lookup {}", rule.src, rule.table);
        if p > MAIN_RULE_PRIORITY {
            out.notes.push(note(format!(
                "{what}: comes after main's rule (32766), so main's default route wins over \
                 it; not imported"
            )));
            continue;
        }
        if !before && !after {
            out.notes.push(note(format!(
                "{what}: between fwmark rules, it wins over the marks of some and not of \
                 others; the policy's rules come all before or all after the marks; not \
                 imported"
            )));
            continue;
        }
        let target = match target(rule, gws, routes) {
            // After the fwmark rules, main for unmarked traffic is what happens anyway.
            Ok(None) => {
                if before {
                    Target::Mark(0)
                } else {
                    continue;
                }
            }
            Ok(Some(name)) => Target::Gateway(name),
            Err(why) => {
                out.notes.push(note(format!("{what}: {why}; not imported")));
                continue;
            }
        };
        match own_address(rule, &target, gws, routes, local) {
            Some(Ok(remark)) => {
                out.remarks.push(remark);
                continue;
            }
            Some(Err(why)) => {
                out.notes.push(note(format!("{what}: {why}; not imported")));
                continue;
            }
            None => {}
        }
        let gateway = matches!(target, Target::Gateway(_));
        if let Some(addr) = host_address_in(rule.src, routes).filter(|_| gateway) {
            out.notes.push(note(format!(
                "{what}: holds this host's address {addr}: in the recipe the host's own \
                 traffic from it (replies of its services) goes to table {} too, in the \
                 policy it keeps the main table",
                rule.table
            )));
        }
        let rule_out = RuleOut {
            name: format!("ip-rule-{p}"),
            origin: format!("{}:{} ({what})", rule.origin.0, rule.origin.1),
            matcher: Match {
                src: Some(rule.src),
                ..Match::default()
            },
            target,
        };
        out.arrives.push(arrives(rule.src, routes));
        if before {
            out.first.push(rule_out);
        } else {
            out.last.push(rule_out);
        }
    }
    out
}

/// The rule's gateway (`None`: main); `Err` says why it has none.
fn target(rule: &FromRule, gws: &mut Gateways, routes: &[Route]) -> Result<Option<String>, String> {
    let table = rule.table.as_str();
    if MAIN.contains(&table) {
        return Ok(None);
    }
    if OTHER_KERNEL_TABLES.contains(&table) {
        return Err(format!("table {table} is no gateway's"));
    }
    let name = gateways::for_table(gws, table, &rule.origin, routes)?;
    let family = Family::of_net(&rule.src);
    let serves = gws.list.iter().any(|g| g.name == name && g.serves(family));
    if !serves {
        return Err(format!("table {table} has no {family} default route"));
    }
    Ok(Some(name))
}

/// For a rule of exactly this host's address on the gateway's device (a multi-homed host
/// answering through the link an address belongs to): `Ok(remark)` when the policy
/// installs that rule itself, `Err(why)` when it does not.
fn own_address(
    rule: &FromRule,
    target: &Target,
    gws: &Gateways,
    routes: &[Route],
    local: bool,
) -> Option<Result<String, String>> {
    let Target::Gateway(name) = target else {
        return None;
    };
    let g = gws.list.iter().find(|g| &g.name == name)?;
    let addr = rule.src.addr();
    let own = rule.src.prefix_len() == rule.src.max_prefix_len()
        && routes.iter().any(|r| {
            r.kind == "local"
                && r.dst.map(|d| d.addr()) == Some(addr)
                && r.dev.as_ref() == Some(&g.dev)
        });
    if !own {
        return None;
    }
    Some(if (local || g.sticky) && !g.shares_main_uplink(routes) {
        Ok(format!(
            "ip rule {}: from {addr} lookup {}: {addr} is this host's address on {}; the \
             policy gives gateway {name} that rule itself ({}).",
            rule.priority,
            rule.table,
            g.dev,
            if g.sticky { "sticky" } else { "attach.local" }
        ))
    } else {
        Err(format!(
            "{addr} is this host's address on {}: replies of its services are not \
             classified by their source; `sticky = true` on gateway {name} (or [attach] \
             local = true) gives it this rule, unless {} is also the main uplink's device",
            g.dev, g.dev
        ))
    })
}

/// An address of this host (a `local` route) inside `net`.
fn host_address_in(net: IpNet, routes: &[Route]) -> Option<IpAddr> {
    routes
        .iter()
        .filter(|r| r.kind == "local")
        .filter_map(|r| r.dst)
        .map(|d| d.addr())
        .find(|a| net.contains(a))
}

/// Traffic from `src` arrives through the device main routes `src` to: the most specific
/// main route holding it, or the devices of main's routes inside it; anywhere when main
/// reaches it only by its default route.
fn arrives(src: IpNet, routes: &[Route]) -> Arrives {
    let main: Vec<(&IpNet, &String)> = routes
        .iter()
        .filter(|r| r.table == "main" && r.kind == "unicast" && r.dev.as_deref() != Some("lo"))
        .filter_map(|r| Some((r.dst.as_ref()?, r.dev.as_ref()?)))
        .collect();
    let holding = main
        .iter()
        .filter(|(net, _)| net.contains(&src))
        .max_by_key(|(net, _)| net.prefix_len());
    if let Some((_, dev)) = holding {
        return Arrives::On(vec![(*dev).clone()]);
    }
    let mut inside: Vec<String> = main
        .iter()
        .filter(|(net, _)| src.contains(*net))
        .map(|(_, dev)| (*dev).clone())
        .collect();
    inside.dedup();
    if inside.is_empty() {
        Arrives::Anywhere
    } else {
        Arrives::On(inside)
    }
}

/// The rules in policy order: the `from` rules that come first, the chains' rules with
/// copies of the last `from` rules before each rule that leaves packets unmarked, the
/// last `from` rules. Names are made unique.
pub fn splice(rules: Vec<RuleOut>, from: FromRules, gws: &Gateways) -> Vec<RuleOut> {
    let mut out = from.first;
    for r in rules {
        let unmarked = matches!(r.target, Target::Mark(m) if !gws.tested.contains(&m));
        if unmarked {
            for f in &from.last {
                let Some(matcher) = both(&f.matcher, &r.matcher) else {
                    continue;
                };
                out.push(RuleOut {
                    name: format!("{}/{}", f.name, r.name),
                    origin: format!("{}, for what {} leaves unmarked", f.origin, r.name),
                    matcher,
                    target: f.target.clone(),
                });
            }
        }
        out.push(r);
    }
    out.extend(from.last);
    unique_names(&mut out);
    out
}

fn unique_names(rules: &mut [RuleOut]) {
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for r in rules {
        if taken.contains(&r.name) {
            let base = std::mem::take(&mut r.name);
            let mut n = 2;
            while taken.contains(&format!("{base}-{n}")) {
                n += 1;
            }
            r.name = format!("{base}-{n}");
        }
        taken.insert(r.name.clone());
    }
}
