//! `policyroute apply`: validate everything, then reconcile the kernel to the policy.
//!
//! Nothing in the kernel changes until the file, the devices and the compiled classifier
//! all check out. Each later step is idempotent, so an apply killed at any point leaves a
//! state the next apply repairs (and `flush` removes).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use serde::Serialize;

use super::{
    crash_point, current, lock, pin,
    plan::{self, Desired, Diff, System},
    record::{self, Record},
    require_privileges, ControlError, Current, Options,
};
use crate::{
    attach::{self, Hook},
    compile::{compile_with_slots, Compiled},
    config::Policy,
    dataplane::{Capacity, Dataplane, InstallStats},
    namespace,
    netlink::{IpRoute, IpRule, Netlink, NetlinkError, RTPROT_POLICYROUTE},
    rt_tables::RtTables,
};

/// What an apply changed (or, with `dry_run`, would change).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub ip_rules: Diff<IpRule>,
    pub routes: Diff<IpRoute>,
    /// Hooks the programs get attached to.
    pub attach: Vec<String>,
    /// `hook (program id)` attachments removed.
    pub detach: Vec<String>,
    /// Classifier hash entries.
    pub entries: InstallStats,
    /// A new dataplane (programs and maps) was (or would be) loaded.
    pub new_dataplane: bool,
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub devices: super::status::DeviceNames,
}

impl Report {
    pub fn changed(&self) -> bool {
        !(self.ip_rules.is_empty()
            && self.routes.is_empty()
            && self.attach.is_empty()
            && self.detach.is_empty()
            && self.entries == InstallStats::default()
            && !self.new_dataplane)
    }
}

pub fn load_tables(opts: &Options) -> Result<RtTables, ControlError> {
    match &opts.rt_tables {
        None => Ok(RtTables::system()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(ControlError::io(format!("reading {}", path.display())))?;
            Ok(RtTables::builtin().with_text(&text))
        }
    }
}

/// Everything an apply decided before touching the kernel.
struct Prepared {
    policy: Policy,
    want: Desired,
    compiled: Compiled,
    slots: Vec<u32>,
    fresh: Vec<u32>,
    cur: Current,
    cookie: u64,
}

pub async fn apply(path: &Path, opts: &Options, dry_run: bool) -> Result<Report, ControlError> {
    require_privileges()?;
    let policy = Policy::load(path, &load_tables(opts)?)?;
    let _lock = lock()?;
    let nl = Netlink::new()?;
    let mut report = Report {
        dry_run,
        ..Report::default()
    };
    let prep = prepare(&nl, policy, &mut report).await?;
    report.ip_rules = Diff::between(&owned_rules(&nl).await?, &prep.want.rules);
    report.routes = Diff::between(&owned_routes(&nl).await?, &prep.want.routes);
    if prep.want.hooks.is_empty() {
        report
            .warnings
            .push("[attach] names no hook: the classifier marks no traffic".into());
    }
    if dry_run {
        plan_dataplane(&prep, &mut report)?;
        return Ok(report);
    }
    execute(&nl, path, opts, prep, &mut report).await?;
    Ok(report)
}

async fn owned_rules(nl: &Netlink) -> Result<BTreeSet<IpRule>, ControlError> {
    Ok(nl.rules(RTPROT_POLICYROUTE).await?.into_iter().collect())
}

async fn owned_routes(nl: &Netlink) -> Result<BTreeSet<IpRoute>, ControlError> {
    Ok(nl.routes(RTPROT_POLICYROUTE).await?.into_iter().collect())
}

/// Validates against the running system and compiles; changes nothing.
async fn prepare(
    nl: &Netlink,
    policy: Policy,
    report: &mut Report,
) -> Result<Prepared, ControlError> {
    let links = nl.links().await?;
    let index_of: BTreeMap<String, u32> = links.iter().map(|l| (l.name.clone(), l.index)).collect();
    policy.check_devices(|d| index_of.contains_key(d))?;
    report.devices = links.iter().map(|l| (l.index, l.name.clone())).collect();
    let mut addresses = BTreeMap::new();
    for gw in &policy.gateways {
        addresses.insert(
            gw.dev.clone(),
            global_addresses(nl, index_of[&gw.dev]).await?,
        );
    }
    let sys = System {
        index_of: &index_of,
        addresses: &addresses,
    };
    let want = plan::desired(&policy, &sys);
    let cgroups = if policy.attach.local {
        vec![plan::local_cgroup(&policy)]
    } else {
        Vec::new()
    };
    let mut cur = current(nl, &cgroups).await?;
    let previous = previous_record(&cur, report);
    let (slots, fresh) = record::assign_slots(&policy, previous.as_ref());
    let shapes = match &cur.dataplane {
        Some(dp) => dp.maps.live_shapes()?,
        None => Default::default(),
    };
    let compiled = compile_with_slots(
        &policy.classifier_rules(),
        &slots,
        policy.mark_mask,
        &shapes,
    )?;
    if !reusable(&cur, &compiled)? && cur.dataplane.take().is_some() {
        report.warnings.push(
            "the policy outgrew the classifier's maps: loading larger ones; rule counters \
             restart at 0"
                .into(),
        );
    }
    let cookie = namespace::netns_cookie().map_err(ControlError::io("netns cookie"))?;
    Ok(Prepared {
        policy,
        want,
        compiled,
        slots,
        fresh,
        cur,
        cookie,
    })
}

/// Addresses a gateway's device answers on (link-local ones route nowhere).
async fn global_addresses(nl: &Netlink, ifindex: u32) -> Result<Vec<IpAddr>, ControlError> {
    Ok(nl
        .addresses(ifindex)
        .await?
        .into_iter()
        .map(|n| n.addr())
        .filter(|a| match a {
            IpAddr::V4(v4) => !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        })
        .collect())
}

/// The record of the previous apply; an unreadable one only costs counter continuity.
fn previous_record(cur: &Current, report: &mut Report) -> Option<Record> {
    let dp = cur.dataplane.as_ref()?;
    match Record::read(&dp.maps) {
        Ok(r) => r,
        Err(e) => {
            report
                .warnings
                .push(format!("{e}; rule counters restart at 0"));
            None
        }
    }
}

/// Whether the current dataplane can hold the compiled policy (else a larger one is loaded).
fn reusable(cur: &Current, compiled: &Compiled) -> Result<bool, ControlError> {
    let Some(dp) = &cur.dataplane else {
        return Ok(false);
    };
    let cap = dp.maps.capacity()?;
    Ok(compiled.counter_slots <= cap.rules as usize
        && compiled.entries.len() <= cap.entries as usize)
}

/// Maps sized to the policy with room to double: a hash map's bucket array is allocated
/// (and walked by every dump) in full, so a 4M-entry default would cost every apply a
/// quarter second. A policy that outgrows them gets a new, larger dataplane.
fn capacity_for(compiled: &Compiled) -> Capacity {
    let grow = |n: usize, min: u32| (n as u32).saturating_mul(2).next_power_of_two().max(min);
    Capacity {
        entries: grow(compiled.entries.len(), MIN_ENTRIES),
        rules: grow(compiled.counter_slots, MIN_RULES),
    }
}

const MIN_ENTRIES: u32 = 1 << 14;
const MIN_RULES: u32 = 1 << 12;

/// Hooks to attach, and indexes into `cur.attached` to detach, for keeping the dataplane
/// whose rules map is `keep`.
fn attachment_plan(cur: &Current, keep: Option<u32>, want: &Desired) -> (Vec<Hook>, Vec<usize>) {
    let current = |i: usize| keep.is_some_and(|id| cur.attached[i].uses_map(id));
    let attach = want
        .hooks
        .iter()
        .filter(|h| !(0..cur.attached.len()).any(|i| cur.attached[i].hook == **h && current(i)))
        .cloned()
        .collect();
    let detach = (0..cur.attached.len())
        .filter(|&i| !current(i) || !want.hooks.contains(&cur.attached[i].hook))
        .collect();
    (attach, detach)
}

fn describe(a: &attach::Attached) -> String {
    format!("{} (program {})", a.hook.describe(), a.program.id())
}

/// Dry run: what would happen to entries and attachments.
fn plan_dataplane(prep: &Prepared, report: &mut Report) -> Result<(), ControlError> {
    let keep = prep.cur.dataplane.as_ref().map(|dp| dp.rules_map_id);
    match &prep.cur.dataplane {
        Some(dp) => report.entries = dp.maps.diff(&prep.compiled)?.stats(),
        None if !prep.want.hooks.is_empty() => {
            report.new_dataplane = true;
            report.entries.inserted = prep.compiled.entries.len();
        }
        None => {}
    }
    let (attach, detach) = attachment_plan(&prep.cur, keep, &prep.want);
    report.attach = attach.iter().map(Hook::describe).collect();
    report.detach = detach
        .iter()
        .map(|&i| describe(&prep.cur.attached[i]))
        .collect();
    Ok(())
}

async fn execute(
    nl: &Netlink,
    path: &Path,
    opts: &Options,
    mut prep: Prepared,
    report: &mut Report,
) -> Result<(), ControlError> {
    let record = Record::new(
        path.display().to_string(),
        prep.policy.clone(),
        prep.slots.clone(),
    );
    let dp = install_dataplane(&mut prep, &record, opts, report)?;
    reconcile_routing(nl, report).await?;
    attachments(&prep, dp.as_ref(), report)?;
    remove_stale_routing(nl, report).await?;
    if let Some(dp) = &dp {
        if let Err(e) = pin(dp, opts) {
            report.warnings.push(format!("pinning in bpffs: {e}"));
        }
    }
    let cgroups: BTreeSet<String> = prep
        .want
        .hooks
        .iter()
        .filter_map(|h| match h {
            Hook::Cgroup { cgroup, .. } => Some(cgroup.clone()),
            _ => None,
        })
        .collect();
    let cgroups: Vec<String> = cgroups.into_iter().collect();
    namespace::set_cgroup_hints(&cgroups).map_err(ControlError::io("recording cgroups"))?;
    Ok(())
}

/// Loads or reuses the dataplane and writes the policy, switches and record into its maps.
fn install_dataplane(
    prep: &mut Prepared,
    record: &Record,
    opts: &Options,
    report: &mut Report,
) -> Result<Option<Dataplane>, ControlError> {
    if prep.want.hooks.is_empty() {
        return Ok(None);
    }
    let mut dp = match prep.cur.dataplane.take() {
        Some(mut dp) => {
            dp.maps.zero_counters(prep.fresh.iter().copied())?;
            if needs_programs(&prep.cur, &dp, &prep.want) {
                // New hooks need programs: load them sharing the current maps.
                let dir = pin(&dp, opts)?;
                dp = Dataplane::load_sharing(&dir)?;
            }
            dp
        }
        None => {
            report.new_dataplane = true;
            Dataplane::load(capacity_for(&prep.compiled))?
        }
    };
    report.entries = dp.maps.install(&prep.compiled)?;
    crash_point("maps");
    let ttl = u64::from(prep.policy.sticky_timeout) * 1_000_000_000;
    dp.maps
        .set_control(prep.want.control_flags, prep.cookie, ttl)?;
    dp.maps.set_roles(&prep.want.roles, &prep.want.sources)?;
    record.write(&mut dp.maps)?;
    crash_point("record");
    Ok(Some(dp))
}

fn needs_programs(cur: &Current, dp: &Dataplane, want: &Desired) -> bool {
    !attachment_plan(cur, Some(dp.rules_map_id), want)
        .0
        .is_empty()
}

/// Routes first, then the rules that point at them, so marked traffic never meets an
/// empty table.
async fn reconcile_routing(nl: &Netlink, report: &Report) -> Result<(), ControlError> {
    for route in &report.routes.add {
        ignore_exists(nl.add_route(route, RTPROT_POLICYROUTE).await)?;
    }
    crash_point("routes");
    for rule in &report.ip_rules.add {
        ignore_exists(nl.add_rule(rule, RTPROT_POLICYROUTE).await)?;
    }
    crash_point("rules");
    Ok(())
}

async fn remove_stale_routing(nl: &Netlink, report: &Report) -> Result<(), ControlError> {
    for rule in &report.ip_rules.remove {
        ignore_missing(nl.del_rule(rule, RTPROT_POLICYROUTE).await)?;
    }
    for route in &report.routes.remove {
        ignore_missing(nl.del_route(route, RTPROT_POLICYROUTE).await)?;
    }
    Ok(())
}

fn attachments(
    prep: &Prepared,
    dp: Option<&Dataplane>,
    report: &mut Report,
) -> Result<(), ControlError> {
    let cur = &prep.cur;
    let (attach, detach) = attachment_plan(cur, dp.map(|d| d.rules_map_id), &prep.want);
    if let Some(dp) = dp {
        for hook in attach {
            let prog = dp
                .program_fd(hook.program())
                .ok_or(crate::dataplane::DataplaneError::Missing(hook.program()))?;
            attach::attach(&hook, prog, cur.cgroup_root.as_deref())?;
            report.attach.push(hook.describe());
        }
    }
    crash_point("attach");
    for i in detach {
        attach::detach(&cur.attached[i], cur.cgroup_root.as_deref())?;
        report.detach.push(describe(&cur.attached[i]));
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
