//! Per-rule packet and byte counters (`PR_COUNTERS`), one slot per rule and CPU.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use policyroute_common::{Counter, DEFAULT_MAX_COUNTERS};

#[map(name = "PR_COUNTERS")]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DEFAULT_MAX_COUNTERS, 0);

/// Per-CPU counters: no atomics on the hot path.
#[inline(always)]
pub fn count(slot: u32, bytes: u64) {
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
