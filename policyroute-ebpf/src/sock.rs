//! Socket hooks (cgroup sock_addr: connect4/6, sendmsg4/6): classify this host's own
//! traffic when a socket picks its destination, before the kernel chooses the route, and
//! set the socket mark so the route and the source address come from the gateway's table.
//!
//! At this hook the destination, protocol and destination port are known; the source
//! address and port only when the socket is bound; DSCP never. Shapes keyed on an unknown
//! field are skipped, so such rules do not match local traffic.
//!
//! Sockets bound to a device (SO_BINDTODEVICE) are left alone: they already chose their
//! uplink, and a table of another device could not route them (the daemon's health
//! probes are such sockets). A rule whose gateway or group is down with
//! `when_down = "blackhole"` refuses the connect or send (EPERM).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{bpf_sock_addr, SOL_SOCKET, SO_MARK},
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_getsockopt, bpf_setsockopt,
    },
    macros::map,
    maps::HashMap,
    programs::SockAddrContext,
    EbpfContext,
};
use policyroute_common::{
    flow_hash, proto_has_ports, Control, GatewaySource, FAMILY_V4, FAMILY_V6, HOOK_CONNECT,
    HOOK_SENDMSG, HOW_STICKY, SHAPE_DSCP, SHAPE_PORTS, SHAPE_SPORT, SHAPE_SRC,
};

use crate::{
    control::CONTROL, counters::count, parse::Packet, search, sticky, trace, trace::Traced, verdict,
};

#[map(name = "PR_SOURCES")]
static SOURCES: HashMap<u32, GatewaySource> = HashMap::with_max_entries(1024, 0);

/// sock_addr verdicts: let the call proceed, or fail it with EPERM.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// Inlined into each hook: an out-of-line body would put one more frame (32 bytes as
/// Linux 6.1 counts an empty one) on every call chain.
#[inline(always)]
pub fn handle(ctx: &SockAddrContext, v6: bool, sendmsg: bool) -> i32 {
    let Some(control) = CONTROL.get(0) else {
        return ALLOW;
    };
    // Sockets of other network namespaces in the same cgroup are not ours to steer.
    // SAFETY: ctx.as_ptr() is this program's context, which the helper accepts.
    if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != control.netns_cookie {
        return ALLOW;
    }
    // SAFETY: ctx.sock_addr is the bpf_sock_addr the kernel passed this program, valid
    // for the whole run; the verifier checks every field access through it.
    let sa = unsafe { &mut *ctx.sock_addr };
    if bound_to_device(sa) {
        return ALLOW;
    }
    let pkt = packet(sa, v6);
    let (verdict, traced) = verdict(ctx, &pkt, control);
    let hook = if sendmsg { HOOK_SENDMSG } else { HOOK_CONNECT };
    trace::sock(control, hook, &pkt, &traced);
    match verdict {
        Verdict::Pass => ALLOW,
        Verdict::Deny => DENY,
        Verdict::Mark {
            mark,
            mask,
            counter,
        } => {
            set_mark(ctx, mark, mask);
            if let Some(slot) = counter {
                count(slot, 0);
            }
            if sendmsg && pkt.unknown & SHAPE_SRC != 0 {
                set_source(sa, mark, v6);
            }
            ALLOW
        }
    }
}

enum Verdict {
    Pass,
    Deny,
    Mark {
        mark: u32,
        mask: u32,
        counter: Option<u32>,
    },
}

/// A sticky flow's gateway first (replies go back the way the flow came), then the rules;
/// also how the mark was decided, for the trace.
#[inline(always)]
fn verdict(ctx: &SockAddrContext, pkt: &Packet, control: &Control) -> (Verdict, Traced) {
    let mask = search::mark_mask(pkt, control);
    if control.flags & policyroute_common::CONTROL_STICKY != 0 && pkt.unknown & SHAPE_SPORT == 0 {
        if let Some(mark) = sticky::restore(&sticky::outbound_key(pkt), control) {
            let mut t = Traced::none();
            t.how = HOW_STICKY;
            t.mark = mark & mask;
            let v = Verdict::Mark {
                mark: mark & mask,
                mask,
                counter: None,
            };
            return (v, t);
        }
    }
    let Some(hit) = search::classify(pkt, control) else {
        return (Verdict::Pass, Traced::none());
    };
    // The socket keeps the mark for its life, so one decision per socket: the cookie
    // spreads sockets to the same destination over a group's members.
    // SAFETY: ctx.as_ptr() is this program's context, which the helper accepts.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let mut tuple = crate::targets::tuple(pkt);
    tuple.src = [cookie as u32, (cookie >> 32) as u32, 0, 0];
    let flow = crate::targets::Flow::Hashed(flow_hash(&tuple.words()));
    match verdict::of_hit(&hit, pkt.family, flow, control) {
        (Some(mark), t) => {
            let v = Verdict::Mark {
                mark,
                mask: hit.mark_mask,
                counter: Some(hit.counter),
            };
            (v, t)
        }
        (None, t) => {
            count(hit.counter, 0);
            (Verdict::Deny, t)
        }
    }
}

/// Whether the socket is bound to a device (SO_BINDTODEVICE).
fn bound_to_device(sa: &bpf_sock_addr) -> bool {
    // SAFETY: reading the union's pointer member; the verifier marks it as a nullable
    // socket pointer, checked before use.
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    if sk.is_null() {
        return false;
    }
    // SAFETY: sk is non-null and points at the kernel's bpf_sock, whose bound_dev_if
    // the verifier allows reading at a constant offset.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*sk).bound_dev_if)) != 0 }
}

fn packet(sa: &bpf_sock_addr, v6: bool) -> Packet {
    let proto = sa.protocol as u8;
    let mut pkt = Packet {
        family: if v6 { FAMILY_V6 } else { FAMILY_V4 },
        proto,
        dscp: 0,
        unknown: SHAPE_DSCP,
        sport: 0,
        // user_port holds the port in network byte order in its low 16 bits.
        dport: u16::from_be(sa.user_port as u16),
        src: [0; 4],
        dst: user_ip(sa, v6),
    };
    // SAFETY: reading the union's pointer member; the verifier marks it as a nullable
    // socket pointer, checked below before use.
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    if !sk.is_null() {
        // One load per field at a constant offset: the verifier refuses arithmetic on
        // socket pointers, which a copy of the whole array would need.
        // SAFETY: sk is non-null (checked above) and points at the kernel's bpf_sock,
        // whose src_ip4/src_ip6/src_port fields the verifier allows reading.
        unsafe {
            use core::ptr::{addr_of, read_volatile};
            pkt.src = if v6 {
                [
                    read_volatile(addr_of!((*sk).src_ip6[0])),
                    read_volatile(addr_of!((*sk).src_ip6[1])),
                    read_volatile(addr_of!((*sk).src_ip6[2])),
                    read_volatile(addr_of!((*sk).src_ip6[3])),
                ]
            } else {
                [read_volatile(addr_of!((*sk).src_ip4)), 0, 0, 0]
            };
            pkt.sport = read_volatile(addr_of!((*sk).src_port)) as u16;
        }
    }
    if pkt.src == [0; 4] {
        pkt.unknown |= SHAPE_SRC;
    }
    if pkt.sport == 0 {
        pkt.unknown |= SHAPE_SPORT;
    }
    if !proto_has_ports(proto) {
        pkt.unknown |= SHAPE_PORTS | SHAPE_SPORT;
        pkt.dport = 0;
    }
    pkt
}

/// The destination, one ctx load per word at a constant offset (see `set_source`).
fn user_ip(sa: &bpf_sock_addr, v6: bool) -> [u32; 4] {
    // SAFETY: reads of the context's user_ip4/user_ip6 words, each at a constant offset
    // the verifier allows for this hook.
    unsafe {
        use core::ptr::{addr_of, read_volatile};
        if v6 {
            [
                read_volatile(addr_of!(sa.user_ip6[0])),
                read_volatile(addr_of!(sa.user_ip6[1])),
                read_volatile(addr_of!(sa.user_ip6[2])),
                read_volatile(addr_of!(sa.user_ip6[3])),
            ]
        } else {
            [read_volatile(addr_of!(sa.user_ip4)), 0, 0, 0]
        }
    }
}

/// SO_MARK with the policy's bits replaced and the others kept.
fn set_mark(ctx: &SockAddrContext, mark: u32, mask: u32) {
    let mut old: u32 = 0;
    let size = core::mem::size_of::<u32>() as i32;
    let p = ctx.as_ptr();
    // SAFETY: p is this program's context; both helpers get a pointer to a live u32 and
    // its size, and SO_MARK at SOL_SOCKET is allowed for sock_addr hooks.
    unsafe {
        bpf_getsockopt(
            p,
            SOL_SOCKET as i32,
            SO_MARK as i32,
            (&mut old as *mut u32).cast::<c_void>(),
            size,
        );
        let mut new = (old & !mask) | mark;
        bpf_setsockopt(
            p,
            SOL_SOCKET as i32,
            SO_MARK as i32,
            (&mut new as *mut u32).cast::<c_void>(),
            size,
        );
    }
}

/// For an unbound unconnected UDP socket: send from the gateway's address, which a `from`
/// rule routes through the gateway's table. The mark set above only takes effect from the
/// socket's next datagram; the source address takes effect for this one.
fn set_source(sa: &mut bpf_sock_addr, mark: u32, v6: bool) {
    // SAFETY: the value is only read, inside this program's RCU read side.
    let Some(src) = (unsafe { SOURCES.get(mark) }) else {
        return;
    };
    // Word by word at constant offsets: the verifier refuses a modified ctx pointer.
    // SAFETY: reads and writes of msg_src_ip4/msg_src_ip6, which the verifier allows
    // (read and write) for the sendmsg hooks this runs in.
    unsafe {
        use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
        if v6 {
            let unset = (0..4).all(|i| read_volatile(addr_of!(sa.msg_src_ip6[i])) == 0);
            if src.has_v6 != 0 && unset {
                write_volatile(addr_of_mut!(sa.msg_src_ip6[0]), src.v6[0]);
                write_volatile(addr_of_mut!(sa.msg_src_ip6[1]), src.v6[1]);
                write_volatile(addr_of_mut!(sa.msg_src_ip6[2]), src.v6[2]);
                write_volatile(addr_of_mut!(sa.msg_src_ip6[3]), src.v6[3]);
            }
        } else if src.has_v4 != 0 && read_volatile(addr_of!(sa.msg_src_ip4)) == 0 {
            write_volatile(addr_of_mut!(sa.msg_src_ip4), src.v4);
        }
    }
}
