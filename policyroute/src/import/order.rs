//! Rule order. iptables runs every MARK rule of a chain and the last match's mark stays;
//! the policy stops at the first match. Chain order is kept unless two rules that can
//! match the same packet set different marks: then the order is reversed, which gives
//! every packet the mark iptables gives it.
use super::both::both;
use super::iptables_save::MarkRule;
use super::Note;
use crate::policy::matcher::Family;

/// A rule with where it came from and the families it is written for.
#[derive(Clone, Debug)]
pub struct Placed {
    pub rule: MarkRule,
    pub file: String,
    pub families: Vec<Family>,
    /// `file:line` of the other family's same rule, merged into this one.
    pub twin: Option<String>,
}

/// The rules in policy order: chain order, or reversed when a later MARK rule overrides
/// an earlier one.
#[derive(Debug, Default)]
pub struct Ordered {
    pub rules: Vec<Placed>,
    pub reversed: bool,
    /// `RETURN`/`ACCEPT` rules a reversed order cannot hold: in chain order a rule of mark
    /// 0 is exactly what they do (the packets keep any earlier match's mark and skip the
    /// rest), reversed it would also override the earlier rules.
    pub left_out: Vec<Placed>,
}

pub fn last_match_first(rules: Vec<Placed>) -> Ordered {
    let marks: Vec<&Placed> = rules.iter().filter(|p| !p.rule.ends_chain).collect();
    let clash = marks.iter().enumerate().any(|(i, a)| {
        marks[i + 1..]
            .iter()
            .any(|b| a.rule.mark != b.rule.mark && can_both_match(&a.rule, &b.rule))
    });
    if !clash {
        return Ordered {
            rules,
            ..Ordered::default()
        };
    }
    let (left_out, mut rules): (Vec<Placed>, Vec<Placed>) =
        rules.into_iter().partition(|p| p.rule.ends_chain);
    rules.reverse();
    Ordered {
        rules,
        reversed: true,
        left_out,
    }
}

/// Whether some packet meets both rules at the same hook.
pub(super) fn can_both_match(a: &MarkRule, b: &MarkRule) -> bool {
    let same_iif = a.iif.is_none() || b.iif.is_none() || a.iif == b.iif;
    a.hook == b.hook && same_iif && both(&a.matcher, &b.matcher).is_some()
}

/// The IPv4 and IPv6 rule lists as one: a rule written alike for both families (no
/// address in it) appears once, for both. Each family's order is kept where the two
/// agree; an IPv6 rule whose twin the IPv4 list has earlier than an IPv6 rule before it
/// takes the IPv4 place, noted.
pub fn merge_families(v4: Vec<Placed>, v6: Vec<Placed>) -> (Vec<Placed>, Vec<Note>) {
    let mut out = v4;
    let mut cursor = 0;
    let mut notes = Vec::new();
    for rule in v6 {
        match out.iter().position(|o| twins(&o.rule, &rule.rule)) {
            Some(at) => {
                if at < cursor {
                    let why = "the IPv4 chain has this rule before others the IPv6 chain has \
                               ahead of it; the policy's one rule for both families keeps \
                               the IPv4 place";
                    notes.push(Note::at(&rule.file, rule.rule.line, why));
                }
                out[at].families.extend(rule.families);
                out[at].twin = Some(format!("{}:{}", rule.file, rule.rule.line));
                cursor = cursor.max(at + 1);
            }
            None => {
                out.insert(cursor, rule);
                cursor += 1;
            }
        }
    }
    (out, notes)
}

fn twins(a: &MarkRule, b: &MarkRule) -> bool {
    let family_free = a.matcher.src.is_none() && a.matcher.dst.is_none();
    family_free
        && a.matcher == b.matcher
        && (a.hook, &a.iif, a.mark, a.mask) == (b.hook, &b.iif, b.mark, b.mask)
}
