//! The record of an applied policy: what `status` shows (rule names, gateways) and which
//! counter slot each rule owns, so counters survive re-applies that add, remove or reorder
//! other rules. The kernel layer keeps it in the dataplane's state map
//! (`kernel::record_store`); this is only the value and its encoding.
use serde::{Deserialize, Serialize};

use crate::policy::Policy;

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
    pub fn new(source: String, policy: Policy, slots: Vec<u32>) -> Self {
        Self {
            version: VERSION,
            source,
            policy,
            slots,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record always serializes")
    }

    /// `None` for bytes that are not a record of this version.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Record>(bytes)
            .ok()
            .filter(|r| r.version == VERSION)
    }

    /// Counter slots are all below this.
    pub fn slot_count(&self) -> usize {
        self.slots
            .iter()
            .map(|&s| s as usize + 1)
            .max()
            .unwrap_or(0)
    }
}
