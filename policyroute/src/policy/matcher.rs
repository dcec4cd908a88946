//! Classifier rules: what a packet must look like, and the mark it then gets.
use std::net::IpAddr;

use ipnet::IpNet;
use policyroute_common::net::{proto_has_ports, IPPROTO_ICMP, IPPROTO_ICMPV6};

use crate::policy::{ports::PortSet, protocol, sets::SetRef};

/// IP version of a packet or of a rule's scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Family {
    V4,
    V6,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

impl Family {
    /// `ipv4` / `ipv6`, as JSON output and metrics labels name a family.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn of_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// Index of this family's shape table (see `policyroute_common::FAMILY_V4`).
    pub fn index(self) -> u32 {
        match self {
            Family::V4 => policyroute_common::FAMILY_V4,
            Family::V6 => policyroute_common::FAMILY_V6,
        }
    }
}

/// Conditions of one rule; `None` is "any". All present conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Match {
    pub proto: Option<u8>,
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
    pub sport: Option<PortSet>,
    pub dport: Option<PortSet>,
    pub dscp: Option<u8>,
    /// `src = "@name"`: the source is in this set (never together with `src`).
    #[serde(default)]
    pub src_set: Option<SetRef>,
    /// `dst = "@name"`: the destination is in this set (never together with `dst`).
    #[serde(default)]
    pub dst_set: Option<SetRef>,
}

/// A rule of the classifier: conditions and the mark it sets. Its position in the policy
/// is its priority (first match wins) and its counter slot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub name: String,
    pub matcher: Match,
    pub mark: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("source and destination prefixes are of different IP versions")]
    MixedFamilies,
    #[error(
        "protocol {} exists only for {only}, but a prefix of the rule is {other}",
        protocol::name(*proto)
    )]
    ProtoFamily {
        proto: u8,
        only: Family,
        other: Family,
    },
    #[error(
        "protocol {} has no ports, so a port condition can never match",
        protocol::name(*.0)
    )]
    PortsWithoutPortProto(u8),
    #[error("DSCP {0} is out of range (0-63)")]
    Dscp(u8),
    #[error("prefix {0} has host bits set (did you mean {1}?)")]
    HostBits(IpNet, IpNet),
}

impl Match {
    /// The address families this rule can match, or why the combination is impossible.
    /// A set condition narrows them to the families the set has prefixes of (none for an
    /// empty set).
    pub fn families(&self) -> Result<Vec<Family>, RuleError> {
        let mut allowed = vec![Family::V4, Family::V6];
        let nets = [&self.src, &self.dst].into_iter().flatten();
        let sets = [&self.src_set, &self.dst_set].into_iter().flatten();
        let conditions = nets
            .map(|n| vec![Family::of_net(n)])
            .chain(sets.map(|s| s.set.families()));
        for families in conditions {
            let narrowed: Vec<Family> = allowed
                .iter()
                .copied()
                .filter(|f| families.contains(f))
                .collect();
            if narrowed.is_empty() && !families.is_empty() && !allowed.is_empty() {
                return Err(RuleError::MixedFamilies);
            }
            allowed = narrowed;
        }
        let proto_only = match self.proto {
            Some(IPPROTO_ICMP) => Some(Family::V4),
            Some(IPPROTO_ICMPV6) => Some(Family::V6),
            _ => None,
        };
        match proto_only {
            Some(only) if allowed.contains(&only) => Ok(vec![only]),
            Some(only) if allowed.len() == 1 => Err(RuleError::ProtoFamily {
                proto: self.proto.unwrap_or_default(),
                only,
                other: allowed[0],
            }),
            Some(_) => Ok(Vec::new()),
            None => Ok(allowed),
        }
    }

    pub fn has_ports(&self) -> bool {
        self.sport.is_some() || self.dport.is_some()
    }

    /// Everything that makes a rule unable to ever match, or ambiguous.
    pub fn validate(&self) -> Result<(), RuleError> {
        self.families()?;
        if let Some(p) = self.proto {
            if self.has_ports() && !proto_has_ports(p) {
                return Err(RuleError::PortsWithoutPortProto(p));
            }
        }
        if let Some(d) = self.dscp {
            if d > 63 {
                return Err(RuleError::Dscp(d));
            }
        }
        for net in [&self.src, &self.dst].into_iter().flatten() {
            if net.trunc() != *net {
                return Err(RuleError::HostBits(*net, net.trunc()));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Match {
    /// iptables-like: `proto 6 src 192.0.2.0/24 dport 80,443`, or `all`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(p) = self.proto {
            parts.push(format!("proto {}", protocol::name(p)));
        }
        if let Some(n) = self.src {
            parts.push(format!("src {n}"));
        }
        if let Some(n) = self.dst {
            parts.push(format!("dst {n}"));
        }
        if let Some(s) = &self.src_set {
            parts.push(format!("src @{}", s.name));
        }
        if let Some(s) = &self.dst_set {
            parts.push(format!("dst @{}", s.name));
        }
        if let Some(p) = &self.sport {
            parts.push(format!("sport {p}"));
        }
        if let Some(p) = &self.dport {
            parts.push(format!("dport {p}"));
        }
        if let Some(d) = self.dscp {
            parts.push(format!("dscp {d}"));
        }
        if parts.is_empty() {
            f.write_str("all")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}
