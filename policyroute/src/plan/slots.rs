//! Counter slots: each rule's index into the per-CPU counter array. A rule keeps its slot
//! (and so its packet and byte counts) across re-applies as long as it keeps its name.
use std::collections::{BTreeSet, HashMap};

use crate::{plan::record::Record, policy::Policy};

/// The slot of each of `policy`'s rules, and the slots that are new to a rule (their
/// counters must be zeroed before use).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slots {
    /// `slots[i]` is the slot of `policy.rules[i]`.
    pub slots: Vec<u32>,
    pub to_zero: Vec<u32>,
}

/// A rule keeps the slot of the same-named rule in `previous`; others get the lowest free
/// slots.
pub fn assign(policy: &Policy, previous: Option<&Record>) -> Slots {
    let old: HashMap<&str, u32> = previous
        .map(|r| {
            r.policy
                .rules
                .iter()
                .zip(&r.slots)
                .map(|(rule, &slot)| (rule.name.as_str(), slot))
                .collect()
        })
        .unwrap_or_default();
    let kept: BTreeSet<u32> = policy
        .rules
        .iter()
        .filter_map(|r| old.get(r.name.as_str()).copied())
        .collect();
    let mut free = (0u32..).filter(|s| !kept.contains(s));
    let mut to_zero = Vec::new();
    let slots = policy
        .rules
        .iter()
        .map(|r| match old.get(r.name.as_str()) {
            Some(&s) => s,
            None => {
                let s = free.next().expect("unbounded");
                to_zero.push(s);
                s
            }
        })
        .collect();
    Slots { slots, to_zero }
}
