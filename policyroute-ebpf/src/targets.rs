//! Gateways and groups: a rule that names one carries its id, and the target's current
//! state (written by the controller on every health change) picks the mark per flow.
//! One hash lookup for the state; flow records are looked up only while the target is or
//! recently was degraded, so a healthy uplink costs no per-flow state.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{HashMap, LruHashMap},
};
use policyroute_common::{
    flow_hash, target_key, Control, FlowChoice, FlowTuple, Member, TargetState, BALANCE_SLOTS,
    HOW_FALLBACK, HOW_GATEWAY, HOW_RECORD, HOW_SLOT, HOW_STAND_IN, MAX_FLOWS, MAX_MEMBERS,
    MAX_TARGETS, MEMBER_FALLBACK, MEMBER_UP, NO_MEMBER, SLOT_MOVED, TARGET_BLACKHOLE, TARGET_ONE,
    TARGET_RECORDS,
};

use crate::parse::Packet;

/// Allocated on insert: a state is 4 KiB and most policies have a handful.
#[map(name = "PR_TARGETS")]
static TARGETS: HashMap<u32, TargetState> =
    HashMap::with_max_entries(MAX_TARGETS * 2, BPF_F_NO_PREALLOC);

#[map(name = "PR_CHOICES")]
static CHOICES: LruHashMap<FlowTuple, FlowChoice> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

pub enum Decision {
    /// Set this mark (0: the main table), decided as `how` (`HOW_*`, for the trace) by
    /// `member` (a member index or `NO_MEMBER`).
    Mark { mark: u32, how: u8, member: u32 },
    /// `when_down = "blackhole"` and no member is live.
    Drop,
}

/// How a caller lets the decision use flow records.
pub enum Flow<'a> {
    /// Forwarded traffic: look records up, and write them unless `write` is false
    /// (explain must not change state).
    Tracked { tuple: &'a FlowTuple, write: bool },
    /// A socket or an egress mark: the hash alone decides (a socket keeps its mark).
    Hashed(u32),
}

/// The tuple of a parsed packet.
#[inline(always)]
pub fn tuple(pkt: &Packet) -> FlowTuple {
    FlowTuple {
        family: pkt.family as u8,
        proto: pkt.proto,
        sport: pkt.sport,
        dport: pkt.dport,
        _pad: 0,
        src: pkt.src,
        dst: pkt.dst,
    }
}

/// The decision of target `id` for a packet of `family`; `None` when the controller has
/// not written the target (the rule then leaves the mark alone).
#[inline(always)]
pub fn decide(id: u32, family: u32, flow: Flow<'_>, control: &Control) -> Option<Decision> {
    // SAFETY: the value is only read, inside this program's RCU read side; the controller
    // replaces a state by a hash update (a new element), never in place.
    let state = unsafe { TARGETS.get(&target_key(id, family)) }?;
    let tracked = match flow {
        Flow::Tracked { tuple, write } => Some((tuple, write)),
        Flow::Hashed(_) => None,
    };
    if let (Some((tuple, _)), true) = (tracked, state.flags & TARGET_RECORDS != 0) {
        if let Some((mark, member)) = recorded(state, id, tuple, control) {
            return Some(Decision::Mark {
                mark,
                how: HOW_RECORD,
                member,
            });
        }
    }
    // The common case, a gateway that is up: no hash, no slot.
    if state.flags & TARGET_ONE != 0 {
        return Some(Decision::Mark {
            mark: state.one_mark,
            how: HOW_GATEWAY,
            member: NO_MEMBER,
        });
    }
    let hash = match flow {
        Flow::Tracked { tuple, .. } => flow_hash(&tuple.words()),
        Flow::Hashed(h) => h,
    };
    let write = tracked.filter(|(_, w)| *w).map(|(t, _)| t);
    if state.live == 0 {
        if state.flags & TARGET_BLACKHOLE != 0 {
            return Some(Decision::Drop);
        }
        if let Some(t) = write {
            remember(t, id, state.version, MEMBER_FALLBACK, 0);
        }
        return Some(Decision::Mark {
            mark: 0,
            how: HOW_FALLBACK,
            member: NO_MEMBER,
        });
    }
    let slot = state.slots[hash as usize & (BALANCE_SLOTS - 1)];
    let index = (slot & !SLOT_MOVED) as usize & (MAX_MEMBERS - 1);
    let member: &Member = &state.members[index];
    let moved = slot & SLOT_MOVED != 0;
    if moved {
        if let Some(t) = write {
            remember(t, id, state.version, index as u32, member.epoch);
        }
    }
    Some(Decision::Mark {
        mark: member.mark,
        how: if moved { HOW_STAND_IN } else { HOW_SLOT },
        member: index as u32,
    })
}

/// The mark (and member) a still valid record of this flow holds: same target and member
/// list, the member has not gone down since, and the flow was seen within the sticky
/// timeout.
#[inline(always)]
fn recorded(
    state: &TargetState,
    id: u32,
    tuple: &FlowTuple,
    control: &Control,
) -> Option<(u32, u32)> {
    // SAFETY: the value is only read, inside this program's RCU read side.
    let c = unsafe { CHOICES.get(tuple) }?;
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if c.target != id
        || c.version != state.version
        || now.saturating_sub(c.seen_ns) >= control.sticky_ttl_ns
    {
        return None;
    }
    let (mark, member) = if c.member == MEMBER_FALLBACK {
        (0, NO_MEMBER)
    } else {
        if c.member as usize >= MAX_MEMBERS {
            return None;
        }
        // Masked after an opaque copy, not only compared: Linux 6.1's verifier loses a
        // comparison's bounds when the compiler spills and reloads the index, and the
        // compiler would drop a mask the comparison makes redundant.
        let index = core::hint::black_box(c.member as usize) & (MAX_MEMBERS - 1);
        let m = &state.members[index];
        if m.epoch != c.epoch || m.flags & MEMBER_UP == 0 {
            return None;
        }
        (m.mark, c.member)
    };
    // Refresh half way to expiry, so a busy flow costs a lookup per packet, not a write.
    if now.saturating_sub(c.seen_ns) >= control.sticky_ttl_ns / 2 {
        remember(tuple, id, c.version, c.member, c.epoch);
    }
    Some((mark, member))
}

#[inline(always)]
fn remember(tuple: &FlowTuple, target: u32, version: u32, member: u32, epoch: u32) {
    let choice = FlowChoice {
        target,
        version,
        member,
        epoch,
        // SAFETY: a helper without arguments.
        seen_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = CHOICES.insert(tuple, &choice, 0);
}
