//! `policyroute flush`: remove everything policyroute installed in this namespace (its
//! hooks, and with them the programs and maps, its pins, and the ip rules and routes
//! carrying its protocol number) and nothing else.
use serde::Serialize;

use super::{execute::ignore_missing, lock, require_privileges, ControlError, Options};
use crate::{
    kernel::{
        attach,
        netlink::{Netlink, RTPROT_POLICYROUTE},
        observe, pins, run_dir, KernelError,
    },
    plan::objects::{IpRoute, IpRule},
};

#[derive(Debug, Default, Serialize)]
pub struct FlushReport {
    /// `hook (program id)` attachments removed.
    pub detached: Vec<String>,
    pub ip_rules: Vec<IpRule>,
    pub routes: Vec<IpRoute>,
    pub unpinned: bool,
}

pub async fn flush(opts: &Options) -> Result<FlushReport, ControlError> {
    require_privileges()?;
    let _lock = lock()?;
    let nl = Netlink::new()?;
    let installed = observe::installed(&nl.links().await?, &[])?;
    let mut report = FlushReport::default();
    for a in &installed.attached {
        attach::detach(a, installed.cgroup_root.as_deref())?;
        report.detached.push(a.describe());
    }
    // Rules before routes: no moment where a rule points at an emptied table.
    for rule in nl.rules(RTPROT_POLICYROUTE).await? {
        ignore_missing(nl.del_rule(&rule, RTPROT_POLICYROUTE).await)?;
        report.ip_rules.push(rule);
    }
    for route in nl.routes(RTPROT_POLICYROUTE).await? {
        ignore_missing(nl.del_route(&route, RTPROT_POLICYROUTE).await)?;
        report.routes.push(route);
    }
    report.unpinned = pins::unpin(&opts.pin_dir()?)?;
    run_dir::set_cgroup_hints(&[]).map_err(KernelError::io("removing the cgroup hints"))?;
    Ok(report)
}
