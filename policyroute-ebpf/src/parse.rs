//! Frame parsing with direct packet access. The semantics (what is "untouched", when ports
//! are unknown) are mirrored exactly by the userspace reference classifier in
//! `policyroute::reference::classifier`; change both together.
use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use policyroute_common::{
    net::{
        is_ipv6_ext_header, proto_has_ports, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP,
        ETH_P_IPV6, IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS,
        IPPROTO_ROUTING, MAX_EXT_HEADERS, MAX_VLAN_TAGS,
    },
    FAMILY_V4, FAMILY_V6, SHAPE_PORTS, SHAPE_SPORT,
};

/// The fields rules match. `unknown` holds the `SHAPE_*` flags of fields this packet
/// lacks; shapes keyed on any of them are skipped.
pub struct Packet {
    pub family: u32,
    pub proto: u8,
    pub dscp: u8,
    pub unknown: u8,
    pub sport: u16,
    pub dport: u16,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// What a frame without readable ports lacks.
const NO_PORTS: u8 = SHAPE_PORTS | SHAPE_SPORT;

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    _tot_len: [u8; 2],
    _id: [u8; 2],
    frag_off: [u8; 2],
    _ttl: u8,
    proto: u8,
    _csum: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Hdr {
    vtc_flow: [u8; 4],
    _payload_len: [u8; 2],
    next_header: u8,
    _hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

/// Reads a `T` at `off` if the whole of it lies inside the linear packet data.
#[inline(always)]
pub fn load<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    // SAFETY: the check above keeps [start + off, start + off + size_of::<T>()) inside the
    // packet's linear data, which the verifier also proves from the same comparison; the
    // read is unaligned because headers sit at arbitrary offsets.
    Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
}

/// `None` means: not IP, or an IP header that is malformed or truncated; such frames are
/// left untouched.
#[inline(always)]
pub fn packet(ctx: &TcContext) -> Option<Packet> {
    let (ethertype, l3) = ethertype(ctx)?;
    match ethertype {
        ETH_P_IP => ipv4(ctx, l3),
        ETH_P_IPV6 => ipv6(ctx, l3),
        _ => None,
    }
}

#[inline(always)]
fn ethertype(ctx: &TcContext) -> Option<(u16, usize)> {
    let mut proto = u16::from_be_bytes(load::<[u8; 2]>(ctx, 12)?);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        proto = u16::from_be_bytes(load::<[u8; 2]>(ctx, off + 2)?);
        off += 4;
    }
    Some((proto, off))
}

#[inline(always)]
fn ipv4(ctx: &TcContext, l3: usize) -> Option<Packet> {
    let h = load::<Ipv4Hdr>(ctx, l3)?;
    let ihl = usize::from(h.version_ihl & 0x0f) * 4;
    if h.version_ihl >> 4 != 4 || ihl < size_of::<Ipv4Hdr>() {
        return None;
    }
    let mut pkt = Packet {
        family: FAMILY_V4,
        proto: h.proto,
        dscp: h.tos >> 2,
        unknown: NO_PORTS,
        sport: 0,
        dport: 0,
        src: [u32::from_ne_bytes(h.src), 0, 0, 0],
        dst: [u32::from_ne_bytes(h.dst), 0, 0, 0],
    };
    let non_first_fragment = u16::from_be_bytes(h.frag_off) & 0x1fff != 0;
    if !non_first_fragment {
        ports(ctx, l3 + ihl, &mut pkt);
    }
    Some(pkt)
}

#[inline(always)]
fn ipv6(ctx: &TcContext, l3: usize) -> Option<Packet> {
    let h = load::<Ipv6Hdr>(ctx, l3)?;
    if h.vtc_flow[0] >> 4 != 6 {
        return None;
    }
    let traffic_class = (h.vtc_flow[0] << 4) | (h.vtc_flow[1] >> 4);
    let mut nh = h.next_header;
    let mut off = l3 + size_of::<Ipv6Hdr>();
    let mut first_fragment = true;
    for _ in 0..MAX_EXT_HEADERS {
        match nh {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let e = load::<[u8; 2]>(ctx, off)?;
                nh = e[0];
                off += (usize::from(e[1]) + 1) * 8;
            }
            IPPROTO_AH => {
                let e = load::<[u8; 2]>(ctx, off)?;
                nh = e[0];
                off += (usize::from(e[1]) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let e = load::<[u8; 4]>(ctx, off)?;
                nh = e[0];
                off += 8;
                if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                    first_fragment = false;
                    break;
                }
            }
            _ => break,
        }
    }
    if first_fragment && is_ipv6_ext_header(nh) {
        return None;
    }
    let mut pkt = Packet {
        family: FAMILY_V6,
        proto: nh,
        dscp: traffic_class >> 2,
        unknown: NO_PORTS,
        sport: 0,
        dport: 0,
        src: words(h.src),
        dst: words(h.dst),
    };
    if first_fragment {
        ports(ctx, off, &mut pkt);
    }
    Some(pkt)
}

#[inline(always)]
fn words(a: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// Ports are known only when the protocol has them and the first four L4 bytes are in
/// the packet; otherwise only rules without port conditions can match.
#[inline(always)]
fn ports(ctx: &TcContext, l4: usize, pkt: &mut Packet) {
    if !proto_has_ports(pkt.proto) {
        return;
    }
    if let Some(p) = load::<[u8; 4]>(ctx, l4) {
        pkt.sport = u16::from_be_bytes([p[0], p[1]]);
        pkt.dport = u16::from_be_bytes([p[2], p[3]]);
        pkt.unknown = 0;
    }
}
