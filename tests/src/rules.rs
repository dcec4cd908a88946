//! Terse construction of classifier rules for tests and benchmarks.
use ipnet::IpNet;
use policyroute::policy::{
    matcher::{Match, Rule},
    ports::{PortRange, PortSet},
};

/// A rule named `name` setting `mark`, matching everything until narrowed.
pub fn rule(name: &str, mark: u32) -> RuleBuilder {
    RuleBuilder(Rule {
        name: name.to_string(),
        matcher: Match::default(),
        mark,
    })
}

pub struct RuleBuilder(Rule);

/// Ports from `[lo, hi]` pairs (a single port is `[p, p]`).
pub fn ports(ranges: &[[u16; 2]]) -> PortSet {
    PortSet::new(
        ranges
            .iter()
            .map(|r| PortRange::new(r[0], r[1]).expect("lo <= hi"))
            .collect(),
    )
    .expect("at least one range")
}

impl RuleBuilder {
    pub fn proto(mut self, p: u8) -> Self {
        self.0.matcher.proto = Some(p);
        self
    }
    pub fn src(mut self, net: &str) -> Self {
        self.0.matcher.src = Some(net.parse::<IpNet>().expect("prefix"));
        self
    }
    pub fn dst(mut self, net: &str) -> Self {
        self.0.matcher.dst = Some(net.parse::<IpNet>().expect("prefix"));
        self
    }
    pub fn sport(mut self, ranges: &[[u16; 2]]) -> Self {
        self.0.matcher.sport = Some(ports(ranges));
        self
    }
    pub fn dport(mut self, ranges: &[[u16; 2]]) -> Self {
        self.0.matcher.dport = Some(ports(ranges));
        self
    }
    pub fn dscp(mut self, d: u8) -> Self {
        self.0.matcher.dscp = Some(d);
        self
    }
    pub fn build(self) -> Rule {
        self.0
    }
}
