//! Map layouts shared by the eBPF classifier and the userspace controller.
//!
//! The classifier implements tuple space search: every rule is compiled into one or more
//! entries, each belonging to a *shape* (which fields it matches and with which masks).
//! Per packet the program does one masked hash lookup per shape of the packet's family and
//! keeps the hit with the lowest priority number, so its cost depends on the number of
//! shapes, never on the number of rules. Prefix sets (and fields with many prefix lengths)
//! are keyed by address class, found by one walk down a multibit trie per field.
#![no_std]

pub mod fast;
pub mod names;
pub mod net;
pub mod targets;
pub mod trace;

pub use fast::*;
pub use names::*;
pub use net::proto_has_ports;
pub use targets::*;
pub use trace::*;

/// Most shapes one address family may have. Bounds the per-packet work: at worst
/// `MAX_SHAPES` hash lookups for a packet that matches nothing.
pub const MAX_SHAPES: usize = 64;

/// Index of the IPv4 table in [`TABLES_MAP`] within one generation.
pub const FAMILY_V4: u32 = 0;
/// Index of the IPv6 table in [`TABLES_MAP`] within one generation.
pub const FAMILY_V6: u32 = 1;
/// Generations the program can switch between atomically (see [`Control::generation`]).
pub const GENERATIONS: u32 = 2;

/// Payload bytes per state chunk.
pub const STATE_CHUNK: usize = 4092;
pub const MAX_STATE_CHUNKS: u32 = 1 << 16;

/// Default capacities compiled into the object; the loader may raise them.
pub const DEFAULT_MAX_ENTRIES: u32 = 1 << 22;
pub const DEFAULT_MAX_COUNTERS: u32 = 1 << 17;

/// Shape flag: the key carries the L4 protocol.
pub const SHAPE_PROTO: u8 = 1;
/// Shape flag: the key carries the DSCP.
pub const SHAPE_DSCP: u8 = 2;
/// Shape flag: the key carries (masked) ports, so packets without ports skip this shape.
pub const SHAPE_PORTS: u8 = 4;
/// Shape flag: the key carries a source prefix longer than /0 (socket hooks know the
/// source only when the socket is bound).
pub const SHAPE_SRC: u8 = 8;
/// Shape flag: the rule has a source-port condition (known at socket hooks only when bound).
pub const SHAPE_SPORT: u8 = 16;
/// Shape flag: the key's source word 0 is the source address's class (see [`PREFIX_TRIE_MAP`]
/// and [`ShapeTable::src_root`]), not its masked bits.
pub const SHAPE_SRC_CLASS: u8 = 32;
/// Shape flag: the key's destination word 0 is the destination address's class.
pub const SHAPE_DST_CLASS: u8 = 64;

/// Prefix trie word: with [`TRIE_LEAF`] clear, the low 30 bits are the index of a child
/// node (in nodes, relative to the image base); without it, the word is a class (below
/// 2^30; 0: no prefix holds the address).
pub const TRIE_NODE: u32 = 1 << 31;
/// With [`TRIE_NODE`]: the low 30 bits index a bucket of leaves instead (the few prefixes
/// deeper down, kept whole instead of as chains of nodes; see [`TRIE_LEAF_WORDS`]).
pub const TRIE_LEAF: u32 = 1 << 30;
/// The index bits of a node or leaf word.
pub const TRIE_INDEX: u32 = TRIE_LEAF - 1;
/// Words of a leaf: the prefix's address (4 words, as `RuleKey` keeps addresses), its
/// length, the class of an address it holds, the class of one no leaf of the bucket holds,
/// and the number of leaves in the bucket. A bucket's leaves are consecutive, longest
/// prefix first, so the first that holds an address gives its class.
pub const TRIE_LEAF_WORDS: u32 = 8;
/// Most leaves in a bucket: more prefixes below a word get a node. Four IPv4 or IPv6
/// leaves are two cache lines side by side, one read fewer than a node and its leaves.
pub const TRIE_BUCKET_LEAVES: u32 = 4;
/// Leaves per node-sized element.
pub const TRIE_LEAVES_PER_NODE: u32 = TRIE_NODE_WORDS / TRIE_LEAF_WORDS;
/// Bits of the address a root indexes (its length is `1 << TRIE_ROOT_BITS` words).
pub const TRIE_ROOT_BITS: u32 = 16;
/// Bits of the address each node below the root indexes: 16 words, one cache line, so a
/// big list stays small enough for the CPU's caches (8-bit nodes took 16 times the memory
/// and missed the cache more often than the extra levels cost).
pub const TRIE_STRIDE_BITS: u32 = 4;
pub const TRIE_NODE_WORDS: u32 = 1 << TRIE_STRIDE_BITS;
pub const TRIE_ROOT_WORDS: u32 = 1 << TRIE_ROOT_BITS;
/// Node levels below the root for an IPv6 address.
pub const TRIE_LEVELS_V6: usize = ((128 - TRIE_ROOT_BITS) / TRIE_STRIDE_BITS) as usize;
/// Node levels below the root for an IPv4 address.
pub const TRIE_LEVELS_V4: usize = ((32 - TRIE_ROOT_BITS) / TRIE_STRIDE_BITS) as usize;
/// A field without a trie (`ShapeTable::src_root`, `dst_root`).
pub const TRIE_NONE: u32 = u32::MAX;
/// Default size of the prefix trie map, in nodes (4 MiB); the loader sizes it to the
/// policy. A root takes `TRIE_ROOT_WORDS / TRIE_NODE_WORDS` consecutive nodes.
pub const DEFAULT_TRIE_NODES: u32 = (4 << 20) / (TRIE_NODE_WORDS * 4);

/// The size of the prefix trie map of a dataplane loaded without tries (its programs hold
/// no trie code; a policy with sets loads a new dataplane).
pub const TRIE_DISABLED_NODES: u32 = 1;

/// One element of the prefix trie map. A whole node per element: array elements are
/// rounded up to 8 bytes, so `u32` elements would not map as consecutive words.
pub type TrieNode = [u32; TRIE_NODE_WORDS as usize];

/// Hash key: the packet's fields masked by one shape, tagged with the shape's id.
/// Addresses are kept as the packet's bytes (network order) viewed as native u32 words;
/// IPv4 uses word 0 only. Ports are host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    pub shape: u16,
    pub proto: u8,
    pub dscp: u8,
    pub sport: u16,
    pub dport: u16,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// What a hit yields. `prio` is the rule's position in the policy (lower wins).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleValue {
    pub prio: u32,
    /// The mark to set when `target` is 0.
    pub mark: u32,
    pub counter: u32,
    /// 0: `mark` is the verdict. Otherwise the id of a gateway or group whose current
    /// state ([`TARGETS_MAP`]) decides: switching an uplink rewrites that state, never
    /// the rule entries.
    pub target: u32,
}

/// One shape: which fields and bits of a packet its entries match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Shape {
    pub id: u16,
    pub flags: u8,
    pub _pad: u8,
    pub sport_mask: u16,
    pub dport_mask: u16,
    /// Lowest priority number among this shape's entries: once the best hit so far is
    /// better than this, the shape (and every later one, they are sorted by it) can be skipped.
    pub min_prio: u32,
    pub src_mask: [u32; 4],
    pub dst_mask: [u32; 4],
}

/// The shapes of one address family, sorted by `min_prio`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShapeTable {
    pub len: u32,
    pub mark_mask: u32,
    /// Where this table's prefix tries start in [`PREFIX_TRIE_MAP`]; the roots and node
    /// pointers are relative to it, so a new image is written beside the live one and
    /// published with the tables.
    pub trie_base: u32,
    /// Root of the trie giving a source address its class (a node index), or [`TRIE_NONE`].
    pub src_root: u32,
    /// Root of the trie giving a destination address its class, or [`TRIE_NONE`].
    pub dst_root: u32,
    pub _pad: u32,
    pub shapes: [Shape; MAX_SHAPES],
}

impl Default for ShapeTable {
    fn default() -> Self {
        Self {
            len: 0,
            mark_mask: 0,
            trie_base: 0,
            src_root: TRIE_NONE,
            dst_root: TRIE_NONE,
            _pad: 0,
            shapes: [Shape::default(); MAX_SHAPES],
        }
    }
}

/// Global switches. `generation` selects which pair of shape tables is live, so a new
/// policy's tables are written first and made visible with one 4-byte store.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    pub generation: u32,
    /// `CONTROL_*` bits.
    pub flags: u32,
    /// Socket hooks act only on sockets of this network namespace.
    pub netns_cookie: u64,
    /// A recorded sticky flow is honoured this long after its last inbound packet.
    pub sticky_ttl_ns: u64,
}

/// Control flag: consult [`DEVICES_MAP`] for the role of the device a packet is on (set
/// when a device records sticky flows or carries IP frames; otherwise every device
/// classifies Ethernet frames and the lookup is skipped).
pub const CONTROL_DEVICE_ROLES: u32 = 1;
/// Control flag: restore the gateway of flows recorded by sticky gateways.
pub const CONTROL_STICKY: u32 = 2;

/// Role flag: classify packets (and restore sticky flows) on this device.
pub const ROLE_CLASSIFY: u32 = 1;
/// Role flag: record inbound flows on this device with `DeviceRole::mark` (a sticky gateway).
pub const ROLE_RECORD: u32 = 2;
/// Role flag: this device's frames start with the IP header (tun, WireGuard, PPP and other
/// devices whose link type has no Ethernet header), as its link type said at apply time.
/// Packets arriving on it are left to the kernel by the fast path.
pub const ROLE_IP_FRAME: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceRole {
    pub flags: u32,
    pub mark: u32,
}

pub const MAX_FLOWS: u32 = 1 << 16;

/// A flow as seen from this host: the remote end and the local port. The local address is
/// left out so that port-preserving DNAT (public address at the WAN, private at the LAN)
/// still matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub family: u8,
    pub proto: u8,
    pub remote_port: u16,
    pub local_port: u16,
    pub _pad: u16,
    pub remote: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub mark: u32,
    pub _pad: u32,
    pub seen_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewaySource {
    pub has_v4: u32,
    pub v4: u32,
    pub has_v6: u32,
    pub v6: [u32; 4],
}

/// `cb[0]` of a test-run context that asks the program not to count or record (explain).
pub const EXPLAIN_MAGIC: u32 = 0x7072_6578;

/// Per-rule traffic counter (one per CPU; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// One piece of the controller's state record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StateChunk {
    pub len: u32,
    pub data: [u8; STATE_CHUNK],
}

impl Default for StateChunk {
    fn default() -> Self {
        Self {
            len: 0,
            data: [0; STATE_CHUNK],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], contain only integers and have explicit padding.
    unsafe impl aya::Pod for RuleKey {}
    unsafe impl aya::Pod for RuleValue {}
    unsafe impl aya::Pod for Shape {}
    unsafe impl aya::Pod for ShapeTable {}
    unsafe impl aya::Pod for Control {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for StateChunk {}
    unsafe impl aya::Pod for DeviceRole {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for GatewaySource {}
    unsafe impl aya::Pod for TargetState {}
    unsafe impl aya::Pod for FlowTuple {}
    unsafe impl aya::Pod for FlowChoice {}
    unsafe impl aya::Pod for TraceFilter {}
    unsafe impl aya::Pod for FastGateway {}
    unsafe impl aya::Pod for FastStats {}
    unsafe impl aya::Pod for TraceRate {}
}

/// Every eBPF binary's panic handler, defined once here: each program links this crate,
/// and a `no_std` binary needs exactly one. The verifier never lets a program reach it
/// (a panic compiles to a call the verifier refuses), so it only has to exist.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
