//! The top level, `[[gateway]]` and `[attach]`, and the checks across gateways.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Range;

use toml::de::DeValue;

use super::error::escape_controls;
use super::read_rules::{self, RuleDraft};
use super::read_sets::{self, SetDraft};
use super::read_uplinks::{self, GroupDraft};
use super::toml_tree::{Doc, Field, Section};
use super::{
    marks, Attach, AttachMode, ConfigError, Gateway, Origin, Policy, PolicyRule, DEFAULT_MARK_MASK,
    DEFAULT_RULE_PRIORITY, MAIN_RULE_PRIORITY,
};
use crate::policy::matcher::Family;
use crate::policy::rt_tables::{self, RtTables};

const TOP_KEYS: &[&str] = &[
    "mark_mask",
    "rule_priority",
    "main_routes_first",
    "fast_path",
    "sticky_timeout",
    "gateway",
    "group",
    "set",
    "rule",
    "attach",
];
const GATEWAY_KEYS: &[&str] = &["name", "dev", "via", "table", "mark", "sticky", "check"];
const ATTACH_KEYS: &[&str] = &["ingress", "egress", "local", "local_cgroup", "mode"];
/// Every key the reader takes, by the table it is in (as docs/policy.md heads them).
#[cfg(test)]
pub(super) const KEYS_BY_TABLE: [(&str, &[&str]); 8] = [
    ("top level", TOP_KEYS),
    ("[[gateway]]", GATEWAY_KEYS),
    ("check", super::read_uplinks::CHECK_KEYS),
    ("[[group]]", super::read_uplinks::GROUP_KEYS),
    ("members", super::read_uplinks::MEMBER_KEYS),
    ("[[set]]", super::read_sets::KEYS),
    ("[[rule]]", super::read_rules::KEYS),
    ("[attach]", ATTACH_KEYS),
];
/// Default lifetime of a sticky flow record after its last inbound packet, in seconds.
pub const DEFAULT_STICKY_TIMEOUT: u32 = 300;

/// Linux's IFNAMSIZ less the terminating NUL.
const IFNAME_MAX: usize = libc::IFNAMSIZ - 1;

/// A gateway as read, with the spans the checks across gateways report at. `None`
/// fields had an error already reported.
pub(super) struct GatewayDraft {
    pub key: String,
    pub header: Range<usize>,
    pub name: Option<(String, Range<usize>)>,
    dev: Option<String>,
    dev_line: usize,
    via: Vec<IpAddr>,
    table: Option<(u32, Option<String>, Range<usize>)>,
    /// Explicit mark; derived later when absent.
    pub mark: Option<(u32, Range<usize>)>,
    sticky: bool,
    check: Option<super::Check>,
}

pub(super) fn policy(text: &str, file: &str, tables: &RtTables) -> Result<Policy, ConfigError> {
    let mut doc = Doc::new(file, text);
    let tree = doc.parse_tree()?;
    let top = doc.table("", tree.span(), tree.get_ref(), TOP_KEYS);
    let mark_mask = mark_mask(&mut doc, &top);
    let main_routes_first = top.get("main_routes_first").and_then(|f| doc.boolean(f));
    let fast_path = top.get("fast_path").and_then(|f| doc.boolean(f));
    let gateways = array_of_tables(&mut doc, &top, "gateway", GATEWAY_KEYS)
        .iter()
        .map(|(_, sec)| gateway(&mut doc, sec, tables, mark_mask))
        .collect::<Vec<_>>();
    let groups = array_of_tables(&mut doc, &top, "group", read_uplinks::GROUP_KEYS)
        .iter()
        .map(|(_, sec)| read_uplinks::group(&mut doc, sec))
        .collect::<Vec<_>>();
    let sets = array_of_tables(&mut doc, &top, "set", read_sets::KEYS)
        .iter()
        .map(|(_, sec)| read_sets::set(&mut doc, sec))
        .collect::<Vec<_>>();
    read_sets::check(&mut doc, &sets);
    // A set with an error is reported once, not again at every rule that names it.
    let broken: Vec<String> = sets
        .iter()
        .filter(|s| s.set.is_none())
        .filter_map(|s| Some(s.name.as_ref()?.0.clone()))
        .collect();
    let sets: Vec<_> = sets.into_iter().filter_map(|s: SetDraft| s.set).collect();
    let known = read_rules::KnownSets {
        sets: &sets,
        broken: &broken,
    };
    let rules = array_of_tables(&mut doc, &top, "rule", read_rules::KEYS)
        .iter()
        .map(|(n, sec)| read_rules::rule(&mut doc, sec, *n, mark_mask, &known))
        .collect::<Vec<_>>();
    check_gateways(&mut doc, &gateways);
    read_uplinks::check_groups(&mut doc, &groups, &gateways);
    read_rules::check(&mut doc, &rules, &gateways, &groups);
    let marks = marks::assign(&mut doc, &gateways, &rules, mark_mask);
    let rule_priority = rule_priority(&mut doc, &top, gateways.len());
    let (attach, lines) = attach(&mut doc, &top);
    let sticky_timeout = sticky_timeout(&mut doc, &top);
    let policy = Policy {
        mark_mask,
        rule_priority,
        main_routes_first: main_routes_first.unwrap_or(true),
        fast_path: fast_path.unwrap_or(false),
        origin: Origin {
            file: file.to_owned(),
            gateway_dev: gateways.iter().map(|g| g.dev_line).collect(),
            ingress: lines.ingress,
            egress: lines.egress,
            attach_mode: lines.mode,
        },
        sticky_timeout,
        gateways: gateways
            .into_iter()
            .zip(marks)
            .map(finish_gateway)
            .collect(),
        groups: groups.into_iter().map(GroupDraft::finish).collect(),
        sets,
        rules: rules.into_iter().map(RuleDraft::finish).collect(),
        attach,
    };
    doc.finish(policy)
}

/// One `[[rule]]` table alone (`text` holds nothing else), as rule `n` of a policy with
/// `mark_mask`; `None` for any problem (the whole file is then read for the messages).
pub(super) fn rule_alone(text: &str, file: &str, n: usize, mark_mask: u32) -> Option<PolicyRule> {
    let mut doc = Doc::new(file, text);
    let tree = doc.parse_tree().ok()?;
    let top = doc.table("", tree.span(), tree.get_ref(), &["rule"]);
    let DeValue::Array(items) = top.get("rule")?.value.get_ref() else {
        return None;
    };
    let mut items = items.iter();
    let (Some(item), None) = (items.next(), items.next()) else {
        return None;
    };
    let sec = doc.section(&format!("rule[{n}]"), item, read_rules::KEYS)?;
    // No sets: a rule naming one fails here, and the whole file is read.
    let none = read_rules::KnownSets {
        sets: &[],
        broken: &[],
    };
    let draft = read_rules::rule(&mut doc, &sec, n, mark_mask, &none);
    doc.finish(draft.finish()).ok()
}

fn mark_mask(doc: &mut Doc<'_>, top: &Section<'_, '_>) -> u32 {
    let Some(f) = top.get("mark_mask") else {
        return DEFAULT_MARK_MASK;
    };
    match doc.u32(f) {
        Some(0) => {
            doc.error(
                &f.value.span(),
                f.key,
                "must be non-zero (no mark bits to set)",
            );
            DEFAULT_MARK_MASK
        }
        Some(mask) => mask,
        None => DEFAULT_MARK_MASK,
    }
}

/// The tool's rules take `rule_priority` (the main-routes rule) and one priority per
/// gateway after it, all before main's rule at 32766.
fn rule_priority(doc: &mut Doc<'_>, top: &Section<'_, '_>, gateways: usize) -> u32 {
    let Some(f) = top.get("rule_priority") else {
        return DEFAULT_RULE_PRIORITY;
    };
    let Some(prio) = doc.u32(f) else {
        return DEFAULT_RULE_PRIORITY;
    };
    let highest = u64::from(MAIN_RULE_PRIORITY - 2).saturating_sub(gateways as u64);
    if prio == 0 {
        doc.error(
            &f.value.span(),
            f.key,
            "priority 0 is the local table's rule; use 1 or more",
        );
    } else if u64::from(prio) > highest {
        let msg = format!(
            "{prio} leaves no room for {gateways} gateway rules before main's rule at \
             {MAIN_RULE_PRIORITY}; use at most {highest}"
        );
        doc.error(&f.value.span(), f.key, msg);
    }
    prio
}

/// `[[name]]` sections with their 1-based positions, keyed `name[1]`, `name[2]`, ...
fn array_of_tables<'a, 'i>(
    doc: &mut Doc<'_>,
    top: &'a Section<'a, 'i>,
    name: &str,
    allowed: &[&str],
) -> Vec<(usize, Section<'a, 'i>)> {
    let Some(f) = top.get(name) else {
        return Vec::new();
    };
    let DeValue::Array(items) = f.value.get_ref() else {
        doc.mismatch(f.key, f.value, &format!("an array of tables ([[{name}]])"));
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            Some((
                i + 1,
                doc.section(&format!("{name}[{}]", i + 1), v, allowed)?,
            ))
        })
        .collect()
}

fn gateway(
    doc: &mut Doc<'_>,
    sec: &Section<'_, '_>,
    tables: &RtTables,
    mark_mask: u32,
) -> GatewayDraft {
    let name = sec.require(doc, "name").and_then(|f| {
        let name = non_empty(doc, f)?;
        Some((name, f.value.span()))
    });
    let dev_field = sec.require(doc, "dev");
    let dev = dev_field.and_then(|f| ifname(doc, f));
    let via = sec.get("via").map(|f| via(doc, f)).unwrap_or_default();
    let check = sec
        .get("check")
        .and_then(|f| read_uplinks::check(doc, f, &via));
    GatewayDraft {
        key: sec.key.clone(),
        header: sec.span.clone(),
        name,
        dev,
        dev_line: dev_field.map_or(0, |f| doc.line(&f.value.span())),
        via,
        check,
        table: sec.require(doc, "table").and_then(|f| {
            let (id, name) = table(doc, f, tables)?;
            Some((id, name, f.value.span()))
        }),
        mark: sec
            .get("mark")
            .and_then(|f| Some((gateway_mark(doc, f, mark_mask)?, f.value.span()))),
        sticky: sec
            .get("sticky")
            .and_then(|f| doc.boolean(f))
            .unwrap_or(false),
    }
}

fn finish_gateway((draft, mark): (GatewayDraft, u32)) -> Gateway {
    let (table, table_name) = draft.table.map_or((0, None), |(id, name, _)| (id, name));
    Gateway {
        name: draft.name.map(|(n, _)| n).unwrap_or_default(),
        dev: draft.dev.unwrap_or_default(),
        via: draft.via,
        table,
        table_name,
        mark,
        sticky: draft.sticky,
        check: draft.check,
    }
}

pub(super) fn non_empty(doc: &mut Doc<'_>, f: Field<'_, '_>) -> Option<String> {
    let s = doc.string(f)?;
    if s.is_empty() {
        doc.error(&f.value.span(), f.key, "must not be empty");
        return None;
    }
    Some(s)
}

/// A name the kernel could accept for a device (its `dev_valid_name`).
fn ifname(doc: &mut Doc<'_>, f: Field<'_, '_>) -> Option<String> {
    let name = non_empty(doc, f)?;
    let bad = name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace());
    let problem = if name.len() > IFNAME_MAX {
        Some(format!(
            "device name {name:?} is longer than {IFNAME_MAX} bytes"
        ))
    } else if bad || name == "." || name == ".." {
        Some(format!("{name:?} is not a valid device name"))
    } else {
        None
    };
    match problem {
        Some(msg) => {
            doc.error(&f.value.span(), f.key, msg);
            None
        }
        None => Some(name),
    }
}

/// A string or a list of strings; at most one address per family.
fn via(doc: &mut Doc<'_>, f: Field<'_, '_>) -> Vec<IpAddr> {
    let items = match f.value.get_ref() {
        DeValue::Array(_) => doc.array(f).unwrap_or_default(),
        _ => vec![(f.key.to_owned(), f.value)],
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for (key, value) in &items {
        let Some(text) = doc.string(Field { key, value }) else {
            continue;
        };
        let span = value.span();
        match text.parse::<IpAddr>() {
            Err(_) => doc.error(&span, key, format!("invalid IP address {text:?}")),
            Ok(addr) if out.iter().any(|a| Family::of(a) == Family::of(&addr)) => {
                let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
                doc.error(
                    &span,
                    key,
                    format!(
                        "a second {family} next hop {addr}; a gateway has at most one per family"
                    ),
                );
            }
            Ok(addr) => out.push(addr),
        }
    }
    out
}

/// A table number or an rt_tables name; not one of the kernel's own tables.
fn table(doc: &mut Doc<'_>, f: Field<'_, '_>, tables: &RtTables) -> Option<(u32, Option<String>)> {
    let (id, name) = match f.value.get_ref() {
        DeValue::Integer(_) => (doc.u32(f)?, None),
        DeValue::String(s) => match (tables.id(s), s.parse::<u32>()) {
            (Some(id), _) => (id, Some(s.to_string())),
            (None, Ok(id)) => (id, None),
            (None, Err(_)) => {
                doc.error(
                    &f.value.span(),
                    f.key,
                    format!("table name {s:?} is not defined in rt_tables"),
                );
                return None;
            }
        },
        _ => {
            doc.mismatch(f.key, f.value, "a table number or an rt_tables name");
            return None;
        }
    };
    if let Some(kernel) = rt_tables::reserved(id) {
        doc.error(
            &f.value.span(),
            f.key,
            format!("table {id} ({kernel}) is reserved"),
        );
        return None;
    }
    Some((id, name))
}

fn gateway_mark(doc: &mut Doc<'_>, f: Field<'_, '_>, mask: u32) -> Option<u32> {
    let mark = doc.u32(f)?;
    if mark == 0 {
        doc.error(
            &f.value.span(),
            f.key,
            "mark 0 means unmarked; a gateway needs a non-zero mark",
        );
        return None;
    }
    inside_mask(doc, f, mark, mask)
}

pub(super) fn inside_mask(
    doc: &mut Doc<'_>,
    f: Field<'_, '_>,
    mark: u32,
    mask: u32,
) -> Option<u32> {
    if mark & !mask != 0 {
        doc.error(
            &f.value.span(),
            f.key,
            format!("mark {mark:#x} is outside mark_mask {mask:#x}"),
        );
        return None;
    }
    Some(mark)
}

/// Names, tables and explicit marks are each unique across gateways.
fn check_gateways(doc: &mut Doc<'_>, gateways: &[GatewayDraft]) {
    let names = gateways.iter().filter_map(|g| {
        let (name, span) = g.name.as_ref()?;
        Some((format!("{name:?}"), span.clone(), format!("{}.name", g.key)))
    });
    report_duplicates(doc, names, "gateway name");
    let tables = gateways.iter().filter_map(|g| {
        let (id, _, span) = g.table.as_ref()?;
        Some((id.to_string(), span.clone(), format!("{}.table", g.key)))
    });
    report_duplicates(doc, tables, "table");
    let marks = gateways.iter().filter_map(|g| {
        let (mark, span) = g.mark.as_ref()?;
        Some((
            format!("{mark:#x}"),
            span.clone(),
            format!("{}.mark", g.key),
        ))
    });
    report_duplicates(doc, marks, "mark");
}

/// Reports every (shown value, span, key) after the first of each equal value.
pub(super) fn report_duplicates(
    doc: &mut Doc<'_>,
    values: impl Iterator<Item = (String, Range<usize>, String)>,
    what: &str,
) {
    let mut first: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for (value, span, key) in values {
        match first.get(&value) {
            Some((other, line)) => {
                let msg = format!("duplicate {what} {value} (first at {other}, line {line})");
                doc.error(&span, &key, msg);
            }
            None => {
                let line = doc.line(&span);
                first.insert(value, (key, line));
            }
        }
    }
}

fn sticky_timeout(doc: &mut Doc<'_>, top: &Section<'_, '_>) -> u32 {
    let Some(f) = top.get("sticky_timeout") else {
        return DEFAULT_STICKY_TIMEOUT;
    };
    match doc.int(f, 1..=86_400) {
        Some(secs) => secs as u32,
        None => DEFAULT_STICKY_TIMEOUT,
    }
}

/// Lines of the `[attach]` values checked against the running system.
#[derive(Default)]
struct AttachLines {
    ingress: Vec<usize>,
    egress: Vec<usize>,
    mode: Option<usize>,
}

fn attach(doc: &mut Doc<'_>, top: &Section<'_, '_>) -> (Attach, AttachLines) {
    let Some(sec) = top
        .get("attach")
        .and_then(|f| doc.section(f.key, f.value, ATTACH_KEYS))
    else {
        return (Attach::default(), AttachLines::default());
    };
    let (ingress, ingress_lines) = devices(doc, &sec, "ingress");
    let (egress, egress_lines) = devices(doc, &sec, "egress");
    let local = sec
        .get("local")
        .and_then(|f| doc.boolean(f))
        .unwrap_or(false);
    let local_cgroup = sec.get("local_cgroup").and_then(|f| non_empty(doc, f));
    if local_cgroup.is_some() && !local {
        if let Some(f) = sec.get("local_cgroup") {
            doc.error(&f.value.span(), f.key, "has no effect without local = true");
        }
    }
    let mode_field = sec.get("mode");
    let mode = mode_field.and_then(|f| attach_mode(doc, f));
    let mode_line = mode_field.map(|f| doc.line(&f.value.span()));
    let attach = Attach {
        ingress,
        egress,
        local,
        local_cgroup,
        mode: mode.unwrap_or_default(),
    };
    let lines = AttachLines {
        ingress: ingress_lines,
        egress: egress_lines,
        mode: mode_line,
    };
    (attach, lines)
}

fn attach_mode(doc: &mut Doc<'_>, f: Field<'_, '_>) -> Option<AttachMode> {
    let text = doc.string(f)?;
    match text.as_str() {
        "auto" => Some(AttachMode::Auto),
        "tcx" => Some(AttachMode::Tcx),
        "tc" => Some(AttachMode::Tc),
        _ => {
            let msg = format!(
                "unknown mode {:?} (expected \"auto\", \"tcx\" or \"tc\")",
                escape_controls(&text)
            );
            doc.error(&f.value.span(), f.key, msg);
            None
        }
    }
}

/// A list of device names with the lines they were written on; duplicates are errors.
fn devices(doc: &mut Doc<'_>, sec: &Section<'_, '_>, name: &str) -> (Vec<String>, Vec<usize>) {
    let items = sec.get(name).and_then(|f| doc.array(f)).unwrap_or_default();
    let mut devs = Vec::new();
    for (key, value) in &items {
        if let Some(dev) = ifname(doc, Field { key, value }) {
            devs.push((dev, value.span(), key.as_str()));
        }
    }
    let dup = devs
        .iter()
        .map(|(d, s, k)| (format!("{d:?}"), s.clone(), k.to_string()));
    report_duplicates(doc, dup, "device");
    let lines = devs.iter().map(|(_, s, _)| doc.line(s)).collect();
    (devs.into_iter().map(|(d, _, _)| d).collect(), lines)
}
