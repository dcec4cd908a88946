//! The fast path: a packet a rule or group sends to a gateway is forwarded here, at tc
//! ingress, instead of by the kernel's fwmark rules: `bpf_fib_lookup` in the gateway's
//! table (`BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_TBID`, so no ip rule is consulted), the
//! TTL or hop limit decremented with the checksum fixed, and `bpf_redirect_neigh` to the
//! egress device and next hop (the kernel resolves the neighbour if it has to, so the
//! first packet of a flow is not lost).
//!
//! What the kernel must handle is left to it: destinations in the kernel-routed LPM maps
//! (this host, broadcasts, multicast, main-table routes with `main_routes_first`), TTL at
//! most 1 (time exceeded), and anything without a usable route in the gateway's table
//! (the kernel then routes by the main table, as the fwmark rule would fall through to it).
//! A packet too big for the egress MTU is answered (`icmp`), never sent elsewhere.
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, bpf_redir_neigh, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_DIRECT,
        BPF_FIB_LOOKUP_TBID, BPF_F_NO_PREALLOC, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect_neigh},
    macros::map,
    maps::lpm_trie::Key,
    maps::{HashMap, LpmTrie, PerCpuArray},
    programs::TcContext,
    EbpfContext,
};
use policyroute_common::{
    net::{AF_INET, AF_INET6, ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
    FastGateway, FastStats, FAMILY_V4, FAST_EXPLAIN_FORWARDED, FAST_NH_V6, MAX_KERNEL_DESTINATIONS,
    MAX_TARGETS,
};

use crate::parse::Packet;

#[map(name = "PR_FAST")]
static FAST: HashMap<u32, FastGateway> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Allocated on insert (LPM tries must be): most namespaces have a few dozen.
#[map(name = "PR_KERNEL4")]
static KERNEL4: LpmTrie<[u8; 4], u8> =
    LpmTrie::with_max_entries(MAX_KERNEL_DESTINATIONS, BPF_F_NO_PREALLOC);

#[map(name = "PR_KERNEL6")]
static KERNEL6: LpmTrie<[u32; 4], u8> =
    LpmTrie::with_max_entries(MAX_KERNEL_DESTINATIONS, BPF_F_NO_PREALLOC);

#[map(name = "PR_FAST_STATS")]
static FAST_STATS: PerCpuArray<FastStats> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU working memory of the fast path: the lookup's parameters and the ICMP error's
/// headers would not fit the stack (512 bytes for a whole call chain).
#[map(name = "PR_SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU working memory (`SCRATCH`).
#[repr(C)]
pub struct Scratch {
    pub fib: FibParams,
    /// The ICMP error's IP header (IPv4 uses the first 20 bytes).
    pub ip: [u8; 40],
    pub icmp: [u8; 8],
    /// The ICMPv6 checksum's pseudo-header.
    pub pseudo: [u8; 40],
}

const FIB_FLAGS: u32 = BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_TBID;
/// `skb->cb` word where the classifier tells `forward`, later in the same run, that the
/// packet came in on an IP device: the fast path rewrites and redirects Ethernet frames
/// only, so such a packet keeps its mark and goes on to the kernel's fwmark rules. Kept
/// there rather than in a variable: a value live across the whole classification doubles
/// the states the verifier walks. Read here, out of line, where the context is an
/// argument: inline, LLVM keeps a pointer into the context for the read, and the
/// verifier allows context accesses only at a constant offset from its start.
pub const CB_IP_FRAME: usize = 1;

/// `forward`'s answer for a packet to answer with `icmp::too_big` (called by the
/// classifier itself: one call deeper would not fit the 512-byte stack of a call chain).
pub const SEND_TOO_BIG: i32 = i32::MIN;
/// IPv4 `frag_off` flag: don't fragment.
const IP_DF: u16 = 0x4000;

/// Forwards a packet whose rule gave it `mark`: the verdict, and the egress device in
/// `oif` (left alone for an ICMP error or a drop; an out-parameter because a BPF function
/// returns one register); `None` leaves it to the kernel (with the mark already set).
/// `explain` answers in the context instead of redirecting. Out of line: its lookup
/// parameters and the ICMP error's headers would otherwise add to the classifier's stack
/// frame, and the verifier caps the stack of a call chain at 512 bytes.
#[inline(never)]
pub fn forward(ctx: &TcContext, pkt: &Packet, mark: u32, explain: bool, oif: &mut u32) -> i32 {
    forward_inner(ctx, pkt, mark, explain, oif).unwrap_or(TC_ACT_UNSPEC)
}

#[inline(always)]
fn forward_inner(
    ctx: &TcContext,
    pkt: &Packet,
    mark: u32,
    explain: bool,
    oif: &mut u32,
) -> Option<i32> {
    // SAFETY: ctx.skb.skb is the __sk_buff of this run; tc programs may read cb.
    if unsafe { (*ctx.skb.skb).cb[CB_IP_FRAME] } != 0 {
        return None;
    }
    // SAFETY: the value is only read, inside this program's RCU read side.
    let table = unsafe { FAST.get(&mark) }?.table;
    if kernel_routes(pkt) {
        stat(explain, |s| s.to_kernel += 1);
        return None;
    }
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot, used by nothing else while this program runs.
    let params = unsafe { &mut (*scratch).fib };
    fill_params(ctx, pkt, table, params, explain)?;
    // SAFETY: ctx is this program's context and params a live, writable bpf_fib_lookup of
    // the size given (in a map value: the stack of a call chain is capped at 512 bytes).
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            params,
            core::mem::size_of::<FibParams>() as i32,
            FIB_FLAGS,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => {
            *oif = params.ifindex;
            redirect(ctx, pkt, params, explain)
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED => too_big(ctx, pkt, explain),
        _ => {
            stat(explain, |s| s.no_route += 1);
            None
        }
    }
}

/// Whether the kernel routes this destination itself.
#[inline(always)]
fn kernel_routes(pkt: &Packet) -> bool {
    if pkt.family == FAMILY_V4 {
        let key = Key::new(32, pkt.dst[0].to_ne_bytes());
        KERNEL4.get(&key).is_some()
    } else {
        let key = Key::new(128, pkt.dst);
        KERNEL6.get(&key).is_some()
    }
}

/// The lookup's question, written into `p`; `None` (left to the kernel) for frames the
/// fast path does not rewrite: VLAN-tagged in the packet, or with TTL or hop limit at most
/// 1.
#[inline(always)]
fn fill_params(
    ctx: &TcContext,
    pkt: &Packet,
    table: u32,
    p: &mut FibParams,
    explain: bool,
) -> Option<()> {
    let ethertype = u16::from_be_bytes(crate::parse::load::<[u8; 2]>(ctx, 12)?);
    zero(p);
    p.l4_protocol = pkt.proto;
    p.sport = pkt.sport.to_be();
    p.dport = pkt.dport.to_be();
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed this program; the verifier
    // allows reading ifindex and gso_segs from it.
    let (ifindex, gso) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).gso_segs > 1) };
    p.ifindex = ifindex;
    p.__bindgen_anon_5.tbid = table;
    let (ttl, len) = match ethertype {
        ETH_P_IP if pkt.family == FAMILY_V4 => {
            let h = crate::parse::load::<[u8; 20]>(ctx, ETH_HLEN)?;
            p.family = AF_INET;
            p.__bindgen_anon_2.tos = h[1];
            p.__bindgen_anon_3.ipv4_src = pkt.src[0];
            p.__bindgen_anon_4.ipv4_dst = pkt.dst[0];
            (h[8], u16::from_be_bytes([h[2], h[3]]))
        }
        ETH_P_IPV6 if pkt.family != FAMILY_V4 => {
            let h = crate::parse::load::<[u8; 8]>(ctx, ETH_HLEN)?;
            p.family = AF_INET6;
            p.__bindgen_anon_2.flowinfo = u32::from_ne_bytes([h[0] & 0x0f, h[1], h[2], h[3]]);
            p.__bindgen_anon_3.ipv6_src = pkt.src;
            p.__bindgen_anon_4.ipv6_dst = pkt.dst;
            (h[7], u16::from_be_bytes([h[4], h[5]]).saturating_add(40))
        }
        _ => return None,
    };
    if ttl <= 1 {
        stat(explain, |s| s.expired += 1);
        return None;
    }
    // With the packet's length the lookup checks the route's MTU (path MTU included); a
    // GSO packet is checked by the helper per segment against the device's MTU instead.
    p.__bindgen_anon_1.tot_len = if gso { 0 } else { len };
    Some(())
}

/// Zeroes the lookup's parameters with eight word stores. `write_bytes` would become a
/// call to the compiler's `memset`, which on BPF is a loop of byte stores.
#[inline(always)]
fn zero(p: &mut FibParams) {
    const WORDS: usize = core::mem::size_of::<FibParams>() / 8;
    const _: () = assert!(core::mem::size_of::<FibParams>() == WORDS * 8);
    let words = (p as *mut FibParams).cast::<u64>();
    for i in 0..WORDS {
        // SAFETY: p is a live, exclusive bpf_fib_lookup of WORDS whole words, 8-aligned
        // (it holds u64-aligned unions and sits at the start of a map value); all-zero is
        // a valid bpf_fib_lookup (plain integers and unions of them). Volatile, so LLVM
        // does not merge the stores back into a memset call.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

#[inline(always)]
fn redirect(ctx: &TcContext, pkt: &Packet, p: &FibParams, explain: bool) -> Option<i32> {
    // SAFETY: reading the union members the helper filled for this family.
    let (v6, nh) = unsafe {
        if p.family == AF_INET6 {
            (true, p.__bindgen_anon_4.ipv6_dst)
        } else {
            (false, [p.__bindgen_anon_4.ipv4_dst, 0, 0, 0])
        }
    };
    if explain {
        answer(ctx, p.ifindex | if v6 { FAST_NH_V6 } else { 0 }, nh);
        return Some(FAST_EXPLAIN_FORWARDED);
    }
    if !decrement_ttl(ctx, pkt) {
        return None;
    }
    let mut target = bpf_redir_neigh {
        nh_family: u32::from(p.family),
        __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 { ipv6_nh: nh },
    };
    // SAFETY: target is a live bpf_redir_neigh of the size given; the helper only reads it.
    let rc = unsafe {
        bpf_redirect_neigh(
            p.ifindex,
            &mut target,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    stat(false, |s| s.forwarded += 1);
    Some(rc as i32)
}

/// Too big for the egress MTU: ICMP back to the sender, or (IPv4 without DF, which the
/// kernel would fragment) a counted drop; never another uplink.
#[inline(always)]
fn too_big(ctx: &TcContext, pkt: &Packet, explain: bool) -> Option<i32> {
    if explain {
        return None;
    }
    if pkt.family == FAMILY_V4 {
        let frag = crate::parse::load::<[u8; 2]>(ctx, ETH_HLEN + 6)?;
        if u16::from_be_bytes(frag) & IP_DF == 0 {
            stat(false, |s| s.dropped_fragment += 1);
            return Some(TC_ACT_SHOT as i32);
        }
    }
    stat(false, |s| s.too_big += 1);
    Some(SEND_TOO_BIG)
}

/// The MTU of the last `SEND_TOO_BIG` on this CPU.
#[inline(always)]
pub fn too_big_mtu() -> u16 {
    match SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the helper wrote the MTU into the union on FRAG_NEEDED.
        Some(s) => unsafe { (*s).fib.__bindgen_anon_1.mtu_result },
        None => 0,
    }
}

/// TTL or hop limit minus one; the IPv4 header checksum updated incrementally (RFC 1624).
#[inline(always)]
fn decrement_ttl(ctx: &TcContext, pkt: &Packet) -> bool {
    let start = ctx.data();
    let end = ctx.data_end();
    if pkt.family == FAMILY_V4 {
        if start + ETH_HLEN + 20 > end {
            return false;
        }
        let ttl = (start + ETH_HLEN + 8) as *mut u8;
        let check = (start + ETH_HLEN + 10) as *mut [u8; 2];
        // SAFETY: both lie inside [start, end) by the check above, which the verifier
        // also sees; tc programs may write packet data directly.
        unsafe {
            *ttl -= 1;
            let sum = u32::from(u16::from_be_bytes(*check)) + 0x0100;
            let folded = (sum & 0xffff) + (sum >> 16);
            *check = (folded as u16).to_be_bytes();
        }
    } else {
        if start + ETH_HLEN + 8 > end {
            return false;
        }
        let hop = (start + ETH_HLEN + 7) as *mut u8;
        // SAFETY: inside the packet by the check above; tc programs may write it.
        unsafe { *hop -= 1 };
    }
    true
}

/// Explain's answer: where the packet would go.
#[inline(always)]
fn answer(ctx: &TcContext, ifindex: u32, nh: [u32; 4]) {
    // SAFETY: ctx.skb.skb is the __sk_buff of this (test) run; tc programs may write cb.
    unsafe {
        let skb = ctx.skb.skb;
        (*skb).cb[0] = ifindex;
        (*skb).cb[1] = nh[0];
        (*skb).cb[2] = nh[1];
        (*skb).cb[3] = nh[2];
        (*skb).cb[4] = nh[3];
    }
}

/// Per-CPU statistics: no atomics. Explain's test runs count nothing.
#[inline(always)]
fn stat(explain: bool, f: impl FnOnce(&mut FastStats)) {
    if explain {
        return;
    }
    if let Some(s) = FAST_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's own slot, and no other program runs on this CPU meanwhile.
        unsafe { f(&mut *s) };
    }
}
