//! The fast path's answer to a packet too big for the gateway's MTU: the ICMP error the
//! kernel would send (IPv4 "fragmentation needed" with DF set, IPv6 "packet too big"),
//! carrying that MTU, from this host's address on the device the packet came in on and
//! back out through it. The packet is turned into the error in place: cut to the quote,
//! room made for the new headers, addresses swapped.
//!
//! The quote is as much of the packet as the kernel puts in (576 bytes of IPv4 in all,
//! 1280 of IPv6), of constant length so that checksumming it needs no bounded loops.
use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, TC_ACT_SHOT},
    helpers::generated::{
        bpf_csum_diff, bpf_redirect, bpf_skb_adjust_room, bpf_skb_change_tail, bpf_skb_store_bytes,
    },
    macros::map,
    maps::HashMap,
    programs::TcContext,
};
use policyroute_common::{
    net::{ETH_HLEN, IPPROTO_ICMP, IPPROTO_ICMPV6},
    GatewaySource, FAMILY_V4,
};

use crate::{
    fast::{Scratch, SCRATCH},
    parse::Packet,
};

#[map(name = "PR_ADDRESSES")]
static ADDRESSES: HashMap<u32, GatewaySource> = HashMap::with_max_entries(1024, 0);

/// IPv4 quote: 576 bytes less the new IPv4 (20) and ICMP (8) headers.
const QUOTE4: usize = 548;
/// IPv4 quote of a packet shorter than `QUOTE4` (a link MTU under 548): its header and
/// the start of its payload, which is what the sender needs to find the connection.
const QUOTE4_SHORT: usize = 64;
/// IPv6 quote: the minimum MTU (1280) less the new IPv6 (40) and ICMPv6 (8) headers.
const QUOTE6: usize = 1232;
/// The kernel's default TTL / hop limit for what it sends.
const TTL: u8 = 64;

/// Turns the packet into the ICMP error and sends it back; `TC_ACT_SHOT` when this host
/// has no address on the ingress device to send it from. Out of line, for its stack (see
/// `fast::forward`).
#[inline(never)]
pub fn too_big(ctx: &TcContext, pkt: &Packet, mtu: u16) -> i32 {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is only read, inside this program's RCU read side.
    let Some(src) = (unsafe { ADDRESSES.get(&ifindex) }) else {
        return TC_ACT_SHOT as i32;
    };
    let sent = if pkt.family == FAMILY_V4 {
        v4(ctx, pkt, src, mtu)
    } else {
        v6(ctx, pkt, src, mtu)
    };
    match sent {
        // SAFETY: a helper taking plain integers.
        Some(()) => unsafe { bpf_redirect(ifindex, 0) as i32 },
        None => TC_ACT_SHOT as i32,
    }
}

/// Cuts the frame to Ethernet + `quote` bytes and makes `room` bytes after the Ethernet
/// header; the frame's MAC addresses swapped.
#[inline(always)]
fn reshape(ctx: &TcContext, quote: usize, room: i32) -> Option<()> {
    let macs = crate::parse::load::<[u8; 12]>(ctx, 0)?;
    let skb = ctx.skb.skb;
    // SAFETY: skb is this program's context; both helpers take it with plain integers.
    unsafe {
        if bpf_skb_change_tail(skb, (ETH_HLEN + quote) as u32, 0) != 0 {
            return None;
        }
        if bpf_skb_adjust_room(skb, room, BPF_ADJ_ROOM_MAC, 0) != 0 {
            return None;
        }
    }
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &swapped, 0).ok()
}

#[inline(always)]
fn v4(ctx: &TcContext, pkt: &Packet, src: &GatewaySource, mtu: u16) -> Option<()> {
    if src.has_v4 == 0 {
        return None;
    }
    let len = u16::from_be_bytes(crate::parse::load::<[u8; 2]>(ctx, ETH_HLEN + 2)?);
    let short = usize::from(len) < QUOTE4;
    if short && usize::from(len) < QUOTE4_SHORT {
        return None;
    }
    let quote = if short { QUOTE4_SHORT } else { QUOTE4 };
    reshape(ctx, quote, 28)?;
    let s = scratch()?;
    let ip = &mut s.ip;
    *ip = [0; 40];
    ip[0] = 0x45;
    // IPTOS_PREC_INTERNETCONTROL, as the kernel marks its ICMP errors.
    ip[1] = 0xc0;
    ip[2..4].copy_from_slice(&((20 + 8 + quote) as u16).to_be_bytes());
    ip[8] = TTL;
    ip[9] = IPPROTO_ICMP;
    ip[12..16].copy_from_slice(&src.v4.to_ne_bytes());
    ip[16..20].copy_from_slice(&pkt.src[0].to_ne_bytes());
    let sum = fold(csum(ip.as_mut_ptr(), 20, 0));
    ip[10..12].copy_from_slice(&(!sum).to_ne_bytes());
    let icmp = &mut s.icmp;
    *icmp = [0; 8];
    icmp[0] = 3; // destination unreachable
    icmp[1] = 4; // fragmentation needed and DF set
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    store(ctx, ETH_HLEN, ip.as_ptr(), 20)?;
    store(ctx, ETH_HLEN + 20, icmp.as_ptr(), 8)?;
    let head = csum(icmp.as_mut_ptr(), 8, 0);
    let sum = if short {
        quoted::<QUOTE4_SHORT>(ctx, ETH_HLEN + 28, head)?
    } else {
        quoted::<QUOTE4>(ctx, ETH_HLEN + 28, head)?
    };
    ctx.store(ETH_HLEN + 20 + 2, &(!fold(sum)).to_ne_bytes(), 0)
        .ok()
}

#[inline(always)]
fn v6(ctx: &TcContext, pkt: &Packet, src: &GatewaySource, mtu: u16) -> Option<()> {
    if src.has_v6 == 0 {
        return None;
    }
    reshape(ctx, QUOTE6, 48)?;
    let s = scratch()?;
    let payload = (8 + QUOTE6) as u16;
    let ip = &mut s.ip;
    *ip = [0; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&payload.to_be_bytes());
    ip[6] = IPPROTO_ICMPV6;
    ip[7] = TTL;
    for i in 0..4 {
        ip[8 + i * 4..12 + i * 4].copy_from_slice(&src.v6[i].to_ne_bytes());
        ip[24 + i * 4..28 + i * 4].copy_from_slice(&pkt.src[i].to_ne_bytes());
    }
    let icmp = &mut s.icmp;
    *icmp = [0; 8];
    icmp[0] = 2; // packet too big
    icmp[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
    // The pseudo-header: both addresses, the upper-layer length and next header.
    let pseudo = &mut s.pseudo;
    *pseudo = [0; 40];
    pseudo[..32].copy_from_slice(&ip[8..40]);
    pseudo[32..36].copy_from_slice(&u32::from(payload).to_be_bytes());
    pseudo[39] = IPPROTO_ICMPV6;
    store(ctx, ETH_HLEN, ip.as_ptr(), 40)?;
    store(ctx, ETH_HLEN + 40, icmp.as_ptr(), 8)?;
    let head = csum(icmp.as_mut_ptr(), 8, csum(pseudo.as_mut_ptr(), 40, 0));
    let sum = quoted::<QUOTE6>(ctx, ETH_HLEN + 48, head)?;
    ctx.store(ETH_HLEN + 40 + 2, &(!fold(sum)).to_ne_bytes(), 0)
        .ok()
}

/// This CPU's scratch memory (see `SCRATCH`).
#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    let p = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's own slot; nothing else uses it while this program runs.
    Some(unsafe { &mut *p })
}

/// Writes `len` bytes from `from` (scratch memory) into the packet at `off`.
#[inline(always)]
fn store(ctx: &TcContext, off: usize, from: *const u8, len: u32) -> Option<()> {
    // SAFETY: ctx is this program's context; from points at `len` readable bytes of a
    // map value; the helper bounds-checks the packet side itself.
    let rc = unsafe { bpf_skb_store_bytes(ctx.skb.skb.cast(), off as u32, from.cast(), len, 0) };
    (rc == 0).then_some(())
}

/// The checksum of `N` bytes of the packet at `off`, continuing `seed`; in pieces of at
/// most 512 bytes, what `bpf_csum_diff` takes at once.
#[inline(always)]
fn quoted<const N: usize>(ctx: &TcContext, off: usize, seed: u32) -> Option<u32> {
    let start = ctx.data();
    if start + off + N > ctx.data_end() {
        return None;
    }
    let mut sum = seed;
    let mut done = 0;
    while done < N {
        let piece = if N - done > 512 { 512 } else { N - done };
        // SAFETY: [start + off, start + off + N) is inside the packet by the check above;
        // the helper reads `piece` bytes of it, a multiple of 4.
        let s = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                (start + off + done) as *mut u32,
                piece as u32,
                sum,
            )
        };
        if s < 0 {
            return None;
        }
        sum = s as u32;
        done += piece;
    }
    Some(sum)
}

/// The (unfolded) one's complement sum of `len` bytes at `from` (scratch memory, a
/// multiple of 4 long), continuing `seed`.
#[inline(always)]
fn csum(from: *mut u8, len: u32, seed: u32) -> u32 {
    // SAFETY: from points at `len` readable bytes of a map value; the helper only reads.
    let s = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, from.cast(), len, seed) };
    s as u32
}

/// Folds the helper's 32-bit sum of 16-bit words into the 16-bit one's complement sum.
/// Both are sums of words as they lie in memory, so the result is stored with
/// `to_ne_bytes` (one's complement sums do not care about byte order otherwise).
#[inline(always)]
fn fold(sum: u32) -> u16 {
    let mut s = sum;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}
