//! The policyroute TC classifier: parses a frame, looks its fields up in the tuple-space
//! maps and sets `skb->mark` from the best (lowest priority number) hit under the mark mask.
//!
//! It never drops, redirects or rewrites packet bytes. It always returns `TC_ACT_UNSPEC`
//! (-1), which is `TCX_NEXT` for tcx and "continue with the next filter" for cls_bpf in
//! direct-action mode, so other programs on the same hook still run and decide the verdict.
#![no_std]
#![no_main]

mod parse;

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_loop,
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use policyroute_common::{
    Control, Counter, RuleKey, RuleValue, ShapeTable, StateChunk, DEFAULT_MAX_COUNTERS,
    DEFAULT_MAX_ENTRIES, GENERATIONS, MAX_SHAPES, MAX_STATE_CHUNKS, SHAPE_DSCP, SHAPE_PORTS,
    SHAPE_PROTO,
};

use parse::Packet;

const TC_ACT_UNSPEC: i32 = -1;
/// Hash entries are allocated on insert: the map's capacity costs nothing until used.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map(name = "PR_RULES")]
static RULES: HashMap<RuleKey, RuleValue> =
    HashMap::with_max_entries(DEFAULT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "PR_TABLES")]
static TABLES: Array<ShapeTable> = Array::with_max_entries(GENERATIONS * 2, 0);

#[map(name = "PR_CONTROL")]
static CONTROL: Array<Control> = Array::with_max_entries(1, 0);

#[map(name = "PR_COUNTERS")]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DEFAULT_MAX_COUNTERS, 0);

/// Read only by userspace (see `policyroute_common::STATE_MAP`).
#[map(name = "PR_STATE")]
static STATE: HashMap<u32, StateChunk> = HashMap::with_max_entries(MAX_STATE_CHUNKS, BPF_F_NO_PREALLOC);

#[classifier]
pub fn policyroute_tc(ctx: TcContext) -> i32 {
    if let Some(pkt) = parse::packet(&ctx) {
        if let Some(hit) = classify(&pkt) {
            apply(&ctx, &hit);
        }
    }
    TC_ACT_UNSPEC
}

/// Tuple space search over the shapes of the packet's family: one masked hash lookup per
/// shape, best priority wins. The loop runs through `bpf_loop`, so the verifier checks its
/// body once; its trip count is the number of shapes (at most MAX_SHAPES), whatever the
/// number of rules.
#[inline(always)]
fn classify(pkt: &Packet) -> Option<Hit> {
    let generation = CONTROL.get(0)?.generation % GENERATIONS;
    let table = TABLES.get(generation * 2 + pkt.family)?;
    let mut search = Search {
        pkt,
        table,
        best_prio: u32::MAX,
        best_mark: 0,
        best_counter: 0,
    };
    // A function pointer (not an integer) so the linker emits a BPF_PSEUDO_FUNC relocation.
    let step = search_step as *mut c_void;
    let n = table.len.min(MAX_SHAPES as u32);
    unsafe { bpf_loop(n, step, (&mut search as *mut Search).cast(), 0) };
    if search.best_prio == u32::MAX {
        return None;
    }
    Some(Hit {
        mark: search.best_mark & table.mark_mask,
        mark_mask: table.mark_mask,
        counter: search.best_counter,
    })
}

struct Search<'a> {
    pkt: &'a Packet,
    table: &'a ShapeTable,
    best_prio: u32,
    best_mark: u32,
    best_counter: u32,
}

/// One shape of the search; returns 1 to stop the loop.
unsafe extern "C" fn search_step(index: u32, ctx: *mut Search) -> i64 {
    let s = unsafe { &mut *ctx };
    let Some(shape) = s.table.shapes.get(index as usize) else {
        return 1;
    };
    // Shapes are sorted by their best priority: none from here on can win.
    if s.best_prio < shape.min_prio {
        return 1;
    }
    let pkt = s.pkt;
    if shape.flags & SHAPE_PORTS != 0 && !pkt.has_ports {
        return 0;
    }
    let key = RuleKey {
        shape: shape.id,
        proto: if shape.flags & SHAPE_PROTO != 0 {
            pkt.proto
        } else {
            0
        },
        dscp: if shape.flags & SHAPE_DSCP != 0 {
            pkt.dscp
        } else {
            0
        },
        sport: pkt.sport & shape.sport_mask,
        dport: pkt.dport & shape.dport_mask,
        src: mask(&pkt.src, &shape.src_mask),
        dst: mask(&pkt.dst, &shape.dst_mask),
    };
    if let Some(v) = unsafe { RULES.get(key) } {
        if v.prio < s.best_prio {
            s.best_prio = v.prio;
            s.best_mark = v.mark;
            s.best_counter = v.counter;
        }
    }
    0
}

#[inline(always)]
fn mask(a: &[u32; 4], m: &[u32; 4]) -> [u32; 4] {
    [a[0] & m[0], a[1] & m[1], a[2] & m[2], a[3] & m[3]]
}

struct Hit {
    mark: u32,
    mark_mask: u32,
    counter: u32,
}

/// Counts the hit (per-CPU, no atomics) and sets the mark bits under the mask, keeping
/// the bits outside it.
#[inline(always)]
fn apply(ctx: &TcContext, hit: &Hit) {
    if let Some(c) = COUNTERS.get_ptr_mut(hit.counter) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(ctx.len());
        }
    }
    let old = unsafe { (*ctx.skb.skb).mark };
    ctx.set_mark((old & !hit.mark_mask) | hit.mark);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
