//! `policyroute import`: a classic setup, saved as text by the tools that made it
//! (`iptables-save`, `ip rule show`, `ip route show table all`, and their IPv6 twins),
//! translated into a policy file. Every input is text; nothing here runs a tool.
//!
//! One module per input format ([`iptables_save`], with `chains` following jumps and
//! `mark_rule` for one rule; [`ip_rule`]; [`ip_route`]), then [`gateways`] from rules and
//! routes, `connmark` for sticky gateways, [`order`], `from_rules`, [`attach`] and
//! `policy_rules` for the rules (`both` narrows one match by another), and
//! [`write_policy`] for the TOML. What the policy cannot say is a [`Note`] with the input
//! line it is about: it is written at the top of the policy and returned to the caller.
use serde::Serialize;

use crate::policy::matcher::{Family, Match};
use crate::policy::Target;

pub mod attach;
mod both;
mod chains;
mod connmark;
mod error;
mod from_rules;
pub mod gateways;
pub mod ip_route;
pub mod ip_rule;
pub mod iptables_save;
mod mark_rule;
pub mod order;
mod policy_rules;
mod source;
mod tokens;
pub mod write_policy;

#[cfg(test)]
mod tests;

pub use error::ImportError;
pub use source::Source;

/// Something of the input the policy does not express (or expresses only in part).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Note {
    pub file: String,
    /// 1-based.
    pub line: usize,
    pub text: String,
}

impl Note {
    pub(crate) fn new(src: &Source, line: usize, text: impl Into<String>) -> Self {
        Self::at(&src.label, line, text)
    }

    pub(crate) fn at(file: &str, line: usize, text: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line,
            text: text.into(),
        }
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.text)
    }
}

/// The saved outputs; each list may hold IPv4 and IPv6 files (told apart by their text).
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub iptables: Vec<Source>,
    pub ip_rules: Vec<Source>,
    pub ip_routes: Vec<Source>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Imported {
    /// The policy file's text.
    pub policy: String,
    /// What it does not express, in input order.
    pub unexpressed: Vec<Note>,
}

/// A rule of the policy to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleOut {
    pub name: String,
    /// `file:line (CHAIN)` of the iptables rule.
    pub origin: String,
    pub matcher: Match,
    pub target: Target,
}

/// The policy to write, before it is text.
#[derive(Debug, Default)]
pub struct Draft {
    pub sources: Vec<String>,
    pub mark_mask: Option<u32>,
    pub gateways: Vec<gateways::GatewayOut>,
    pub rules: Vec<RuleOut>,
    pub attach: attach::AttachOut,
    /// Facts about the translation worth a comment that are no loss.
    pub remarks: Vec<String>,
    pub notes: Vec<Note>,
}

pub fn import(inputs: &Inputs) -> Result<Imported, ImportError> {
    let draft = draft(inputs)?;
    Ok(Imported {
        policy: write_policy::toml(&draft),
        unexpressed: draft.notes,
    })
}

pub fn draft(inputs: &Inputs) -> Result<Draft, ImportError> {
    if inputs.iptables.is_empty() {
        return Err(ImportError::NoRules);
    }
    let mut d = Draft {
        sources: [&inputs.iptables, &inputs.ip_rules, &inputs.ip_routes]
            .into_iter()
            .flatten()
            .map(|s| s.label.clone())
            .collect(),
        ..Draft::default()
    };
    let mut routes = Vec::new();
    for src in &inputs.ip_routes {
        routes.extend(ip_route::parse(src)?);
    }
    let (mut fwmarks, mut from) = (Vec::new(), Vec::new());
    for src in &inputs.ip_rules {
        let parsed = ip_rule::parse(src)?;
        fwmarks.extend(parsed.rules);
        from.extend(parsed.from);
        d.notes.extend(parsed.notes);
    }
    let mut gws = gateways::build(&fwmarks, &routes);
    d.notes.extend(std::mem::take(&mut gws.notes));
    d.mark_mask = mark_mask(&fwmarks, &mut d.notes);
    let (placed, connmarks) = rules(inputs, &mut d)?;
    let (placed, sticky) = connmark::sticky(&connmarks, placed, &mut gws, &routes, &mut d.notes);
    d.remarks.extend(sticky);
    let mut from = from_rules::build(&from, &fwmarks, &mut gws, &routes, attach::local(&placed));
    d.notes.append(&mut from.notes);
    d.remarks.append(&mut from.remarks);
    let (attach, notes) = attach::attach(&placed, &from.arrives, &routes);
    d.notes.extend(notes);
    let rules = policy_rules::rules(&placed, &gws, &mut d);
    d.rules = from_rules::splice(rules, from, &gws);
    d.gateways = gws.list;
    d.attach = attach;
    // A user-defined chain two jumps enter says the same of its rules twice.
    d.notes
        .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    d.notes.dedup();
    Ok(d)
}

/// The mask every fwmark rule tests, when they agree and it is not all ones.
fn mark_mask(fwmarks: &[ip_rule::FwmarkRule], notes: &mut Vec<Note>) -> Option<u32> {
    let first = fwmarks.first()?;
    if let Some(other) = fwmarks.iter().find(|r| r.mask != first.mask) {
        let why = format!(
            "fwmark mask {:#x} differs from {:#x} of the first rule; a policy has one \
             mark_mask, all ones is used",
            other.mask, first.mask
        );
        notes.push(Note::at(&other.origin.0, other.origin.1, why));
        return None;
    }
    (first.mask != u32::MAX).then_some(first.mask)
}

/// The MARK rules of all iptables inputs, each family in policy order, then merged; and
/// the CONNMARK rules.
fn rules(
    inputs: &Inputs,
    d: &mut Draft,
) -> Result<(Vec<order::Placed>, Vec<connmark::FileOp>), ImportError> {
    let mut by_family: [Vec<order::Placed>; 2] = Default::default();
    let mut connmarks = Vec::new();
    for src in &inputs.iptables {
        let family = src.family();
        let parsed = iptables_save::parse(src)?;
        d.notes.extend(parsed.notes);
        connmarks.extend(parsed.connmark.into_iter().map(|op| connmark::FileOp {
            file: src.label.clone(),
            op,
        }));
        let slot = &mut by_family[usize::from(family == Family::V6)];
        slot.extend(parsed.rules.into_iter().map(|rule| order::Placed {
            rule,
            file: src.label.clone(),
            families: vec![family],
            twin: None,
        }));
    }
    let [v4, v6] = by_family.map(order::last_match_first);
    for p in v4.left_out.iter().chain(&v6.left_out) {
        let why = "-j RETURN/ACCEPT: with MARK rules that override each other (written last \
                   first) a rule of mark = 0 cannot stop at this point of the chain; not \
                   imported";
        d.notes.push(Note::at(&p.file, p.rule.line, why));
    }
    if v4.reversed || v6.reversed {
        d.remarks.push(
            "Rules are in reverse chain order: iptables keeps the mark of the last matching \
             MARK rule, the policy uses the first matching rule."
                .to_owned(),
        );
    }
    let (merged, notes) = order::merge_families(v4.rules, v6.rules);
    d.notes.extend(notes);
    Ok((merged, connmarks))
}
