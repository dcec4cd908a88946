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
        foreign::{self, Foreign},
        ip_text::DeviceNames,
        objects::{Diff, IpRoute, IpRule},
        record::Record,
        DataplaneStep, Devices, Observed, Plan, Waiting,
    },
    policy::{incremental::Digests, rt_tables::RtTables, Policy, PolicyText},
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
    /// Routes in the gateways' tables and ip rules matching the gateways' marks that are
    /// not policyroute's (see `plan::foreign`).
    pub foreign: Foreign,
    /// Because of `foreign`, nothing was (or would be) changed.
    pub refused: bool,
    /// `foreign` was (or would be) taken over: removed as policyroute's own went in.
    pub adopted: bool,
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
            foreign: plan.foreign.clone(),
            refused: false,
            adopted: false,
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
            && !self.new_dataplane
            && !self.adopted)
    }
}

/// What a pass does about routes and ip rules of others in its way (`plan::foreign`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnForeign {
    /// Change nothing and name them (`apply`, and `run` at its start): they are most
    /// likely an old setup still in force, and removing it is the operator's call.
    Refuse,
    /// Take them over (`--adopt`): remove them as policyroute's own objects go in.
    Adopt,
    /// Leave them, and leave out the routes of ours they hold the place of (`run` after
    /// its start, which reports them): fighting another tool over a table would flap.
    Leave,
}

pub async fn apply(
    path: &Path,
    opts: &Options,
    dry_run: bool,
    on_foreign: OnForeign,
) -> Result<Report, ControlError> {
    require_privileges()?;
    let tables = opts.tables()?;
    let nl = Netlink::new()?;
    let source = Source::File {
        path,
        tables: &tables,
    };
    let pass = Pass {
        devices: Devices::Required,
        on_foreign,
        dry_run,
    };
    Ok(reconcile(&nl, opts, source, pass).await?.0)
}

/// How a pass treats what it finds.
#[derive(Clone, Copy, Debug)]
pub struct Pass {
    pub devices: Devices,
    pub on_foreign: OnForeign,
    /// Preview only: change nothing.
    pub dry_run: bool,
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
    pass: Pass,
) -> Result<(Report, Record), ControlError> {
    let Pass {
        devices,
        on_foreign,
        dry_run,
    } = pass;
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
    let tables = foreign::managed_tables(&policy);
    let mut observed =
        observe::observe(nl, &links, &installed, &devices_with_addresses, &tables).await?;
    observed.checks = checks;
    t.mark("observe");
    let source = path.display().to_string();
    let mut plan = plan::plan(policy, &source, &observed, previous.as_ref(), devices)?;
    plan.record.digests = digests;
    let keys = previous
        .as_ref()
        .and_then(|p| plan::changed::entries_to_check(p, &plan, &observed));
    t.mark("plan");
    if on_foreign == OnForeign::Leave {
        // Adding them would answer EEXIST: their place is taken.
        let foreign = &plan.foreign;
        plan.routes.add.retain(|r| foreign.in_place_of(r).is_none());
    }
    let mut report = Report::of(&plan, &observed, dry_run);
    report.warnings.extend(unreadable);
    if !plan.foreign.is_empty() {
        report.refused = on_foreign == OnForeign::Refuse;
        report.adopted = on_foreign == OnForeign::Adopt;
    }
    if dry_run {
        report.entries = execute::preview_entries(&plan, &installed)?;
    } else if !report.refused {
        let (warnings, keys) = (&mut report.warnings, keys.as_deref());
        let adopt = report.adopted;
        let (entries, maps) =
            execute::execute(nl, opts, &mut plan, &mut installed, keys, adopt, warnings).await?;
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
