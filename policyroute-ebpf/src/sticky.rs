//! Sticky gateways, the eBPF analogue of CONNMARK --save-mark / --restore-mark: a packet
//! entering through a sticky gateway records its flow with that gateway's mark; packets
//! of the same flow going the other way (forwarded replies from the LAN, or this host's
//! sockets answering) get the mark back while the record is fresh.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::LruHashMap};
use policyroute_common::{Control, FlowKey, FlowValue, MAX_FLOWS};

use crate::parse::Packet;

#[map(name = "PR_FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Key of an inbound packet: its source is the remote end, its destination port ours.
#[inline(always)]
pub fn inbound_key(pkt: &Packet) -> FlowKey {
    FlowKey {
        family: pkt.family as u8,
        proto: pkt.proto,
        remote_port: pkt.sport,
        local_port: pkt.dport,
        _pad: 0,
        remote: pkt.src,
    }
}

/// Key of an outbound packet (a reply): its destination is the remote end.
#[inline(always)]
pub fn outbound_key(pkt: &Packet) -> FlowKey {
    FlowKey {
        family: pkt.family as u8,
        proto: pkt.proto,
        remote_port: pkt.dport,
        local_port: pkt.sport,
        _pad: 0,
        remote: pkt.dst,
    }
}

/// Records (or refreshes) an inbound flow. Rewrites the entry only when it is new, belongs
/// to another gateway, or is half way to expiry, so a busy flow costs a lookup per packet,
/// not a write.
#[inline(always)]
pub fn record(pkt: &Packet, mark: u32, control: &Control) {
    let key = inbound_key(pkt);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the value is only read, inside this program's RCU read side; a concurrent
    // update can at worst make us rewrite a fresh record.
    if let Some(v) = unsafe { FLOWS.get(key) } {
        if v.mark == mark && now.saturating_sub(v.seen_ns) < control.sticky_ttl_ns / 2 {
            return;
        }
    }
    let value = FlowValue {
        mark,
        _pad: 0,
        seen_ns: now,
    };
    let _ = FLOWS.insert(key, value, 0);
}

/// The gateway mark of a fresh recorded flow `key`, if any.
#[inline(always)]
pub fn restore(key: &FlowKey, control: &Control) -> Option<u32> {
    // SAFETY: the value is only read, inside this program's RCU read side.
    let v = unsafe { FLOWS.get(key) }?;
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    (now.saturating_sub(v.seen_ns) < control.sticky_ttl_ns).then_some(v.mark)
}
