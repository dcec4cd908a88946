//! `policyroute explain`: which rule a flow matches, the mark it gets, and the route the
//! kernel then takes. For traffic arriving on a device, the loaded program itself runs on
//! a synthesized packet (BPF_PROG_TEST_RUN, counters untouched), so explain cannot disagree
//! with the dataplane; the reference classifier is asked too and must agree. For local
//! traffic the reference classifier answers with the socket hook's semantics.
use std::net::IpAddr;

use serde::Serialize;

use super::{require_privileges, ControlError};
use crate::{
    kernel::{
        netlink::{Link, Netlink, RouteAnswer, RouteQuery},
        observe::{self, Installed},
        record_store, testrun,
    },
    plan::record::Record,
    policy::{matcher::Rule, Target},
    reference::{
        classifier::{self, LocalFlow},
        frame::FrameSpec,
    },
};
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
}

/// The classification part of the answer.
struct Verdict {
    /// Index of the matching rule in the policy.
    rule: Option<usize>,
    mark: u32,
    by: DecidedBy,
}

pub async fn explain(q: &Query) -> Result<Explanation, ControlError> {
    require_privileges()?;
    let nl = Netlink::new()?;
    let links = nl.links().await?;
    let mut installed = observe::installed(&links, &[])?;
    let record = match &installed.dataplane {
        Some(dp) => record_store::read_record(&dp.maps)?,
        None => None,
    };
    let iif = match &q.iif {
        Some(dev) => {
            Some(index_of(&links, dev).ok_or_else(|| ControlError::NoDevice(dev.clone()))?)
        }
        None => None,
    };
    let verdict = match iif {
        Some(ifindex) => forwarded(q, ifindex, &mut installed, record.as_ref())?,
        None => local(q, record.as_ref()),
    };
    let route = nl.route_get(&route_query(q, iif, verdict.mark)).await?;
    Ok(explanation(verdict, &route, record.as_ref(), &links))
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
fn forwarded(
    q: &Query,
    ifindex: u32,
    installed: &mut Installed,
    record: Option<&Record>,
) -> Result<Verdict, ControlError> {
    let frame = frame(q);
    let mark = run_dataplane(installed, &frame, ifindex)?;
    let rules = rules_of(record);
    let mask = record.map_or(u32::MAX, |r| r.policy.mark_mask);
    let want = classifier::mark_after(&rules, mask, &frame, 0);
    let sticky = record.is_some_and(|r| r.policy.gateways.iter().any(|g| g.sticky));
    let rule = classifier::parse(&frame).and_then(|p| classifier::first_match(&rules, &p));
    match (want == mark, sticky) {
        (true, _) => Ok(Verdict {
            rule,
            mark,
            by: DecidedBy::Dataplane,
        }),
        // The flow's replies are pinned to the gateway it came in through.
        (false, true) => Ok(Verdict {
            rule: None,
            mark,
            by: DecidedBy::StickyFlow,
        }),
        (false, false) => Err(ControlError::Disagree {
            dataplane: mark,
            reference: want,
        }),
    }
}

/// A flow this host sends: the socket hooks' semantics, from the reference classifier.
fn local(q: &Query, record: Option<&Record>) -> Verdict {
    let Some(record) = record.filter(|r| r.policy.attach.local) else {
        return Verdict {
            rule: None,
            mark: 0,
            by: DecidedBy::NoSocketHooks,
        };
    };
    let flow = LocalFlow {
        proto: q.proto,
        src: Some(q.src).filter(|a| !a.is_unspecified()),
        sport: q.sport,
        dst: q.dst,
        dport: q.dport,
    };
    let rules = record.policy.classifier_rules();
    let rule = classifier::first_match_local(&rules, &flow);
    Verdict {
        rule,
        mark: rule.map_or(0, |i| rules[i].mark & record.policy.mark_mask),
        by: DecidedBy::Model,
    }
}

fn frame(q: &Query) -> Vec<u8> {
    let mut spec = FrameSpec::new(
        q.proto,
        q.src,
        q.sport.unwrap_or(0),
        q.dst,
        q.dport.unwrap_or(0),
    );
    spec.dscp = q.dscp;
    spec.build()
}

/// Runs the attached TC ingress program of the dataplane in use on `frame` as if it
/// arrived on `ifindex`, telling it not to count or record; mark 0 in. No program: mark 0.
fn run_dataplane(
    installed: &mut Installed,
    frame: &[u8],
    ifindex: u32,
) -> Result<u32, ControlError> {
    let Some(info) = installed.take_live_program(TC_INGRESS) else {
        return Ok(0);
    };
    let prog = testrun::loaded(info).map_err(crate::kernel::dataplane::DataplaneError::from)?;
    let input = testrun::Input {
        mark: 0,
        ifindex,
        explain: true,
    };
    let out = testrun::run(&prog, frame, input, 1)
        .map_err(crate::kernel::dataplane::DataplaneError::from)?;
    Ok(out.mark)
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
    Explanation {
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
    }
}
