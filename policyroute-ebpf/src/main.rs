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

mod control;
mod counters;
mod devices;
mod fast;
mod icmp;
mod parse;
mod prefix_trie;
mod search;
mod sock;
mod sticky;
mod targets;
mod trace;
mod verdict;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};
use policyroute_common::{
    Control, DeviceRole, CONTROL_FAST_PATH, CONTROL_STICKY, HOOK_TC_EGRESS, HOOK_TC_INGRESS,
    HOW_FALLBACK, HOW_RULE, HOW_STICKY, HOW_UNWRITTEN, ROLE_CLASSIFY, ROLE_RECORD,
};

use control::{is_explain, CONTROL};
use counters::count;
use devices::{device_role, ip_frame, is_ip_device};
use parse::Packet;
use targets::Flow;
use trace::Traced;

// Each map is declared in the module of its concern. The names of the maps and of the
// programs (the function names) are listed for userspace in `policyroute_common::names`.

#[classifier]
pub fn policyroute_tc(ctx: TcContext) -> i32 {
    let Some(control) = CONTROL.get(0) else {
        return TC_ACT_UNSPEC;
    };
    let role = device_role(&ctx, control);
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed this program; tc programs
    // may write cb, scratch space that the IP layer clears when it receives the packet.
    unsafe { (*ctx.skb.skb).cb[fast::CB_IP_FRAME] = u32::from(is_ip_device(role)) };
    let mut pkt = MaybeUninit::uninit();
    if parse::packet(ctx.data(), ctx.data_end(), ip_frame(&ctx, role), &mut pkt) == 0 {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: `packet` returned 1, so it wrote the whole packet.
    let pkt = unsafe { pkt.assume_init_ref() };
    tc(&ctx, pkt, control, role)
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
            let (mark, traced) = verdict::of_hit(&hit, pkt.family, flow, control);
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
    match verdict::of_hit(&hit, pkt.family, flow, control) {
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

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
