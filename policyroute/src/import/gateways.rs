//! Gateways from the fwmark ip rules: each rule's table with its default route(s) is one
//! gateway, its mark the rule's mark. A `from` rule's table is one too (see
//! [`for_table`]).
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::ip_route::Route;
use super::ip_rule::FwmarkRule;
use super::Note;
use crate::policy::matcher::Family;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayOut {
    pub name: String,
    /// As `ip` printed it: an rt_tables name is kept.
    pub table: String,
    pub dev: String,
    pub via: Vec<IpAddr>,
    /// The first fwmark rule's mark; `None` for a table only `from` rules use (the policy
    /// derives one).
    pub mark: Option<u32>,
    /// `sticky = true`: from a CONNMARK save and restore.
    pub sticky: bool,
}

impl GatewayOut {
    /// Whether the gateway routes `family`: a device route serves both.
    pub fn serves(&self, family: Family) -> bool {
        self.via.is_empty() || self.via.iter().any(|v| Family::of(v) == family)
    }

    /// Whether main's default route leaves through the gateway's device too: then its
    /// inbound connections cannot be told from the main uplink's there (`apply` refuses
    /// `sticky` on it).
    pub fn shares_main_uplink(&self, routes: &[Route]) -> bool {
        routes
            .iter()
            .any(|r| r.table == "main" && r.is_default() && r.dev.as_ref() == Some(&self.dev))
    }
}

#[derive(Debug, Default)]
pub struct Gateways {
    pub list: Vec<GatewayOut>,
    /// Which gateway (by name) each mark selects.
    pub by_mark: BTreeMap<u32, String>,
    /// Every mark some fwmark rule tests, gateway or not.
    pub tested: BTreeSet<u32>,
    pub notes: Vec<Note>,
}

const KERNEL_TABLES: [&str; 8] = [
    "local", "main", "default", "unspec", "255", "254", "253", "0",
];

pub fn build(rules: &[FwmarkRule], routes: &[Route]) -> Gateways {
    let mut out = Gateways::default();
    let mut sorted: Vec<&FwmarkRule> = rules.iter().collect();
    // The kernel tries rules by priority: the first for a mark is the one that acts.
    sorted.sort_by_key(|r| r.priority);
    for rule in sorted {
        add(&mut out, rule, routes);
    }
    out
}

fn add(out: &mut Gateways, rule: &FwmarkRule, routes: &[Route]) {
    out.tested.insert(rule.mark);
    if rule.mark == 0 {
        let why = "fwmark 0 matches unmarked traffic; a policy gateway needs a non-zero mark";
        out.notes.push(Note::at(&rule.origin.0, rule.origin.1, why));
        return;
    }
    if KERNEL_TABLES.contains(&rule.table.as_str()) || out.by_mark.contains_key(&rule.mark) {
        // A mark that leads to main, or a later rule for a mark an earlier one decides:
        // the fresh namespace behaves the same without them.
        return;
    }
    match for_table(out, &rule.table, &rule.origin, routes) {
        Ok(name) => {
            if let Some(g) = out.list.iter_mut().find(|g| g.name == name) {
                g.mark.get_or_insert(rule.mark);
            }
            out.by_mark.insert(rule.mark, name);
        }
        Err(why) => {
            let why = format!(
                "{why}: no gateway for mark {:#x} (rules setting it keep it as a raw mark)",
                rule.mark
            );
            out.notes.push(Note::at(&rule.origin.0, rule.origin.1, why));
        }
    }
}

/// The name of table `table`'s gateway, made from its default route(s) the first time;
/// `Err` says why the table has none. `origin`: the ip rule that asks, for notes.
pub fn for_table(
    out: &mut Gateways,
    table: &str,
    origin: &(String, usize),
    routes: &[Route],
) -> Result<String, String> {
    if let Some(g) = out.list.iter().find(|g| g.table == table) {
        return Ok(g.name.clone());
    }
    let note = |what: String| Note::at(&origin.0, origin.1, what);
    let in_table: Vec<&Route> = routes.iter().filter(|r| r.table == table).collect();
    let defaults: Vec<&Route> = in_table
        .iter()
        .copied()
        .filter(|r| r.is_default() && r.kind == "unicast" && !r.multipath && r.dev.is_some())
        .collect();
    if in_table.iter().any(|r| r.is_default() && r.multipath) {
        let why = format!("table {table}: multipath default routes are not imported");
        out.notes.push(note(why));
    }
    let Some(first) = defaults.first() else {
        return Err(format!("table {table} has no default route with a device"));
    };
    let dev = first.dev.clone().unwrap_or_default();
    let mut via: Vec<IpAddr> = Vec::new();
    for r in &defaults {
        if r.dev.as_deref() != Some(dev.as_str()) {
            let why = format!(
                "table {table}: the {} default route uses dev {}, the gateway has one device ({dev})",
                r.family,
                r.dev.as_deref().unwrap_or("?")
            );
            out.notes.push(note(why));
            continue;
        }
        if let Some(v) = r
            .via
            .filter(|v| !via.iter().any(|w| Family::of(w) == Family::of(v)))
        {
            via.push(v);
        }
    }
    for r in in_table
        .iter()
        .filter(|r| !r.is_default() && !in_main(r, routes))
    {
        let (file, line) = &r.origin;
        let why = format!(
            "table {table}: route {} is not imported (a gateway's table holds its default route; \
             main's routes are consulted first)",
            r.dst.map(|d| d.to_string()).unwrap_or_default()
        );
        out.notes.push(Note::at(file, *line, why));
    }
    let name = if table.parse::<u32>().is_ok() {
        format!("table-{table}")
    } else {
        table.to_owned()
    };
    out.list.push(GatewayOut {
        name: name.clone(),
        table: table.to_owned(),
        dev,
        via,
        mark: None,
        sticky: false,
    });
    Ok(name)
}

/// A route copied from main (the classic recipe copies main into each table): the
/// policy's `main_routes_first` gives marked traffic main's routes anyway.
fn in_main(route: &Route, routes: &[Route]) -> bool {
    routes.iter().any(|m| {
        m.table == "main" && m.dst == route.dst && m.dev == route.dev && m.via == route.via
    })
}
