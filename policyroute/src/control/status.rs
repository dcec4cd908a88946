//! `policyroute status`: what is installed in this namespace, read from the kernel alone:
//! hooks, gateways, every rule with its packet and byte counters (in the spirit of
//! `iptables -t mangle -nvL`), and the ip rules and routes policyroute owns. The text form
//! is `present::status`.
use std::net::IpAddr;

use serde::Serialize;

use super::{require_privileges, ControlError};
use crate::{
    control::drift::DriftItem,
    kernel::{
        dataplane::Dataplane,
        namespace::{self, DaemonFile, DaemonState},
        netlink::{Netlink, RTPROT_POLICYROUTE},
        observe, record_store, KernelError,
    },
    plan::{
        objects::{Hook, IpRoute, IpRule},
        record::Record,
    },
    policy::Target,
    present::DeviceNames,
};

#[derive(Debug, Serialize)]
pub struct Status {
    pub namespace: String,
    /// The policy file of the last apply.
    pub source: Option<String>,
    pub mark_mask: Option<u32>,
    pub hooks: Vec<HookStatus>,
    pub gateways: Vec<GatewayStatus>,
    pub rules: Vec<RuleStatus>,
    pub ip_rules: Vec<IpRule>,
    pub routes: Vec<IpRoute>,
    /// What differs from the applied policy (empty: nothing). `policyroute check` exits 1
    /// when it is not empty.
    pub drift: Vec<DriftItem>,
    /// The `policyroute run` daemon keeping this namespace, if one runs.
    pub daemon: Option<DaemonState>,
    pub warnings: Vec<String>,
    /// Interface names by index, for rendering routes.
    #[serde(skip)]
    pub devices: DeviceNames,
}

#[derive(Debug, Serialize)]
pub struct HookStatus {
    #[serde(flatten)]
    pub hook: Hook,
    pub program_id: u32,
}

#[derive(Debug, Serialize)]
pub struct GatewayStatus {
    pub name: String,
    pub table: u32,
    pub table_name: Option<String>,
    pub mark: u32,
    pub dev: String,
    pub via: Vec<IpAddr>,
}

#[derive(Debug, Serialize)]
pub struct RuleStatus {
    pub name: String,
    pub mark: u32,
    pub packets: u64,
    pub bytes: u64,
    /// `gateway NAME` or `mark VALUE`.
    pub target: String,
    /// The rule's conditions, `all` for none.
    #[serde(rename = "match")]
    pub matches: String,
}

/// What is installed; with `drift`, also how it differs from the applied policy (which
/// reads the whole classifier map once).
pub async fn status(drift: bool) -> Result<Status, ControlError> {
    require_privileges()?;
    let nl = Netlink::new()?;
    let links = nl.links().await?;
    let installed = observe::installed(&links, &[])?;
    let mut s = Status {
        namespace: namespace::label().map_err(KernelError::io("namespace id"))?,
        source: None,
        mark_mask: None,
        hooks: installed
            .attached
            .iter()
            .map(|a| HookStatus {
                hook: a.hook.clone(),
                program_id: a.program.id(),
            })
            .collect(),
        gateways: Vec::new(),
        rules: Vec::new(),
        ip_rules: nl.rules(RTPROT_POLICYROUTE).await?,
        routes: nl.routes(RTPROT_POLICYROUTE).await?,
        drift: Vec::new(),
        daemon: DaemonFile::running(),
        warnings: Vec::new(),
        devices: links.iter().map(|l| (l.index, l.name.clone())).collect(),
    };
    let mut record = None;
    if let Some(dp) = &installed.dataplane {
        match record_store::read_record(&dp.maps) {
            Ok(Some(r)) => {
                fill_from_record(&mut s, &r, dp)?;
                record = Some(r);
            }
            Ok(None) => s
                .warnings
                .push("the classifier holds no policy record".into()),
            Err(e) => s.warnings.push(e.to_string()),
        }
    }
    if drift {
        s.drift = super::drift::drift(&nl, &links, &installed, record.as_ref()).await?;
    }
    Ok(s)
}

fn fill_from_record(s: &mut Status, record: &Record, dp: &Dataplane) -> Result<(), ControlError> {
    let policy = &record.policy;
    s.source = Some(record.source.clone());
    s.mark_mask = Some(policy.mark_mask);
    s.gateways = policy
        .gateways
        .iter()
        .map(|g| GatewayStatus {
            name: g.name.clone(),
            table: g.table,
            table_name: g.table_name.clone(),
            mark: g.mark,
            dev: g.dev.clone(),
            via: g.via.clone(),
        })
        .collect();
    let counters = dp.maps.counters(record.slot_count())?;
    for (rule, &slot) in policy.rules.iter().zip(&record.slots) {
        let c = counters[slot as usize];
        s.rules.push(RuleStatus {
            name: rule.name.clone(),
            mark: policy.mark_of(&rule.target) & policy.mark_mask,
            packets: c.packets,
            bytes: c.bytes,
            target: match &rule.target {
                Target::Gateway(g) => format!("gateway {g}"),
                Target::Mark(m) => format!("mark {m:#x}"),
            },
            matches: rule.matcher.to_string(),
        });
    }
    Ok(())
}
