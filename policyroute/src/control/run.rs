//! `policyroute run`: apply the policy file, then keep the kernel matching it while the
//! network changes. Every relevant rtnetlink event (links, addresses, routes, rules) leads,
//! debounced, to one more pass of observe → plan → execute; a periodic pass is the safety
//! net for what sends no event (a hook removed by hand). SIGHUP re-reads the file; SIGTERM
//! and SIGINT exit and leave the dataplane in place.
//!
//! It also runs the gateways' health checks (`health`); a verdict that changes switches
//! uplinks at once through the dataplane's target states (`failover`), without a pass.
//!
//! Routes and ip rules of others in the policy's way (`plan::foreign`) are refused at the
//! start, as `apply` refuses them (`--adopt` takes them over then). What appears later is
//! left in place and reported, once per change, as a warning in the log, in the systemd
//! status line and (as drift) in `status` and `check`: taking it over would fight another
//! tool, and ignoring it would hide why traffic goes astray.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{
    net::TcpListener,
    signal::unix::{signal, Signal, SignalKind},
    sync::mpsc::UnboundedReceiver,
    time::{sleep_until, Instant},
};
use tracing::{error, info, warn};

use super::{
    apply::{reconcile, OnForeign, Pass, Report, Source},
    failover::{check_specs, Checks, Switchboard},
    flush::{self, FlushReport},
    metrics::{self, Metrics},
    require_privileges, ControlError, Options,
};
use crate::{
    health::{CheckReport, CheckSpec, Monitor, Transition},
    kernel::{
        daemon_file::{DaemonFile, DaemonState, GatewayCheck},
        events::Events,
        netlink::Netlink,
        KernelError,
    },
    plan::Devices,
    policy::{incremental::Digests, Policy},
};

/// A burst of events is handled once: a pass starts when events have been quiet this
/// long, or at the latest `DEBOUNCE_MAX` after the first.
const DEBOUNCE_QUIET: Duration = Duration::from_millis(50);
const DEBOUNCE_MAX: Duration = Duration::from_millis(250);
/// The safety net: a full pass this often even without events.
const PERIOD: Duration = Duration::from_secs(30);
/// How often the daemon file gets the checks' latest loss and RTT for `status`.
const PUBLISH: Duration = Duration::from_secs(1);
/// A failed pass is tried again after this, doubling up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

pub struct RunOptions {
    pub config: PathBuf,
    /// Flush everything on SIGTERM/SIGINT instead of leaving the dataplane in place.
    pub flush_on_exit: bool,
    /// Serve `/metrics` here.
    pub metrics: Option<SocketAddr>,
    /// Take over others' routes and rules in the policy's way at the start.
    pub adopt: bool,
    /// How reports read in the log.
    pub wording: Wording,
}

/// The text forms of the reports the daemon logs, one line per change. They belong to the
/// presentation layer, which hands them down: control does not import it.
#[derive(Clone, Copy)]
pub struct Wording {
    pub apply: fn(&Report) -> String,
    pub flush: fn(&FlushReport) -> String,
}

/// What the daemon keeps between passes.
struct Daemon<'a> {
    opts: &'a Options,
    config: PathBuf,
    source: String,
    nl: Netlink,
    policy: Policy,
    /// The policy file's digests, for reading it again quickly on SIGHUP.
    digests: Option<Digests>,
    metrics: Arc<Metrics>,
    file: DaemonFile,
    state: DaemonState,
    /// When to try again after a failed pass.
    retry: Option<(Instant, Duration)>,
    /// Devices the last pass waited for, `dev (reason)`.
    waiting: Vec<String>,
    ready: bool,
    /// The gateways' health checks, and their verdicts so far.
    monitor: Monitor,
    checks: Checks,
    /// From the last pass: what a verdict change writes.
    board: Option<Switchboard>,
    /// What a pass does about others' objects in the way: refuse or adopt until the start
    /// is done, then leave.
    on_foreign: OnForeign,
    /// Others' objects the last pass left in place, as reported.
    foreign: Vec<String>,
    /// A pass refused: the daemon exits with this.
    refused: Option<usize>,
    wording: Wording,
}

pub async fn run(opts: &Options, run: &RunOptions) -> Result<(), ControlError> {
    require_privileges()?;
    let (policy, digests) = Policy::load_again(&run.config, &opts.tables()?, None)?;
    let state = DaemonState {
        pid: std::process::id(),
        started: unix_now(),
        ..DaemonState::default()
    };
    let file = DaemonFile::claim(&state)?;
    // Subscribed before the first pass, so no change between it and the loop is missed.
    let mut events = Events::subscribe()?;
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = run.metrics {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(KernelError::io(format!("listening on {addr}")))?;
        info!("serving metrics on http://{addr}/metrics");
        tokio::spawn(metrics::serve(listener, metrics.clone()));
    }
    let (tx, mut transitions) = tokio::sync::mpsc::unbounded_channel();
    // Checks start after the first pass, from the verdicts the dataplane holds.
    let monitor = Monitor::start(Vec::new(), tx);
    let mut daemon = Daemon {
        monitor,
        checks: Checks::new(),
        board: None,
        opts,
        config: run.config.clone(),
        source: run.config.display().to_string(),
        nl: Netlink::new()?,
        policy,
        digests,
        metrics,
        file,
        state,
        retry: None,
        waiting: Vec::new(),
        ready: false,
        on_foreign: match run.adopt {
            true => OnForeign::Adopt,
            false => OnForeign::Refuse,
        },
        foreign: Vec::new(),
        refused: None,
        wording: run.wording,
    };
    // Handled from now on: a SIGHUP during the first pass must not end the process.
    let mut signals = Signals::install()?;
    daemon.pass("start").await;
    daemon.refusal()?;
    daemon.start_checks();
    daemon.metrics.applied(unix_now());
    let signal = daemon
        .serve(&mut events, &mut transitions, &mut signals)
        .await?;
    if run.flush_on_exit {
        let r = flush::flush(opts).await?;
        info!("{signal}: flushed: {}", (run.wording.flush)(&r).trim_end());
    } else {
        info!("{signal}: exiting; the dataplane stays in place (`policyroute flush` removes it)");
    }
    Ok(())
}

/// The signals the daemon handles.
struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> Result<Self, ControlError> {
        let handle = |kind| {
            signal(kind).map_err(|source| KernelError::Io {
                what: "installing signal handlers".into(),
                source,
            })
        };
        Ok(Self {
            hup: handle(SignalKind::hangup())?,
            term: handle(SignalKind::terminate())?,
            int: handle(SignalKind::interrupt())?,
        })
    }
}

impl Daemon<'_> {
    /// The event loop; returns the name of the signal that ended it, or the refusal of a
    /// pass that was still the start's (the first ones failed).
    async fn serve(
        &mut self,
        events: &mut Events,
        transitions: &mut UnboundedReceiver<Transition>,
        signals: &mut Signals,
    ) -> Result<&'static str, ControlError> {
        let Signals { hup, term, int } = signals;
        let mut periodic = tokio::time::interval_at(Instant::now() + PERIOD, PERIOD);
        let mut publish = tokio::time::interval(PUBLISH);
        // (first event of the burst, deadline)
        let mut pending: Option<(Instant, Instant)> = None;
        // Without events (the subscription ended), the periodic pass is all there is.
        let mut subscribed = true;
        loop {
            self.refusal()?;
            let due = pending.map(|(_, d)| d).or(self.retry.map(|(at, _)| at));
            tokio::select! {
                change = events.next(), if subscribed => {
                    let Some(change) = change else {
                        error!("the rtnetlink event subscription ended; relying on the periodic pass");
                        subscribed = false;
                        periodic.reset_immediately();
                        continue;
                    };
                    let now = Instant::now();
                    let first = pending.map_or(now, |(f, _)| f);
                    pending = Some((first, (now + DEBOUNCE_QUIET).min(first + DEBOUNCE_MAX)));
                    tracing::debug!("{} changed", change.as_str());
                }
                _ = sleep_until(due.unwrap_or_else(far_future)), if due.is_some() => {
                    let why = if pending.take().is_some() { "network change" } else { "retry" };
                    self.pass(why).await;
                }
                Some(t) = transitions.recv() => self.transition(t),
                _ = publish.tick() => self.publish(),
                _ = periodic.tick() => self.pass("periodic").await,
                _ = hup.recv() => self.reload().await,
                _ = term.recv() => return Ok("SIGTERM"),
                _ = int.recv() => return Ok("SIGINT"),
            }
        }
    }

    /// The refusal of the start's pass, if it refused.
    fn refusal(&self) -> Result<(), ControlError> {
        match self.refused {
            Some(n) => Err(ControlError::Refused(n)),
            None => Ok(()),
        }
    }

    /// A check's verdict changed: switch at once. Should the switch fail, a full pass
    /// (which also takes the verdict into account) is tried right after.
    fn transition(&mut self, t: Transition) {
        let state = if t.up { "up" } else { "down" };
        let line = format!("gateway {} {}: {state} ({})", t.gateway, t.family, t.reason);
        if t.up {
            info!("{line}");
        } else {
            warn!("{line}");
        }
        self.checks.insert((t.gateway.clone(), t.family), t.up);
        let start = Instant::now();
        let Some(board) = self.board.as_mut() else {
            self.retry = Some((Instant::now(), RETRY_FIRST));
            return;
        };
        match board.switch(&self.policy, &self.checks) {
            Ok(s) => {
                let ms = start.elapsed().as_secs_f64() * 1e3;
                for (gateway, family, up) in &s.changes {
                    self.metrics.gateway(gateway, *family, *up, true);
                }
                info!(
                    "gateway {} {}: switched in {ms:.1} ms ({} target state(s) written, \
                     {} sticky flow(s) dropped)",
                    t.gateway, t.family, s.states, s.flows
                );
            }
            Err(e) => {
                error!(
                    "gateway {}: switching failed: {e}; a full pass follows",
                    t.gateway
                );
                self.retry = Some((Instant::now(), RETRY_FIRST));
            }
        }
        self.publish();
    }

    /// Runs the policy's checks (keeping those that did not change). A new check begins
    /// with the verdict the dataplane holds, so a gateway a previous daemon found down
    /// stays down until it answers.
    fn start_checks(&mut self) {
        let specs = check_specs(&self.policy);
        let held = self.board.as_ref().map(|b| b.health().clone());
        let initially_up = |spec: &CheckSpec| {
            held.as_ref()
                .and_then(|h| h.get(&(spec.gateway.clone(), spec.family)))
                .is_none_or(|h| !h.check_down)
        };
        // Verdicts of checks that are gone no longer count.
        self.checks
            .retain(|(g, f), _| specs.iter().any(|s| &s.gateway == g && s.family == *f));
        for spec in &specs {
            let key = (spec.gateway.clone(), spec.family);
            let up = self.checks.get(&key).copied().unwrap_or(initially_up(spec));
            self.checks.insert(key, up);
        }
        self.monitor.replace_from(specs, &initially_up);
    }

    /// The checks' state into the daemon file, for `status`.
    fn publish(&mut self) {
        self.state.checks = self
            .monitor
            .reports()
            .into_iter()
            .map(gateway_check)
            .collect();
        if let Err(e) = self.file.write(&self.state) {
            warn!("updating the daemon file: {e}");
        }
    }

    /// SIGHUP: the file again. A broken file changes nothing in the kernel.
    async fn reload(&mut self) {
        let start = Instant::now();
        let earlier = Some(&self.policy).zip(self.digests.as_ref());
        let loaded = self.opts.tables().and_then(|tables| {
            Policy::load_again(&self.config, &tables, earlier).map_err(ControlError::from)
        });
        match loaded {
            Ok((policy, digests)) => {
                info!("SIGHUP: {} reloaded", self.source);
                self.policy = policy;
                self.digests = digests;
                self.start_checks();
                self.pass("reload").await;
                self.metrics.applied(unix_now());
                let ms = start.elapsed().as_secs_f64() * 1e3;
                info!("SIGHUP: reload done in {ms:.0} ms");
            }
            Err(e) => {
                self.metrics.failed();
                error!("SIGHUP: {e}");
                error!("SIGHUP: the running policy stays in force");
            }
        }
    }

    /// One observe → plan → execute pass; failures are logged and retried.
    async fn pass(&mut self, why: &str) {
        let source = Source::Read {
            policy: &self.policy,
            digests: self.digests.as_ref(),
            path: &self.config,
            checks: &self.checks,
        };
        let pass = Pass {
            devices: Devices::Awaited,
            on_foreign: self.on_foreign,
            dry_run: false,
        };
        let result = reconcile(&self.nl, self.opts, source, pass).await;
        self.metrics.reconciled();
        // The start is done once a pass got past others' objects: it found none, refused
        // them, or took them all over.
        if matches!(result, Ok(_) | Err(ControlError::Incomplete(_))) {
            self.on_foreign = OnForeign::Leave;
        }
        match result {
            Ok((report, _)) if report.refused => {
                for line in (self.wording.apply)(&report).lines() {
                    error!("{why}: {line}");
                }
                self.refused = Some(report.foreign.len());
            }
            Ok((mut report, _)) => {
                let before = self.board.take();
                self.board = report.switchboard.take();
                self.health_changes(why, before.as_ref());
                self.passed(why, &report);
            }
            Err(e) => self.failed(why, &e),
        }
        self.publish();
    }

    /// Health that a pass found changed (a carrier lost or back; check verdicts are
    /// switched and said as they come): logged and counted like the checks' changes.
    fn health_changes(&self, why: &str, before: Option<&Switchboard>) {
        let Some(board) = &self.board else { return };
        for ((gateway, family), h) in board.health() {
            let was = before.and_then(|b| b.health().get(&(gateway.clone(), *family)));
            let changed = was.is_some_and(|w| w.up != h.up);
            self.metrics.gateway(gateway, *family, h.up, changed);
            match (changed, h.up) {
                (false, _) => {}
                (true, true) => info!("{why}: gateway {gateway} {family}: up"),
                (true, false) => {
                    let cause = if h.check_down {
                        "check failed"
                    } else {
                        "no carrier"
                    };
                    warn!("{why}: gateway {gateway} {family}: down ({cause})");
                }
            }
        }
    }

    fn passed(&mut self, why: &str, report: &Report) {
        self.retry = None;
        self.state.last_reconcile = Some(unix_now());
        self.state.last_error = None;
        for (kind, count) in repairs(report) {
            self.metrics.repaired(kind, count);
        }
        if report.changed() {
            for line in (self.wording.apply)(report).lines() {
                info!("{why}: {line}");
            }
        }
        let waiting: Vec<String> = report
            .waiting
            .iter()
            .map(|w| format!("{} ({})", w.dev, w.reason))
            .collect();
        // Said once per change, not on every pass.
        if waiting != self.waiting {
            if waiting.is_empty() {
                info!("{why}: no device is waited for any more");
            } else {
                warn!("{why}: waiting for {}", waiting.join(", "));
            }
            self.waiting = waiting;
        }
        self.left_in_place(why, report);
        let rules = self.policy.rules.len();
        let mut status = match self.waiting.as_slice() {
            [] => format!("{rules} rule(s) in force"),
            w => format!("{rules} rule(s) in force; waiting for {}", w.join(", ")),
        };
        if !self.foreign.is_empty() {
            let n = self.foreign.len();
            status.push_str(&format!(
                "; {n} route(s) or ip rule(s) of others in the way"
            ));
        }
        let mut notify = vec![sd_notify::NotifyState::Status(&status)];
        if !self.ready {
            self.ready = true;
            info!("{}: in force ({status})", self.source);
            notify.push(sd_notify::NotifyState::Ready);
        }
        // Outside systemd (no NOTIFY_SOCKET) this does nothing.
        let _ = sd_notify::notify(&notify);
    }

    /// Others' objects a pass left in place: warned of when they change, not every pass.
    fn left_in_place(&mut self, why: &str, report: &Report) {
        let foreign = match report.adopted {
            true => Vec::new(),
            false => report.foreign.lines(&report.devices),
        };
        if foreign == self.foreign {
            return;
        }
        for line in foreign.iter().filter(|l| !self.foreign.contains(l)) {
            warn!(
                "{why}: not policyroute's and in the policy's way, left in place \
                 (`policyroute apply --adopt` takes it over): {line}"
            );
        }
        for line in self.foreign.iter().filter(|l| !foreign.contains(l)) {
            info!("{why}: gone from the policy's way: {line}");
        }
        self.foreign = foreign;
    }

    fn failed(&mut self, why: &str, e: &ControlError) {
        self.metrics.failed();
        self.state.last_error = Some(e.to_string());
        let backoff = self
            .retry
            .map_or(RETRY_FIRST, |(_, b)| (b * 2).min(RETRY_MAX));
        self.retry = Some((Instant::now() + backoff, backoff));
        error!("{why}: {e}; trying again in {} ms", backoff.as_millis());
        let status = format!("failing: {e}");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
    }
}

/// Objects a pass changed, by kind.
fn repairs(report: &Report) -> Vec<(&'static str, u64)> {
    let e = &report.entries;
    let count = |n: usize| n as u64;
    [
        (
            "route",
            count(report.routes.add.len() + report.routes.remove.len()),
        ),
        (
            "ip_rule",
            count(report.ip_rules.add.len() + report.ip_rules.remove.len()),
        ),
        ("hook", count(report.attach.len() + report.detach.len())),
        (
            "classifier_entries",
            count(e.inserted + e.updated + e.removed),
        ),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// A check's report as the daemon file keeps it.
fn gateway_check(r: CheckReport) -> GatewayCheck {
    GatewayCheck {
        gateway: r.gateway,
        family: r.family.name().to_owned(),
        up: r.up,
        since: r.since,
        loss_percent: r.loss_percent,
        rtt_ms: r.rtt_ms,
        transitions: r.transitions,
    }
}
