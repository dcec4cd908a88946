//! What the controller tells the programs: the control word (`PR_CONTROL`), that a run is
//! `explain`'s test run, and its own record (`PR_STATE`), which the programs only carry.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap},
    programs::TcContext,
};
use policyroute_common::{Control, StateChunk, EXPLAIN_MAGIC, MAX_STATE_CHUNKS};

#[map(name = "PR_CONTROL")]
pub static CONTROL: Array<Control> = Array::with_max_entries(1, 0);

/// Read only by userspace (see `policyroute_common::STATE_MAP`): the loader binds it to
/// the programs so it lives as long as they do.
#[map(name = "PR_STATE")]
static STATE: HashMap<u32, StateChunk> =
    HashMap::with_max_entries(MAX_STATE_CHUNKS, BPF_F_NO_PREALLOC);

/// Explain runs the program on a synthesized packet: it must not count or record.
#[inline(always)]
pub fn is_explain(ctx: &TcContext) -> bool {
    ctx.cb()[0] == EXPLAIN_MAGIC
}
