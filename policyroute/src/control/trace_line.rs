//! One traced packet as the operator reads it: the logged `TraceEvent` with the device,
//! rule, gateway and group named from the applied policy's record.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policyroute_common::{
    TraceEvent, FAMILY_V4, HOOK_CONNECT, HOOK_SENDMSG, HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOW_DROP,
    HOW_FALLBACK, HOW_GATEWAY, HOW_NONE, HOW_RECORD, HOW_RULE, HOW_SLOT, HOW_STAND_IN, HOW_STICKY,
    HOW_UNWRITTEN, NO_MEMBER, NO_RULE,
};
use serde::Serialize;

use crate::{
    kernel::netlink::Link,
    plan::record::Record,
    policy::{protocol, Target},
};

#[derive(Clone, Debug, Serialize)]
pub struct TraceLine {
    /// Seconds since the Unix epoch when userspace read the line.
    pub time: f64,
    /// `tc-ingress`, `tc-egress`, `connect` or `sendmsg`.
    pub hook: &'static str,
    /// The device (null for the socket hooks).
    pub dev: Option<String>,
    pub proto: String,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// The first matching rule, or null.
    pub rule: Option<String>,
    /// The mark set (under the policy's mask); 0: the main table.
    pub mark: u32,
    /// The gateway whose mark it is, if any.
    pub gateway: Option<String>,
    /// The group the rule names, if it names one.
    pub group: Option<String>,
    /// How the mark was decided.
    pub decision: &'static str,
    /// The packet or call was dropped (`when_down = "blackhole"`).
    pub dropped: bool,
    /// The device the fast path forwarded it out of (null: the kernel routed it).
    pub out_dev: Option<String>,
}

pub fn hook_name(hook: u8) -> &'static str {
    match hook {
        HOOK_TC_INGRESS => "tc-ingress",
        HOOK_TC_EGRESS => "tc-egress",
        HOOK_CONNECT => "connect",
        HOOK_SENDMSG => "sendmsg",
        _ => "unknown",
    }
}

fn decision(how: u8) -> &'static str {
    match how {
        HOW_NONE => "no rule",
        HOW_RULE => "rule",
        HOW_STICKY => "sticky flow",
        HOW_GATEWAY => "gateway up",
        HOW_SLOT => "balance slot",
        HOW_STAND_IN => "stand-in for a member that is down",
        HOW_RECORD => "flow record",
        HOW_FALLBACK => "all down: main table",
        HOW_DROP => "all down: blackhole",
        HOW_UNWRITTEN => "target not written yet: main table",
        _ => "unknown",
    }
}

/// The address of classifier key words (network byte order in memory).
fn address(family: u8, words: &[u32; 4]) -> IpAddr {
    let mut bytes = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    if u32::from(family) == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// Names the event's parts; `record` is the applied policy (`None`: unknown names stay
/// null).
pub fn line(e: &TraceEvent, time: f64, record: Option<&Record>, links: &[Link]) -> TraceLine {
    let policy = record.map(|r| &r.policy);
    let rule_index = record
        .filter(|_| e.rule != NO_RULE)
        .and_then(|r| r.slots.iter().position(|&s| s == e.rule));
    let rule = rule_index.and_then(|i| policy.map(|p| &p.rules[i]));
    let group = rule.and_then(|r| match &r.target {
        Target::Gateway(name) => policy?.groups.iter().find(|g| &g.name == name),
        Target::Mark(_) => None,
    });
    let gateway = match (group, e.member) {
        (Some(g), m) if m != NO_MEMBER => g.members.get(m as usize).map(|m| m.gateway.clone()),
        _ => policy
            .filter(|_| e.mark != 0)
            .and_then(|p| p.gateways.iter().find(|g| g.mark & p.mark_mask == e.mark))
            .map(|g| g.name.clone()),
    };
    TraceLine {
        time,
        hook: hook_name(e.hook),
        dev: device(links, e.ifindex),
        proto: protocol::name(e.proto),
        src: address(e.family, &e.src),
        sport: e.sport,
        dst: address(e.family, &e.dst),
        dport: e.dport,
        rule: rule.map(|r| r.name.clone()),
        mark: e.mark,
        gateway,
        group: group.map(|g| g.name.clone()),
        decision: decision(e.how),
        dropped: e.how == HOW_DROP,
        out_dev: device(links, e.oif),
    }
}

/// A device's name by index (`ifN` if it is gone); `None` for 0.
fn device(links: &[Link], index: u32) -> Option<String> {
    (index != 0).then(|| {
        links
            .iter()
            .find(|l| l.index == index)
            .map_or_else(|| format!("if{index}"), |l| l.name.clone())
    })
}
