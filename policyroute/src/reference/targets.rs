//! The reference for the classifier's gateway and group decisions (`policyroute-ebpf`'s
//! `targets.rs`), in plain Rust: given a target's state, a flow and its record (if any),
//! which mark the flow gets and why. `explain` holds the dataplane to it and tells the
//! operator the member and the reason.
use std::net::IpAddr;

use policyroute_common::{
    flow_hash, FlowChoice, FlowTuple, TargetState, BALANCE_SLOTS, MAX_MEMBERS, MEMBER_FALLBACK,
    MEMBER_UP, SLOT_MOVED, TARGET_BLACKHOLE, TARGET_RECORDS,
};

use super::classifier::Packet;

/// How a decision was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// The flow hash picked this balance slot (`moved`: its member stands in for one that
    /// is down or in a lower tier than the live one).
    Slot { slot: usize, moved: bool },
    /// A flow record kept the flow where it was placed.
    Record,
    /// No member is live: the main table (`when_down = "main"`).
    Fallback,
    /// No member is live: dropped (`when_down = "blackhole"`).
    Blackhole,
    /// The dataplane holds no state for the target (it leaves the flow to main).
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The mark set (0 for main), `None` when dropped.
    pub mark: Option<u32>,
    /// Index of the member chosen.
    pub member: Option<usize>,
    pub how: How,
}

/// The tuple the classifier keys flow records by and hashes.
pub fn tuple(pkt: &Packet) -> FlowTuple {
    let (sport, dport) = pkt.ports.unwrap_or((0, 0));
    FlowTuple {
        family: pkt.family.index() as u8,
        proto: pkt.proto,
        sport,
        dport,
        _pad: 0,
        src: words(pkt.src),
        dst: words(pkt.dst),
    }
}

/// An address as the classifier holds it: its bytes as native-endian words.
pub fn words(addr: IpAddr) -> [u32; 4] {
    match addr {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
    }
}

/// The decision of target `id` (in `state`) for `flow`, as the classifier makes it for a
/// forwarded packet: a valid record first (`record`, looked up by the caller; `now_ns`
/// and `ttl_ns` judge its age), then the flow's balance slot.
pub fn decide(
    state: Option<&TargetState>,
    id: u32,
    flow: &FlowTuple,
    record: Option<&FlowChoice>,
    now_ns: u64,
    ttl_ns: u64,
) -> Decision {
    let Some(state) = state else {
        return Decision {
            mark: Some(0),
            member: None,
            how: How::Unknown,
        };
    };
    if state.flags & TARGET_RECORDS != 0 {
        if let Some(d) = record.and_then(|r| recorded(state, id, r, now_ns, ttl_ns)) {
            return d;
        }
    }
    if state.live == 0 {
        let blackhole = state.flags & TARGET_BLACKHOLE != 0;
        return Decision {
            mark: (!blackhole).then_some(0),
            member: None,
            how: if blackhole {
                How::Blackhole
            } else {
                How::Fallback
            },
        };
    }
    let slot = flow_hash(&flow.words()) as usize & (BALANCE_SLOTS - 1);
    let value = state.slots[slot];
    let member = (value & !SLOT_MOVED) as usize & (MAX_MEMBERS - 1);
    Decision {
        mark: Some(state.members[member].mark),
        member: Some(member),
        how: How::Slot {
            slot,
            moved: value & SLOT_MOVED != 0,
        },
    }
}

fn recorded(
    state: &TargetState,
    id: u32,
    r: &FlowChoice,
    now_ns: u64,
    ttl_ns: u64,
) -> Option<Decision> {
    if r.target != id || r.version != state.version || now_ns.saturating_sub(r.seen_ns) >= ttl_ns {
        return None;
    }
    if r.member == MEMBER_FALLBACK {
        return Some(Decision {
            mark: Some(0),
            member: None,
            how: How::Record,
        });
    }
    let m = state.members.get(r.member as usize)?;
    (m.epoch == r.epoch && m.flags & MEMBER_UP != 0).then_some(Decision {
        mark: Some(m.mark),
        member: Some(r.member as usize),
        how: How::Record,
    })
}
