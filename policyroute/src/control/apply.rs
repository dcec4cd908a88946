//! `policyroute apply`: validate everything, then reconcile the kernel to the policy.
//!
//! Nothing in the kernel changes until the file, the devices and the compiled classifier
//! all check out. Each later step is idempotent, so an apply killed at any point leaves a
//! state the next apply repairs (and `flush` removes).
use std::{collections::BTreeMap, path::Path};

use serde::Serialize;

use super::{
    crash_point, current, lock,
    plan::{self, Desired, Diff},
    record::{self, Record},
    require_privileges, ControlError, Current, Options,
};
use crate::{
    attach,
    compile::{compile_with_slots, Compiled},
    config::Policy,
    dataplane::{Capacity, Dataplane, InstallStats},
    netlink::{IpRoute, IpRule, Netlink, NetlinkError, RTPROT_POLICYROUTE},
    rt_tables::RtTables,
};

/// What an apply changed (or, with `dry_run`, would change).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub ip_rules: Diff<IpRule>,
    pub routes: Diff<IpRoute>,
    /// Devices the classifier gets attached to.
    pub attach: Vec<String>,
    /// `dev (program id)` attachments removed.
    pub detach: Vec<String>,
    /// Classifier hash entries.
    pub entries: InstallStats,
    /// A new classifier program was (or would be) loaded.
    pub new_dataplane: bool,
    pub warnings: Vec<String>,
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

pub async fn apply(path: &Path, opts: &Options, dry_run: bool) -> Result<Report, ControlError> {
    require_privileges()?;
    let policy = Policy::load(path, &load_tables(opts)?)?;
    let _lock = lock()?;
    let nl = Netlink::new()?;
    let index_of: BTreeMap<String, u32> = nl
        .links()
        .await?
        .into_iter()
        .map(|l| (l.name, l.index))
        .collect();
    policy.check_devices(|d| index_of.contains_key(d))?;
    let want = plan::desired(&policy, &index_of);
    let mut cur = current(&nl).await?;
    let mut report = Report {
        dry_run,
        ..Report::default()
    };
    let previous = previous_record(&cur, &mut report);
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
    let reuse = reusable(&cur, &compiled)?;
    if !reuse {
        cur.dataplane = None;
    }
    report.ip_rules = Diff::between(
        &nl.rules(RTPROT_POLICYROUTE).await?.into_iter().collect(),
        &want.rules,
    );
    report.routes = Diff::between(
        &nl.routes(RTPROT_POLICYROUTE).await?.into_iter().collect(),
        &want.routes,
    );
    if want.ingress.is_empty() {
        report
            .warnings
            .push("[attach] ingress lists no device: the classifier marks no traffic".into());
    }
    if dry_run {
        plan_dataplane(&cur, &want, &compiled, &mut report)?;
        return Ok(report);
    }
    let record = Record::new(path.display().to_string(), policy.clone(), slots);
    let dp = install_dataplane(&mut cur, &want, &compiled, &fresh, &record, &mut report)?;
    reconcile_routing(&nl, &report).await?;
    attachments(&cur, dp.as_ref(), &want, &mut report)?;
    remove_stale_routing(&nl, &report).await?;
    if let Some(dp) = &dp {
        if let Err(e) = super::pin(dp, opts) {
            report.warnings.push(format!("pinning in bpffs: {e}"));
        }
    }
    Ok(report)
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

/// Whether the attached dataplane can hold the compiled policy (else a larger one is loaded).
fn reusable(cur: &Current, compiled: &Compiled) -> Result<bool, ControlError> {
    let Some(dp) = &cur.dataplane else {
        return Ok(false);
    };
    let cap = dp.maps.capacity()?;
    Ok(compiled.counter_slots <= cap.rules as usize
        && compiled.entries.len() <= cap.entries as usize)
}

fn capacity_for(compiled: &Compiled) -> Capacity {
    let d = Capacity::default();
    Capacity {
        entries: d
            .entries
            .max((compiled.entries.len() as u32).saturating_mul(2)),
        rules: d
            .rules
            .max((compiled.counter_slots as u32).next_power_of_two() * 2),
    }
}

/// Dry run: what would happen to entries and attachments.
fn plan_dataplane(
    cur: &Current,
    want: &Desired,
    compiled: &Compiled,
    report: &mut Report,
) -> Result<(), ControlError> {
    let keep = cur.dataplane.as_ref().map(|dp| dp.prog_id);
    match &cur.dataplane {
        Some(dp) => report.entries = dp.maps.diff(compiled)?.stats(),
        None if !want.ingress.is_empty() => {
            report.new_dataplane = true;
            report.entries.inserted = compiled.entries.len();
        }
        None => {}
    }
    let (attach, detach) = attachment_plan(cur, keep, want);
    report.attach = attach.into_iter().map(|(dev, _)| dev).collect();
    report.detach = detach.iter().map(|&i| describe(&cur.attached[i])).collect();
    Ok(())
}

fn describe(a: &attach::Attached) -> String {
    format!("{} (program {})", a.dev, a.program.id())
}

/// Devices to attach `keep` to, and indexes into `cur.attached` to detach.
fn attachment_plan(
    cur: &Current,
    keep: Option<u32>,
    want: &Desired,
) -> (Vec<(String, u32)>, Vec<usize>) {
    let has = |dev: &str| {
        cur.attached
            .iter()
            .any(|a| a.dev == dev && Some(a.program.id()) == keep)
    };
    let attach = want
        .ingress
        .iter()
        .filter(|(dev, _)| !has(dev))
        .map(|(dev, idx)| (dev.clone(), *idx))
        .collect();
    let detach = (0..cur.attached.len())
        .filter(|&i| {
            let a = &cur.attached[i];
            Some(a.program.id()) != keep || !want.ingress.contains_key(&a.dev)
        })
        .collect();
    (attach, detach)
}

/// Loads or reuses the classifier and writes the policy and its record into its maps.
fn install_dataplane(
    cur: &mut Current,
    want: &Desired,
    compiled: &Compiled,
    fresh: &[u32],
    record: &Record,
    report: &mut Report,
) -> Result<Option<Dataplane>, ControlError> {
    if want.ingress.is_empty() {
        return Ok(None);
    }
    let mut dp = match cur.dataplane.take() {
        Some(mut dp) => {
            dp.maps.zero_counters(fresh.iter().copied())?;
            dp
        }
        None => {
            report.new_dataplane = true;
            Dataplane::load(capacity_for(compiled))?
        }
    };
    report.entries = dp.maps.install(compiled)?;
    crash_point("maps");
    record.write(&mut dp.maps)?;
    crash_point("record");
    Ok(Some(dp))
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
    cur: &Current,
    dp: Option<&Dataplane>,
    want: &Desired,
    report: &mut Report,
) -> Result<(), ControlError> {
    let (attach, detach) = attachment_plan(cur, dp.map(|d| d.prog_id), want);
    if let Some(dp) = dp {
        for (dev, ifindex) in attach {
            attach::attach(&dev, ifindex, dp.prog_fd())?;
            report.attach.push(dev);
        }
    }
    crash_point("attach");
    for i in detach {
        attach::detach(&cur.attached[i])?;
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
