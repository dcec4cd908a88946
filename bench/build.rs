//! Builds the benchmarks' own eBPF programs (`bench/ebpf`: the empty baseline and the
//! redirect ceiling) and copies the objects into OUT_DIR, where `src/objects.rs` embeds
//! them. The product never carries them.
fn main() {
    policyroute_ebpf_build::build_and_copy(
        "bench/ebpf",
        &["policyroute-noop", "policyroute-redirect"],
    );
}
