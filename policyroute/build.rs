//! Builds the product's eBPF programs (`policyroute-ebpf`) and copies the objects into
//! OUT_DIR, where `src/kernel/objects.rs` embeds them (see `policyroute-ebpf-build`).
//! Only what the product loads: the benchmarks' programs are built by `bench/build.rs`.
fn main() {
    policyroute_ebpf_build::build_and_copy(
        "policyroute-ebpf",
        &["policyroute-classifier", "policyroute-probes"],
    );
}
