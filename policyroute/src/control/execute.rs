//! The last stage of `apply`: carry a plan out. The order keeps traffic flowing: the maps
//! first (new entries become reachable only when the shape tables switch), routes before
//! the ip rules that point at them, new hooks before stale ones go, stale ip rules and
//! routes last.
//!
//! Taking over others' routes and rules (`--adopt`) is one change set: a route of ours
//! replaces the foreign one in its place in one step (the table is never without it), and
//! the other foreign objects are removed last, only once all of ours are in. Should any of
//! ours fail, the replaced routes are put back and no foreign object is removed.
use super::{timings::Timings, ControlError, Options};
use crate::kernel::{
    attach,
    dataplane::{Dataplane, DataplaneError},
    maps::{InstallStats, SwitchMaps},
    netlink::{Netlink, NetlinkError, RTPROT_POLICYROUTE},
    observe::Installed,
    pins, record_store, run_dir, KernelError,
};
use crate::plan::{foreign::ForeignRoute, DataplaneStep, Plan};
use policyroute_common::RuleKey;

/// Executes `plan` against what `installed` found; returns the classifier entries written,
/// and the maps a later health change writes (when a dataplane is in use).
/// Problems that do not stop the apply are added to `warnings`.
/// `keys`: the only classifier entries that can differ (see `plan::changed`); `None`:
/// compare them all. `adopt`: take over `plan.foreign`.
pub async fn execute(
    nl: &Netlink,
    opts: &Options,
    plan: &mut Plan,
    installed: &mut Installed,
    keys: Option<&[RuleKey]>,
    adopt: bool,
    warnings: &mut Vec<String>,
) -> Result<(InstallStats, Option<SwitchMaps>), ControlError> {
    let (mut dp, entries) = match dataplane(plan, installed, opts, keys)? {
        Some((dp, entries)) => (Some(dp), entries),
        None => (None, InstallStats::default()),
    };
    let switch = dp.as_ref().map(|dp| dp.maps.switch_maps()).transpose()?;
    let replaced = if adopt { replaced(plan) } else { Vec::new() };
    let mut failed = add_routing(nl, plan, &replaced).await;
    if !failed.is_empty() {
        for route in &replaced {
            if let Err(e) = nl.restore_route(route).await {
                failed.push(e);
            }
        }
    }
    attachments(plan, dp.as_ref(), installed)?;
    remove_routing(nl, plan).await?;
    if adopt && failed.is_empty() {
        remove_foreign(nl, plan, &replaced).await?;
    }
    if let Some(dp) = dp.as_mut() {
        if let Err(e) = opts.pin_dir().and_then(|dir| pins::pin(dp, &dir)) {
            warnings.push(format!("pinning in bpffs: {e}"));
        }
    }
    run_dir::set_cgroup_hints(&plan.cgroups).map_err(KernelError::io("recording cgroups"))?;
    match failed.is_empty() {
        true => Ok((entries, switch)),
        false if adopt => Err(ControlError::NotAdopted(failed)),
        false => Err(ControlError::Incomplete(failed)),
    }
}

/// What writing the plan's classifier entries would change (for a dry run: reads only).
pub fn preview_entries(plan: &Plan, installed: &Installed) -> Result<InstallStats, ControlError> {
    Ok(match (&plan.dataplane, &installed.dataplane) {
        (DataplaneStep::Reuse { .. }, Some(dp)) => dp.maps.diff(&plan.compiled)?.stats(),
        (DataplaneStep::Load(_), _) => InstallStats {
            inserted: plan.compiled.entries.len(),
            ..InstallStats::default()
        },
        _ => InstallStats::default(),
    })
}

/// Test hook: `POLICYROUTE_CRASH_AFTER=<step>` aborts right after that step of an apply,
/// so tests can prove that the next apply repairs and flush removes a half-done apply.
fn crash_point(step: &str) {
    if std::env::var("POLICYROUTE_CRASH_AFTER").is_ok_and(|s| s == step) {
        std::process::abort();
    }
}

/// Loads or reuses the dataplane, then writes the classifier, the switches, the device
/// roles and the record into its maps.
fn dataplane(
    plan: &mut Plan,
    installed: &mut Installed,
    opts: &Options,
    keys: Option<&[RuleKey]>,
) -> Result<Option<(Dataplane, InstallStats)>, ControlError> {
    let mut dp = match &plan.dataplane {
        DataplaneStep::Unused => return Ok(None),
        DataplaneStep::Load(capacity) => Dataplane::load(*capacity)?,
        DataplaneStep::Reuse { new_programs, .. } => {
            let mut dp = installed
                .dataplane
                .take()
                .expect("a plan reuses only the dataplane it observed");
            dp.maps.zero_counters(plan.slots_to_zero.iter().copied())?;
            if *new_programs {
                // New hooks need programs: load them once more, sharing these maps.
                let dir = opts.pin_dir()?;
                pins::pin(&mut dp, &dir)?;
                dp = Dataplane::load_sharing(&dir)?;
            }
            dp
        }
    };
    let mut t = Timings::start();
    // Gateway and group states before the entries that name them, stale ones after.
    let had = dp.maps.targets()?;
    dp.maps.write_targets(&plan.targets, &had)?;
    dp.maps.forget_flows(&plan.gone_down)?;
    let entries = match keys {
        Some(keys) => dp.maps.install_keys(&plan.compiled, keys)?,
        None => dp.maps.install(&plan.compiled)?,
    };
    dp.maps.remove_targets(&plan.targets, &had)?;
    plan.record.epoch = Some(dp.maps.epoch()?);
    t.mark("execute: classifier entries");
    crash_point("maps");
    let desired = &plan.desired;
    dp.maps
        .set_control(desired.control_flags, plan.netns_cookie, plan.sticky_ttl_ns)?;
    dp.maps.set_roles(&desired.roles, &desired.sources)?;
    dp.maps
        .set_fast_path(&desired.fast, &desired.addresses, &desired.kernel_dsts)?;
    record_store::write_record(&mut dp.maps, &plan.record)?;
    t.mark("execute: write the record");
    crash_point("record");
    Ok(Some((dp, entries)))
}

/// The foreign routes that routes of ours take the place of (`plan::foreign`).
fn replaced(plan: &Plan) -> Vec<ForeignRoute> {
    let routes = plan.routes.add.iter();
    routes
        .filter_map(|r| plan.foreign.in_place_of(r).cloned())
        .collect()
}

/// Routes first, then the rules that point at them, so marked traffic never meets an
/// empty table. A route of ours that takes the place of one of `replaced` replaces it.
/// A route the kernel refuses (its gateway unreachable, say) does not stop the others or
/// the rest of the apply; the failures are returned. (A rule whose table lacks its route
/// only passes the traffic on to the next rule.)
async fn add_routing(nl: &Netlink, plan: &Plan, replaced: &[ForeignRoute]) -> Vec<NetlinkError> {
    let mut failed = Vec::new();
    for route in &plan.routes.add {
        let result = match plan.foreign.in_place_of(route) {
            Some(f) if replaced.contains(f) => nl.replace_route(route, RTPROT_POLICYROUTE).await,
            _ => ignore_exists(nl.add_route(route, RTPROT_POLICYROUTE).await),
        };
        if let Err(e) = result {
            failed.push(e);
        }
    }
    crash_point("routes");
    for rule in &plan.ip_rules.add {
        if let Err(e) = ignore_exists(nl.add_rule(rule, RTPROT_POLICYROUTE).await) {
            failed.push(e);
        }
    }
    crash_point("rules");
    failed
}

async fn remove_routing(nl: &Netlink, plan: &Plan) -> Result<(), ControlError> {
    for rule in &plan.ip_rules.remove {
        ignore_missing(nl.del_rule(rule, RTPROT_POLICYROUTE).await)?;
    }
    for route in &plan.routes.remove {
        ignore_missing(nl.del_route(route, RTPROT_POLICYROUTE).await)?;
    }
    Ok(())
}

/// The foreign rules, then the foreign routes no route of ours replaced (deleting those
/// by their old message could match ours where the message leaves the protocol out).
async fn remove_foreign(
    nl: &Netlink,
    plan: &Plan,
    replaced: &[ForeignRoute],
) -> Result<(), ControlError> {
    for rule in &plan.foreign.ip_rules {
        // A rule without a protocol deletes by a message without one, which the kernel
        // takes as "any protocol": where one of ours is its twin, that would delete
        // whichever comes first. Ours goes first and comes back (its twin routes alike
        // meanwhile).
        let twin = rule
            .as_ip_rule()
            .filter(|r| rule.protocol == 0 && plan.desired.rules.contains(r));
        if let Some(ours) = &twin {
            ignore_missing(nl.del_rule(ours, RTPROT_POLICYROUTE).await)?;
        }
        ignore_missing(nl.del_foreign_rule(rule).await)?;
        if let Some(ours) = &twin {
            ignore_exists(nl.add_rule(ours, RTPROT_POLICYROUTE).await)?;
        }
    }
    for route in plan.foreign.routes.iter().filter(|r| !replaced.contains(r)) {
        ignore_missing(nl.del_foreign_route(route).await)?;
    }
    Ok(())
}

fn attachments(
    plan: &Plan,
    dp: Option<&Dataplane>,
    installed: &Installed,
) -> Result<(), ControlError> {
    if let Some(dp) = dp {
        for hook in &plan.attach {
            let prog = dp
                .program_fd(hook.program())
                .ok_or(DataplaneError::Missing(hook.program()))?;
            attach::attach(hook, prog, installed.cgroup_root.as_deref())?;
        }
    }
    crash_point("attach");
    for &i in &plan.detach {
        attach::detach(&installed.attached[i], installed.cgroup_root.as_deref())?;
    }
    Ok(())
}

pub(super) fn ignore_exists(r: Result<(), NetlinkError>) -> Result<(), NetlinkError> {
    match r {
        Err(NetlinkError::Exists { .. }) => Ok(()),
        other => other,
    }
}

pub(super) fn ignore_missing(r: Result<(), NetlinkError>) -> Result<(), NetlinkError> {
    match r {
        Err(NetlinkError::NotFound { .. }) => Ok(()),
        other => other,
    }
}
