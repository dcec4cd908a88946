//! The names of the eBPF programs and maps: what userspace looks them up by in the object
//! and in the kernel (which keeps the first 15 bytes of a name). The eBPF crate spells each
//! one once more where it defines it (the program's function, the map's `#[map]`
//! attribute); loading fails with an error naming the missing one if the two disagree.

/// TC ingress classifier (also records sticky flows on sticky gateways' devices).
pub const TC_INGRESS: &str = "policyroute_tc";
/// TC egress classifier: marks for consumers after routing.
pub const TC_EGRESS: &str = "policyroute_eg";
/// Socket hooks of this host's own traffic (cgroup sock_addr).
pub const CONNECT4: &str = "pr_connect4";
pub const CONNECT6: &str = "pr_connect6";
pub const SENDMSG4: &str = "pr_sendmsg4";
pub const SENDMSG6: &str = "pr_sendmsg6";

pub const TC_PROGRAMS: [&str; 2] = [TC_INGRESS, TC_EGRESS];
pub const SOCK_PROGRAMS: [&str; 4] = [CONNECT4, CONNECT6, SENDMSG4, SENDMSG6];
/// Every program of the classifier object.
pub const PROGRAMS: [&str; 6] = [
    TC_INGRESS, TC_EGRESS, CONNECT4, CONNECT6, SENDMSG4, SENDMSG6,
];

/// Hash map `RuleKey -> RuleValue`.
pub const RULES_MAP: &str = "PR_RULES";
/// The eBPF global (`u32`, read-only data) the loader sets to 1 when the prefix trie map
/// has room for tries (more than [`crate::TRIE_DISABLED_NODES`] nodes).
pub const TRIES_GLOBAL: &str = "PR_TRIES";
/// The eBPF global (`u32`, read-only data) that keeps the trace code in the programs: 1 as
/// built; 0 only in the copy `bench classify` loads to measure what idle trace costs.
pub const TRACE_GLOBAL: &str = "PR_TRACE_CODE";
/// Array map of `TrieNode`s (16 `u32` words): the multibit prefix tries that give addresses
/// their class (`ShapeTable::src_root`). Memory-mappable, so the controller writes an image in place.
///
/// The name carries the image format's version (2: buckets of leaves), so a controller
/// never writes its images into an older dataplane that would read them differently.
pub const PREFIX_TRIE_MAP: &str = "PR_PREFIX_TRIE2";
/// Array map `generation * 2 + family -> ShapeTable`.
pub const TABLES_MAP: &str = "PR_TABLES";
/// One-entry array map holding `Control`.
pub const CONTROL_MAP: &str = "PR_CONTROL";
/// Per-CPU array map `counter slot -> Counter`.
pub const COUNTERS_MAP: &str = "PR_COUNTERS";
/// Hash map `chunk index -> StateChunk`: the controller's record of what it installed
/// (rule names, counter slots, gateways), kept in the kernel next to the maps so any later
/// process in the namespace finds it without files or pins. The programs do not read it;
/// the loader binds it to them (BPF_PROG_BIND_MAP) so it shares their lifetime.
pub const STATE_MAP: &str = "PR_STATE";
/// Hash map `ifindex -> DeviceRole`. Devices without an entry classify.
pub const DEVICES_MAP: &str = "PR_DEVICES";
/// LRU hash map `FlowKey -> FlowValue`: flows that entered through a sticky gateway, so
/// their replies (forwarded, or from this host's sockets) leave through it too.
pub const FLOWS_MAP: &str = "PR_FLOWS";
/// Hash map `mark -> GatewaySource`: the address unconnected UDP sends from when a rule
/// picks that gateway at the sendmsg hook (the socket mark set there only applies from the
/// next datagram; a source address routed by a `from` rule applies now).
pub const SOURCES_MAP: &str = "PR_SOURCES";

/// Hash map `target_key(id, family) -> TargetState`: each gateway's and group's current
/// state, which decides the mark of rules that name it.
pub const TARGETS_MAP: &str = "PR_TARGETS";
/// LRU hash map `FlowTuple -> FlowChoice`: where flows of degraded targets were placed,
/// so they stay there when a member comes back.
pub const CHOICES_MAP: &str = "PR_CHOICES";

/// One-entry array map holding the `TraceFilter` of a running `policyroute trace`.
pub const TRACE_MAP: &str = "PR_TRACE";
/// Per-CPU one-entry array map: the trace's rate limiter (`TraceRate`).
pub const TRACE_RATE_MAP: &str = "PR_TRACE_RATE";
/// aya-log's ring buffer, which the trace lines go through.
pub const LOGS_MAP: &str = "AYA_LOGS";

/// Hash map `mark -> FastGateway`: the table the fast path looks a gateway's traffic up in.
pub const FAST_MAP: &str = "PR_FAST";
/// LPM tries of destinations the fast path leaves to the kernel (`Kernel4Key` /
/// `Kernel6Key`).
pub const KERNEL4_MAP: &str = "PR_KERNEL4";
pub const KERNEL6_MAP: &str = "PR_KERNEL6";
/// Per-CPU one-entry array map: `FastStats`.
pub const FAST_STATS_MAP: &str = "PR_FAST_STATS";
/// Hash map `ifindex -> GatewaySource`: this host's addresses on each classifying device,
/// the source of the fast path's ICMP errors.
pub const ADDRESSES_MAP: &str = "PR_ADDRESSES";

/// Every map of the classifier object.
pub const MAPS: [&str; 19] = [
    RULES_MAP,
    PREFIX_TRIE_MAP,
    TABLES_MAP,
    CONTROL_MAP,
    COUNTERS_MAP,
    STATE_MAP,
    DEVICES_MAP,
    FLOWS_MAP,
    SOURCES_MAP,
    TARGETS_MAP,
    CHOICES_MAP,
    TRACE_MAP,
    TRACE_RATE_MAP,
    LOGS_MAP,
    FAST_MAP,
    KERNEL4_MAP,
    KERNEL6_MAP,
    FAST_STATS_MAP,
    ADDRESSES_MAP,
];
