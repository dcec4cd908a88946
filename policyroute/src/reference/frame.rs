//! Synthesizes Ethernet frames from the fields a rule can match: for test runs of the
//! loaded program (explain, tests, benchmarks). Checksums are left zero: the classifier
//! never reads them.
use std::net::IpAddr;

use policyroute_common::net::{
    proto_has_ports, ETH_P_IP, ETH_P_IPV6, IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS, IPPROTO_ROUTING,
};

/// An IPv6 extension header placed between the fixed header and the L4 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtHeader {
    HopByHop {
        len8: u8,
    },
    Routing {
        len8: u8,
    },
    DestOpts {
        len8: u8,
    },
    /// Fragment header with this offset (in 8-byte units) and the more-fragments flag.
    Fragment {
        offset: u16,
        more: bool,
    },
    Auth {
        len4: u8,
    },
}

/// A frame description; `build` turns it into bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameSpec {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub dscp: u8,
    /// VLAN tags (TPID, VID), outermost first.
    pub vlans: Vec<(u16, u16)>,
    /// IPv4 option bytes (a multiple of 4, at most 40).
    pub ipv4_options: usize,
    /// IPv4 fragment offset in 8-byte units (non-zero: a non-first fragment).
    pub ipv4_frag_offset: u16,
    pub ipv6_ext: Vec<ExtHeader>,
    /// L4 payload bytes after the ports.
    pub payload: usize,
    /// Cut the frame to this many bytes, if shorter.
    pub truncate: Option<usize>,
}

impl FrameSpec {
    pub fn new(proto: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self {
            src,
            dst,
            proto,
            sport,
            dport,
            dscp: 0,
            vlans: Vec::new(),
            ipv4_options: 0,
            ipv4_frag_offset: 0,
            ipv6_ext: Vec::new(),
            payload: 18,
            truncate: None,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        for &(tpid, vid) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        let l4 = self.l4();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let ihl = 20 + self.ipv4_options;
                let total = (ihl + l4.len()) as u16;
                f.push(0x40 | (ihl / 4) as u8);
                f.push(self.dscp << 2);
                f.extend_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&[0, 1]);
                f.extend_from_slice(&(self.ipv4_frag_offset & 0x1fff).to_be_bytes());
                f.extend_from_slice(&[64, self.proto, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                // NOP options keep the header well formed.
                f.extend(std::iter::repeat_n(1u8, self.ipv4_options));
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let ext = self.ipv6_ext_bytes();
                let tc = self.dscp << 2;
                f.extend_from_slice(&[0x60 | (tc >> 4), tc << 4, 0, 0]);
                f.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
                f.push(self.ipv6_ext.first().map_or(self.proto, ext_code));
                f.push(64);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                f.extend_from_slice(&ext);
            }
            _ => panic!("source and destination must be of one IP version"),
        }
        f.extend_from_slice(&l4);
        if let Some(n) = self.truncate {
            f.truncate(n.max(14));
        }
        f
    }

    fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        if proto_has_ports(self.proto) {
            l4.extend_from_slice(&self.sport.to_be_bytes());
            l4.extend_from_slice(&self.dport.to_be_bytes());
        }
        l4.extend(std::iter::repeat_n(0u8, self.payload));
        l4
    }

    fn ipv6_ext_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, h) in self.ipv6_ext.iter().enumerate() {
            let next = self.ipv6_ext.get(i + 1).map_or(self.proto, ext_code);
            match *h {
                ExtHeader::HopByHop { len8 }
                | ExtHeader::Routing { len8 }
                | ExtHeader::DestOpts { len8 } => {
                    out.extend_from_slice(&[next, len8]);
                    out.extend(std::iter::repeat_n(0u8, usize::from(len8) * 8 + 6));
                }
                ExtHeader::Fragment { offset, more } => {
                    let off = (offset << 3) | u16::from(more);
                    out.extend_from_slice(&[next, 0]);
                    out.extend_from_slice(&off.to_be_bytes());
                    out.extend_from_slice(&[0, 0, 0, 1]);
                }
                ExtHeader::Auth { len4 } => {
                    out.extend_from_slice(&[next, len4]);
                    out.extend(std::iter::repeat_n(0u8, (usize::from(len4) + 2) * 4 - 2));
                }
            }
        }
        out
    }
}

fn ext_code(h: &ExtHeader) -> u8 {
    match h {
        ExtHeader::HopByHop { .. } => IPPROTO_HOPOPTS,
        ExtHeader::Routing { .. } => IPPROTO_ROUTING,
        ExtHeader::Fragment { .. } => IPPROTO_FRAGMENT,
        ExtHeader::Auth { .. } => IPPROTO_AH,
        ExtHeader::DestOpts { .. } => IPPROTO_DSTOPTS,
    }
}
