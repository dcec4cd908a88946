//! The policy's `[[rule]]` tables from the ordered MARK rules: each mark resolved to its
//! gateway (or kept raw), a name, and the family a one-family rule keeps.
use super::gateways::Gateways;
use super::iptables_save::Hook;
use super::order::Placed;
use super::{Draft, Note, RuleOut};
use crate::policy::matcher::{Family, Match};
use crate::policy::Target;

/// Names, targets, and a family restriction for rules only one family's chain had.
pub(super) fn rules(placed: &[Placed], gws: &Gateways, d: &mut Draft) -> Vec<RuleOut> {
    let mut out: Vec<RuleOut> = Vec::new();
    for p in placed {
        let r = &p.rule;
        let note = |text: String| Note::at(&p.file, r.line, text);
        let mask = d.mark_mask.unwrap_or(u32::MAX);
        if r.mark & !mask != 0 {
            let why = format!(
                "mark {:#x} is outside mark_mask {mask:#x}: not imported",
                r.mark
            );
            d.notes.push(note(why));
            continue;
        }
        if r.mask != u32::MAX && r.mask != mask {
            let why = format!(
                "MARK sets only the bits {:#x}; the policy sets the bits of mark_mask",
                r.mask
            );
            d.notes.push(note(why));
        }
        let target = match gws.by_mark.get(&r.mark) {
            Some(name) => Target::Gateway(name.clone()),
            None => {
                if r.mark != 0 && !gws.tested.contains(&r.mark) {
                    let why = format!(
                        "no fwmark ip rule in the input tests mark {:#x}: kept as a raw mark, \
                         which routes only if something else acts on it",
                        r.mark
                    );
                    d.notes.push(note(why));
                }
                Target::Mark(r.mark)
            }
        };
        let chain = match r.hook {
            Hook::Forwarded => "PREROUTING",
            Hook::Local => "OUTPUT",
        };
        let how = if r.ends_chain {
            ", -j RETURN/ACCEPT"
        } else {
            ""
        };
        let via: String = r
            .via
            .iter()
            .map(|v| format!(", -j {} at line {}", v.chain, v.line))
            .collect();
        let taken: Vec<String> = out.iter().map(|o| o.name.clone()).collect();
        out.push(RuleOut {
            name: rule_name(p, chain, &taken),
            origin: match &p.twin {
                Some(twin) => format!("{}:{} and {twin} ({chain}{via}{how})", p.file, r.line),
                None => format!("{}:{} ({chain}{via}{how})", p.file, r.line),
            },
            matcher: only_families(p, &target, gws),
            target,
        });
    }
    out
}

/// A rule without addresses matches both families in a policy; one that only one family's
/// chain had gets that family's `/0` destination when its target would route the other.
fn only_families(p: &Placed, target: &Target, gws: &Gateways) -> Match {
    let mut m = p.rule.matcher.clone();
    let has_both = p.families.contains(&Family::V4) && p.families.contains(&Family::V6);
    if has_both || m.src.is_some() || m.dst.is_some() {
        return m;
    }
    let Some(&family) = p.families.first() else {
        return m;
    };
    let other = if family == Family::V4 {
        Family::V6
    } else {
        Family::V4
    };
    let reaches_other = match target {
        Target::Gateway(name) => gws.list.iter().any(|g| &g.name == name && g.serves(other)),
        Target::Mark(_) => true,
    };
    let family_only_proto = matches!(m.proto, Some(1) | Some(58));
    if reaches_other && !family_only_proto {
        let any: ipnet::IpNet = match family {
            Family::V4 => "0.0.0.0/0".parse().expect("literal"),
            Family::V6 => "::/0".parse().expect("literal"),
        };
        m.dst = Some(any);
    }
    m
}

/// The rule's comment when it makes a new name, else `CHAIN-LINE` (`prerouting-7`).
fn rule_name(p: &Placed, chain: &str, taken: &[String]) -> String {
    let fallback = format!("{}-{}", chain.to_ascii_lowercase(), p.rule.line);
    let candidate = p
        .rule
        .comment
        .as_ref()
        .filter(|c| !c.is_empty() && !taken.contains(c))
        .cloned();
    match candidate {
        Some(c) => c,
        None if taken.contains(&fallback) => format!("{fallback}-{}", taken.len() + 1),
        None => fallback,
    }
}
