//! Drift: how the kernel differs from the applied policy. It is what `apply` of the
//! recorded policy would change now (the same plan, with missing devices awaited), so
//! `status`, `check` and the daemon judge by one rule; and what it would refuse: others'
//! routes and ip rules in the policy's way (`plan::foreign`).
use serde::Serialize;

use super::ControlError;
use crate::{
    kernel::{
        netlink::{Link, Netlink},
        observe::{self, Installed},
    },
    plan::{
        self, foreign,
        ip_text::DeviceNames,
        objects::{IpRoute, IpRule},
        record::Record,
        DataplaneStep, Devices, Observed, Plan,
    },
};

/// One thing that is not as the policy wants it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DriftItem {
    /// `route`, `ip_rule`, `hook`, `classifier` or `device`.
    pub kind: &'static str,
    /// `missing` (should exist and does not), `stale` (exists and should not), `differs`,
    /// `foreign` (a route or ip rule of others in the policy's way), or for a device
    /// `missing` / `down` (what needs it waits).
    pub change: &'static str,
    pub object: String,
}

fn item(kind: &'static str, change: &'static str, object: String) -> DriftItem {
    DriftItem {
        kind,
        change,
        object,
    }
}

/// The drift of the namespace from `record` (none recorded: everything owned is stale).
pub async fn drift(
    nl: &Netlink,
    links: &[Link],
    installed: &Installed,
    record: Option<&Record>,
) -> Result<Vec<DriftItem>, ControlError> {
    let devices: Vec<&str> = record.map_or_else(Vec::new, |r| r.policy.address_devices());
    let tables = record.map(|r| foreign::managed_tables(&r.policy));
    let observed =
        observe::observe(nl, links, installed, &devices, &tables.unwrap_or_default()).await?;
    let names: DeviceNames = links.iter().map(|l| (l.index, l.name.clone())).collect();
    let Some(record) = record else {
        return Ok(unrecorded(&observed, &names));
    };
    let plan = plan::plan(
        record.policy.clone(),
        &record.source,
        &observed,
        Some(record),
        Devices::Awaited,
    )?;
    let mut items = of_plan(&plan, &observed, &names);
    if let Some(e) = classifier(&plan, installed)? {
        items.push(e);
    }
    Ok(items)
}

fn of_plan(plan: &Plan, observed: &Observed, names: &DeviceNames) -> Vec<DriftItem> {
    let mut items = Vec::new();
    for w in &plan.waiting {
        items.push(item("device", w.reason, w.dev.clone()));
    }
    let routes = |change, list: &[IpRoute]| {
        list.iter()
            .map(|r| item("route", change, r.display(names).to_string()))
            .collect::<Vec<_>>()
    };
    items.extend(routes("missing", &plan.routes.add));
    items.extend(routes("stale", &plan.routes.remove));
    let rules = |change, list: &[IpRule]| {
        list.iter()
            .map(|r| item("ip_rule", change, r.to_string()))
            .collect::<Vec<_>>()
    };
    items.extend(rules("missing", &plan.ip_rules.add));
    items.extend(rules("stale", &plan.ip_rules.remove));
    let foreign = &plan.foreign;
    for r in &foreign.routes {
        items.push(item("route", "foreign", r.display(names).to_string()));
    }
    for r in &foreign.ip_rules {
        items.push(item("ip_rule", "foreign", r.to_string()));
    }
    for hook in &plan.attach {
        items.push(item("hook", "missing", hook.describe()));
    }
    for &i in &plan.detach {
        items.push(item("hook", "stale", observed.attachments[i].describe()));
    }
    items
}

/// The classifier's entries against the compiled policy (one dump of the rules map).
fn classifier(plan: &Plan, installed: &Installed) -> Result<Option<DriftItem>, ControlError> {
    let stats = match (&plan.dataplane, &installed.dataplane) {
        (DataplaneStep::Reuse { .. }, Some(dp)) => dp.maps.diff(&plan.compiled)?.stats(),
        // Nothing is loaded but hooks are wanted: those are reported as missing hooks.
        _ => return Ok(None),
    };
    if stats.inserted + stats.updated + stats.removed == 0 {
        return Ok(None);
    }
    let what = format!(
        "{} missing, {} differing, {} stale entries",
        stats.inserted, stats.updated, stats.removed
    );
    Ok(Some(item("classifier", "differs", what)))
}

/// Without a record every owned object is a leftover (of an interrupted apply, say).
fn unrecorded(observed: &Observed, names: &DeviceNames) -> Vec<DriftItem> {
    let routes = observed
        .routes
        .iter()
        .map(|r| item("route", "stale", r.display(names).to_string()));
    let rules = observed
        .ip_rules
        .iter()
        .map(|r| item("ip_rule", "stale", r.to_string()));
    let hooks = observed
        .attachments
        .iter()
        .map(|a| item("hook", "stale", a.describe()));
    routes.chain(rules).chain(hooks).collect()
}
