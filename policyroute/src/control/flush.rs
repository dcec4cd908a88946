//! `policyroute flush`: remove everything policyroute installed in this namespace (its
//! tcx attachments, and with them the program and maps, its pins, and the ip rules and
//! routes carrying its protocol number) and nothing else.
use serde::Serialize;

use super::{
    apply::ignore_missing, current, lock, require_privileges, unpin, ControlError, Options,
};
use crate::netlink::{IpRoute, IpRule, Netlink, RTPROT_POLICYROUTE};

#[derive(Debug, Default, Serialize)]
pub struct FlushReport {
    /// `dev (program id)` attachments removed.
    pub detached: Vec<String>,
    pub ip_rules: Vec<IpRule>,
    pub routes: Vec<IpRoute>,
    pub unpinned: bool,
}

pub async fn flush(opts: &Options) -> Result<FlushReport, ControlError> {
    require_privileges()?;
    let _lock = lock()?;
    let nl = Netlink::new()?;
    let cur = current(&nl, &[]).await?;
    let mut report = FlushReport::default();
    for a in &cur.attached {
        crate::attach::detach(a, cur.cgroup_root.as_deref())?;
        report.detached.push(format!(
            "{} (program {})",
            a.hook.describe(),
            a.program.id()
        ));
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
    report.unpinned = unpin(opts)?;
    crate::namespace::set_cgroup_hints(&[])
        .map_err(ControlError::io("removing the cgroup hints"))?;
    Ok(report)
}
