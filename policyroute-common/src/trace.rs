//! `policyroute trace`: the filter userspace writes, and the event the programs log (through
//! aya-log) for each packet or socket call that passes it. No trace running costs the
//! programs one bit test of the control word they have loaded anyway ([`CONTROL_TRACE`]).

/// Hooks an event comes from.
pub const HOOK_TC_INGRESS: u8 = 1;
pub const HOOK_TC_EGRESS: u8 = 2;
pub const HOOK_CONNECT: u8 = 3;
pub const HOOK_SENDMSG: u8 = 4;

/// How the mark was decided (`TraceEvent::how`).
/// No rule matched: the packet keeps its mark and takes the main table.
pub const HOW_NONE: u8 = 0;
/// A rule with its own mark (a raw mark, or a gateway without a state: see `HOW_UNWRITTEN`).
pub const HOW_RULE: u8 = 1;
/// A flow recorded by a sticky gateway: the reply goes back the way it came.
pub const HOW_STICKY: u8 = 2;
/// A gateway that is up.
pub const HOW_GATEWAY: u8 = 3;
/// A group member, by the flow's balance slot.
pub const HOW_SLOT: u8 = 4;
/// A group member standing in for one that is down.
pub const HOW_STAND_IN: u8 = 5;
/// A flow record made while the target was degraded.
pub const HOW_RECORD: u8 = 6;
/// No member is live: the main table (`when_down = "main"`).
pub const HOW_FALLBACK: u8 = 7;
/// No member is live: dropped (`when_down = "blackhole"`).
pub const HOW_DROP: u8 = 8;
/// The rule names a target the controller has not written: the main table.
pub const HOW_UNWRITTEN: u8 = 9;

/// `TraceEvent::rule` when no rule matched.
pub const NO_RULE: u32 = u32::MAX;
/// `TraceEvent::member` when no group member decided.
pub const NO_MEMBER: u32 = u32::MAX;

/// What one traced packet or socket call got. Logged as its bytes (one aya-log argument,
/// so the verifier sees one short copy, not twenty formatted fields).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    pub hook: u8,
    pub family: u8,
    pub proto: u8,
    pub how: u8,
    /// The device (tc hooks); 0 for socket hooks.
    pub ifindex: u32,
    pub sport: u16,
    pub dport: u16,
    /// The rule's counter slot, or `NO_RULE`.
    pub rule: u32,
    /// The mark set (under the policy's mask).
    pub mark: u32,
    /// The group member index, or `NO_MEMBER`.
    pub member: u32,
    /// The filter's `owner`: a trace ignores lines another trace left in the buffer.
    pub owner: u32,
    /// The fast path's egress device; 0: the kernel routed the packet.
    pub oif: u32,
    /// Addresses as the classifier keys them (network byte order words).
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

pub const TRACE_EVENT_SIZE: usize = core::mem::size_of::<TraceEvent>();

impl TraceEvent {
    /// The bytes the programs log (a view, not a copy: the programs' stack is small).
    pub fn as_bytes(&self) -> &[u8; TRACE_EVENT_SIZE] {
        // SAFETY: TraceEvent is #[repr(C)] plain integers without padding (checked by
        // the size assertion below), so every byte is initialised; the array has
        // alignment 1 and the same size, and borrows self.
        unsafe { &*(self as *const Self).cast::<[u8; TRACE_EVENT_SIZE]>() }
    }

    /// The event of logged bytes (`None` for a short or long slice).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: [u8; TRACE_EVENT_SIZE] = bytes.try_into().ok()?;
        // SAFETY: any bit pattern is a valid TraceEvent (integers only, no padding).
        Some(unsafe { core::mem::transmute::<[u8; TRACE_EVENT_SIZE], Self>(bytes) })
    }
}

const _: () = assert!(TRACE_EVENT_SIZE == 64);

/// `Control::flags` bit: a trace runs (its filter is in `TRACE_MAP`). In the control word
/// the programs load anyway, so no trace costs one bit test. Apply keeps the bit as it
/// finds it.
pub const CONTROL_TRACE: u32 = 1 << 31;

/// Filter flags: which conditions of [`TraceFilter`] apply.
pub const TRACE_ON: u32 = 1;
pub const TRACE_IIF: u32 = 2;
pub const TRACE_PROTO: u32 = 4;
pub const TRACE_SPORT: u32 = 8;
pub const TRACE_DPORT: u32 = 16;
pub const TRACE_SRC: u32 = 32;
pub const TRACE_DST: u32 = 64;

/// What to trace. All set conditions must hold; an address condition also fixes the family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceFilter {
    /// `TRACE_*` flags; 0: no trace runs.
    pub flags: u32,
    pub iif: u32,
    pub family: u32,
    pub proto: u8,
    pub _pad: u8,
    pub sport: u16,
    pub dport: u16,
    pub _pad2: u16,
    /// Most lines each CPU logs per second; the rest are counted in `TraceRate::dropped`.
    pub per_cpu_rate: u32,
    /// The process that runs the trace: a later trace takes over once it is gone.
    pub owner: u32,
    pub src_net: [u32; 4],
    pub src_mask: [u32; 4],
    pub dst_net: [u32; 4],
    pub dst_mask: [u32; 4],
}

/// Per-CPU rate limiter state: lines logged in the current one-second window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRate {
    pub window_ns: u64,
    pub logged: u64,
    pub dropped: u64,
}
