//! Gateways and groups as the dataplane sees them: a rule whose target is a gateway or a
//! group carries the target's id, and the target's current state decides the mark per
//! flow. Health changes rewrite one [`TargetState`] per target and family; the rule
//! entries never change for it.
//!
//! Inside the lowest tier with a live member, flows spread by weight through a table of
//! [`BALANCE_SLOTS`] slots filled by weighted rendezvous hashing (userspace): a member
//! that goes down or is removed gives up only its own slots, so only its flows move.

/// Most members of a group (and of a target's table).
pub const MAX_MEMBERS: usize = 16;
/// Slots of a balance table: a flow's hash picks one (a power of two).
pub const BALANCE_SLOTS: usize = 4096;
/// Marks a slot whose member differs from the member it has when every member is up: a
/// flow placed there is recorded, so it stays where it is when the member comes back.
pub const SLOT_MOVED: u8 = 0x80;
/// Member index of a flow record that took the target's `when_down` = main path.
pub const MEMBER_FALLBACK: u32 = 0xff;

/// Target flag: with no live member, drop (`when_down = "blackhole"`) instead of using
/// the main table.
pub const TARGET_BLACKHOLE: u32 = 1;
/// Target flag: flow records of this target may exist (it is or recently was degraded),
/// so packets look theirs up.
pub const TARGET_RECORDS: u32 = 2;
/// Target flag: every slot holds one member, unmoved (a gateway that is up, or a group
/// with one live member where it belongs): `one_mark` is every flow's mark, no hash needed.
pub const TARGET_ONE: u32 = 4;

/// Member flag: up for this family (device up with carrier, and the check passes).
pub const MEMBER_UP: u32 = 1;
/// Member flag: the health check says down (kept apart from carrier, so a one-shot
/// `apply` keeps the daemon's verdict).
pub const MEMBER_CHECK_DOWN: u32 = 2;

/// Key of [`TARGETS_MAP`]: `id << 1 | family`.
#[inline(always)]
pub const fn target_key(id: u32, family: u32) -> u32 {
    (id << 1) | family
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Member {
    pub mark: u32,
    /// Bumped each time the member goes down: flow records made before no longer hold.
    pub epoch: u32,
    /// `MEMBER_*` flags.
    pub flags: u32,
    pub _pad: u32,
}

/// A gateway's or group's state for one address family.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetState {
    /// `TARGET_*` flags.
    pub flags: u32,
    /// Members in the balance table; 0: none is live, `when_down` applies.
    pub live: u32,
    /// Changes with the configured member list: older flow records no longer hold.
    pub version: u32,
    /// With `TARGET_ONE`: the mark of the one member.
    pub one_mark: u32,
    /// CLOCK_MONOTONIC ns when the target last became fully healthy (userspace only:
    /// records are looked up until they have all expired).
    pub healthy_since_ns: u64,
    /// The configured members, in policy order.
    pub members: [Member; MAX_MEMBERS],
    /// Member index per slot, `SLOT_MOVED` set where it differs from the healthy table.
    pub slots: [u8; BALANCE_SLOTS],
}

impl Default for TargetState {
    fn default() -> Self {
        Self {
            flags: 0,
            live: 0,
            version: 0,
            one_mark: 0,
            healthy_since_ns: 0,
            members: [Member::default(); MAX_MEMBERS],
            slots: [0; BALANCE_SLOTS],
        }
    }
}

/// A forwarded flow, in the direction the classifier saw it. Ports are host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    pub family: u8,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// Where a flow of a degraded target was placed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowChoice {
    pub target: u32,
    pub version: u32,
    /// Index into the target's members, or [`MEMBER_FALLBACK`].
    pub member: u32,
    /// The member's epoch when recorded.
    pub epoch: u32,
    pub seen_ns: u64,
}

/// The flow hash that picks a balance slot; the same in the classifier and in userspace
/// (explain, the reference). A multiply-rotate mix of every word, finished with
/// murmur3's avalanche, so neighbouring ports and addresses land far apart.
#[inline(always)]
pub fn flow_hash(words: &[u32; 10]) -> u32 {
    let mut h: u32 = 0x9e37_79b9;
    let mut i = 0;
    while i < 10 {
        h = (h ^ words[i]).wrapping_mul(0x85eb_ca6b).rotate_left(13);
        i += 1;
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

impl FlowTuple {
    /// The words [`flow_hash`] mixes.
    #[inline(always)]
    pub fn words(&self) -> [u32; 10] {
        [
            u32::from(self.family) << 8 | u32::from(self.proto),
            u32::from(self.sport) << 16 | u32::from(self.dport),
            self.src[0],
            self.src[1],
            self.src[2],
            self.src[3],
            self.dst[0],
            self.dst[1],
            self.dst[2],
            self.dst[3],
        ]
    }
}

/// Most gateways and groups (each with its `when_down`) one policy may route to.
pub const MAX_TARGETS: u32 = 256;
