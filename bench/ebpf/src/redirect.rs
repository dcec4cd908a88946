//! A bench-only TC program: every packet goes to one IPv4 next hop on one device, with
//! nothing decided (no parsing, no classification, no route lookup, no TTL). It is the
//! least any tc-ingress fast path can do per packet, so `bench e2e` shows how far that
//! design can get on its machine at all. Never loaded by `policyroute`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    helpers::generated::bpf_redirect_neigh,
    macros::classifier,
    programs::TcContext,
};
use policyroute_common::net::AF_INET;

/// The egress device's ifindex; set by the loader (read-only data).
#[no_mangle]
static PR_REDIRECT_IFINDEX: u32 = 0;
/// The next hop, an IPv4 address in network byte order; set by the loader.
#[no_mangle]
static PR_REDIRECT_NH: u32 = 0;

#[classifier]
pub fn policyroute_redirect(_ctx: TcContext) -> i32 {
    // SAFETY: plain reads of statics; volatile so the compiler keeps the loads the loader
    // rewrites instead of folding in 0.
    let (ifindex, nh) = unsafe {
        (
            core::ptr::read_volatile(&PR_REDIRECT_IFINDEX),
            core::ptr::read_volatile(&PR_REDIRECT_NH),
        )
    };
    let mut target = bpf_redir_neigh {
        nh_family: u32::from(AF_INET),
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: nh },
    };
    // SAFETY: target is a live bpf_redir_neigh of the size given; the helper only reads it.
    unsafe {
        bpf_redirect_neigh(
            ifindex,
            &mut target,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    }
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
