//! `run --metrics ADDR:PORT`: `/metrics` in the Prometheus text format. Per-rule packets and
//! bytes are read from the kernel at each scrape (what `status` shows); the daemon's own
//! work is counted as it happens.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicI64, AtomicU64},
        Arc,
    },
};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use super::status;
use crate::policy::matcher::Family as PolicyFamily;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GatewayLabel {
    gateway: String,
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabel {
    gateway: String,
    family: String,
    state: String,
}

/// The daemon's counters.
#[derive(Default)]
pub struct Metrics {
    reconciles: Counter,
    repairs: Family<KindLabel, Counter>,
    errors: Counter,
    last_apply: Gauge<i64, AtomicI64>,
    gateway_up: Family<GatewayLabel, Gauge>,
    transitions: Family<TransitionLabel, Counter>,
}

impl Metrics {
    pub fn reconciled(&self) {
        self.reconciles.inc();
    }

    /// `count` objects of `kind` (route, ip_rule, hook, classifier_entries) put right.
    pub fn repaired(&self, kind: &str, count: u64) {
        let label = KindLabel { kind: kind.into() };
        self.repairs.get_or_create(&label).inc_by(count);
    }

    pub fn failed(&self) {
        self.errors.inc();
    }

    /// A gateway's health for a family; `transition`: it just changed to this.
    pub fn gateway(&self, gateway: &str, family: PolicyFamily, up: bool, transition: bool) {
        let family = family.name().to_owned();
        let label = GatewayLabel {
            gateway: gateway.to_owned(),
            family: family.clone(),
        };
        self.gateway_up.get_or_create(&label).set(i64::from(up));
        if transition {
            let state = if up { "up" } else { "down" };
            let label = TransitionLabel {
                gateway: gateway.to_owned(),
                family,
                state: state.to_owned(),
            };
            self.transitions.get_or_create(&label).inc();
        }
    }

    /// A policy was applied (at start or on reload), at this Unix time.
    pub fn applied(&self, unix_seconds: u64) {
        self.last_apply
            .set(i64::try_from(unix_seconds).unwrap_or(i64::MAX));
    }

    /// The exposition: the daemon's metrics and the rules' counters now.
    pub async fn render(&self) -> String {
        let mut registry = Registry::with_prefix("policyroute");
        registry.register(
            "reconciles",
            "Reconcile passes (start, network events, reloads, periodic)",
            self.reconciles.clone(),
        );
        registry.register(
            "repairs",
            "Objects added, replaced or removed to make the kernel match the policy",
            self.repairs.clone(),
        );
        registry.register(
            "errors",
            "Reconcile passes and reloads that failed",
            self.errors.clone(),
        );
        registry.register(
            "gateway_up",
            "1 while the gateway is up for the family (carrier, and its check passes)",
            self.gateway_up.clone(),
        );
        registry.register(
            "gateway_transitions",
            "Times the gateway went up or down for the family",
            self.transitions.clone(),
        );
        registry.register(
            "last_apply_timestamp_seconds",
            "Unix time the policy in force was applied",
            self.last_apply.clone(),
        );
        let packets = Family::<RuleLabel, Counter>::default();
        let bytes = Family::<RuleLabel, Counter>::default();
        let loss = Family::<GatewayLabel, Gauge<f64, AtomicU64>>::default();
        let rtt = Family::<GatewayLabel, Gauge<f64, AtomicU64>>::default();
        match status::status(false).await {
            Ok(s) => {
                for r in &s.rules {
                    let label = RuleLabel {
                        rule: r.name.clone(),
                    };
                    packets.get_or_create(&label).inc_by(r.packets);
                    bytes.get_or_create(&label).inc_by(r.bytes);
                }
                for g in &s.gateways {
                    for (family, h) in &g.health {
                        let label = GatewayLabel {
                            gateway: g.name.clone(),
                            family: (*family).to_owned(),
                        };
                        if let Some(l) = h.loss_percent {
                            loss.get_or_create(&label).set(l / 100.0);
                        }
                        if let Some(ms) = h.rtt_ms {
                            rtt.get_or_create(&label).set(ms / 1000.0);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("metrics: reading the rule counters: {e}"),
        }
        registry.register("rule_packets", "Packets a rule classified", packets);
        registry.register("rule_bytes", "Bytes a rule classified", bytes);
        registry.register(
            "gateway_probe_loss_ratio",
            "Health-check probes lost over the check's last 20 rounds",
            loss,
        );
        registry.register(
            "gateway_probe_rtt_seconds",
            "Mean round-trip time of the check's answers over its last 20 rounds",
            rtt,
        );
        let mut out = String::new();
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

/// `PORT` binds to loopback; `ADDR:PORT` as given.
pub fn listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|_| format!("{text:?} is not PORT or ADDRESS:PORT"))
}

/// Serves `/metrics` on `listener` until the process exits.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, metrics.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond<B>(
    req: Request<B>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = if req.uri().path() == "/metrics" {
        Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(metrics.render().await)))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(
                b"only /metrics is served here\n",
            )))
    };
    Ok(response.expect("a valid response"))
}
