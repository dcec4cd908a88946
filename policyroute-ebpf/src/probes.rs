//! Kernel feature probes: tiny programs userspace test-runs before it relies on a feature
//! whose absence the verifier would not report (a helper flag checked at run time).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LOOKUP_DIRECT, BPF_FIB_LOOKUP_TBID},
    helpers::generated::bpf_fib_lookup,
    macros::classifier,
    programs::TcContext,
    EbpfContext,
};
use policyroute_common::net::AF_INET;

/// Returns what `bpf_fib_lookup` makes of `BPF_FIB_LOOKUP_TBID` (Linux 6.5): a
/// lookup of 127.0.0.1 in the main table, or `-EINVAL` where the flag is unknown.
#[classifier]
pub fn pr_probe_tbid(ctx: TcContext) -> i32 {
    // SAFETY: all-zero is a valid bpf_fib_lookup (integers and unions of them).
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.ifindex = 1;
    p.__bindgen_anon_5.tbid = 254;
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([127, 0, 0, 1]);
    // SAFETY: ctx is this program's context and p a live bpf_fib_lookup of that size.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_TBID,
        )
    };
    rc as i32
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
