//! The record of an applied policy, kept in the dataplane's state map: what `status` shows
//! (rule names, gateways) and which counter slot each rule owns, so counters survive
//! re-applies that add, remove or reorder other rules.
use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::{config::Policy, dataplane::Maps, state, state::StateError};

const VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    /// The policy file it came from.
    pub source: String,
    pub policy: Policy,
    /// Counter slot of `policy.rules[i]`.
    pub slots: Vec<u32>,
}

impl Record {
    pub fn read(maps: &Maps) -> Result<Option<Record>, StateError> {
        let Some(bytes) = state::read(&maps.state)? else {
            return Ok(None);
        };
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(r) if r.version == VERSION => Ok(Some(r)),
            _ => Err(StateError::Corrupt),
        }
    }

    pub fn write(&self, maps: &mut Maps) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(self).expect("a record always serializes");
        state::write(&mut maps.state, &bytes)
    }

    pub fn new(source: String, policy: Policy, slots: Vec<u32>) -> Self {
        Self {
            version: VERSION,
            source,
            policy,
            slots,
        }
    }
}

/// Counter slots for `policy`'s rules: a rule keeps the slot of the same-named rule in
/// `previous`; others get the lowest free slots. Returns the slots and those that are new
/// (their counters must be zeroed before use).
pub fn assign_slots(policy: &Policy, previous: Option<&Record>) -> (Vec<u32>, Vec<u32>) {
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
    let mut fresh = Vec::new();
    let slots = policy
        .rules
        .iter()
        .map(|r| match old.get(r.name.as_str()) {
            Some(&s) => s,
            None => {
                let s = free.next().expect("unbounded");
                fresh.push(s);
                s
            }
        })
        .collect();
    (slots, fresh)
}
