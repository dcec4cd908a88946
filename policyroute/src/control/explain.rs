//! `policyroute explain`: which rule a flow matches, the mark it gets, and the route the
//! kernel then takes. For traffic arriving on a device, the loaded program itself runs on
//! a synthesized packet (BPF_PROG_TEST_RUN, counters untouched), so explain cannot disagree
//! with the dataplane; the reference classifier is asked too and must agree. For local
//! traffic the reference classifier answers with the socket hook's semantics.
use std::{collections::BTreeMap, net::IpAddr};

use policyroute_common::{
    net::is_ipv6_ext_header, target_key, FlowTuple, TargetState, FAST_EXPLAIN_FORWARDED,
    FAST_NH_V6, MEMBER_UP,
};
use serde::Serialize;

use super::{require_privileges, ControlError};
use crate::{
    kernel::{
        netlink::{Link, Netlink, RouteAnswer, RouteQuery},
        observe::{self, Installed},
        record_store, testrun,
    },
    plan::{
        record::Record,
        targets::{self, TargetIds},
    },
    policy::{
        matcher::{Family, Rule},
        Member, Policy, Target, WhenDown,
    },
    reference::{
        classifier::{self, LocalFlow},
        frame::FrameSpec,
        targets::{self as ref_targets, How},
    },
};

/// The TC verdict of a dropped packet.
const TC_ACT_SHOT: i32 = 2;
use policyroute_common::names::TC_INGRESS;

/// The question.
#[derive(Clone, Debug)]
pub struct Query {
    /// Arriving on this device; `None`: sent by this host.
    pub iif: Option<String>,
    pub proto: u8,
    pub src: IpAddr,
    pub sport: Option<u16>,
    pub dst: IpAddr,
    pub dport: Option<u16>,
    pub dscp: u8,
}

/// How the mark was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum DecidedBy {
    /// The loaded program, run on the flow's first packet.
    #[serde(rename = "dataplane")]
    Dataplane,
    /// The loaded program, which gave a recorded sticky flow's gateway.
    #[serde(rename = "sticky flow")]
    StickyFlow,
    /// The reference classifier with the socket hooks' semantics (local traffic).
    #[serde(rename = "model")]
    Model,
    /// Nobody: local traffic is not classified without `[attach] local`.
    #[serde(rename = "no socket hooks ([attach] local is off)")]
    NoSocketHooks,
    /// Nobody: no dataplane is loaded in this namespace (nothing applied).
    #[serde(rename = "nothing: no dataplane is loaded here")]
    NoDataplane,
}

impl std::fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The same words as in JSON.
        let json = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
        f.write_str(json.as_str().unwrap_or_default())
    }
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    /// The first matching rule, or null.
    pub rule: Option<String>,
    /// The gateway the rule names, if it names one.
    pub target_gateway: Option<String>,
    /// The packet's mark after classification.
    pub mark: u32,
    /// The routing table the kernel used.
    pub table: u32,
    /// The next hop (null: directly connected or a device route).
    pub gateway: Option<IpAddr>,
    /// The output device.
    pub dev: Option<String>,
    /// The source address the kernel picks for it (prefsrc).
    pub src: Option<IpAddr>,
    pub by: DecidedBy,
    /// The group the rule names, if it names one.
    pub group: Option<String>,
    /// The gateway the flow is given (the rule's gateway, or the group member), if any.
    pub member: Option<String>,
    /// How the gateway or group decided (null for rules with a raw mark).
    pub why: Option<String>,
    /// The flow is dropped: its gateway or group is down with `when_down = "blackhole"`.
    pub dropped: bool,
    /// The fast path forwards it (then `gateway` and `dev` are its next hop and egress
    /// device, and `table` the gateway's table it looked them up in).
    pub forwarded_by_dataplane: bool,
    /// The sets the rule's conditions matched, with the prefix that held the address:
    /// `dst @de (198.18.0.0/15)`.
    pub sets: Vec<String>,
}

/// Which of `m`'s sets hold the query's addresses, and by which (longest) prefix.
fn set_matches(m: &crate::policy::matcher::Match, q: &Query) -> Vec<String> {
    let fields = [("src", &m.src_set, q.src), ("dst", &m.dst_set, q.dst)];
    fields
        .into_iter()
        .filter_map(|(field, set, addr)| {
            let set = set.as_ref()?;
            let prefix = set.set.longest_match(&addr)?;
            Some(format!("{field} @{} ({prefix})", set.name))
        })
        .collect()
}

/// The classification part of the answer.
struct Verdict {
    /// Index of the matching rule in the policy.
    rule: Option<usize>,
    mark: u32,
    by: DecidedBy,
    /// For a rule that names a gateway or group.
    target: Option<TargetVerdict>,
    /// The fast path forwards it: egress ifindex and next hop.
    fast: Option<(u32, IpAddr)>,
}

/// What a gateway or group decided for the flow, and why.
struct TargetVerdict {
    group: Option<String>,
    member: Option<String>,
    why: String,
    dropped: bool,
}

impl Query {
    /// Refuses a question no packet could ask: addresses of two families, an IPv6
    /// extension header as the protocol, or ports for a protocol without them.
    pub fn check(&self) -> Result<(), ControlError> {
        let (src, dst) = (Family::of(&self.src), Family::of(&self.dst));
        if src != dst {
            return Err(ControlError::Question(format!(
                "the source {} is {src} and the destination {} is {dst}: a packet has one \
                 family",
                self.src, self.dst
            )));
        }
        // The classifiers walk past these to the header after them: no IPv6 packet is of
        // such a protocol, and the frame synthesized for it would ask something else.
        if src == Family::V6 && is_ipv6_ext_header(self.proto) {
            return Err(ControlError::Question(format!(
                "protocol {} is an IPv6 extension header, which the classifier passes over \
                 to the protocol after it: ask for that one",
                crate::policy::protocol::name(self.proto)
            )));
        }
        if !policyroute_common::proto_has_ports(self.proto)
            && (self.sport.is_some() || self.dport.is_some())
        {
            return Err(ControlError::Question(format!(
                "protocol {} has no ports: leave out --sport and --dport",
                crate::policy::protocol::name(self.proto)
            )));
        }
        Ok(())
    }

    /// The first packet of the flow, as the loaded program is run on it (a question
    /// [`Query::check`] accepted).
    pub fn frame(&self) -> Vec<u8> {
        let mut spec = FrameSpec::new(
            self.proto,
            self.src,
            self.sport.unwrap_or(0),
            self.dst,
            self.dport.unwrap_or(0),
        );
        spec.dscp = self.dscp;
        spec.build()
    }

    /// The flow as this host's socket hooks see it.
    pub fn local_flow(&self) -> LocalFlow {
        LocalFlow {
            proto: self.proto,
            src: Some(self.src).filter(|a| !a.is_unspecified()),
            sport: self.sport,
            dst: self.dst,
            dport: self.dport,
        }
    }
}

pub async fn explain(q: &Query) -> Result<Explanation, ControlError> {
    q.check()?;
    require_privileges()?;
    let nl = Netlink::new()?;
    let links = nl.links().await?;
    let mut installed = observe::installed(&links, &[])?;
    let (record, states) = match &installed.dataplane {
        Some(dp) => (record_store::read_record(&dp.maps)?, dp.maps.targets()?),
        None => (None, Default::default()),
    };
    let ctx = Context {
        record: record.as_ref(),
        states: &states,
        installed: &mut installed,
    };
    let iif = match &q.iif {
        Some(dev) => {
            Some(index_of(&links, dev).ok_or_else(|| ControlError::NoDevice(dev.clone()))?)
        }
        None => None,
    };
    let verdict = match iif {
        Some(ifindex) => forwarded(q, ifindex, ctx)?,
        None => local(q, ctx),
    };
    let dropped = verdict.target.as_ref().is_some_and(|t| t.dropped);
    let route = if dropped {
        RouteAnswer::default()
    } else {
        let query = route_query(q, iif, verdict.mark);
        nl.route_get(&query)
            .await
            .map_err(|e| ControlError::Route(route_failure(q, &query, &e)))?
    };
    let mut e = explanation(verdict, &route, record.as_ref(), &links);
    e.sets = record
        .as_ref()
        .zip(e.rule.as_ref())
        .and_then(|(r, name)| r.policy.rules.iter().find(|x| &x.name == name))
        .map_or_else(Vec::new, |rule| set_matches(&rule.matcher, q));
    Ok(e)
}

/// What explain reads from the dataplane.
struct Context<'a> {
    record: Option<&'a Record>,
    states: &'a BTreeMap<u32, TargetState>,
    installed: &'a mut Installed,
}

fn index_of(links: &[Link], name: &str) -> Option<u32> {
    links.iter().find(|l| l.name == name).map(|l| l.index)
}

fn rules_of(record: Option<&Record>) -> Vec<Rule> {
    record
        .map(|r| r.policy.classifier_rules())
        .unwrap_or_default()
}

/// A packet arriving on `ifindex`: the loaded program decides, the reference classifier
/// must agree unless a sticky flow's record pinned the mark.
fn forwarded(q: &Query, ifindex: u32, ctx: Context<'_>) -> Result<Verdict, ControlError> {
    if ctx.installed.dataplane.is_none() {
        return Ok(Verdict {
            rule: None,
            mark: 0,
            by: DecidedBy::NoDataplane,
            target: None,
            fast: None,
        });
    }
    let frame = q.frame();
    let ran = run_dataplane(ctx.installed, &frame, ifindex)?;
    let (mark, dropped) = (ran.mark, ran.dropped);
    let rules = rules_of(ctx.record);
    let pkt = classifier::parse(&frame);
    let rule = pkt.and_then(|p| classifier::first_match(&rules, &p));
    let target = match (ctx.record, rule, pkt) {
        (Some(r), Some(i), Some(p)) => {
            let flow = ref_targets::tuple(&p);
            let choice = ctx.installed.dataplane.as_ref().and_then(|dp| {
                // Read only: the same record the program just consulted.
                dp.maps.choices.get(&flow, 0).ok()
            });
            target_verdict(&r.policy, i, ctx.states, p.family, |state, id| {
                let now = observe::monotonic_ns();
                let ttl = u64::from(r.policy.sticky_timeout) * 1_000_000_000;
                ref_targets::decide(state, id, &flow, choice.as_ref(), now, ttl)
            })
        }
        _ => None,
    };
    let mask = ctx.record.map_or(u32::MAX, |r| r.policy.mark_mask);
    let (want, want_drop) = match (&target, rule) {
        (Some((_, d)), _) => (d.mark.unwrap_or(0) & mask, d.mark.is_none()),
        (None, Some(i)) => (rules[i].mark & mask, false),
        (None, None) => (0, false),
    };
    let sticky = ctx
        .record
        .is_some_and(|r| r.policy.gateways.iter().any(|g| g.sticky));
    match ((want, want_drop) == (mark, dropped), sticky) {
        (true, _) => Ok(Verdict {
            rule,
            mark,
            by: DecidedBy::Dataplane,
            target: target.map(|(t, _)| t),
            fast: ran.fast,
        }),
        // The flow's replies are pinned to the gateway it came in through.
        (false, true) if !dropped => Ok(Verdict {
            rule: None,
            mark,
            by: DecidedBy::StickyFlow,
            target: None,
            fast: ran.fast,
        }),
        _ => Err(ControlError::Disagree {
            dataplane: mark,
            reference: want,
        }),
    }
}

/// For rule `index` when it names a gateway or group: the decision `decide` makes with
/// the target's state (for `family`), told as the operator reads it.
fn target_verdict(
    policy: &Policy,
    index: usize,
    states: &BTreeMap<u32, TargetState>,
    family: Family,
    decide: impl FnOnce(Option<&TargetState>, u32) -> ref_targets::Decision,
) -> Option<(TargetVerdict, ref_targets::Decision)> {
    let rule = &policy.rules[index];
    let Target::Gateway(name) = &rule.target else {
        return None;
    };
    let id = TargetIds::of(policy).id(name, rule.when_down)?;
    let state = states.get(&target_key(id, family.index()));
    let d = decide(state, id);
    let members = targets::members_of(policy, name);
    let member = d
        .member
        .and_then(|i| members.get(i))
        .map(|m| m.gateway.clone());
    let story = TargetVerdict {
        group: policy.group(name).map(|g| g.name.clone()),
        why: why(name, &members, state, &d, rule.when_down, family),
        member,
        dropped: d.mark.is_none(),
    };
    Some((story, d))
}

/// The reason, in words: which member, how it was picked, who is down.
fn why(
    name: &str,
    members: &[Member],
    state: Option<&TargetState>,
    d: &ref_targets::Decision,
    when_down: WhenDown,
    family: Family,
) -> String {
    let Some(state) = state else {
        return format!("{name} has no state in the dataplane yet: the main table");
    };
    let down: Vec<&str> = members
        .iter()
        .zip(&state.members)
        .filter(|(_, m)| m.flags & MEMBER_UP == 0)
        .map(|(m, _)| m.gateway.as_str())
        .collect();
    let down = if down.is_empty() || members.len() == 1 {
        String::new()
    } else {
        format!("; down for {family}: {}", down.join(", "))
    };
    let nobody = if members.len() == 1 {
        format!("{name} is down for {family}")
    } else {
        format!("no member of {name} is up for {family}{down}")
    };
    let chosen = d.member.and_then(|i| members.get(i));
    match (d.how, chosen) {
        (How::Slot { slot, moved }, Some(m)) if members.len() > 1 => {
            let total: u32 = members
                .iter()
                .zip(&state.members)
                .filter(|(o, s)| o.tier == m.tier && s.flags & MEMBER_UP != 0)
                .map(|(o, _)| o.weight)
                .sum();
            let stand_in = if moved {
                " (standing in for a member that is down)"
            } else {
                ""
            };
            format!(
                "the flow hash picks slot {slot}: {} of tier {}, weight {} of {total}{stand_in}{down}",
                m.gateway, m.tier, m.weight
            )
        }
        (How::Slot { .. }, Some(m)) => format!("{} is up", m.gateway),
        (How::Record, Some(m)) => format!(
            "a flow record keeps this flow on {} where it was placed{down}",
            m.gateway
        ),
        (How::Record, None) => {
            format!("a flow record keeps this flow on the main table, where it was placed{down}")
        }
        (How::Fallback, _) => format!("{nobody}: when_down = {}, the main table", when_down.name()),
        (How::Blackhole, _) => format!("{nobody}: when_down = blackhole drops it"),
        _ => format!("{name}: the main table"),
    }
}

/// A flow this host sends: the socket hooks' semantics, from the reference classifier.
/// A group spreads sockets by their cookie, unknown here: the answer names the member
/// only when one member is live.
fn local(q: &Query, ctx: Context<'_>) -> Verdict {
    let Some(record) = ctx.record.filter(|r| r.policy.attach.local) else {
        return Verdict {
            rule: None,
            mark: 0,
            by: DecidedBy::NoSocketHooks,
            target: None,
            fast: None,
        };
    };
    let rules = record.policy.classifier_rules();
    let rule = classifier::first_match_local(&rules, &q.local_flow());
    let family = Family::of(&q.dst);
    let target = rule.and_then(|i| {
        let mut t = target_verdict(&record.policy, i, ctx.states, family, |state, id| {
            local_decision(state, id)
        })?;
        if t.1.member.is_none() && t.1.mark.is_some_and(|m| m != 0) {
            // Several live members: the socket's cookie picks one (the route shown is one
            // of them).
            t.0.why = format!(
                "each socket gets a live member of {} by its own hash, weighted; {}",
                t.0.group.as_deref().unwrap_or("the group"),
                t.0.why
            );
        }
        Some(t)
    });
    let mark = match (&target, rule) {
        (Some((_, d)), _) => d.mark.unwrap_or(0),
        (None, Some(i)) => rules[i].mark,
        (None, None) => 0,
    };
    Verdict {
        rule,
        mark: mark & record.policy.mark_mask,
        by: DecidedBy::Model,
        target: target.map(|(t, _)| t),
        fast: None,
    }
}

/// A socket's decision without its cookie: exact when at most one member is live.
fn local_decision(state: Option<&TargetState>, id: u32) -> ref_targets::Decision {
    let probe = FlowTuple::default();
    let mut d = ref_targets::decide(state, id, &probe, None, 0, 0);
    if state.is_some_and(|s| s.live > 1) {
        d.member = None;
    }
    d
}

/// Runs the attached TC ingress program of the dataplane in use on `frame` as if it
/// arrived on `ifindex`, telling it not to count or record; mark 0 in. Returns the mark
/// and whether it dropped the packet. No program: mark 0.
/// What the loaded program did with the synthesized packet.
#[derive(Default)]
struct Ran {
    mark: u32,
    dropped: bool,
    /// The fast path forwarded it: egress ifindex and next hop.
    fast: Option<(u32, IpAddr)>,
}

fn run_dataplane(
    installed: &mut Installed,
    frame: &[u8],
    ifindex: u32,
) -> Result<Ran, ControlError> {
    let Some(info) = installed.take_live_program(TC_INGRESS) else {
        return Ok(Ran::default());
    };
    let prog = testrun::loaded(info).map_err(crate::kernel::dataplane::DataplaneError::from)?;
    let input = testrun::Input {
        mark: 0,
        ifindex,
        explain: true,
    };
    let out = testrun::run(&prog, frame, input, 1)
        .map_err(crate::kernel::dataplane::DataplaneError::from)?;
    Ok(Ran {
        mark: out.mark,
        dropped: out.verdict == TC_ACT_SHOT,
        fast: (out.verdict == FAST_EXPLAIN_FORWARDED).then(|| next_hop(&out.cb)),
    })
}

/// The fast path's answer in `cb`: egress ifindex (`FAST_NH_V6` flags an IPv6 next hop)
/// and the next hop's address words.
fn next_hop(cb: &[u32; 5]) -> (u32, IpAddr) {
    let mut bytes = [0u8; 16];
    for (i, w) in cb[1..].iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let nh = if cb[0] & FAST_NH_V6 != 0 {
        IpAddr::from(bytes)
    } else {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    };
    (cb[0] & !FAST_NH_V6, nh)
}

/// The table of the gateway whose mark the fast path forwarded by.
fn fast_table(record: Option<&Record>, mark: u32) -> u32 {
    record
        .and_then(|r| {
            let p = &r.policy;
            p.gateways.iter().find(|g| g.mark & p.mark_mask == mark)
        })
        .map_or(0, |g| g.table)
}

/// Why the kernel found no route, in the operator's words, with the likely cause for a
/// forwarded flow: forwarding off in this namespace.
fn route_failure(
    q: &Query,
    query: &RouteQuery,
    e: &crate::kernel::netlink::NetlinkError,
) -> String {
    use crate::kernel::netlink::NetlinkError;
    let cause = match e {
        NetlinkError::Kernel { source, .. } => source.to_string(),
        NetlinkError::NotFound { .. } => "no such route".into(),
        other => other.to_string(),
    };
    let mut s = format!(
        "the kernel has no route for {} -> {} (mark {:#x}{}): {cause}",
        q.src,
        q.dst,
        query.mark,
        q.iif
            .as_deref()
            .map_or(String::new(), |d| format!(", arriving on {d}"))
    );
    if q.iif.is_some() {
        let (file, key) = match q.dst {
            IpAddr::V4(_) => ("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"),
            IpAddr::V6(_) => (
                "/proc/sys/net/ipv6/conf/all/forwarding",
                "net.ipv6.conf.all.forwarding",
            ),
        };
        if std::fs::read_to_string(file).is_ok_and(|v| v.trim() == "0") {
            s.push_str(&format!(
                "; forwarding is off in this namespace ({key} = 0), so nothing arriving on a \
                 device is routed"
            ));
        }
    }
    s
}

fn route_query(q: &Query, iif: Option<u32>, mark: u32) -> RouteQuery {
    RouteQuery {
        dst: q.dst,
        src: Some(q.src).filter(|a| !a.is_unspecified()),
        iif,
        mark,
        proto: Some(q.proto),
        sport: q.sport,
        dport: q.dport,
    }
}

fn explanation(
    verdict: Verdict,
    route: &RouteAnswer,
    record: Option<&Record>,
    links: &[Link],
) -> Explanation {
    let rule = verdict.rule.and_then(|i| record?.policy.rules.get(i));
    let target = verdict.target;
    let fast_route;
    let route = match verdict.fast {
        None => route,
        Some((oif, nh)) => {
            fast_route = RouteAnswer {
                table: fast_table(record, verdict.mark),
                gateway: Some(nh),
                oif: Some(oif),
                prefsrc: None,
            };
            &fast_route
        }
    };
    Explanation {
        forwarded_by_dataplane: verdict.fast.is_some(),
        group: target.as_ref().and_then(|t| t.group.clone()),
        member: target.as_ref().and_then(|t| t.member.clone()),
        why: target.as_ref().map(|t| t.why.clone()),
        dropped: target.as_ref().is_some_and(|t| t.dropped),
        rule: rule.map(|r| r.name.clone()),
        target_gateway: rule.and_then(|r| match &r.target {
            Target::Gateway(g) => Some(g.clone()),
            Target::Mark(_) => None,
        }),
        mark: verdict.mark,
        table: route.table,
        gateway: route.gateway,
        dev: route
            .oif
            .and_then(|o| links.iter().find(|l| l.index == o).map(|l| l.name.clone())),
        src: route.prefsrc,
        by: verdict.by,
        sets: Vec::new(),
    }
}
