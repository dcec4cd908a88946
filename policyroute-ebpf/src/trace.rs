//! `policyroute trace`: when the trace filter map says a trace runs, each packet or socket
//! call that passes the filter is logged through aya-log as a `TraceEvent`, at most
//! `per_cpu_rate` lines per CPU and second. With no trace running the cost is a load of
//! `PR_TRACE_CODE` (constant to the verifier, which removes its branch), one bit test of the
//! control word (`CONTROL_TRACE`) and one branch.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray},
    programs::TcContext,
};
use aya_log_ebpf::info;
use policyroute_common::{
    Control, TraceEvent, TraceFilter, TraceRate, CONTROL_TRACE, NO_MEMBER, NO_RULE, TRACE_DPORT,
    TRACE_DST, TRACE_IIF, TRACE_ON, TRACE_PROTO, TRACE_SPORT, TRACE_SRC,
};

use crate::parse::Packet;

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

/// Written by `policyroute trace`; flags 0 (no trace) unless one runs.
#[map(name = "PR_TRACE")]
static TRACE: Array<TraceFilter> = Array::with_max_entries(1, 0);

/// Per-CPU working memory of the trace: the event being logged.
#[map(name = "PR_TRACE_EVENT")]
static TRACE_EVENT: PerCpuArray<TraceEvent> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "PR_TRACE_RATE")]
static TRACE_RATE: PerCpuArray<TraceRate> = PerCpuArray::with_max_entries(1, 0);

const NS_PER_SEC: u64 = 1_000_000_000;

/// How a packet's mark was decided.
#[derive(Clone, Copy)]
pub struct Traced {
    pub how: u8,
    pub rule: u32,
    pub mark: u32,
    pub member: u32,
    /// The fast path's egress device; 0: the kernel routes it.
    pub oif: u32,
}

impl Traced {
    #[inline(always)]
    pub const fn new(how: u8, rule: u32, mark: u32) -> Self {
        Self {
            how,
            rule,
            mark,
            member: NO_MEMBER,
            oif: 0,
        }
    }

    /// No rule matched.
    #[inline(always)]
    pub const fn none() -> Self {
        Self::new(policyroute_common::HOW_NONE, NO_RULE, 0)
    }
}

/// Traces a packet at a tc hook.
#[inline(always)]
pub fn tc(ctx: &TcContext, control: &Control, hook: u8, pkt: &Packet, t: &Traced) {
    let Some(filter) = running(control) else {
        return;
    };
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed this program; the verifier
    // allows reading ifindex from it.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    log(hook, ifindex, pkt, t, filter);
}

/// Traces a socket call (no device).
#[inline(always)]
pub fn sock(control: &Control, hook: u8, pkt: &Packet, t: &Traced) {
    if let Some(filter) = running(control) {
        log(hook, 0, pkt, t, filter);
    }
}

/// The running trace's filter; `None` (after one bit test) when no trace runs.
#[inline(always)]
fn running(control: &Control) -> Option<&'static TraceFilter> {
    if !trace_code() || control.flags & CONTROL_TRACE == 0 {
        return None;
    }
    TRACE.get(0).filter(|f| f.flags & TRACE_ON != 0)
}

#[inline(always)]
fn event(hook: u8, ifindex: u32, pkt: &Packet, t: &Traced, owner: u32) -> TraceEvent {
    TraceEvent {
        hook,
        family: pkt.family as u8,
        proto: pkt.proto,
        how: t.how,
        ifindex,
        sport: pkt.sport,
        dport: pkt.dport,
        rule: t.rule,
        mark: t.mark,
        member: t.member,
        owner,
        oif: t.oif,
        src: pkt.src,
        dst: pkt.dst,
    }
}

/// Out of line: the filter, the rate limit and aya-log's copy are verified once, not once
/// per call site, and the event takes no room in the classifier's stack frame.
#[inline(never)]
fn log(hook: u8, ifindex: u32, pkt: &Packet, t: &Traced, f: &TraceFilter) {
    let Some(slot) = TRACE_EVENT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's own slot, used by nothing else while this program runs; the event
    // is built there because the stack of a call chain is capped at 512 bytes.
    let e = unsafe { &mut *slot };
    *e = event(hook, ifindex, pkt, t, f.owner);
    if !passes(e, f) || !within_rate(f) {
        return;
    }
    info!(&(), "{:x}", &e.as_bytes()[..]);
}

#[inline(always)]
fn passes(e: &TraceEvent, f: &TraceFilter) -> bool {
    let on = |flag: u32| f.flags & flag != 0;
    if on(TRACE_IIF) && e.ifindex != f.iif
        || on(TRACE_PROTO) && e.proto != f.proto
        || on(TRACE_SPORT) && e.sport != f.sport
        || on(TRACE_DPORT) && e.dport != f.dport
    {
        return false;
    }
    if on(TRACE_SRC) && !in_prefix(e, &e.src, &f.src_net, &f.src_mask, f.family) {
        return false;
    }
    !(on(TRACE_DST) && !in_prefix(e, &e.dst, &f.dst_net, &f.dst_mask, f.family))
}

#[inline(always)]
fn in_prefix(
    e: &TraceEvent,
    addr: &[u32; 4],
    net: &[u32; 4],
    mask: &[u32; 4],
    family: u32,
) -> bool {
    u32::from(e.family) == family
        && addr[0] & mask[0] == net[0]
        && addr[1] & mask[1] == net[1]
        && addr[2] & mask[2] == net[2]
        && addr[3] & mask[3] == net[3]
}

/// At most `per_cpu_rate` lines per one-second window on this CPU; the rest are counted.
#[inline(always)]
fn within_rate(f: &TraceFilter) -> bool {
    let Some(r) = TRACE_RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a per-CPU array slot returned non-null is this CPU's own copy, and no other
    // program runs on this CPU in between, so plain read-modify-writes are not torn.
    unsafe {
        if now.wrapping_sub((*r).window_ns) >= NS_PER_SEC {
            (*r).window_ns = now;
            (*r).logged = 0;
        }
        if (*r).logged >= u64::from(f.per_cpu_rate) {
            (*r).dropped += 1;
            return false;
        }
        (*r).logged += 1;
    }
    true
}
