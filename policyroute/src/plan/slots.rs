//! Counter slots: each rule's index into the per-CPU counter array. A rule keeps its slot
//! (and so its packet and byte counts) across re-applies as long as it keeps its name.
use rustc_hash::FxHashMap;

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
    let old: FxHashMap<&str, u32> = previous
        .map(|r| {
            r.policy
                .rules
                .iter()
                .zip(&r.slots)
                .map(|(rule, &slot)| (rule.name.as_str(), slot))
                .collect()
        })
        .unwrap_or_default();
    let kept: Vec<Option<u32>> = policy
        .rules
        .iter()
        .map(|r| old.get(r.name.as_str()).copied())
        .collect();
    let mut taken = vec![false; policy.rules.len() + old.len()];
    for &slot in kept.iter().flatten() {
        if let Some(t) = taken.get_mut(slot as usize) {
            *t = true;
        } else {
            taken.resize(slot as usize + 1, false);
            taken[slot as usize] = true;
        }
    }
    let mut free = (0u32..).filter(|&s| !taken.get(s as usize).copied().unwrap_or(false));
    let mut to_zero = Vec::new();
    let slots = kept
        .into_iter()
        .map(|slot| {
            slot.unwrap_or_else(|| {
                let s = free.next().expect("unbounded");
                to_zero.push(s);
                s
            })
        })
        .collect();
    Slots { slots, to_zero }
}
