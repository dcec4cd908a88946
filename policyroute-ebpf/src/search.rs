//! Tuple space search: one masked hash lookup per shape of the packet's family, the hit
//! with the lowest priority number wins. The loop runs through `bpf_loop`, so the verifier
//! checks its body once; its trip count is the number of shapes (at most MAX_SHAPES),
//! whatever the number of rules.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::generated::bpf_loop,
    macros::map,
    maps::{Array, HashMap},
};
use policyroute_common::{
    Control, RuleKey, RuleValue, ShapeTable, DEFAULT_MAX_ENTRIES, GENERATIONS, MAX_SHAPES,
    SHAPE_DSCP, SHAPE_DST_CLASS, SHAPE_PROTO, SHAPE_SRC_CLASS, TRIE_NONE,
};

use crate::{parse::Packet, prefix_trie};

/// Hash entries are allocated on insert (BPF_F_NO_PREALLOC): the map's capacity costs
/// nothing until used.
#[map(name = "PR_RULES")]
static RULES: HashMap<RuleKey, RuleValue> =
    HashMap::with_max_entries(DEFAULT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "PR_TABLES")]
static TABLES: Array<ShapeTable> = Array::with_max_entries(GENERATIONS * 2, 0);

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

/// A rule's verdict: its mark (already under the mask), the mask, its counter slot, and
/// the gateway or group that decides instead of `mark` when not 0.
pub struct Hit {
    pub mark: u32,
    pub mark_mask: u32,
    pub counter: u32,
    pub target: u32,
}

#[inline(always)]
pub fn classify(pkt: &Packet, control: &Control) -> Option<Hit> {
    let generation = control.generation % GENERATIONS;
    let table = TABLES.get(generation * 2 + pkt.family)?;
    let mut search = Search {
        pkt,
        table,
        src_class: 0,
        dst_class: 0,
        best_prio: u32::MAX,
        best_mark: 0,
        best_counter: 0,
        best_target: 0,
    };
    if tries_enabled() && (table.src_root != TRIE_NONE || table.dst_root != TRIE_NONE) {
        prefix_trie::classes(&mut search.src_class, &mut search.dst_class, table, pkt);
    }
    // A function pointer (not an integer) so the linker emits a BPF_PSEUDO_FUNC relocation.
    let step = search_step as *mut c_void;
    let n = table.len.min(MAX_SHAPES as u32);
    // SAFETY: bpf_loop calls `step` n times with a pointer to `search`, which lives on
    // this stack frame until bpf_loop returns; the verifier checks the callback's body.
    unsafe { bpf_loop(n, step, (&mut search as *mut Search).cast(), 0) };
    if search.best_prio == u32::MAX {
        return None;
    }
    Some(Hit {
        mark: search.best_mark & table.mark_mask,
        mark_mask: table.mark_mask,
        counter: search.best_counter,
        target: search.best_target,
    })
}

/// The mark mask of the live tables (for verdicts that do not come from a rule).
#[inline(always)]
pub fn mark_mask(pkt: &Packet, control: &Control) -> u32 {
    let generation = control.generation % GENERATIONS;
    TABLES
        .get(generation * 2 + pkt.family)
        .map_or(0, |t| t.mark_mask)
}

struct Search<'a> {
    pkt: &'a Packet,
    table: &'a ShapeTable,
    /// The addresses' classes (0: in no set of a trie).
    src_class: u32,
    dst_class: u32,
    best_prio: u32,
    best_mark: u32,
    best_counter: u32,
    best_target: u32,
}

/// One shape of the search; returns 1 to stop the loop.
unsafe extern "C" fn search_step(index: u32, ctx: *mut Search) -> i64 {
    // SAFETY: `ctx` is the `Search` that `classify` handed to bpf_loop, alive and not
    // otherwise borrowed during the loop.
    let s = unsafe { &mut *ctx };
    let Some(shape) = s.table.shapes.get(index as usize) else {
        return 1;
    };
    // Shapes are sorted by their best priority: none from here on can win.
    if s.best_prio < shape.min_prio {
        return 1;
    }
    let pkt = s.pkt;
    if shape.flags & pkt.unknown != 0 {
        return 0;
    }
    let src_class = shape.flags & SHAPE_SRC_CLASS != 0;
    let dst_class = shape.flags & SHAPE_DST_CLASS != 0;
    // No class, no entry: skip the lookup.
    if (src_class && s.src_class == 0) || (dst_class && s.dst_class == 0) {
        return 0;
    }
    let mut key = RuleKey {
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
    if src_class {
        key.src = [s.src_class, 0, 0, 0];
    }
    if dst_class {
        key.dst = [s.dst_class, 0, 0, 0];
    }
    // SAFETY: the value is copied out right away, inside this program's RCU read side.
    if let Some(v) = unsafe { RULES.get(key) } {
        if v.prio < s.best_prio {
            s.best_prio = v.prio;
            s.best_mark = v.mark;
            s.best_counter = v.counter;
            s.best_target = v.target;
        }
    }
    0
}

#[inline(always)]
fn mask(a: &[u32; 4], m: &[u32; 4]) -> [u32; 4] {
    [a[0] & m[0], a[1] & m[1], a[2] & m[2], a[3] & m[3]]
}
