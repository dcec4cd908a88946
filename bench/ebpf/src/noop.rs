//! An empty TC program: the baseline the classifier benchmark subtracts.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
// The panic handler every eBPF binary needs.
use policyroute_common as _;

#[classifier]
pub fn policyroute_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
