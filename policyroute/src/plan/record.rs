//! The record of an applied policy: what `status` shows (rule names, gateways) and which
//! counter slot each rule owns, so counters survive re-applies that add, remove or reorder
//! other rules. The kernel layer keeps it in the dataplane's state map
//! (`kernel::record_store`); this is only the value and its encoding.
use serde::{Deserialize, Serialize};

use crate::policy::{incremental::Digests, Policy};

/// Version 5 is postcard behind [`MAGIC`] (versions 2 to 4 were too, before gateways had
/// checks and groups, before `fast_path` and `[attach] mode`, and before sets: postcard is
/// positional, so they no longer read); version 1 was JSON, still read so that counters
/// survive an upgrade.
const VERSION: u32 = 5;
const MAGIC: &[u8; 4] = b"PRR\x05";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    /// The policy file it came from.
    pub source: String,
    pub policy: Policy,
    /// Counter slot of `policy.rules[i]`.
    pub slots: Vec<u32>,
    /// The policy file's digests, so the next read can take unchanged rules from here.
    #[serde(default)]
    pub digests: Option<Digests>,
    /// The dataplane's `Control::epoch` once this policy's entries were written.
    #[serde(default)]
    pub epoch: Option<u32>,
}

impl Record {
    pub fn new(source: String, policy: Policy, slots: Vec<u32>) -> Self {
        Self {
            version: VERSION,
            source,
            policy,
            slots,
            digests: None,
            epoch: None,
        }
    }

    /// A binary encoding: a 100,000-rule record is read and written in a few tens of ms,
    /// where JSON took about 90.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, MAGIC.to_vec()).expect("a record always serializes")
    }

    /// `None` for bytes that are not a record (of this version, or JSON of version 1).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if let Some(body) = bytes.strip_prefix(MAGIC) {
            let mut record = postcard::from_bytes::<Record>(body)
                .ok()
                .filter(|r| r.version == VERSION)?;
            record.policy.link_sets();
            return Some(record);
        }
        let mut old = serde_json::from_slice::<Record>(bytes).ok()?;
        (old.version == 1).then(|| {
            old.version = VERSION;
            old.policy.link_sets();
            old
        })
    }

    /// Whether `bytes` are a binary record of another version (which this one cannot read).
    pub fn other_version(bytes: &[u8]) -> bool {
        bytes.len() >= MAGIC.len() && bytes[..3] == MAGIC[..3] && bytes[3] != MAGIC[3]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rt_tables::RtTables;

    fn record() -> Record {
        let text = "[[gateway]]\nname = \"g\"\ndev = \"wan2\"\nvia = [\"203.0.113.2\", \"2001:db8::2\"]\ntable = 100\n\n[[rule]]\nname = \"web\"\nproto = \"tcp\"\nsrc = \"192.0.2.0/24\"\ndport = [80, \"8000-8080\"]\ngateway = \"g\"\n";
        let policy = Policy::parse(text, "p.toml", &RtTables::builtin()).unwrap();
        Record::new("p.toml".into(), policy, vec![3])
    }

    #[test]
    fn a_record_reads_back_equal() {
        let r = record();
        let back = Record::decode(&r.encode()).expect("decodes");
        assert_eq!(back.policy, r.policy);
        assert_eq!((back.source, back.slots), (r.source, r.slots));
    }

    #[test]
    fn sets_are_kept_once_and_bound_again() {
        let text = "[[set]]\nname = \"de\"\nprefixes = [\"192.0.2.0/24\", \"2001:db8::/32\"]\n\n[[rule]]\ndst = \"@de\"\nmark = 1\n\n[[rule]]\nsrc = \"@de\"\nmark = 2\n";
        let policy = Policy::parse(text, "p.toml", &RtTables::builtin()).unwrap();
        let r = Record::new("p.toml".into(), policy, vec![0, 1]);
        let back = Record::decode(&r.encode()).expect("decodes");
        assert_eq!(back.policy, r.policy);
        let set = back.policy.rules[1].matcher.src_set.as_ref().unwrap();
        assert!(set.set.contains(&"2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn a_version_1_record_still_reads() {
        let mut r = record();
        r.version = 1;
        let json = serde_json::to_vec(&r).unwrap();
        let back = Record::decode(&json).expect("decodes");
        assert_eq!((back.version, back.slots), (VERSION, vec![3]));
        assert_eq!(back.policy, r.policy);
    }

    #[test]
    fn garbage_is_not_a_record() {
        assert!(Record::decode(b"PRR\x05\xff\xff").is_none());
        assert!(Record::other_version(b"PRR\x04\x00"));
        assert!(!Record::other_version(b"PRR\x05\x00"));
        assert!(Record::decode(b"{}").is_none());
    }
}
