//! The benchmarks' eBPF objects, built from `bench/ebpf` by `build.rs`. The product's
//! binary does not carry them (`cargo xtask test` checks that).

/// The empty TC program of the noop object: the classifier benchmark's baseline.
pub const NOOP: &str = "policyroute_noop";
/// The TC program of the redirect object: every packet to the next hop in the read-only
/// globals [`REDIRECT_IFINDEX_GLOBAL`] and [`REDIRECT_NH_GLOBAL`].
pub const REDIRECT: &str = "policyroute_redirect";
pub const REDIRECT_IFINDEX_GLOBAL: &str = "PR_REDIRECT_IFINDEX";
pub const REDIRECT_NH_GLOBAL: &str = "PR_REDIRECT_NH";

/// An empty TC program ([`NOOP`]).
pub fn noop() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policyroute-noop"))
}

/// A TC program that sends every packet to one next hop ([`REDIRECT`]): the ceiling of a
/// tc fast path in `bench e2e`.
pub fn redirect() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policyroute-redirect"))
}
