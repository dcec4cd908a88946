//! The policyroute programs. The TC classifier parses a frame, looks its fields up in the
//! tuple-space maps and sets `skb->mark` from the best (lowest priority number) hit under
//! the mark mask; on sticky gateways it records inbound flows, and on classifying devices
//! it restores their gateway. The socket hooks (`sock`) do the same for this host's own
//! traffic. All share one set of maps.
//!
//! Frames start with an Ethernet header, except on devices whose role says
//! `ROLE_IP_FRAME` (tun, WireGuard, PPP: decided from the link type when the policy is
//! applied, not guessed per packet); there they start with the IP header.
//!
//! Packets and socket calls that pass a running `policyroute trace`'s filter are logged
//! through aya-log (`trace`).
//!
//! Without `fast_path` it never redirects or rewrites packet bytes; with it, gateway-bound
//! packets are forwarded by the program (`fast`, `icmp`). It drops only what a rule sends
//! to a gateway or group that is down with `when_down = "blackhole"` (`TC_ACT_SHOT`), and
//! (fast path) IPv4 too big without DF. Otherwise it returns `TC_ACT_UNSPEC` (-1), which is
//! `TCX_NEXT` for tcx and "continue with the next filter" for cls_bpf in direct-action
//! mode, so other programs on the same hook still run and decide the verdict.
//!
//! # Rules for out-of-line functions (`#[inline(never)]`, `bpf_loop` callbacks)
//!
//! Compilers differ in what they inline, spill and how they return values; code a few bytes
//! under a BPF limit builds on one machine and fails on the next. So:
//!
//! - **At most 5 arguments, counting a hidden return pointer.** BPF passes arguments in
//!   r1-r5 and has no stack arguments.
//! - **Scalar results only**: an integer, a bool or a pointer. No `Option`, `Result`,
//!   tuple or struct across an out-of-line boundary: LLVM returns those through a hidden
//!   pointer argument (a sixth argument for a five-argument function: "stack arguments
//!   are not supported" at link time). Return a scalar with a sentinel, or fill an
//!   out-parameter (`parse::packet`).
//! - **Large values in per-CPU scratch maps** (`PR_SCRATCH`, `PR_TRACE_EVENT`), not on the
//!   stack: the verifier caps a whole call chain at 512 bytes, each frame rounded up to 32.
//! - **Nothing long-lived across a loop or a call**: BPF has 4 callee-saved registers, so
//!   every other value live across one gets an 8-byte stack slot of its own (read header
//!   fields after a walk, not before it).
//! - Pass packet bounds as plain addresses (`parse::Frame`), not the context, to an
//!   out-of-line function: LLVM may pass the 32-bit `data_end` field and widen it in the
//!   callee, which the verifier refuses.
//!
//! `tests/tests/verifier_budget.rs` holds every program to this: it loads each in its
//! largest configuration and fails when a call chain's stack exceeds 400 bytes, when the
//! instructions the verifier processed exceed the ceiling in `verifier-budget.txt` by 25 %,
//! or when an out-of-line function's declared signature (from BTF) breaks the first two
//! rules. `cargo xtask test` prints its table.
#![no_std]
#![no_main]

use core::mem::MaybeUninit;

mod fast;
mod icmp;
mod parse;
mod prefix_trie;
mod search;
mod sock;
mod sticky;
mod targets;
mod trace;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{cgroup_sock_addr, classifier, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, TcContext},
};
use policyroute_common::{
    Control, Counter, DeviceRole, FastGateway, FastStats, FlowChoice, FlowKey, FlowTuple,
    FlowValue, GatewaySource, RuleKey, RuleValue, ShapeTable, StateChunk, TargetState, TraceEvent,
    TraceFilter, TraceRate, TrieNode, CONTROL_DEVICE_ROLES, CONTROL_FAST_PATH, CONTROL_STICKY,
    DEFAULT_MAX_COUNTERS, DEFAULT_MAX_ENTRIES, DEFAULT_TRIE_NODES, EXPLAIN_MAGIC, GENERATIONS,
    HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOW_DROP, HOW_FALLBACK, HOW_RULE, HOW_STICKY, HOW_UNWRITTEN,
    MAX_FLOWS, MAX_KERNEL_DESTINATIONS, MAX_STATE_CHUNKS, MAX_TARGETS, ROLE_CLASSIFY,
    ROLE_IP_FRAME, ROLE_RECORD,
};

use parse::Packet;
use search::Hit;
use targets::{Decision, Flow};
use trace::Traced;

// Map names are listed for userspace in `policyroute_common::names`.

/// Hash entries are allocated on insert (BPF_F_NO_PREALLOC): the map's capacity costs
/// nothing until used.
#[map(name = "PR_RULES")]
static RULES: HashMap<RuleKey, RuleValue> =
    HashMap::with_max_entries(DEFAULT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// 1 when this dataplane was loaded with room for prefix tries; set by the loader (see
/// `policyroute_common::TRIES_GLOBAL`). Read-only data, so for a dataplane without tries
/// the verifier knows it is 0 and drops the trie code unchecked: loading is as fast as
/// before tries existed.
#[no_mangle]
static PR_TRIES: u32 = 0;

#[inline(always)]
fn tries_enabled() -> bool {
    // SAFETY: a plain read of a static; volatile so the compiler keeps the load the loader
    // rewrites instead of folding in 0.
    unsafe { core::ptr::read_volatile(&PR_TRIES) != 0 }
}

/// 1 in every dataplane `policyroute` loads. `bench classify` loads a copy of the programs
/// with 0, which the verifier reads as a constant and so drops the trace code: the
/// difference between the two is what trace costs while no trace runs (see
/// `policyroute_common::names::TRACE_GLOBAL`).
#[no_mangle]
static PR_TRACE_CODE: u32 = 1;

#[inline(always)]
fn trace_code() -> bool {
    // SAFETY: a plain read of a static; volatile so the compiler keeps the load the loader
    // may rewrite instead of folding in 1.
    unsafe { core::ptr::read_volatile(&PR_TRACE_CODE) != 0 }
}

/// Memory-mappable: the controller writes a trie image with stores, not a syscall per word.
#[map(name = "PR_PREFIX_TRIE2")]
static PREFIX_TRIE: Array<TrieNode> = Array::with_max_entries(DEFAULT_TRIE_NODES, BPF_F_MMAPABLE);

#[map(name = "PR_TABLES")]
static TABLES: Array<ShapeTable> = Array::with_max_entries(GENERATIONS * 2, 0);

#[map(name = "PR_CONTROL")]
static CONTROL: Array<Control> = Array::with_max_entries(1, 0);

#[map(name = "PR_COUNTERS")]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DEFAULT_MAX_COUNTERS, 0);

#[map(name = "PR_DEVICES")]
static DEVICES: HashMap<u32, DeviceRole> = HashMap::with_max_entries(1024, 0);

#[map(name = "PR_FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "PR_SOURCES")]
static SOURCES: HashMap<u32, GatewaySource> = HashMap::with_max_entries(1024, 0);

/// Allocated on insert: a state is 4 KiB and most policies have a handful.
#[map(name = "PR_TARGETS")]
static TARGETS: HashMap<u32, TargetState> =
    HashMap::with_max_entries(MAX_TARGETS * 2, BPF_F_NO_PREALLOC);

#[map(name = "PR_CHOICES")]
static CHOICES: LruHashMap<FlowTuple, FlowChoice> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Written by `policyroute trace`; flags 0 (no trace) unless one runs.
#[map(name = "PR_TRACE")]
static TRACE: Array<TraceFilter> = Array::with_max_entries(1, 0);

/// Per-CPU working memory of the trace: the event being logged.
#[map(name = "PR_TRACE_EVENT")]
static TRACE_EVENT: PerCpuArray<TraceEvent> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "PR_TRACE_RATE")]
static TRACE_RATE: PerCpuArray<TraceRate> = PerCpuArray::with_max_entries(1, 0);

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

#[map(name = "PR_ADDRESSES")]
static ADDRESSES: HashMap<u32, GatewaySource> = HashMap::with_max_entries(1024, 0);

/// Per-CPU working memory of the fast path: the lookup's parameters and the ICMP error's
/// headers would not fit the stack (512 bytes for a whole call chain).
#[map(name = "PR_SCRATCH")]
static SCRATCH: PerCpuArray<fast::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Read only by userspace (see `policyroute_common::STATE_MAP`).
#[map(name = "PR_STATE")]
static STATE: HashMap<u32, StateChunk> =
    HashMap::with_max_entries(MAX_STATE_CHUNKS, BPF_F_NO_PREALLOC);

// Program names (the function names) are listed for userspace in
// `policyroute_common::names`.

#[classifier]
pub fn policyroute_tc(ctx: TcContext) -> i32 {
    let Some(control) = CONTROL.get(0) else {
        return TC_ACT_UNSPEC;
    };
    let role = device_role(&ctx, control);
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed this program; tc programs
    // may write cb (scratch of this run, which nothing after it reads).
    unsafe { (*ctx.skb.skb).cb[fast::CB_IP_FRAME] = u32::from(is_ip_device(role)) };
    let mut pkt = MaybeUninit::uninit();
    if parse::packet(ctx.data(), ctx.data_end(), ip_frame(&ctx, role), &mut pkt) == 0 {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: `packet` returned 1, so it wrote the whole packet.
    let pkt = unsafe { pkt.assume_init_ref() };
    tc(&ctx, pkt, control, role)
}

/// The role of the device the packet is on, when the policy gives devices roles (sticky
/// recording, IP frames); `None`: classify an Ethernet frame.
#[inline(always)]
fn device_role(ctx: &TcContext, control: &Control) -> Option<&'static DeviceRole> {
    if control.flags & CONTROL_DEVICE_ROLES == 0 {
        return None;
    }
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed this program; the verifier
    // allows reading ifindex from it.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is only read, while this program runs (RCU read side).
    unsafe { DEVICES.get(ifindex) }
}

/// Whether the device's frames start with the IP header (its role says, from its link
/// type). Explain's test runs always start with an Ethernet header: BPF_PROG_TEST_RUN
/// builds the packet that way whatever the device.
#[inline(always)]
fn ip_frame(ctx: &TcContext, role: Option<&DeviceRole>) -> bool {
    is_ip_device(role) && !is_explain(ctx)
}

#[inline(always)]
fn is_ip_device(role: Option<&DeviceRole>) -> bool {
    matches!(role, Some(r) if r.flags & ROLE_IP_FRAME != 0)
}

/// Tc egress: classification only (no stickiness). The route is already chosen here, so
/// these marks serve later consumers (qdiscs, accounting), not routing.
#[classifier]
pub fn policyroute_eg(ctx: TcContext) -> i32 {
    let Some(control) = CONTROL.get(0) else {
        return TC_ACT_UNSPEC;
    };
    let ip_frame = ip_frame(&ctx, device_role(&ctx, control));
    let mut pkt = MaybeUninit::uninit();
    if parse::packet(ctx.data(), ctx.data_end(), ip_frame, &mut pkt) != 0 {
        // SAFETY: `packet` returned 1, so it wrote the whole packet.
        let pkt = unsafe { pkt.assume_init_ref() };
        if let Some(hit) = search::classify(pkt, control) {
            if !is_explain(&ctx) {
                count(hit.counter, u64::from(ctx.len()));
            }
            // A blackholed target drops at ingress; a mark here only serves qdiscs, and
            // records are read, not written.
            let tuple = targets::tuple(pkt);
            let flow = Flow::Tracked {
                tuple: &tuple,
                write: false,
            };
            let (mark, traced) = verdict(&hit, pkt.family, flow, control);
            if let Some(mark) = mark {
                set_mark(&ctx, mark, hit.mark_mask);
            }
            if !is_explain(&ctx) {
                trace::tc(&ctx, control, HOOK_TC_EGRESS, pkt, &traced);
            }
        } else if !is_explain(&ctx) {
            trace::tc(&ctx, control, HOOK_TC_EGRESS, pkt, &Traced::none());
        }
    }
    TC_ACT_UNSPEC
}

/// The mark a hit sets: its own, or its target's decision; `None` to drop. Also how it
/// was decided, for the trace.
#[inline(always)]
fn verdict(hit: &Hit, family: u32, flow: Flow<'_>, control: &Control) -> (Option<u32>, Traced) {
    if hit.target == 0 {
        return (Some(hit.mark), Traced::new(HOW_RULE, hit.counter, hit.mark));
    }
    match targets::decide(hit.target, family, flow, control) {
        Some(Decision::Mark { mark, how, member }) => {
            let mark = mark & hit.mark_mask;
            let mut t = Traced::new(how, hit.counter, mark);
            t.member = member;
            (Some(mark), t)
        }
        Some(Decision::Drop) => (None, Traced::new(HOW_DROP, hit.counter, 0)),
        // Not written yet: leave the packet to the main table rather than guess.
        None => (Some(0), Traced::new(HOW_UNWRITTEN, hit.counter, 0)),
    }
}

/// Explain runs the program on a synthesized packet: it must not count or record.
#[inline(always)]
fn is_explain(ctx: &TcContext) -> bool {
    ctx.cb()[0] == EXPLAIN_MAGIC
}

/// Devices without a role classify.
#[inline(always)]
fn tc(ctx: &TcContext, pkt: &Packet, control: &Control, role: Option<&DeviceRole>) -> i32 {
    let explain = is_explain(ctx);
    if let Some(r) = role {
        if r.flags & ROLE_RECORD != 0 && !explain {
            sticky::record(pkt, r.mark, control);
        }
        if r.flags & ROLE_CLASSIFY == 0 {
            return TC_ACT_UNSPEC;
        }
    }
    let (ret, traced) = classify_ingress(ctx, pkt, control, explain);
    if !explain {
        trace::tc(ctx, control, HOOK_TC_INGRESS, pkt, &traced);
    }
    ret
}

/// Sticky flows first, then the rules: the verdict, and how the mark was decided.
#[inline(always)]
fn classify_ingress(
    ctx: &TcContext,
    pkt: &Packet,
    control: &Control,
    explain: bool,
) -> (i32, Traced) {
    if control.flags & CONTROL_STICKY != 0 {
        if let Some(mark) = sticky::restore(&sticky::outbound_key(pkt), control) {
            let mask = search::mark_mask(pkt, control);
            set_mark(ctx, mark, mask);
            let mut t = Traced::none();
            t.how = HOW_STICKY;
            t.mark = mark & mask;
            return (fast_path(ctx, pkt, control, &mut t, explain), t);
        }
    }
    let Some(hit) = search::classify(pkt, control) else {
        return (TC_ACT_UNSPEC, Traced::none());
    };
    if !explain {
        count(hit.counter, u64::from(ctx.len()));
    }
    let tuple = targets::tuple(pkt);
    let flow = Flow::Tracked {
        tuple: &tuple,
        write: !explain,
    };
    match verdict(&hit, pkt.family, flow, control) {
        (Some(mark), mut t) => {
            set_mark(ctx, mark, hit.mark_mask);
            (fast_path(ctx, pkt, control, &mut t, explain), t)
        }
        (None, t) => (TC_ACT_SHOT, t),
    }
}

/// With the fast path on, a packet whose mark a gateway decided (not a raw mark, not the
/// main table) is forwarded by the program; otherwise it goes on to the kernel. The fast
/// path rewrites and redirects Ethernet frames only: what arrives on an IP device keeps
/// its mark and goes on to the kernel's fwmark rules.
#[inline(always)]
fn fast_path(
    ctx: &TcContext,
    pkt: &Packet,
    control: &Control,
    t: &mut Traced,
    explain: bool,
) -> i32 {
    if control.flags & CONTROL_FAST_PATH == 0
        || t.mark == 0
        || matches!(t.how, HOW_RULE | HOW_FALLBACK | HOW_UNWRITTEN)
    {
        return TC_ACT_UNSPEC;
    }
    match fast::forward(ctx, pkt, t.mark, explain, &mut t.oif) {
        fast::SEND_TOO_BIG => icmp::too_big(ctx, pkt, fast::too_big_mtu()),
        rc => rc,
    }
}

/// Per-CPU counters: no atomics on the hot path.
#[inline(always)]
fn count(slot: u32, bytes: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU array slot returned non-null by the lookup is this CPU's own
        // copy, and nothing else on this CPU runs a program in between (no preemption of
        // BPF programs on one CPU), so a plain read-modify-write is not torn.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// Sets the mark bits under the mask, keeping the bits outside it.
#[inline(always)]
fn set_mark(ctx: &TcContext, mark: u32, mask: u32) {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed this program; reading mark
    // is allowed for TC programs.
    let old = unsafe { (*ctx.skb.skb).mark };
    ctx.set_mark((old & !mask) | (mark & mask));
}

#[cgroup_sock_addr(connect4)]
pub fn pr_connect4(ctx: SockAddrContext) -> i32 {
    sock::handle(&ctx, false, false)
}

#[cgroup_sock_addr(connect6)]
pub fn pr_connect6(ctx: SockAddrContext) -> i32 {
    sock::handle(&ctx, true, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn pr_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::handle(&ctx, false, true)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn pr_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::handle(&ctx, true, true)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
