//! The packets two matches both match, as one match: a jump's conditions with those of a
//! rule in the chain it enters, or an ip rule's source with a policy rule it must come
//! before. Every condition of a match is one prefix, port set or value, so the packets
//! both match are always one match again (or none).
use ipnet::IpNet;

use crate::policy::matcher::Match;
use crate::policy::ports::{PortRange, PortSet};

/// `None` when no packet matches both.
pub fn both(a: &Match, b: &Match) -> Option<Match> {
    let m = Match {
        proto: same(&a.proto, &b.proto)?,
        src: narrower(a.src, b.src)?,
        dst: narrower(a.dst, b.dst)?,
        sport: ports(&a.sport, &b.sport)?,
        dport: ports(&a.dport, &b.dport)?,
        dscp: same(&a.dscp, &b.dscp)?,
        // Imported matches name no sets.
        ..Match::default()
    };
    // Prefixes of two families, or ICMP with an IPv6 prefix: no packet is both.
    m.families().ok().filter(|f| !f.is_empty())?;
    Some(m)
}

/// A condition both sides agree on (either may leave it open); `None` when they differ.
pub fn same<T: PartialEq + Clone>(a: &Option<T>, b: &Option<T>) -> Option<Option<T>> {
    match (a, b) {
        (Some(x), Some(y)) if x != y => None,
        _ => Some(a.clone().or_else(|| b.clone())),
    }
}

/// Two prefixes hold the same addresses only in the smaller one, if one holds the other.
fn narrower(a: Option<IpNet>, b: Option<IpNet>) -> Option<Option<IpNet>> {
    match (a, b) {
        (Some(x), Some(y)) if x.contains(&y) => Some(Some(y)),
        (Some(x), Some(y)) if y.contains(&x) => Some(Some(x)),
        (Some(_), Some(_)) => None,
        _ => Some(a.or(b)),
    }
}

fn ports(a: &Option<PortSet>, b: &Option<PortSet>) -> Option<Option<PortSet>> {
    let (Some(x), Some(y)) = (a, b) else {
        return Some(a.clone().or_else(|| b.clone()));
    };
    let common: Vec<PortRange> = x
        .ranges()
        .iter()
        .flat_map(|r| {
            y.ranges()
                .iter()
                .filter_map(|s| PortRange::new(r.lo.max(s.lo), r.hi.min(s.hi)))
        })
        .collect();
    PortSet::new(common).map(Some)
}

#[cfg(test)]
mod tests {
    use super::both;
    use crate::policy::matcher::Match;
    use crate::policy::ports::{PortRange, PortSet};

    fn net(text: &str) -> Option<ipnet::IpNet> {
        Some(text.parse().unwrap())
    }

    fn ports(ranges: &[(u16, u16)]) -> Option<PortSet> {
        PortSet::new(
            ranges
                .iter()
                .map(|&(lo, hi)| PortRange::new(lo, hi).unwrap())
                .collect(),
        )
    }

    #[test]
    fn the_narrower_of_each_condition_is_kept() {
        let jump = Match {
            proto: Some(6),
            src: net("192.0.2.0/24"),
            dport: ports(&[(1, 1023)]),
            ..Match::default()
        };
        let inner = Match {
            src: net("192.0.2.8/29"),
            dport: ports(&[(80, 80), (443, 443), (8080, 8080)]),
            ..Match::default()
        };
        let got = both(&jump, &inner).unwrap();
        assert_eq!(got.to_string(), "proto tcp src 192.0.2.8/29 dport 80,443");
        assert_eq!(both(&inner, &jump), Some(got));
    }

    #[test]
    fn conditions_no_packet_meets_together_give_none() {
        let tcp = Match {
            proto: Some(6),
            ..Match::default()
        };
        let udp = Match {
            proto: Some(17),
            ..Match::default()
        };
        assert_eq!(both(&tcp, &udp), None);
        let lan = Match {
            src: net("192.0.2.0/25"),
            ..Match::default()
        };
        let other = Match {
            src: net("192.0.2.128/25"),
            ..Match::default()
        };
        assert_eq!(both(&lan, &other), None);
        let v6 = Match {
            dst: net("::/0"),
            ..Match::default()
        };
        assert_eq!(both(&lan, &v6), None, "two families");
        let low = Match {
            dport: ports(&[(1, 1023)]),
            ..Match::default()
        };
        let high = Match {
            dport: ports(&[(1024, 65535)]),
            ..Match::default()
        };
        assert_eq!(both(&low, &high), None);
    }
}
