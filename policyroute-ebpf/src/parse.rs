//! Frame parsing with direct packet access. The semantics (what is "untouched", when ports
//! are unknown) are mirrored exactly by the userspace reference classifier in
//! `policyroute::reference::classifier`; change both together.
use core::mem::{size_of, MaybeUninit};

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

/// The IPv6 header's first 8 bytes; the addresses follow at `IPV6_SRC` and `IPV6_DST`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Lead {
    vtc_flow: [u8; 4],
    _payload_len: [u8; 2],
    next_header: u8,
    _hop_limit: u8,
}

const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;
const IPV6_HLEN: usize = 40;

/// Reads a `T` at `off` if the whole of it lies inside the linear packet data.
#[inline(always)]
pub fn load<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    Frame::of(ctx).load(off)
}

/// The linear packet data, as two plain addresses. The parser takes these rather than
/// the context: LLVM would otherwise pass `data_end` to the out-of-line parser as the
/// 32-bit field it is loaded from and widen it there, and the verifier refuses any
/// arithmetic (a shift, here) on a packet-end pointer.
#[derive(Clone, Copy)]
pub struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn of(ctx: &TcContext) -> Frame {
        Frame {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    #[inline(always)]
    fn load<T: Copy>(self, off: usize) -> Option<T> {
        if self.start + off + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: the check above keeps [start + off, start + off + size_of::<T>())
        // inside the packet's linear data, which the verifier also proves from the same
        // comparison; the read is unaligned because headers sit at arbitrary offsets.
        Some(unsafe { core::ptr::read_unaligned((self.start + off) as *const T) })
    }
}

/// Fills `pkt` from the frame and returns 1; 0 (`pkt` untouched) when it is not IP, or an
/// IP header that is malformed or truncated: such frames are left untouched.
///
/// `ip_frame`: the frame starts with the IP header (a device whose link type has no
/// Ethernet header, known from its role); otherwise it starts with an Ethernet header.
///
/// Out of line, with the packet as an out-parameter rather than the result: a result
/// wider than a register comes back through a hidden pointer argument, and this
/// function's own scratch stays off the stack of the call chains that go on to search,
/// trace and the fast path (see the rules in `main.rs`).
#[inline(never)]
pub fn packet(start: usize, end: usize, ip_frame: bool, pkt: &mut MaybeUninit<Packet>) -> i32 {
    let frame = Frame { start, end };
    let network = if ip_frame {
        ip_version(frame)
    } else {
        ethertype(frame)
    };
    let parsed = match network {
        Some((ETH_P_IP, l3)) => ipv4(frame, l3),
        Some((ETH_P_IPV6, l3)) => ipv6(frame, l3),
        _ => None,
    };
    match parsed {
        Some(p) => {
            pkt.write(p);
            1
        }
        None => 0,
    }
}

/// The protocol of a frame that starts with the IP header, from its version, as an
/// EtherType; the header is at offset 0.
#[inline(always)]
fn ip_version(frame: Frame) -> Option<(u16, usize)> {
    // Two bytes, not one: for a one-byte read at offset 0 LLVM turns the bound check into
    // `start < end`, from which the verifier proves no readable byte.
    match frame.load::<[u8; 2]>(0)?[0] >> 4 {
        4 => Some((ETH_P_IP, 0)),
        6 => Some((ETH_P_IPV6, 0)),
        _ => None,
    }
}

#[inline(always)]
fn ethertype(frame: Frame) -> Option<(u16, usize)> {
    let mut proto = u16::from_be_bytes(frame.load::<[u8; 2]>(12)?);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        proto = u16::from_be_bytes(frame.load::<[u8; 2]>(off + 2)?);
        off += 4;
    }
    Some((proto, off))
}

#[inline(always)]
fn ipv4(frame: Frame, l3: usize) -> Option<Packet> {
    let h = frame.load::<Ipv4Hdr>(l3)?;
    let ihl = usize::from(h.version_ihl & 0x0f) * 4;
    if h.version_ihl >> 4 != 4 || ihl < size_of::<Ipv4Hdr>() {
        return None;
    }
    let non_first_fragment = u16::from_be_bytes(h.frag_off) & 0x1fff != 0;
    let (unknown, sport, dport) = if non_first_fragment {
        (NO_PORTS, 0, 0)
    } else {
        ports(frame, l3 + ihl, h.proto)
    };
    Some(Packet {
        family: FAMILY_V4,
        proto: h.proto,
        dscp: h.tos >> 2,
        unknown,
        sport,
        dport,
        src: [u32::from_ne_bytes(h.src), 0, 0, 0],
        dst: [u32::from_ne_bytes(h.dst), 0, 0, 0],
    })
}

/// The fixed header's first 8 bytes, the extension headers, and only then the addresses:
/// 32 address bytes read before the walk would stay live across it, and with 4
/// callee-saved registers LLVM spills each of them to a stack slot of its own.
#[inline(always)]
fn ipv6(frame: Frame, l3: usize) -> Option<Packet> {
    let h = frame.load::<Ipv6Lead>(l3)?;
    if h.vtc_flow[0] >> 4 != 6 {
        return None;
    }
    let traffic_class = (h.vtc_flow[0] << 4) | (h.vtc_flow[1] >> 4);
    let mut nh = h.next_header;
    let mut off = l3 + IPV6_HLEN;
    let mut first_fragment = true;
    for _ in 0..MAX_EXT_HEADERS {
        match nh {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let e = frame.load::<[u8; 2]>(off)?;
                nh = e[0];
                off += (usize::from(e[1]) + 1) * 8;
            }
            IPPROTO_AH => {
                let e = frame.load::<[u8; 2]>(off)?;
                nh = e[0];
                off += (usize::from(e[1]) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let e = frame.load::<[u8; 4]>(off)?;
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
    let (unknown, sport, dport) = if first_fragment {
        ports(frame, off, nh)
    } else {
        (NO_PORTS, 0, 0)
    };
    Some(Packet {
        family: FAMILY_V6,
        proto: nh,
        dscp: traffic_class >> 2,
        unknown,
        sport,
        dport,
        src: frame.load::<[u32; 4]>(l3 + IPV6_SRC)?,
        dst: frame.load::<[u32; 4]>(l3 + IPV6_DST)?,
    })
}

/// Ports are known only when the protocol has them and the first four L4 bytes are in
/// the packet; otherwise only rules without port conditions can match. Returns the
/// `unknown` flags and the ports.
#[inline(always)]
fn ports(frame: Frame, l4: usize, proto: u8) -> (u8, u16, u16) {
    if !proto_has_ports(proto) {
        return (NO_PORTS, 0, 0);
    }
    match frame.load::<[u8; 4]>(l4) {
        Some(p) => (
            0,
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ),
        None => (NO_PORTS, 0, 0),
    }
}
