//! The fast path (`fast_path = true`): at tc ingress, traffic a rule or group sends to a
//! gateway is forwarded by the program (`bpf_fib_lookup` in the gateway's table, TTL or hop
//! limit decremented, `bpf_redirect_neigh`), so no ip rule is needed to route it.

/// Control flag: forward gateway-bound traffic at tc ingress.
pub const CONTROL_FAST_PATH: u32 = 4;

/// Hash map `mark -> FastGateway` (`FAST_MAP`): the table each gateway's mark routes by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastGateway {
    pub table: u32,
    pub _pad: u32,
}

/// `KERNEL4_MAP` / `KERNEL6_MAP` are LPM tries keyed by address bytes (network order):
/// destinations the kernel routes itself (this host's addresses and broadcasts,
/// multicast, and with `main_routes_first` every non-default route of the main table).
/// Most destinations per family the kernel-routed map holds.
pub const MAX_KERNEL_DESTINATIONS: u32 = 1 << 18;

/// What the fast path did, per CPU (`FAST_STATS_MAP`, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct FastStats {
    /// Redirected to the gateway's egress device.
    pub forwarded: u64,
    /// Left to the kernel: addressed to this host, multicast, or (with
    /// `main_routes_first`) covered by a main-table route.
    pub to_kernel: u64,
    /// TTL or hop limit at most 1: left to the kernel, which sends time exceeded.
    pub expired: u64,
    /// Too big for the gateway's MTU: answered with ICMP fragmentation needed / packet too
    /// big carrying that MTU.
    pub too_big: u64,
    /// Too big, IPv4 without DF: the kernel would fragment it; dropped and counted here.
    pub dropped_fragment: u64,
    /// No usable route in the gateway's table (or a lookup error): left to the kernel.
    pub no_route: u64,
}

/// The sum of two CPUs' counts.
impl core::ops::Add for FastStats {
    type Output = FastStats;

    fn add(self, o: FastStats) -> FastStats {
        FastStats {
            forwarded: self.forwarded + o.forwarded,
            to_kernel: self.to_kernel + o.to_kernel,
            expired: self.expired + o.expired,
            too_big: self.too_big + o.too_big,
            dropped_fragment: self.dropped_fragment + o.dropped_fragment,
            no_route: self.no_route + o.no_route,
        }
    }
}

/// Test-run verdict of explain for a flow the fast path forwards; `cb[0]` then holds the
/// egress ifindex (`FAST_NH_V6` set for an IPv6 next hop) and `cb[1..5]` the next hop.
pub const FAST_EXPLAIN_FORWARDED: i32 = 0x4650;
pub const FAST_NH_V6: u32 = 1 << 31;
