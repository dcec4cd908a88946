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

/// An empty TC program (`names::NOOP`): the benchmark's baseline.
pub fn noop() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policyroute-noop"))
}

/// A TC program that sends every packet to one next hop (`names::REDIRECT`): the ceiling
/// of a tc fast path in `bench e2e`. Never loaded by the product.
pub fn redirect() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policyroute-redirect"))
}
