//! `policyroute status`: what is installed in this namespace, read from the kernel alone:
//! hooks, gateways, every rule with its packet and byte counters (in the spirit of
//! `iptables -t mangle -nvL`), and the ip rules and routes policyroute owns.
use std::{fmt::Write as _, net::IpAddr};

use serde::Serialize;

use super::{current, record::Record, require_privileges, ControlError};
use crate::{
    config::Target,
    namespace,
    netlink::{Family, IpRoute, IpRule, Netlink, RTPROT_POLICYROUTE},
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
    pub warnings: Vec<String>,
    /// Interface names by index, for rendering routes.
    #[serde(skip)]
    pub devices: DeviceNames,
}

/// Interface index to name.
pub type DeviceNames = std::collections::BTreeMap<u32, String>;

#[derive(Debug, Serialize)]
pub struct HookStatus {
    #[serde(flatten)]
    pub hook: crate::attach::Hook,
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

pub async fn status() -> Result<Status, ControlError> {
    require_privileges()?;
    let nl = Netlink::new()?;
    let cur = current(&nl, &[]).await?;
    let devices = nl
        .links()
        .await?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    let mut s = Status {
        namespace: namespace::label().map_err(ControlError::io("namespace id"))?,
        source: None,
        mark_mask: None,
        hooks: cur
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
        warnings: Vec::new(),
        devices,
    };
    if let Some(dp) = &cur.dataplane {
        match Record::read(&dp.maps) {
            Ok(Some(record)) => fill_from_record(&mut s, &record, dp)?,
            Ok(None) => s
                .warnings
                .push("the classifier holds no policy record".into()),
            Err(e) => s.warnings.push(e.to_string()),
        }
    }
    Ok(s)
}

fn fill_from_record(
    s: &mut Status,
    record: &Record,
    dp: &crate::dataplane::Dataplane,
) -> Result<(), ControlError> {
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
    let slots = record
        .slots
        .iter()
        .map(|&x| x as usize + 1)
        .max()
        .unwrap_or(0);
    let counters = dp.maps.counters(slots)?;
    let marks = policy.classifier_rules();
    for ((rule, &slot), resolved) in policy.rules.iter().zip(&record.slots).zip(&marks) {
        let c = counters[slot as usize];
        s.rules.push(RuleStatus {
            name: rule.name.clone(),
            mark: resolved.mark & policy.mark_mask,
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

impl Status {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "namespace {}", self.namespace);
        if let (Some(src), Some(mask)) = (&self.source, self.mark_mask) {
            let _ = writeln!(o, "policy {src} (mark mask {mask:#x})");
        }
        let _ = writeln!(o, "\nhooks:");
        if self.hooks.is_empty() {
            let _ = writeln!(o, "  (none)");
        }
        for h in &self.hooks {
            let _ = writeln!(o, "  {:<40} program {}", h.hook.describe(), h.program_id);
        }
        let _ = writeln!(
            o,
            "\ngateways:\n  {:<16} {:>10} {:>10} {:<12} via",
            "name", "table", "mark", "dev"
        );
        for g in &self.gateways {
            let table = g
                .table_name
                .as_ref()
                .map_or(g.table.to_string(), |n| format!("{n}({})", g.table));
            let via: Vec<String> = g.via.iter().map(ToString::to_string).collect();
            let via = if via.is_empty() {
                "(device)".to_string()
            } else {
                via.join(", ")
            };
            let _ = writeln!(
                o,
                "  {:<16} {:>10} {:>10} {:<12} {via}",
                g.name,
                table,
                format!("{:#x}", g.mark),
                g.dev
            );
        }
        let _ = writeln!(
            o,
            "\nrules (first match wins):\n  {:>10} {:>12}  {:<20} {:<22} match",
            "pkts", "bytes", "name", "target"
        );
        for r in &self.rules {
            let _ = writeln!(
                o,
                "  {:>10} {:>12}  {:<20} {:<22} {}",
                r.packets, r.bytes, r.name, r.target, r.matches
            );
        }
        let _ = writeln!(o, "\nip rules (protocol {RTPROT_POLICYROUTE}):");
        for r in &self.ip_rules {
            let _ = writeln!(o, "  {}", describe_rule(r));
        }
        let _ = writeln!(o, "\nroutes (protocol {RTPROT_POLICYROUTE}):");
        for r in &self.routes {
            let _ = writeln!(o, "  {}", describe_route(r, &self.devices));
        }
        for w in &self.warnings {
            let _ = writeln!(o, "\nwarning: {w}");
        }
        o
    }
}

fn family(f: Family) -> &'static str {
    match f {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

pub fn describe_rule(r: &IpRule) -> String {
    let mut s = format!(
        "{} {}: from {}",
        family(r.family),
        r.priority,
        r.src.map_or("all".into(), |n| n.to_string())
    );
    if let Some((v, m)) = r.fwmark {
        let _ = write!(s, " fwmark {v:#x}/{m:#x}");
    }
    let _ = write!(s, " lookup {}", table_name(r.table));
    if let Some(p) = r.suppress_prefixlen {
        let _ = write!(s, " suppress_prefixlength {p}");
    }
    s
}

pub fn describe_route(r: &IpRoute, devices: &DeviceNames) -> String {
    let via = r.gateway.map_or(String::new(), |g| format!(" via {g}"));
    let dev = devices
        .get(&r.oif)
        .cloned()
        .unwrap_or_else(|| format!("#{}", r.oif));
    format!(
        "{} table {}: {}{via} dev {dev}",
        family(r.family),
        table_name(r.table),
        r.dst
    )
}

fn table_name(t: u32) -> String {
    match t {
        253 => "default".into(),
        254 => "main".into(),
        255 => "local".into(),
        t => t.to_string(),
    }
}
