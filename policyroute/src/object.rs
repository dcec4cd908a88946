//! The eBPF objects built by `build.rs`, embedded in the binary.

/// The classifier object: program `policyroute_tc` and its maps.
pub fn classifier() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policyroute-classifier"))
}

/// An empty TC program (`policyroute_noop`): the benchmark's baseline.
pub fn noop() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policyroute-noop"))
}

/// Program names inside the objects.
pub const CLASSIFIER_PROGRAM: &str = "policyroute_tc";
pub const NOOP_PROGRAM: &str = "policyroute_noop";
