//! Random policies and frames for differential testing: values are drawn from small pools
//! so that rules overlap and packets hit them often, and frames are malformed on purpose.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use policyroute::{
    policy::{
        matcher::{Match, Rule},
        ports::{PortRange, PortSet},
        sets::{PrefixSet, SetRef},
    },
    reference::frame::{ExtHeader, FrameSpec},
};
use rand::{rngs::StdRng, seq::SliceRandom, Rng};

const PROTOS: [u8; 7] = [6, 17, 1, 58, 132, 47, 33];
const PORTS: [u16; 11] = [0, 22, 25, 53, 80, 443, 1000, 1023, 1024, 8080, 65535];
const RANGES: [(u16, u16); 6] = [
    (1024, 65535),
    (1000, 1999),
    (80, 88),
    (0, 1023),
    (5000, 5001),
    (22, 25),
];
const DSCPS: [u8; 3] = [0, 10, 46];
const MASKS: [u32; 4] = [u32::MAX, 0xff, 0xff00, 0x0f0f_0f0f];

fn v4_addr(rng: &mut StdRng) -> Ipv4Addr {
    let bases = [[192, 0, 2], [198, 51, 100], [203, 0, 113], [198, 18, 7]];
    let b = bases.choose(rng).unwrap();
    Ipv4Addr::new(
        b[0],
        b[1],
        b[2],
        *[1u8, 2, 9, 10, 130, 255].choose(rng).unwrap(),
    )
}

fn v6_addr(rng: &mut StdRng) -> Ipv6Addr {
    let seg: u16 = rng.gen_range(0..4);
    let low: u16 = *[1u16, 2, 0x10, 0xff, 0x8000].choose(rng).unwrap();
    Ipv6Addr::new(0x2001, 0xdb8, seg, 0, 0, 0, rng.gen_range(0..2), low)
}

fn addr(rng: &mut StdRng, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(v6_addr(rng))
    } else {
        IpAddr::V4(v4_addr(rng))
    }
}

fn prefix(rng: &mut StdRng, v6: bool) -> IpNet {
    let len = if v6 {
        *[0u8, 32, 48, 64, 112, 127, 128].choose(rng).unwrap()
    } else {
        *[0u8, 8, 16, 24, 25, 30, 32].choose(rng).unwrap()
    };
    IpNet::new(addr(rng, v6), len).unwrap().trunc()
}

fn port_set(rng: &mut StdRng) -> PortSet {
    let n = rng.gen_range(1..=3);
    let ranges = (0..n)
        .map(|_| {
            if rng.gen_bool(0.4) {
                let (lo, hi) = *RANGES.choose(rng).unwrap();
                PortRange::new(lo, hi).unwrap()
            } else {
                PortRange::single(*PORTS.choose(rng).unwrap())
            }
        })
        .collect();
    PortSet::new(ranges).unwrap()
}

/// Up to 3 sets of up to 20 prefixes of any length, both families, around the addresses
/// frames use (so they hit), nested and overlapping by chance.
pub fn sets(rng: &mut StdRng) -> Vec<Arc<PrefixSet>> {
    (0..rng.gen_range(0..=3))
        .map(|i| {
            let prefixes = (0..rng.gen_range(1..=20))
                .map(|_| {
                    let v6 = rng.gen_bool(0.4);
                    let len = if v6 {
                        rng.gen_range(1..=128)
                    } else {
                        rng.gen_range(1..=32)
                    };
                    IpNet::new(addr(rng, v6), len).unwrap().trunc()
                })
                .collect();
            Arc::new(PrefixSet::new(format!("s{i}"), None, prefixes))
        })
        .collect()
}

/// A random address inside `net`.
pub fn host_in(rng: &mut StdRng, net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let host = rng.gen::<u32>() & !u32::from(n.netmask());
            Ipv4Addr::from(u32::from(n.network()) | host).into()
        }
        IpNet::V6(n) => {
            let host = rng.gen::<u128>() & !u128::from(n.netmask());
            Ipv6Addr::from(u128::from(n.network()) | host).into()
        }
    }
}

/// A valid random rule (retries until `validate` accepts it); its address conditions
/// name one of `sets` now and then.
pub fn rule(rng: &mut StdRng, index: usize, sets: &[Arc<PrefixSet>]) -> Rule {
    loop {
        let family = rng.gen_range(0..3); // 0: IPv4, 1: IPv6, 2: both (no prefixes)
        let v6 = family == 1;
        let mut m = Match::default();
        if rng.gen_bool(0.5) {
            m.proto = Some(*PROTOS.choose(rng).unwrap());
        }
        if family < 2 && rng.gen_bool(0.6) {
            m.src = Some(prefix(rng, v6));
        }
        if family < 2 && (m.src.is_none() || rng.gen_bool(0.3)) {
            m.dst = Some(prefix(rng, v6));
        }
        let portful = m.proto.is_none_or(policyroute_common::proto_has_ports);
        if portful && rng.gen_bool(0.3) {
            m.sport = Some(port_set(rng));
        }
        if portful && rng.gen_bool(0.5) {
            m.dport = Some(port_set(rng));
        }
        if rng.gen_bool(0.15) {
            m.dscp = Some(*DSCPS.choose(rng).unwrap());
        }
        if !sets.is_empty() && rng.gen_bool(0.3) {
            m.src = None;
            m.src_set = Some(SetRef::new(Arc::clone(sets.choose(rng).unwrap())));
        }
        if !sets.is_empty() && rng.gen_bool(0.3) {
            m.dst = None;
            m.dst_set = Some(SetRef::new(Arc::clone(sets.choose(rng).unwrap())));
        }
        if m.validate().is_ok() {
            return Rule {
                name: format!("r{index}"),
                matcher: m,
                mark: rng.gen_range(1..0x1_0000),
            };
        }
    }
}

pub fn policy(rng: &mut StdRng, max_rules: usize) -> (Vec<Rule>, u32) {
    let n = rng.gen_range(1..=max_rules);
    let sets = if rng.gen_bool(0.5) {
        sets(rng)
    } else {
        Vec::new()
    };
    let rules = (0..n).map(|i| rule(rng, i, &sets)).collect();
    (rules, *MASKS.choose(rng).unwrap())
}

/// A random frame; about half are malformed or unusual in some way.
pub fn frame(rng: &mut StdRng) -> Vec<u8> {
    let v6 = rng.gen_bool(0.5);
    let proto = if rng.gen_bool(0.85) {
        *PROTOS.choose(rng).unwrap()
    } else {
        rng.gen()
    };
    let port = |rng: &mut StdRng| {
        if rng.gen_bool(0.7) {
            *PORTS.choose(rng).unwrap()
        } else {
            rng.gen()
        }
    };
    let (sport, dport) = (port(rng), port(rng));
    let mut f = FrameSpec::new(proto, addr(rng, v6), sport, addr(rng, v6), dport);
    f.dscp = if rng.gen_bool(0.7) {
        *DSCPS.choose(rng).unwrap()
    } else {
        rng.gen_range(0..64)
    };
    if rng.gen_bool(0.15) {
        let tags = rng.gen_range(1..=3);
        f.vlans = (0..tags)
            .map(|_| (*[0x8100u16, 0x88a8].choose(rng).unwrap(), rng.gen()))
            .collect();
    }
    if !v6 && rng.gen_bool(0.15) {
        f.ipv4_options = 4 * rng.gen_range(1..=10);
    }
    if !v6 && rng.gen_bool(0.1) {
        f.ipv4_frag_offset = rng.gen_range(1..0x1fff);
    }
    if v6 && rng.gen_bool(0.3) {
        f.ipv6_ext = (0..rng.gen_range(1..=10))
            .map(|_| ext_header(rng))
            .collect();
    }
    let mut bytes = f.build();
    if rng.gen_bool(0.1) {
        let min_l3 = 14 + 4 * f.vlans.len() + if v6 { 40 } else { 20 };
        let floor = if f.vlans.is_empty() { min_l3 } else { 15 };
        let cut = rng.gen_range(floor..=bytes.len());
        bytes.truncate(cut);
    }
    if rng.gen_bool(0.1) {
        let at = rng.gen_range(12..bytes.len());
        bytes[at] = rng.gen();
    }
    bytes
}

fn ext_header(rng: &mut StdRng) -> ExtHeader {
    match rng.gen_range(0..5) {
        0 => ExtHeader::HopByHop {
            len8: rng.gen_range(0..3),
        },
        1 => ExtHeader::Routing {
            len8: rng.gen_range(0..3),
        },
        2 => ExtHeader::DestOpts {
            len8: rng.gen_range(0..3),
        },
        3 => ExtHeader::Fragment {
            offset: if rng.gen_bool(0.5) {
                0
            } else {
                rng.gen_range(1..0x1fff)
            },
            more: rng.gen(),
        },
        _ => ExtHeader::Auth {
            len4: rng.gen_range(0..4),
        },
    }
}

/// Seed from `POLICYROUTE_SEED`, or a fresh one; printed so a failure can be replayed.
pub fn seed() -> u64 {
    let seed = std::env::var("POLICYROUTE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("random seed: {seed} (replay with POLICYROUTE_SEED={seed})");
    seed
}
