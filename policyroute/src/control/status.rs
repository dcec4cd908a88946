//! `policyroute status`: what is installed in this namespace, read from the kernel alone:
//! hooks, gateways, every rule with its packet and byte counters (in the spirit of
//! `iptables -t mangle -nvL`), and the ip rules and routes policyroute owns. The text form
//! is the presentation layer's.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use policyroute_common::fast::FastStats;
use serde::Serialize;

use super::{require_privileges, ControlError};
use crate::{
    control::drift::DriftItem,
    kernel::{
        attach::Attached,
        daemon_file::{DaemonFile, DaemonState, GatewayCheck},
        dataplane::Dataplane,
        namespace,
        netlink::{Netlink, RTPROT_POLICYROUTE},
        observe, record_store, KernelError,
    },
    plan::{
        fast_path,
        ip_text::DeviceNames,
        objects::{Frames, Hook, IpRoute, IpRule, TcPath},
        record::Record,
        targets::{self, GatewayHealth},
    },
    policy::{Target, WhenDown},
};

#[derive(Debug, Serialize)]
pub struct Status {
    pub namespace: String,
    /// Whether a policy is applied here (the dataplane holds its record). Without one,
    /// an empty drift list means nothing of ours is in the kernel, not that a policy is
    /// in force.
    pub applied: bool,
    /// The policy file of the last apply.
    pub source: Option<String>,
    pub mark_mask: Option<u32>,
    /// How the TC programs are attached: `tcx`, `tc` (clsact filters), `tcx+tc` while
    /// both hold ours, or `none`.
    pub attach_mode: &'static str,
    /// Whether this kernel has tcx (Linux 6.6+), which `mode = "auto"` prefers.
    pub tcx_available: bool,
    pub hooks: Vec<HookStatus>,
    pub gateways: Vec<GatewayStatus>,
    pub groups: Vec<GroupStatus>,
    pub rules: Vec<RuleStatus>,
    /// The policy's prefix sets, with the rules that use them.
    pub sets: Vec<SetStatus>,
    pub ip_rules: Vec<IpRule>,
    pub routes: Vec<IpRoute>,
    /// What differs from the applied policy (empty: nothing). `policyroute check` exits 1
    /// when it is not empty.
    pub drift: Vec<DriftItem>,
    /// The `policyroute run` daemon keeping this namespace, if one runs.
    pub daemon: Option<DaemonState>,
    /// With `fast_path = true`: what it did and what it costs (null without it).
    pub fast_path: Option<FastPathStatus>,
    pub warnings: Vec<String>,
    /// Interface names by index, for rendering routes.
    #[serde(skip)]
    pub devices: DeviceNames,
}

/// The fast path's counters (summed over CPUs since the dataplane was loaded), and its
/// caveats.
#[derive(Debug, Serialize)]
pub struct FastPathStatus {
    /// What the fast path did (`forwarded`, `to_kernel`, ...), summed over the CPUs.
    #[serde(flatten)]
    pub counts: FastStats,
    /// Always: what forwarding in the dataplane skips.
    pub bypass: &'static str,
    /// Why ip rules are installed anyway (empty: none are, and unmatched traffic keeps the
    /// kernel's fast routing path).
    pub rules_needed_by: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct HookStatus {
    #[serde(flatten)]
    pub hook: Hook,
    pub program_id: u32,
    /// What the device's frames start with, by its link type (null for socket hooks):
    /// `ethernet`, `ip` (tun, WireGuard, PPP: read as IP, and what arrives there is left
    /// to the kernel by the fast path), or `{"unsupported": LINK_TYPE}`.
    pub frames: Option<Frames>,
}

#[derive(Debug, Serialize)]
pub struct GatewayStatus {
    pub name: String,
    pub table: u32,
    pub table_name: Option<String>,
    pub mark: u32,
    pub dev: String,
    pub via: Vec<IpAddr>,
    /// By family, `ipv4` and `ipv6`.
    pub health: BTreeMap<&'static str, FamilyHealth>,
}

/// A gateway's health for one family.
#[derive(Debug, Serialize)]
pub struct FamilyHealth {
    /// `up` or `down`.
    pub state: &'static str,
    /// Why it is down: `no carrier` (or no device) or `check failed`.
    pub why: Option<&'static str>,
    /// Whether a health check probes it (else carrier alone decides).
    pub checked: bool,
    /// Unix time (s) of the check's last change (known while `policyroute run` runs).
    pub since: Option<u64>,
    /// Over the check's last 20 rounds.
    pub loss_percent: Option<f64>,
    pub rtt_ms: Option<f64>,
    /// Times the check changed state since the daemon started.
    pub transitions: u64,
}

#[derive(Debug, Serialize)]
pub struct GroupStatus {
    pub name: String,
    pub members: Vec<GroupMemberStatus>,
}

#[derive(Debug, Serialize)]
pub struct GroupMemberStatus {
    pub gateway: String,
    pub weight: u32,
    pub tier: u32,
}

#[derive(Debug, Serialize)]
pub struct SetStatus {
    pub name: String,
    /// The list file as the policy names it (null for inline prefixes).
    pub file: Option<String>,
    pub prefixes: usize,
    pub ipv4: usize,
    pub ipv6: usize,
    /// Rules using the set (as `src` or `dst`), with their packet counts.
    pub rules: Vec<SetRule>,
}

#[derive(Debug, Serialize)]
pub struct SetRule {
    pub name: String,
    pub packets: u64,
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
        applied: false,
        source: None,
        mark_mask: None,
        attach_mode: attach_mode(&installed.attached),
        tcx_available: installed.tcx,
        hooks: installed
            .attached
            .iter()
            .map(|a| HookStatus {
                hook: a.hook.clone(),
                program_id: a.program.id(),
                frames: a
                    .hook
                    .device()
                    .and_then(|dev| links.iter().find(|l| l.name == dev))
                    .map(|l| l.frames),
            })
            .collect(),
        gateways: Vec::new(),
        groups: Vec::new(),
        rules: Vec::new(),
        sets: Vec::new(),
        ip_rules: nl.rules(RTPROT_POLICYROUTE).await?,
        routes: nl.routes(RTPROT_POLICYROUTE).await?,
        drift: Vec::new(),
        daemon: DaemonFile::running(),
        fast_path: None,
        warnings: Vec::new(),
        devices: links.iter().map(|l| (l.index, l.name.clone())).collect(),
    };
    let mut record = None;
    if let Some(dp) = &installed.dataplane {
        match record_store::read_record(&dp.maps) {
            Ok(Some(r)) => {
                let carrier: Vec<&str> = links
                    .iter()
                    .filter(|l| l.up)
                    .map(|l| l.name.as_str())
                    .collect();
                let frames = links
                    .iter()
                    .filter(|l| l.frames != Frames::Ethernet)
                    .map(|l| (l.name.clone(), l.frames))
                    .collect();
                fill_from_record(&mut s, &r, dp, &carrier, &frames)?;
                s.applied = true;
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
        let foreign = s.drift.iter().filter(|d| d.change == "foreign").count();
        if foreign > 0 {
            s.warnings.push(format!(
                "{foreign} route(s) or ip rule(s) not policyroute's are in the policy's way \
                 (drift: foreign): they route some of its traffic; `policyroute apply --adopt` \
                 takes them over"
            ));
        }
    }
    Ok(s)
}

/// The TC paths our device hooks use (see [`Status::attach_mode`]).
fn attach_mode(attached: &[Attached]) -> &'static str {
    let paths: BTreeSet<TcPath> = attached.iter().filter_map(|a| a.hook.tc_path()).collect();
    match (
        paths.contains(&TcPath::Tcx),
        paths.contains(&TcPath::Classic),
    ) {
        (true, true) => "tcx+tc",
        (true, false) => "tcx",
        (false, true) => "tc",
        (false, false) => "none",
    }
}

fn fill_from_record(
    s: &mut Status,
    record: &Record,
    dp: &Dataplane,
    carrier: &[&str],
    frames: &BTreeMap<String, Frames>,
) -> Result<(), ControlError> {
    let policy = &record.policy;
    s.source = Some(record.source.clone());
    s.mark_mask = Some(policy.mark_mask);
    let held = targets::health_in(policy, &dp.maps.targets()?);
    let checks = s.daemon.as_ref().map_or(&[][..], |d| &d.checks[..]);
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
            health: targets::FAMILIES
                .into_iter()
                .map(|f| {
                    let up = held
                        .get(&(g.name.clone(), f))
                        .copied()
                        .unwrap_or(GatewayHealth {
                            up: carrier.contains(&g.dev.as_str()),
                            ..GatewayHealth::default()
                        });
                    let checked = g
                        .check
                        .as_ref()
                        .is_some_and(|c| c.targets_of(f).next().is_some());
                    let check = checks
                        .iter()
                        .find(|c| c.gateway == g.name && c.family == f.name());
                    (f.name(), family_health(up, checked, check))
                })
                .collect(),
        })
        .collect();
    s.groups = policy
        .groups
        .iter()
        .map(|g| GroupStatus {
            name: g.name.clone(),
            members: g
                .members
                .iter()
                .map(|m| GroupMemberStatus {
                    gateway: m.gateway.clone(),
                    weight: m.weight,
                    tier: m.tier,
                })
                .collect(),
        })
        .collect();
    if policy.fast_path {
        s.fast_path = Some(FastPathStatus {
            counts: dp.maps.fast_stats()?,
            bypass: fast_path::BYPASS,
            rules_needed_by: fast_path::rules_needed_by(policy, frames),
        });
    }
    let counters = dp.maps.counters(record.slot_count())?;
    for (rule, &slot) in policy.rules.iter().zip(&record.slots) {
        let c = counters[slot as usize];
        s.rules.push(RuleStatus {
            name: rule.name.clone(),
            mark: policy.mark_of(&rule.target) & policy.mark_mask,
            packets: c.packets,
            bytes: c.bytes,
            target: match (&rule.target, rule.when_down) {
                (Target::Gateway(g), WhenDown::Main) => format!("gateway {g}"),
                (Target::Gateway(g), w) => format!("gateway {g} (down: {})", w.name()),
                (Target::Mark(m), _) => format!("mark {m:#x}"),
            },
            matches: rule.matcher.to_string(),
        });
    }
    s.sets = set_status(policy, &s.rules);
    Ok(())
}

fn family_health(h: GatewayHealth, checked: bool, check: Option<&GatewayCheck>) -> FamilyHealth {
    let why = match (h.up, h.check_down) {
        (true, _) => None,
        (false, true) => Some("check failed"),
        (false, false) => Some("no carrier"),
    };
    FamilyHealth {
        state: if h.up { "up" } else { "down" },
        why,
        checked,
        since: check.map(|c| c.since),
        loss_percent: check.map(|c| c.loss_percent),
        rtt_ms: check.and_then(|c| c.rtt_ms),
        transitions: check.map_or(0, |c| c.transitions),
    }
}

fn set_status(policy: &crate::policy::Policy, rules: &[RuleStatus]) -> Vec<SetStatus> {
    policy
        .sets
        .iter()
        .map(|set| SetStatus {
            name: set.name.clone(),
            file: set.file.clone(),
            prefixes: set.prefixes.len(),
            ipv4: set.count(crate::policy::matcher::Family::V4),
            ipv6: set.count(crate::policy::matcher::Family::V6),
            rules: policy
                .rules
                .iter()
                .zip(rules)
                .filter(|(r, _)| {
                    let m = &r.matcher;
                    [&m.src_set, &m.dst_set]
                        .into_iter()
                        .flatten()
                        .any(|s| s.name == set.name)
                })
                .map(|(_, st)| SetRule {
                    name: st.name.clone(),
                    packets: st.packets,
                })
                .collect(),
        })
        .collect()
}
