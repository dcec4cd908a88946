//! The kernel objects a plan speaks of: ip rules, routes and program hooks, as plain
//! values whose equality is what reconciliation compares, and the difference between two
//! sets of them.
use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;
use policyroute_common::names::{TC_EGRESS, TC_INGRESS};
use serde::Serialize;

use super::ip_text::{self, DeviceNames};
use crate::policy::matcher::Family;

/// An ip rule as policyroute uses them (action `lookup TABLE`). Equality is what
/// reconciliation compares.
///
/// The kernel cannot tell some values from "absent", so write them as absent to read them
/// back equal: `fwmark` with mask 0 (matches everything) and `src` of length 0 (`from all`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct IpRule {
    pub family: Family,
    pub priority: u32,
    pub table: u32,
    /// `fwmark VALUE/MASK`
    pub fwmark: Option<(u32, u32)>,
    /// `suppress_prefixlength N` (used as `lookup main suppress_prefixlength 0`)
    pub suppress_prefixlen: Option<u32>,
    /// `from PREFIX`
    pub src: Option<IpNet>,
}

/// A unicast route. `dst` must have its host bits clear (the kernel refuses or masks them).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct IpRoute {
    pub family: Family,
    pub table: u32,
    /// `0.0.0.0/0` or `::/0` for default.
    pub dst: IpNet,
    /// `None`: device-only route (point-to-point links). An IPv6 gateway on an IPv4 route is
    /// sent as RTA_VIA.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: u32,
}

/// As `ip rule` prints it: `-4 PRIORITY: from SRC [fwmark V/M] lookup TABLE`.
impl std::fmt::Display for IpRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        ip_text::rule_selectors(f, self.family, self.priority, false, self.src, self.fwmark)?;
        ip_text::lookup(f, self.table)?;
        ip_text::suppress(f, self.suppress_prefixlen)
    }
}

impl IpRoute {
    /// As `ip route` prints it, with device names: `-4 table T: DST via GW dev DEV`.
    pub fn display<'a>(&'a self, devices: &'a DeviceNames) -> impl std::fmt::Display + 'a {
        std::fmt::from_fn(move |f| {
            f.write_str(&ip_text::route_head(self.family, self.table, "", &self.dst))?;
            f.write_str(&ip_text::next_hop(self.gateway, Some(self.oif), devices))
        })
    }
}

/// Where a program is attached.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "hook", rename_all = "kebab-case")]
pub enum Hook {
    TcxIngress {
        dev: String,
        ifindex: u32,
    },
    TcxEgress {
        dev: String,
        ifindex: u32,
    },
    /// A classic `cls_bpf` filter on the clsact qdisc (kernels without tcx).
    TcIngress {
        dev: String,
        ifindex: u32,
    },
    TcEgress {
        dev: String,
        ifindex: u32,
    },
    /// A cgroup socket hook; `cgroup` is the v2 path (`/` is the root).
    Cgroup {
        cgroup: String,
        program: &'static str,
    },
}

impl Hook {
    /// The program that belongs on this hook.
    pub fn program(&self) -> &'static str {
        match self {
            Hook::TcxIngress { .. } | Hook::TcIngress { .. } => TC_INGRESS,
            Hook::TcxEgress { .. } | Hook::TcEgress { .. } => TC_EGRESS,
            Hook::Cgroup { program, .. } => program,
        }
    }

    /// The device of a TC hook (`None` for socket hooks).
    pub fn device(&self) -> Option<&str> {
        match self {
            Hook::TcxIngress { dev, .. }
            | Hook::TcxEgress { dev, .. }
            | Hook::TcIngress { dev, .. }
            | Hook::TcEgress { dev, .. } => Some(dev),
            Hook::Cgroup { .. } => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Hook::TcxIngress { dev, .. } => format!("tcx ingress of {dev}"),
            Hook::TcxEgress { dev, .. } => format!("tcx egress of {dev}"),
            Hook::TcIngress { dev, .. } => format!("tc (clsact) ingress of {dev}"),
            Hook::TcEgress { dev, .. } => format!("tc (clsact) egress of {dev}"),
            Hook::Cgroup { cgroup, program } => format!("cgroup {cgroup} ({program})"),
        }
    }
}

/// What a device's frames start with at its TC hooks, by its link type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Frames {
    /// An Ethernet header: Ethernet, veth, bridges, bonds, VLANs, Wi-Fi, loopback.
    Ethernet,
    /// The IP header: tun (OpenVPN), WireGuard, PPP, IP-in-IP, SIT and GRE tunnels.
    Ip,
    /// Anything else (the link type's number): the classifier cannot read these frames.
    Unsupported(u16),
}

/// How the TC programs attach to devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TcPath {
    /// tcx (Linux 6.6 or newer).
    #[default]
    Tcx,
    /// The clsact qdisc with direct-action `cls_bpf` filters (any kernel policyroute runs on).
    Classic,
}

impl TcPath {
    /// The hooks of a device on this path.
    pub fn ingress(self, dev: String, ifindex: u32) -> Hook {
        match self {
            TcPath::Tcx => Hook::TcxIngress { dev, ifindex },
            TcPath::Classic => Hook::TcIngress { dev, ifindex },
        }
    }

    pub fn egress(self, dev: String, ifindex: u32) -> Hook {
        match self {
            TcPath::Tcx => Hook::TcxEgress { dev, ifindex },
            TcPath::Classic => Hook::TcEgress { dev, ifindex },
        }
    }

    /// `tcx` or `tc`, as `[attach] mode` and `status` name them.
    pub fn name(self) -> &'static str {
        match self {
            TcPath::Tcx => "tcx",
            TcPath::Classic => "tc",
        }
    }
}

impl Hook {
    /// The TC path of a device hook (`None` for socket hooks).
    pub fn tc_path(&self) -> Option<TcPath> {
        match self {
            Hook::TcxIngress { .. } | Hook::TcxEgress { .. } => Some(TcPath::Tcx),
            Hook::TcIngress { .. } | Hook::TcEgress { .. } => Some(TcPath::Classic),
            Hook::Cgroup { .. } => None,
        }
    }
}

/// Changes that turn `have` into `want`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diff<T> {
    pub add: Vec<T>,
    pub remove: Vec<T>,
}

impl<T> Default for Diff<T> {
    fn default() -> Self {
        Self {
            add: Vec::new(),
            remove: Vec::new(),
        }
    }
}

impl<T: Ord + Clone> Diff<T> {
    pub fn between(have: &BTreeSet<T>, want: &BTreeSet<T>) -> Self {
        Self {
            add: want.difference(have).cloned().collect(),
            remove: have.difference(want).cloned().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// A destination of the local table (this host's addresses, broadcasts, multicast) or a
/// route of the main table: what the fast path leaves to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelPrefix {
    /// `MAIN_TABLE` or `LOCAL_TABLE`.
    pub table: u32,
    pub dst: IpNet,
    /// The route's output device, when it has one (not a multipath route).
    pub oif: Option<u32>,
}

pub const MAIN_TABLE: u32 = 254;
pub const LOCAL_TABLE: u32 = 255;
