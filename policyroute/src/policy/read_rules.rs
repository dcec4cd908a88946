//! `[[rule]]`: match conditions and target.
use std::ops::Range;
use std::sync::Arc;

use ipnet::IpNet;
use toml::de::DeValue;

use super::read::{inside_mask, non_empty, report_duplicates, GatewayDraft};
use super::read_uplinks::{self, GroupDraft};
use super::toml_tree::{Doc, Field, Section};
use super::WhenDown;
use super::{PolicyRule, Target};
use crate::policy::matcher::{Match, RuleError};
use crate::policy::ports::{PortRange, PortSet};
use crate::policy::protocol;
use crate::policy::sets::{PrefixSet, SetRef};

pub(super) const KEYS: &[&str] = &[
    "name",
    "proto",
    "src",
    "dst",
    "sport",
    "dport",
    "dscp",
    "gateway",
    "mark",
    "when_down",
];

/// The sets rules may name: those read, and those whose errors were already reported.
pub(super) struct KnownSets<'a> {
    pub sets: &'a [Arc<PrefixSet>],
    pub broken: &'a [String],
}

/// A rule as read, with the spans the checks across rules report at.
pub(super) struct RuleDraft {
    key: String,
    name: String,
    /// The `name` value, or the `[[rule]]` header for a default name.
    name_span: Range<usize>,
    matcher: Match,
    /// With the span of the `gateway` or `mark` value; `None`: error already reported.
    target: Option<(Target, Range<usize>)>,
    when_down: WhenDown,
}

impl RuleDraft {
    /// The raw mark this rule sets, if it names one.
    pub fn raw_mark(&self) -> Option<u32> {
        match self.target {
            Some((Target::Mark(mark), _)) => Some(mark),
            _ => None,
        }
    }

    pub fn finish(self) -> PolicyRule {
        PolicyRule {
            name: self.name,
            matcher: self.matcher,
            target: self.target.map_or(Target::Mark(0), |(t, _)| t),
            when_down: self.when_down,
        }
    }
}

/// Rule `n` (1-based): its default name is `rule-n`.
pub(super) fn rule(
    doc: &mut Doc<'_>,
    sec: &Section<'_, '_>,
    n: usize,
    mark_mask: u32,
    sets: &KnownSets<'_>,
) -> RuleDraft {
    let (name, name_span) = match sec.get("name") {
        Some(f) => (non_empty(doc, f).unwrap_or_default(), f.value.span()),
        None => (format!("rule-{n}"), sec.span.clone()),
    };
    let matcher = matcher(doc, sec, sets);
    let target = target(doc, sec, mark_mask);
    let when_down = sec.get("when_down").and_then(|f| {
        let w = read_uplinks::when_down(doc, f)?;
        if sec.get("mark").is_some() {
            let msg = "applies to a gateway or group target, not to a mark";
            doc.error(&f.value.span(), f.key, msg);
        }
        Some(w)
    });
    RuleDraft {
        key: sec.key.clone(),
        name,
        name_span,
        matcher,
        target,
        when_down: when_down.unwrap_or_default(),
    }
}

/// Reads the conditions; if all read, checks the combination (`Match::validate`).
fn matcher(doc: &mut Doc<'_>, sec: &Section<'_, '_>, sets: &KnownSets<'_>) -> Match {
    let errors_before = doc.error_count();
    let (src, src_set) = sec
        .get("src")
        .map_or((None, None), |f| address(doc, f, sets));
    let (dst, dst_set) = sec
        .get("dst")
        .map_or((None, None), |f| address(doc, f, sets));
    let m = Match {
        proto: sec.get("proto").and_then(|f| proto(doc, f)),
        src,
        dst,
        src_set,
        dst_set,
        sport: sec.get("sport").and_then(|f| ports(doc, f)),
        dport: sec.get("dport").and_then(|f| ports(doc, f)),
        dscp: sec
            .get("dscp")
            .and_then(|f| doc.int(f, 0..=63).map(|d| d as u8)),
    };
    if doc.error_count() == errors_before {
        validate(doc, sec, &m);
    }
    m
}

/// Runs `Match::validate` and reports its complaint at the key it is about.
fn validate(doc: &mut Doc<'_>, sec: &Section<'_, '_>, m: &Match) {
    let Err(e) = m.validate() else {
        return;
    };
    let field = match &e {
        RuleError::HostBits(net, _) if m.src.as_ref() == Some(net) => "src",
        RuleError::HostBits(..) | RuleError::MixedFamilies => "dst",
        RuleError::ProtoFamily { .. } => "proto",
        RuleError::PortsWithoutPortProto(_) if m.sport.is_some() => "sport",
        RuleError::PortsWithoutPortProto(_) => "dport",
        RuleError::Dscp(_) => "dscp",
    };
    let span = sec.get(field).map_or(sec.span.clone(), |f| f.value.span());
    doc.error(&span, &sec.key(field), e);
}

/// A protocol name or number (0-255), as an integer or a string.
fn proto(doc: &mut Doc<'_>, f: Field<'_, '_>) -> Option<u8> {
    let DeValue::String(name) = f.value.get_ref() else {
        return doc.int(f, 0..=255).map(|p| p as u8);
    };
    let found = protocol::parse(name);
    if found.is_none() {
        doc.error(&f.value.span(), f.key, protocol::unknown(name));
    }
    found
}

/// A prefix, or `@name` of a set.
fn address(
    doc: &mut Doc<'_>,
    f: Field<'_, '_>,
    known: &KnownSets<'_>,
) -> (Option<IpNet>, Option<SetRef>) {
    let sets = known.sets;
    let name = match f.value.get_ref() {
        DeValue::String(s) => s.strip_prefix('@').map(str::to_owned),
        _ => None,
    };
    let Some(name) = name else {
        return (prefix(doc, f), None);
    };
    match sets.iter().find(|s| s.name == name) {
        Some(set) => (None, Some(SetRef::new(Arc::clone(set)))),
        None if known.broken.contains(&name) => (None, None),
        None => {
            let defined: Vec<String> = sets.iter().map(|s| format!("@{}", s.name)).collect();
            let defined = if defined.is_empty() {
                "none".to_owned()
            } else {
                defined.join(", ")
            };
            let msg = format!("unknown set @{name} (defined: {defined})");
            doc.error(&f.value.span(), f.key, msg);
            (None, None)
        }
    }
}

/// A prefix; a bare address is a host prefix (/32, /128).
fn prefix(doc: &mut Doc<'_>, f: Field<'_, '_>) -> Option<IpNet> {
    let text = doc.string(f)?;
    let net = text.parse::<IpNet>().ok();
    let net = net.or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from));
    if net.is_none() {
        let msg = format!("invalid prefix {text:?} (expected ADDRESS/LENGTH or ADDRESS)");
        doc.error(&f.value.span(), f.key, msg);
    }
    net
}

/// A port, a "LO-HI" string, or a non-empty list of either.
fn ports(doc: &mut Doc<'_>, f: Field<'_, '_>) -> Option<PortSet> {
    let items = match f.value.get_ref() {
        DeValue::Array(_) => doc.array(f)?,
        _ => vec![(f.key.to_owned(), f.value)],
    };
    if items.is_empty() {
        doc.error(
            &f.value.span(),
            f.key,
            "empty port list (omit the key to match any port)",
        );
        return None;
    }
    let ranges: Vec<Option<PortRange>> = items
        .iter()
        .map(|(key, value)| port_range(doc, Field { key, value }))
        .collect();
    PortSet::new(ranges.into_iter().collect::<Option<Vec<_>>>()?)
}

fn port_range(doc: &mut Doc<'_>, f: Field<'_, '_>) -> Option<PortRange> {
    let DeValue::String(text) = f.value.get_ref() else {
        if !matches!(f.value.get_ref(), DeValue::Integer(_)) {
            doc.mismatch(f.key, f.value, "a port number or a \"LO-HI\" string");
            return None;
        }
        return doc.int(f, 0..=65535).map(|p| PortRange::single(p as u16));
    };
    let result = parse_range(text);
    if let Err(msg) = &result {
        doc.error(&f.value.span(), f.key, msg);
    }
    result.ok()
}

fn parse_range(text: &str) -> Result<PortRange, String> {
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let port = |p: &str| {
        p.trim().parse::<u16>().map_err(|_| {
            format!("invalid port range {text:?} (expected PORT or LO-HI, ports 0-65535)")
        })
    };
    let (lo, hi) = (port(lo)?, port(hi)?);
    PortRange::new(lo, hi).ok_or_else(|| format!("empty port range {lo}-{hi}"))
}

/// Exactly one of `gateway = NAME` and `mark = N` (inside the mask).
fn target(
    doc: &mut Doc<'_>,
    sec: &Section<'_, '_>,
    mark_mask: u32,
) -> Option<(Target, Range<usize>)> {
    match (sec.get("gateway"), sec.get("mark")) {
        (Some(_), Some(m)) => {
            doc.error(
                &m.value.span(),
                m.key,
                "a rule has either gateway or mark, not both",
            );
            None
        }
        (None, None) => {
            let msg = "a rule needs a target: gateway = NAME or mark = N";
            doc.error(&sec.span, &sec.key, msg);
            None
        }
        (Some(g), None) => Some((Target::Gateway(non_empty(doc, g)?), g.value.span())),
        (None, Some(m)) => {
            let mark = doc.u32(m)?;
            let mark = inside_mask(doc, m, mark, mark_mask)?;
            Some((Target::Mark(mark), m.value.span()))
        }
    }
}

/// Rule names are unique; gateways and groups that rules name exist.
pub(super) fn check(
    doc: &mut Doc<'_>,
    rules: &[RuleDraft],
    gateways: &[GatewayDraft],
    groups: &[GroupDraft],
) {
    let names = rules.iter().map(|r| {
        (
            format!("{:?}", r.name),
            r.name_span.clone(),
            format!("{}.name", r.key),
        )
    });
    report_duplicates(doc, names.filter(|(n, _, _)| n != "\"\""), "rule name");
    let known: Vec<&str> = gateways
        .iter()
        .filter_map(|g| Some(g.name.as_ref()?.0.as_str()))
        .chain(
            groups
                .iter()
                .filter_map(|g| Some(g.name.as_ref()?.0.as_str())),
        )
        .collect();
    for rule in rules {
        let Some((Target::Gateway(name), span)) = &rule.target else {
            continue;
        };
        if !known.contains(&name.as_str()) {
            let defined = read_uplinks::defined(&known);
            let msg = format!("unknown gateway or group {name:?} (defined: {defined})");
            doc.error(span, &format!("{}.gateway", rule.key), msg);
        }
    }
}
