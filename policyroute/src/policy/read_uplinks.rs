//! A gateway's `check` and the `[[group]]` tables, with the checks that tie them to the
//! gateways.
use std::net::IpAddr;
use std::ops::Range;

use toml::de::DeValue;

use super::error::escape_controls;
use super::matcher::Family;
use super::read::{non_empty, report_duplicates, GatewayDraft};
use super::toml_tree::{Doc, Field, Section, Value};
use super::uplinks::{Check, CheckMethod, Group, Member, WhenDown};

pub(super) const CHECK_KEYS: &[&str] = &[
    "targets", "method", "interval", "timeout", "count", "down", "up",
];
pub(super) const GROUP_KEYS: &[&str] = &["name", "members"];
pub(super) const MEMBER_KEYS: &[&str] = &["gateway", "weight", "tier"];
/// Most members of a group: the dataplane's table has this many.
const MAX_MEMBERS: usize = policyroute_common::MAX_MEMBERS;

/// Defaults: a probe round a second, answered within a second, three probes per target
/// (a round survives the loss of two), three rounds to go down or up.
const DEFAULT_INTERVAL_MS: u32 = 1_000;
const DEFAULT_TIMEOUT_MS: u32 = 1_000;
const DEFAULT_COUNT: u32 = 3;
const DEFAULT_ROUNDS: u32 = 3;

/// A group as read, with the spans the checks across tables report at.
pub(super) struct GroupDraft {
    pub key: String,
    pub name: Option<(String, Range<usize>)>,
    members: Vec<(Member, Range<usize>, String)>,
}

impl GroupDraft {
    pub fn finish(self) -> Group {
        Group {
            name: self.name.map(|(n, _)| n).unwrap_or_default(),
            members: self.members.into_iter().map(|(m, _, _)| m).collect(),
        }
    }
}

/// `check = { ... }` of a gateway whose next hops are `via` (empty: a device route,
/// which serves both families).
pub(super) fn check(doc: &mut Doc<'_>, f: Field<'_, '_>, via: &[IpAddr]) -> Option<Check> {
    let sec = doc.section(f.key, f.value, CHECK_KEYS)?;
    let errors = doc.error_count();
    let targets = targets(doc, &sec, via);
    let method = sec
        .get("method")
        .map_or(Some(CheckMethod::Icmp), |f| method(doc, f));
    let ms = |doc: &mut Doc<'_>, name, default, max_s| {
        sec.get(name)
            .map_or(Some(default), |f| seconds(doc, f, max_s))
    };
    let interval_ms = ms(doc, "interval", DEFAULT_INTERVAL_MS, 3_600);
    let timeout_ms = ms(doc, "timeout", DEFAULT_TIMEOUT_MS, 60);
    let count = small(doc, &sec, "count", DEFAULT_COUNT, 10);
    let down = small(doc, &sec, "down", DEFAULT_ROUNDS, 100);
    let up = small(doc, &sec, "up", DEFAULT_ROUNDS, 100);
    if doc.error_count() != errors {
        return None;
    }
    // A round counts as missed once the next has started unanswered (a late answer within
    // the timeout still counts), so answers slower than `down` rounds look like an outage.
    let (interval_ms, timeout_ms) = (interval_ms?, timeout_ms?);
    if u64::from(timeout_ms) > u64::from(down) * u64::from(interval_ms) {
        let span = sec
            .get("timeout")
            .map_or(sec.span.clone(), |f| f.value.span());
        let msg = format!(
            "{} s is longer than down × interval ({} s): answers that slow would count as \
             an outage; raise interval or down, or lower timeout",
            f64::from(timeout_ms) / 1000.0,
            f64::from(down) * f64::from(interval_ms) / 1000.0
        );
        doc.error(&span, &sec.key("timeout"), msg);
        return None;
    }
    Some(Check {
        targets,
        method: method?,
        interval_ms,
        timeout_ms,
        count,
        down,
        up,
    })
}

fn targets(doc: &mut Doc<'_>, sec: &Section<'_, '_>, via: &[IpAddr]) -> Vec<IpAddr> {
    let Some(f) = sec.require(doc, "targets") else {
        return Vec::new();
    };
    let items = doc.array(f).unwrap_or_default();
    if items.is_empty() && matches!(f.value.get_ref(), DeValue::Array(_)) {
        doc.error(&f.value.span(), f.key, "at least one address to probe");
    }
    let mut out = Vec::new();
    for (key, value) in &items {
        let Some(text) = doc.string(Field { key, value }) else {
            continue;
        };
        let Ok(addr) = text.parse::<IpAddr>() else {
            doc.error(&value.span(), key, format!("invalid IP address {text:?}"));
            continue;
        };
        let family = Family::of(&addr);
        if !via.is_empty() && !via.iter().any(|v| Family::of(v) == family) {
            let msg = format!("the gateway has no {family} next hop (via) to probe {addr} through");
            doc.error(&value.span(), key, msg);
            continue;
        }
        out.push(addr);
    }
    out
}

/// `"icmp"` or `"tcp:PORT"`.
fn method(doc: &mut Doc<'_>, f: Field<'_, '_>) -> Option<CheckMethod> {
    let text = doc.string(f)?;
    let parsed = match text.split_once(':') {
        None if text == "icmp" => Some(CheckMethod::Icmp),
        Some(("tcp", port)) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .map(CheckMethod::Tcp),
        _ => None,
    };
    if parsed.is_none() {
        let msg = format!(
            "unknown check method {:?} (expected \"icmp\" or \"tcp:PORT\", port 1-65535)",
            escape_controls(&text)
        );
        doc.error(&f.value.span(), f.key, msg);
    }
    parsed
}

/// Seconds as an integer or a float, to ms: at least 10 ms, at most `max_s`.
fn seconds(doc: &mut Doc<'_>, f: Field<'_, '_>, max_s: u32) -> Option<u32> {
    let secs = match f.value.get_ref() {
        DeValue::Integer(_) => doc.int(f, 0..=i64::from(max_s)).map(|s| s as f64),
        DeValue::Float(x) => x.as_str().replace('_', "").parse::<f64>().ok(),
        _ => {
            doc.mismatch(f.key, f.value, "seconds (a number)");
            return None;
        }
    }?;
    let ms = (secs * 1000.0).round();
    if !(10.0..=f64::from(max_s) * 1000.0).contains(&ms) {
        let msg = format!("{secs} s is out of range (0.01 to {max_s} seconds)");
        doc.error(&f.value.span(), f.key, msg);
        return None;
    }
    Some(ms as u32)
}

fn small(doc: &mut Doc<'_>, sec: &Section<'_, '_>, name: &str, default: u32, max: i64) -> u32 {
    sec.get(name)
        .and_then(|f| doc.int(f, 1..=max))
        .map_or(default, |n| n as u32)
}

pub(super) fn group(doc: &mut Doc<'_>, sec: &Section<'_, '_>) -> GroupDraft {
    let name = sec.require(doc, "name").and_then(|f| {
        let name = non_empty(doc, f)?;
        Some((name, f.value.span()))
    });
    let items = sec
        .require(doc, "members")
        .and_then(|f| {
            let items = doc.array(f)?;
            if items.is_empty() {
                doc.error(&f.value.span(), f.key, "a group needs at least one member");
            } else if items.len() > MAX_MEMBERS {
                let msg = format!("{} members; a group has at most {MAX_MEMBERS}", items.len());
                doc.error(&f.value.span(), f.key, msg);
            }
            Some(items)
        })
        .unwrap_or_default();
    let members = items
        .iter()
        .filter_map(|(key, value)| member(doc, key, value))
        .collect();
    GroupDraft {
        key: sec.key.clone(),
        name,
        members,
    }
}

fn member(
    doc: &mut Doc<'_>,
    key: &str,
    value: &Value<'_>,
) -> Option<(Member, Range<usize>, String)> {
    let sec = doc.section(key, value, MEMBER_KEYS)?;
    let gateway = sec.require(doc, "gateway")?;
    let span = gateway.value.span();
    let name = non_empty(doc, gateway)?;
    let weight = sec.get("weight").and_then(|f| doc.int(f, 1..=1000));
    let tier = sec.get("tier").and_then(|f| doc.int(f, 1..=255));
    let m = Member {
        gateway: name,
        weight: weight.map_or(1, |w| w as u32),
        tier: tier.map_or(1, |t| t as u32),
    };
    Some((m, span, sec.key("gateway")))
}

/// Group names are unique and differ from gateway names (a rule names either); members
/// are known gateways, each once per group.
pub(super) fn check_groups(doc: &mut Doc<'_>, groups: &[GroupDraft], gateways: &[GatewayDraft]) {
    let gateway_names: Vec<&str> = gateways
        .iter()
        .filter_map(|g| Some(g.name.as_ref()?.0.as_str()))
        .collect();
    let names = groups.iter().filter_map(|g| {
        let (name, span) = g.name.as_ref()?;
        Some((format!("{name:?}"), span.clone(), format!("{}.name", g.key)))
    });
    report_duplicates(doc, names, "group name");
    for g in groups {
        if let Some((name, span)) = &g.name {
            if gateway_names.contains(&name.as_str()) {
                let msg =
                    format!("{name:?} is a gateway's name too; a rule could not tell them apart");
                doc.error(span, &format!("{}.name", g.key), msg);
            }
        }
        for (m, span, key) in &g.members {
            if !gateway_names.contains(&m.gateway.as_str()) {
                let msg = format!(
                    "unknown gateway {:?} (defined: {})",
                    m.gateway,
                    defined(&gateway_names)
                );
                doc.error(span, key, msg);
            }
        }
        let dups = g
            .members
            .iter()
            .map(|(m, span, key)| (format!("{:?}", m.gateway), span.clone(), key.clone()));
        report_duplicates(doc, dups, "member");
    }
}

pub(super) fn defined(names: &[&str]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    let mut names = names.to_vec();
    names.sort_unstable();
    names.dedup();
    escape_controls(&names.join(", ")).into_owned()
}

/// `when_down = "main" | "blackhole"`.
pub(super) fn when_down(doc: &mut Doc<'_>, f: Field<'_, '_>) -> Option<WhenDown> {
    let text = doc.string(f)?;
    match text.as_str() {
        "main" => Some(WhenDown::Main),
        "blackhole" => Some(WhenDown::Blackhole),
        _ => {
            let msg = format!(
                "unknown when_down {:?} (expected \"main\" or \"blackhole\")",
                escape_controls(&text)
            );
            doc.error(&f.value.span(), f.key, msg);
            None
        }
    }
}
