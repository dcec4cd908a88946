//! `policyroute explain`: which rule a flow matches, the mark it gets, and the route the
//! kernel then takes. For traffic arriving on a device, the loaded program itself runs on
//! a synthesized packet (BPF_PROG_TEST_RUN, counters untouched), so explain cannot disagree
//! with the dataplane; the reference model is asked too and must agree. For local traffic
//! the reference model answers with the socket hook's semantics.
use std::net::IpAddr;

use policyroute_common::{EXPLAIN_MAGIC, SKB_MARK_OFFSET};
use serde::Serialize;

use super::{current, record::Record, require_privileges, ControlError};
use crate::{
    bpfcall,
    dataplane::TC_INGRESS,
    frame::FrameSpec,
    model::{self, LocalFlow},
    netlink::{Netlink, RouteQuery},
};

/// `sizeof(struct __sk_buff)` and the offsets explain sets in it.
const SKB_CTX_SIZE: usize = 192;
const SKB_IFINDEX_OFFSET: usize = 40;
const SKB_CB_OFFSET: usize = 48;

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
    /// How the mark was found: `dataplane` (the loaded program) or `model` (local traffic).
    pub by: &'static str,
}

pub async fn explain(q: &Query) -> Result<Explanation, ControlError> {
    require_privileges()?;
    let nl = Netlink::new()?;
    let links = nl.links().await?;
    let index = |name: &str| links.iter().find(|l| l.name == name).map(|l| l.index);
    let cur = current(&nl, &[]).await?;
    let record = match &cur.dataplane {
        Some(dp) => Record::read(&dp.maps)?,
        None => None,
    };
    let rules = record
        .as_ref()
        .map(|r| r.policy.classifier_rules())
        .unwrap_or_default();
    let (rule, mark, by) = match &q.iif {
        Some(dev) => {
            let ifindex = index(dev).ok_or_else(|| no_device(dev))?;
            let frame = frame(q);
            let mark = run_dataplane(&cur, &frame, ifindex)?;
            let rule = model::parse(&frame).and_then(|p| model::first_match(&rules, &p));
            let mask = record.as_ref().map_or(u32::MAX, |r| r.policy.mark_mask);
            let want = model::mark_after(&rules, mask, &frame, 0);
            let sticky = record
                .as_ref()
                .is_some_and(|r| r.policy.gateways.iter().any(|g| g.sticky));
            match (want == mark, sticky) {
                (true, _) => (rule, mark, "dataplane"),
                // The flow's replies are pinned to the gateway it came in through.
                (false, true) => (None, mark, "sticky flow"),
                (false, false) => {
                    return Err(ControlError::Disagree {
                        dataplane: mark,
                        model: want,
                    })
                }
            }
        }
        None => {
            let flow = LocalFlow {
                proto: q.proto,
                src: Some(q.src).filter(|a| !a.is_unspecified()),
                sport: q.sport,
                dst: q.dst,
                dport: q.dport,
            };
            let local = record.as_ref().is_some_and(|r| r.policy.attach.local);
            if local {
                let rule = model::first_match_local(&rules, &flow);
                let mask = record.as_ref().map_or(u32::MAX, |r| r.policy.mark_mask);
                (rule, rule.map_or(0, |i| rules[i].mark & mask), "model")
            } else {
                (None, 0, "no socket hooks ([attach] local is off)")
            }
        }
    };
    let query = RouteQuery {
        dst: q.dst,
        src: Some(q.src).filter(|a| !a.is_unspecified()),
        iif: match &q.iif {
            Some(dev) => index(dev),
            None => None,
        },
        mark,
        proto: Some(q.proto),
        sport: q.sport,
        dport: q.dport,
    };
    let route = nl.route_get(&query).await?;
    let target_gateway = rule.and_then(|i| {
        let r = &record.as_ref()?.policy.rules[i];
        match &r.target {
            crate::config::Target::Gateway(g) => Some(g.clone()),
            crate::config::Target::Mark(_) => None,
        }
    });
    Ok(Explanation {
        rule: rule.map(|i| rules[i].name.clone()),
        target_gateway,
        mark,
        table: route.table,
        gateway: route.gateway,
        dev: route
            .oif
            .and_then(|o| links.iter().find(|l| l.index == o).map(|l| l.name.clone())),
        src: route.prefsrc,
        by,
    })
}

fn no_device(dev: &str) -> ControlError {
    ControlError::Io {
        what: format!("device {dev}"),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
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

/// Runs the attached TC ingress program on `frame` as if it arrived on `ifindex`. The
/// context's cb[0] tells it not to count or record; mark 0 in.
fn run_dataplane(cur: &super::Current, frame: &[u8], ifindex: u32) -> Result<u32, ControlError> {
    // The program of the dataplane in use (a stale one may linger on another device).
    let live = cur.dataplane.as_ref().map(|dp| dp.rules_map_id);
    let Some(attached) = cur
        .attached
        .iter()
        .find(|a| a.hook.program() == TC_INGRESS && live.is_some_and(|id| a.uses_map(id)))
    else {
        return Ok(0);
    };
    let fd = attached
        .program
        .fd()
        .map_err(|e| ControlError::Dataplane(crate::dataplane::DataplaneError::Program(e)))?;
    let mut ctx = [0u8; SKB_CTX_SIZE];
    ctx[SKB_IFINDEX_OFFSET..SKB_IFINDEX_OFFSET + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[SKB_CB_OFFSET..SKB_CB_OFFSET + 4].copy_from_slice(&EXPLAIN_MAGIC.to_ne_bytes());
    use std::os::fd::AsFd;
    bpfcall::prog_test_run(fd.as_fd(), frame, &mut ctx)
        .map_err(ControlError::io("BPF_PROG_TEST_RUN"))?;
    Ok(u32::from_ne_bytes(
        ctx[SKB_MARK_OFFSET..SKB_MARK_OFFSET + 4]
            .try_into()
            .expect("four bytes"),
    ))
}
