//! Gateway health checks: probes through each gateway (ICMP echo or TCP connect, with the
//! gateway's fwmark and bound to its device, so they take the gateway's path), a
//! [`detector::Detector`] per check deciding up and down, and a [`Monitor`] running one
//! task per check and sending every change.
use std::{
    fmt,
    net::IpAddr,
    sync::{Arc, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{sync::mpsc::UnboundedSender, task::JoinHandle};

pub use crate::policy::matcher::Family;

mod check;
pub mod detector;
mod icmp;
mod probe;
pub mod stats;
mod tcp;
#[cfg(test)]
mod tests;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Icmp,
    Tcp(u16),
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Icmp => f.write_str("icmp"),
            Method::Tcp(port) => write!(f, "tcp:{port}"),
        }
    }
}

/// One gateway's check for one address family.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckSpec {
    pub gateway: String,
    pub family: Family,
    /// The gateway's device: probe sockets bind to it (SO_BINDTODEVICE).
    pub dev: String,
    /// The gateway's fwmark: probe sockets set SO_MARK to it, so they are routed by the
    /// gateway's table.
    pub mark: u32,
    /// All of `family`, at least one.
    pub targets: Vec<IpAddr>,
    pub method: Method,
    /// Time between rounds.
    pub interval: Duration,
    /// How long a round may wait for an answer.
    pub timeout: Duration,
    /// Probes per target per round.
    pub count: u32,
    /// Consecutive missed rounds that take an up gateway down.
    pub down: u32,
    /// Consecutive answered rounds that bring a down gateway up.
    pub up: u32,
}

impl CheckSpec {
    /// Probes per round.
    pub fn probes(&self) -> u32 {
        self.count.max(1) * (self.targets.len() as u32).max(1)
    }
}

/// A change of a check's state.
#[derive(Clone, Debug)]
pub struct Transition {
    pub gateway: String,
    pub family: Family,
    pub up: bool,
    pub at: SystemTime,
    /// E.g. "3 rounds without an answer from 198.18.0.53 (icmp)", "3 rounds answered",
    /// "3 rounds failed (tcp:443): 198.51.100.2 refused".
    pub reason: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckReport {
    pub gateway: String,
    #[serde(serialize_with = "family_name")]
    pub family: Family,
    pub up: bool,
    /// Unix seconds of the last change, or of the start.
    pub since: u64,
    /// Lost probes over the last 20 finished rounds, in percent.
    pub loss_percent: f64,
    /// Mean round-trip time of the answers over the last 20 rounds.
    pub rtt_ms: Option<f64>,
    pub rounds: u64,
    pub transitions: u64,
}

fn family_name<S: serde::Serializer>(family: &Family, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(family.name())
}

/// Runs the checks, one tokio task each.
pub struct Monitor {
    tx: UnboundedSender<Transition>,
    checks: Vec<Check>,
}

struct Check {
    spec: CheckSpec,
    status: check::Shared,
    task: JoinHandle<()>,
}

impl Check {
    fn start(spec: CheckSpec, tx: &UnboundedSender<Transition>, up: bool) -> Self {
        let status = Arc::new(std::sync::Mutex::new(check::Status::new(up)));
        let task = tokio::spawn(check::run(
            Arc::new(spec.clone()),
            status.clone(),
            tx.clone(),
        ));
        Self { spec, status, task }
    }

    fn status(&self) -> check::Status {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Monitor {
    /// Starts one tokio task per spec (call inside a tokio runtime). Every state change is
    /// sent on `tx`. Initial state is up (optimistic, like mwan3's default): only failures
    /// produce the first transition.
    pub fn start(specs: Vec<CheckSpec>, tx: UnboundedSender<Transition>) -> Monitor {
        Self::start_from(specs, tx, &|_| true)
    }

    /// [`Monitor::start`] with each check beginning in the state `initially_up` gives it
    /// (the verdict the dataplane holds, for a restarted daemon).
    pub fn start_from(
        specs: Vec<CheckSpec>,
        tx: UnboundedSender<Transition>,
        initially_up: &dyn Fn(&CheckSpec) -> bool,
    ) -> Monitor {
        let mut monitor = Monitor {
            tx,
            checks: Vec::new(),
        };
        monitor.replace_from(specs, initially_up);
        monitor
    }

    /// After a policy reload: specs equal to running ones keep their task and state; others
    /// are stopped/started (a started check begins up again). Call inside a tokio runtime.
    pub fn replace(&mut self, specs: Vec<CheckSpec>) {
        self.replace_from(specs, &|_| true);
    }

    /// [`Monitor::replace`] with new checks beginning in the state `initially_up` gives.
    pub fn replace_from(
        &mut self,
        specs: Vec<CheckSpec>,
        initially_up: &dyn Fn(&CheckSpec) -> bool,
    ) {
        let mut old = std::mem::take(&mut self.checks);
        for spec in specs {
            match old.iter().position(|c| c.spec == spec) {
                Some(i) => self.checks.push(old.swap_remove(i)),
                None => {
                    let up = initially_up(&spec);
                    self.checks.push(Check::start(spec, &self.tx, up));
                }
            }
        }
        for check in old {
            check.task.abort();
        }
    }

    /// A snapshot of every check, in the order of the specs.
    pub fn reports(&self) -> Vec<CheckReport> {
        self.checks
            .iter()
            .map(|c| {
                let status = c.status();
                CheckReport {
                    gateway: c.spec.gateway.clone(),
                    family: c.spec.family,
                    up: status.up,
                    since: unix_seconds(status.since),
                    loss_percent: status.stats.loss_percent,
                    rtt_ms: status.stats.rtt_ms,
                    rounds: status.stats.rounds,
                    transitions: status.transitions,
                }
            })
            .collect()
    }

    /// Whether `gateway` is up for `family`; `None`: not checked.
    pub fn is_up(&self, gateway: &str, family: Family) -> Option<bool> {
        self.checks
            .iter()
            .find(|c| c.spec.gateway == gateway && c.spec.family == family)
            .map(|c| c.status().up)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for check in &self.checks {
            check.task.abort();
        }
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
