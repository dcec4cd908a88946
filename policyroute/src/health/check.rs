//! The task of one check: starts a round every interval, feeds the probes' events to the
//! [`Detector`], publishes the state for reports and sends every change.
use std::{
    future::Future,
    process,
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, SystemTime},
};

use futures::{stream::FuturesUnordered, StreamExt};
use tokio::{
    sync::mpsc::{self, UnboundedSender},
    time::{interval, sleep_until, Instant, MissedTickBehavior},
};
use tracing::{info, warn};

use super::{
    detector::{Cause, Change, Detector, Params, RoundId},
    probe::{self, Event, Outcome, ProbeError, Round},
    stats::Stats,
    CheckSpec, Transition,
};

const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// What [`super::Monitor::reports`] reads of a running check.
#[derive(Clone, Debug)]
pub(super) struct Status {
    pub up: bool,
    pub since: SystemTime,
    pub transitions: u64,
    pub stats: Stats,
}

impl Status {
    pub fn new(up: bool) -> Self {
        Self {
            up,
            since: SystemTime::now(),
            transitions: 0,
            stats: Stats::default(),
        }
    }
}

pub(super) type Shared = Arc<Mutex<Status>>;

/// Distinct ICMP identifiers for the checks of this process, and unlike those of other
/// processes (ping uses its pid too).
static NEXT_IDENT: AtomicU16 = AtomicU16::new(0);

fn icmp_ident() -> u16 {
    let n = NEXT_IDENT.fetch_add(1, Ordering::Relaxed);
    (process::id() as u16).wrapping_add(n.wrapping_mul(0x9e37))
}

pub(super) async fn run(spec: Arc<CheckSpec>, status: Shared, tx: UnboundedSender<Transition>) {
    let (events, mut received) = mpsc::unbounded_channel::<Event>();
    // tokio's interval panics on a zero period; a check must never take the daemon down.
    let mut ticks = interval(spec.interval.max(MIN_INTERVAL));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let up = status.lock().unwrap_or_else(PoisonError::into_inner).up;
    let mut checker = Checker::new(spec, events, up);
    let mut rounds = FuturesUnordered::new();
    loop {
        let deadline = checker.next_deadline();
        tokio::select! {
            // Events first: an answer that came before its timeout counts even when the
            // timeout is due as well.
            biased;
            Some(event) = received.recv() => checker.record(event),
            Some((id, result)) = rounds.next(), if !rounds.is_empty() => checker.ended(id, result),
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
            _ = ticks.tick() => rounds.push(checker.start_round()),
        }
        if let Some(transition) = checker.evaluate(&status) {
            // A monitor dropped its receiver only when nobody listens any more.
            let _ = tx.send(transition);
        }
    }
}

/// The state of a check's task between events.
struct Checker {
    spec: Arc<CheckSpec>,
    /// Time zero of the detector.
    origin: Instant,
    detector: Detector,
    events: UnboundedSender<Event>,
    icmp_ident: u16,
    next_seq: u16,
    trouble: Trouble,
}

impl Checker {
    fn new(spec: Arc<CheckSpec>, events: UnboundedSender<Event>, up: bool) -> Self {
        Self {
            detector: Detector::starting(params(&spec), up),
            spec,
            origin: Instant::now(),
            events,
            icmp_ident: icmp_ident(),
            next_seq: 0,
            trouble: Trouble::default(),
        }
    }

    fn since(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.origin)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let now = self.since(Instant::now());
        Some(self.origin + self.detector.next_deadline(now)?)
    }

    /// Starts a round now; the future probes it to its end.
    fn start_round(&mut self) -> impl Future<Output = (RoundId, Result<(), ProbeError>)> {
        let start = Instant::now();
        let id = self.detector.start_round(self.since(start));
        let round = Round {
            id,
            start,
            spec: self.spec.clone(),
            events: self.events.clone(),
        };
        let first_seq = self.next_seq;
        let probes = u16::try_from(self.spec.probes()).unwrap_or(u16::MAX);
        self.next_seq = self.next_seq.wrapping_add(probes);
        probe::run(round, self.icmp_ident, first_seq)
    }

    fn record(&mut self, event: Event) {
        let at = self.since(event.at);
        match event.outcome {
            Outcome::Answer(rtt) => self.detector.answer(event.round, at, rtt),
            Outcome::Failed(reason) => self.detector.fail(event.round, at, reason),
        }
    }

    /// A round ended; one that could not probe at all is a miss.
    fn ended(&mut self, id: RoundId, result: Result<(), ProbeError>) {
        match result {
            Ok(()) => self.trouble.worked(&self.spec),
            Err(e) => {
                let e = e.to_string();
                self.trouble.failed(&self.spec, &e);
                self.detector.fail_round(id, self.since(Instant::now()), e);
            }
        }
    }

    /// Decides now, publishes the state and returns the change to send, if any.
    fn evaluate(&mut self, status: &Shared) -> Option<Transition> {
        let now = self.since(Instant::now());
        let change = self.detector.evaluate(now);
        publish(status, &self.detector, now, change.as_ref());
        change.map(|c| transition(&self.spec, c))
    }
}

fn params(spec: &CheckSpec) -> Params {
    Params {
        interval: spec.interval,
        timeout: spec.timeout,
        probes: spec.probes(),
        down: spec.down,
        up: spec.up,
    }
}

fn publish(status: &Shared, detector: &Detector, now: Duration, change: Option<&Change>) {
    let mut status = status.lock().unwrap_or_else(PoisonError::into_inner);
    status.stats = detector.stats(now);
    if let Some(change) = change {
        status.up = change.up;
        status.since = SystemTime::now();
        status.transitions += 1;
    }
}

fn transition(spec: &CheckSpec, change: Change) -> Transition {
    Transition {
        gateway: spec.gateway.clone(),
        family: spec.family,
        up: change.up,
        at: SystemTime::now(),
        reason: reason(spec, &change.cause),
    }
}

/// "3 rounds without an answer from 198.18.0.53 (icmp)", "3 rounds failed (tcp:443):
/// 198.51.100.2 refused", "3 rounds answered".
pub(super) fn reason(spec: &CheckSpec, cause: &Cause) -> String {
    match cause {
        Cause::Answered { rounds } => format!("{rounds} rounds answered"),
        Cause::Missed {
            rounds,
            failure: Some(failure),
            explicit: true,
        } => format!("{rounds} rounds failed ({}): {failure}", spec.method),
        Cause::Missed {
            rounds, failure, ..
        } => {
            let targets: Vec<String> = spec.targets.iter().map(ToString::to_string).collect();
            let last = failure
                .as_ref()
                .map(|f| format!("; last error: {f}"))
                .unwrap_or_default();
            format!(
                "{rounds} rounds without an answer from {} ({}){last}",
                targets.join(", "),
                spec.method
            )
        }
    }
}

/// Remembers the problem that keeps a check from probing, so it is logged when it starts
/// and when it ends rather than every round.
#[derive(Default)]
struct Trouble {
    current: Option<String>,
}

impl Trouble {
    fn failed(&mut self, spec: &CheckSpec, error: &str) {
        if self.current.as_deref() != Some(error) {
            warn!(
                "health check of {} ({}) cannot probe, its rounds count as missed: {error}",
                spec.gateway, spec.family
            );
            self.current = Some(error.to_owned());
        }
    }

    fn worked(&mut self, spec: &CheckSpec) {
        if self.current.take().is_some() {
            info!(
                "health check of {} ({}) probes again",
                spec.gateway, spec.family
            );
        }
    }
}
