//! What makes uplinks fail over: a gateway's health check, groups of gateways in tiers
//! with weights, and what a rule does when its gateway or group has no live member.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::matcher::Family;

/// `check = { targets = [...], method = "icmp", interval = 0.5, timeout = 1.0, down = 3, up = 3 }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Addresses probed through the gateway; a family without one follows carrier only.
    pub targets: Vec<IpAddr>,
    pub method: CheckMethod,
    /// Between probe rounds, ms.
    pub interval_ms: u32,
    /// How long a round waits for an answer, ms.
    pub timeout_ms: u32,
    /// Probes per target per round; a round is answered when any of them is.
    pub count: u32,
    /// Missed rounds in a row that take the gateway down.
    pub down: u32,
    /// Answered rounds in a row that bring it back.
    pub up: u32,
}

impl Check {
    pub fn targets_of(&self, family: Family) -> impl Iterator<Item = &IpAddr> {
        self.targets.iter().filter(move |a| Family::of(a) == family)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckMethod {
    /// ICMP echo.
    Icmp,
    /// A TCP connect to this port; refused counts as a failure.
    Tcp(u16),
}

impl std::fmt::Display for CheckMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckMethod::Icmp => f.write_str("icmp"),
            CheckMethod::Tcp(port) => write!(f, "tcp:{port}"),
        }
    }
}

/// `[[group]]`: gateways that share a rule's traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub members: Vec<Member>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub gateway: String,
    /// Share of the flows within its tier.
    pub weight: u32,
    /// The lowest tier with a live member carries all of the group's traffic.
    pub tier: u32,
}

/// A rule's `when_down`: what its traffic does when its gateway or group has no live member.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum WhenDown {
    /// Route by the main table (the traffic leaves through the default uplink).
    #[default]
    Main,
    /// Drop it: a kill switch, nothing leaks out through another uplink.
    Blackhole,
}

impl WhenDown {
    pub fn name(self) -> &'static str {
        match self {
            WhenDown::Main => "main",
            WhenDown::Blackhole => "blackhole",
        }
    }
}
