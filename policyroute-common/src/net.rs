//! Protocol numbers and header layout constants, defined once for the eBPF parser, the
//! reference classifier and the policy reader. (The eBPF target has no libc; aya-ebpf's
//! bindings carry no ethertypes or IP protocol numbers.)

/// Address families (`AF_*`, socket.h), as the kernel's `bpf_fib_lookup` and
/// `bpf_redir_neigh` take them.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags looked through (802.1Q, and QinQ's outer 802.1ad tag).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up (the packet is then left untouched).
pub const MAX_EXT_HEADERS: usize = 8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_DCCP: u8 = 33;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_ESP: u8 = 50;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_UDPLITE: u8 = 136;

/// Protocol names as policies and `explain` accept them (as in /etc/protocols, plus the
/// common `icmpv6` for `ipv6-icmp`). The first name of a number is the one shown.
pub const PROTOCOLS: [(&str, u8); 11] = [
    ("icmp", IPPROTO_ICMP),
    ("tcp", IPPROTO_TCP),
    ("udp", IPPROTO_UDP),
    ("dccp", IPPROTO_DCCP),
    ("gre", IPPROTO_GRE),
    ("esp", IPPROTO_ESP),
    ("ah", IPPROTO_AH),
    ("icmpv6", IPPROTO_ICMPV6),
    ("ipv6-icmp", IPPROTO_ICMPV6),
    ("sctp", IPPROTO_SCTP),
    ("udplite", IPPROTO_UDPLITE),
];

/// Protocols whose first four L4 bytes are source and destination port.
#[inline(always)]
pub fn proto_has_ports(proto: u8) -> bool {
    matches!(
        proto,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_DCCP | IPPROTO_SCTP | IPPROTO_UDPLITE
    )
}

/// IPv6 extension headers the parsers walk through to reach the L4 header.
#[inline(always)]
pub fn is_ipv6_ext_header(next_header: u8) -> bool {
    matches!(
        next_header,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_AH | IPPROTO_DSTOPTS
    )
}
