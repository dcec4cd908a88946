//! `policyroute apply`: load → observe → plan → execute.
//!
//! Nothing in the kernel changes until the file, the devices and the compiled classifier
//! all check out (load and plan). Each execution step is idempotent, so an apply killed at
//! any point leaves a state the next apply repairs (and `flush` removes).
use std::path::Path;

use serde::Serialize;

use super::{
    execute,
    failover::{Checks, Switchboard},
    lock, require_privileges,
    timings::Timings,
    ControlError, Options,
};
use crate::{
    kernel::{
        features,
        maps::InstallStats,
        netlink::Netlink,
        observe::{self, Installed},
        record_store, KernelError,
    },
    plan::{
        self,
        objects::{Diff, IpRoute, IpRule},
        record::Record,
        DataplaneStep, Devices, Observed, Plan, Waiting,
    },
    policy::{incremental::Digests, rt_tables::RtTables, Policy, PolicyText},
    present::DeviceNames,
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
    /// Devices the policy names whose part waits for them.
    pub waiting: Vec<Waiting>,
    #[serde(skip)]
    pub devices: DeviceNames,
    /// What `run` needs to switch uplinks on a health change without a full pass.
    #[serde(skip)]
    pub switchboard: Option<Switchboard>,
}

impl Report {
    /// What the plan does, except the classifier entries (known only when written or
    /// compared with the maps).
    fn of(plan: &Plan, observed: &Observed, dry_run: bool) -> Self {
        Self {
            dry_run,
            ip_rules: plan.ip_rules.clone(),
            routes: plan.routes.clone(),
            attach: plan.attach.iter().map(|h| h.describe()).collect(),
            detach: plan
                .detach
                .iter()
                .map(|&i| observed.attachments[i].describe())
                .collect(),
            entries: InstallStats::default(),
            new_dataplane: matches!(plan.dataplane, DataplaneStep::Load(_)),
            warnings: plan.warnings.clone(),
            waiting: plan.waiting.clone(),
            devices: observed
                .links
                .iter()
                .map(|(n, &i)| (i, n.clone()))
                .collect(),
            switchboard: None,
        }
    }

    pub fn changed(&self) -> bool {
        !(self.ip_rules.is_empty()
            && self.routes.is_empty()
            && self.attach.is_empty()
            && self.detach.is_empty()
            && !self.entries.changed()
            && !self.new_dataplane)
    }
}

pub async fn apply(path: &Path, opts: &Options, dry_run: bool) -> Result<Report, ControlError> {
    require_privileges()?;
    let tables = opts.tables()?;
    let nl = Netlink::new()?;
    let source = Source::File {
        path,
        tables: &tables,
    };
    Ok(reconcile(&nl, opts, source, Devices::Required, dry_run)
        .await?
        .0)
}

/// Where a pass gets its policy.
pub enum Source<'a> {
    /// Read the file, taking unchanged rules from the recorded policy.
    File {
        path: &'a Path,
        tables: &'a RtTables,
    },
    /// Already read (by `run`), with its digests and the health checks' verdicts.
    Read {
        policy: &'a Policy,
        digests: Option<&'a Digests>,
        path: &'a Path,
        checks: &'a Checks,
    },
}

/// Observe → plan → execute (or, for a dry run, preview) the policy, under the namespace
/// lock. `apply` runs it once; `run` on every change of the network. Returns the report and
/// the record now in force.
pub async fn reconcile(
    nl: &Netlink,
    opts: &Options,
    source: Source<'_>,
    devices: Devices,
    dry_run: bool,
) -> Result<(Report, Record), ControlError> {
    let _lock = lock()?;
    let mut t = Timings::start();
    // What every policy needs, before anything else can fail on its absence.
    features::check(false, false).map_err(KernelError::from)?;
    let links = nl.links().await?;
    let mut installed = observe::installed(&links, &[])?;
    // Reading and cutting up the file needs no earlier read: on its own thread, while this
    // one decodes the record (both take tens of ms for 100,000 rules).
    let file_path = match &source {
        Source::File { path, .. } => Some(*path),
        Source::Read { .. } => None,
    };
    let ((previous, unreadable), file) = std::thread::scope(|scope| {
        let file = file_path.map(|path| scope.spawn(move || PolicyText::read(path)));
        let previous = previous_record(&installed);
        (
            previous,
            file.map(|f| f.join().expect("reading a file does not panic")),
        )
    });
    t.mark("find the dataplane, read its record and the file");
    let (policy, digests, path, checks) = match source {
        Source::File { path, tables } => {
            let earlier = previous
                .as_ref()
                .and_then(|r| Some((&r.policy, r.digests.as_ref()?)));
            let file = file.expect("read above")?;
            let (policy, digests) = Policy::read_again(file, tables, earlier)?;
            (policy, digests, path, Checks::new())
        }
        Source::Read {
            policy,
            digests,
            path,
            checks,
        } => (policy.clone(), digests.cloned(), path, checks.clone()),
    };
    features::check(policy.attach.local, policy.fast_path).map_err(KernelError::from)?;
    t.mark("load the policy");
    if let Some(cgroup) = plan::desired::local_cgroup(&policy) {
        // Its socket hooks, where earlier applies put them.
        installed = observe::installed(&links, &[cgroup])?;
    }
    let devices_with_addresses = policy.address_devices();
    let mut observed = observe::observe(nl, &links, &installed, &devices_with_addresses).await?;
    observed.checks = checks;
    t.mark("observe");
    let source = path.display().to_string();
    let mut plan = plan::plan(policy, &source, &observed, previous.as_ref(), devices)?;
    plan.record.digests = digests;
    let keys = previous
        .as_ref()
        .and_then(|p| plan::changed::entries_to_check(p, &plan, &observed));
    t.mark("plan");
    let mut report = Report::of(&plan, &observed, dry_run);
    report.warnings.extend(unreadable);
    if dry_run {
        report.entries = execute::preview_entries(&plan, &installed)?;
    } else {
        let (warnings, keys) = (&mut report.warnings, keys.as_deref());
        let (entries, maps) =
            execute::execute(nl, opts, &mut plan, &mut installed, keys, warnings).await?;
        report.entries = entries;
        report.switchboard = Some(Switchboard::new(&plan, &observed, maps));
    }
    t.mark("execute");
    Ok((report, plan.record))
}

/// The record of the previous apply; an unreadable one only costs counter continuity,
/// which the warning says.
fn previous_record(installed: &Installed) -> (Option<Record>, Option<String>) {
    let Some(dp) = &installed.dataplane else {
        return (None, None);
    };
    match record_store::read_record(&dp.maps) {
        Ok(r) => (r, None),
        Err(e) => (None, Some(format!("{e}; rule counters restart at 0"))),
    }
}
