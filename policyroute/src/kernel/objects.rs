//! The eBPF objects built by `build.rs`, embedded in the binary. Their program and map
//! names are listed in `policyroute_common::names`.

/// The classifier object: the TC and socket-hook programs and their maps.
pub fn classifier() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policyroute-classifier"))
}

/// Kernel feature probes (`kernel::features`).
pub fn probes() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policyroute-probes"))
}
