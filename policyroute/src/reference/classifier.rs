//! The reference classifier in plain Rust: parses a frame exactly as the eBPF program
//! does and scans the rules in order. It is deliberately the slow, obvious
//! algorithm: differential tests hold the tuple-space dataplane to it, and `explain` and
//! dry runs use it.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policyroute_common::net::{
    is_ipv6_ext_header, proto_has_ports, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6,
    IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING,
    MAX_EXT_HEADERS, MAX_VLAN_TAGS,
};

use crate::policy::matcher::{Family, Match, Rule};

/// The fields of a frame that rules can match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub family: Family,
    pub proto: u8,
    pub dscp: u8,
    /// `None` for protocols without ports, non-first fragments and truncated L4 headers.
    pub ports: Option<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

/// Parses an Ethernet frame; `None` means the classifier leaves it untouched (not IP, or
/// an IP header that is malformed or truncated).
pub fn parse(frame: &[u8]) -> Option<Packet> {
    let mut ethertype = be16(frame, 12)?;
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = be16(frame, off + 2)?;
        off += 4;
    }
    match ethertype {
        ETH_P_IP => ipv4(frame, off),
        ETH_P_IPV6 => ipv6(frame, off),
        _ => None,
    }
}

fn ipv4(frame: &[u8], l3: usize) -> Option<Packet> {
    let h = frame.get(l3..l3 + 20)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return None;
    }
    let non_first = u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0;
    let proto = h[9];
    let ports = if non_first {
        None
    } else {
        ports(frame, l3 + ihl, proto)
    };
    Some(Packet {
        family: Family::V4,
        proto,
        dscp: h[1] >> 2,
        ports,
        src: IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
        dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
    })
}

fn ipv6(frame: &[u8], l3: usize) -> Option<Packet> {
    let h = frame.get(l3..l3 + 40)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let traffic_class = (h[0] << 4) | (h[1] >> 4);
    let mut nh = h[6];
    let mut off = l3 + 40;
    let mut first_fragment = true;
    for _ in 0..MAX_EXT_HEADERS {
        match nh {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let e = frame.get(off..off + 2)?;
                nh = e[0];
                off += (usize::from(e[1]) + 1) * 8;
            }
            IPPROTO_AH => {
                let e = frame.get(off..off + 2)?;
                nh = e[0];
                off += (usize::from(e[1]) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let e = frame.get(off..off + 4)?;
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
    let addr = |at: usize| -> IpAddr {
        let b: [u8; 16] = h[at..at + 16].try_into().unwrap();
        IpAddr::V6(Ipv6Addr::from(b))
    };
    Some(Packet {
        family: Family::V6,
        proto: nh,
        dscp: traffic_class >> 2,
        ports: if first_fragment {
            ports(frame, off, nh)
        } else {
            None
        },
        src: addr(8),
        dst: addr(24),
    })
}

fn ports(frame: &[u8], l4: usize, proto: u8) -> Option<(u16, u16)> {
    if !proto_has_ports(proto) {
        return None;
    }
    Some((be16(frame, l4)?, be16(frame, l4 + 2)?))
}

impl Match {
    /// Whether a parsed packet satisfies every condition of this rule.
    pub fn matches(&self, pkt: &Packet) -> bool {
        let Ok(families) = self.families() else {
            return false;
        };
        families.contains(&pkt.family)
            && self.proto.is_none_or(|p| p == pkt.proto)
            && self.dscp.is_none_or(|d| d == pkt.dscp)
            && self.src.is_none_or(|n| n.contains(&pkt.src))
            && self.dst.is_none_or(|n| n.contains(&pkt.dst))
            && self
                .src_set
                .as_ref()
                .is_none_or(|s| s.set.contains(&pkt.src))
            && self
                .dst_set
                .as_ref()
                .is_none_or(|s| s.set.contains(&pkt.dst))
            && port_ok(self.sport.as_ref(), pkt.ports.map(|p| p.0))
            && port_ok(self.dport.as_ref(), pkt.ports.map(|p| p.1))
    }
}

fn port_ok(cond: Option<&crate::policy::ports::PortSet>, port: Option<u16>) -> bool {
    match (cond, port) {
        (None, _) => true,
        (Some(set), Some(p)) => set.contains(p),
        (Some(_), None) => false,
    }
}

/// A flow as this host's socket hooks see it: the source and its port only when the
/// socket is bound, never a DSCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalFlow {
    pub proto: u8,
    pub src: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dst: IpAddr,
    pub dport: Option<u16>,
}

impl Match {
    /// Whether a local flow satisfies this rule: conditions on fields the hook does not
    /// know (DSCP, an unbound source or source port) never hold, except a /0 prefix.
    pub fn matches_local(&self, flow: &LocalFlow) -> bool {
        let Ok(families) = self.families() else {
            return false;
        };
        let ports = proto_has_ports(flow.proto);
        families.contains(&Family::of(&flow.dst))
            && self.proto.is_none_or(|p| p == flow.proto)
            && self.dscp.is_none()
            && self
                .src
                .is_none_or(|n| n.prefix_len() == 0 || flow.src.is_some_and(|a| n.contains(&a)))
            && self.dst.is_none_or(|n| n.contains(&flow.dst))
            && self
                .src_set
                .as_ref()
                .is_none_or(|s| flow.src.is_some_and(|a| s.set.contains(&a)))
            && self
                .dst_set
                .as_ref()
                .is_none_or(|s| s.set.contains(&flow.dst))
            && port_ok(self.sport.as_ref(), flow.sport.filter(|&p| ports && p != 0))
            && port_ok(self.dport.as_ref(), flow.dport.filter(|_| ports))
    }
}

/// Index of the first rule that matches a local flow, if any.
pub fn first_match_local(rules: &[Rule], flow: &LocalFlow) -> Option<usize> {
    rules.iter().position(|r| r.matcher.matches_local(flow))
}

/// Index of the first rule that matches, if any.
pub fn first_match(rules: &[Rule], pkt: &Packet) -> Option<usize> {
    rules.iter().position(|r| r.matcher.matches(pkt))
}

/// The mark a frame leaves with: the first matching rule's mark under `mark_mask`,
/// bits outside the mask kept; unchanged when nothing matches.
pub fn mark_after(rules: &[Rule], mark_mask: u32, frame: &[u8], mark_in: u32) -> u32 {
    match parse(frame).and_then(|p| first_match(rules, &p)) {
        Some(i) => (mark_in & !mark_mask) | (rules[i].mark & mark_mask),
        None => mark_in,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::frame::{ExtHeader, FrameSpec};

    #[test]
    fn parses_ports_behind_extension_headers() {
        let mut f = FrameSpec::new(
            17,
            "2001:db8::1".parse().unwrap(),
            5,
            "2001:db8::2".parse().unwrap(),
            53,
        );
        f.ipv6_ext = vec![
            ExtHeader::HopByHop { len8: 1 },
            ExtHeader::Fragment {
                offset: 0,
                more: true,
            },
        ];
        f.dscp = 46;
        let p = parse(&f.build()).unwrap();
        assert_eq!((p.proto, p.ports, p.dscp), (17, Some((5, 53)), 46));
        f.ipv6_ext = vec![ExtHeader::Fragment {
            offset: 3,
            more: false,
        }];
        assert_eq!(parse(&f.build()).unwrap().ports, None);
    }

    #[test]
    fn non_ip_is_none() {
        let mut b = FrameSpec::new(
            6,
            "192.0.2.1".parse().unwrap(),
            1,
            "192.0.2.2".parse().unwrap(),
            2,
        )
        .build();
        b[12] = 0x08;
        b[13] = 0x06;
        assert_eq!(parse(&b), None);
    }
}
