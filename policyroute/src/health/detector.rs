//! The up/down decision of one check as a pure state machine: rounds start, probes answer or
//! fail, time passes, and [`Detector::evaluate`] says when the gateway changes state. Times
//! are offsets from the check's start, so tests can replay hours of rounds in microseconds.
//!
//! A round is *answered* once any of its probes is answered within `timeout` of its start.
//! It is a *miss* once `timeout` has passed without an answer, or once every probe failed
//! explicitly, or (provisionally) once the next round has started and it has no answer yet:
//! the provisional miss is what bounds detection by (down + 1) · interval even when
//! `timeout` is longer than `interval`, and an answer before the timeout revokes it.
//!
//! Answers slower than `down · interval` therefore look like an outage: a configuration
//! should keep `timeout <= down · interval`.
use std::{collections::VecDeque, time::Duration};

use super::stats::{self, Stats};

/// Identifies a round for the events of its probes.
pub type RoundId = u64;

/// What a detector needs to know of its check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub interval: Duration,
    pub timeout: Duration,
    /// Probes per round: count × targets.
    pub probes: u32,
    /// Rounds in a row that decide each way.
    pub down: u32,
    pub up: u32,
}

/// A change of state and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub up: bool,
    pub cause: Cause,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Cause {
    /// `rounds` rounds in a row got no answer. `failure` is the newest explicit failure
    /// among them; `explicit` says every probe of every one of them failed explicitly.
    Missed {
        rounds: u32,
        failure: Option<String>,
        explicit: bool,
    },
    /// `rounds` rounds in a row were answered.
    Answered { rounds: u32 },
}

/// One round: when it started and what its probes reported so far.
#[derive(Clone, Debug)]
pub(super) struct Round {
    id: RoundId,
    start: Duration,
    pub(super) answers: u32,
    failures: u32,
    pub(super) rtt_total: Duration,
    failure: Option<String>,
}

impl Round {
    pub(super) fn answered(&self) -> bool {
        self.answers > 0
    }

    fn deadline(&self, p: &Params) -> Duration {
        self.start + p.timeout
    }

    fn all_failed(&self, p: &Params) -> bool {
        !self.answered() && self.failures >= p.probes
    }

    /// A miss for good: timed out or failed explicitly.
    fn missed(&self, now: Duration, p: &Params) -> bool {
        !self.answered() && (self.all_failed(p) || now >= self.deadline(p))
    }

    /// Every probe is accounted for, so the round's loss is known.
    pub(super) fn complete(&self, now: Duration, p: &Params) -> bool {
        now >= self.deadline(p) || self.answers + self.failures >= p.probes
    }
}

pub struct Detector {
    params: Params,
    up: bool,
    /// Oldest first: every round still in flight and enough finished ones for the
    /// statistics and the longest streak a decision looks at.
    rounds: VecDeque<Round>,
    next_id: RoundId,
    /// Complete rounds no longer in `rounds`.
    forgotten: u64,
}

impl Detector {
    /// A detector in the up state (optimistic: only failures produce the first change).
    pub fn new(params: Params) -> Self {
        Self::starting(params, true)
    }

    /// A detector in state `up`: a restarted daemon goes on from the verdict the
    /// dataplane holds, so a gateway that was down needs `up` answered rounds again.
    pub fn starting(params: Params, up: bool) -> Self {
        let params = Params {
            probes: params.probes.max(1),
            down: params.down.max(1),
            up: params.up.max(1),
            ..params
        };
        Self {
            params,
            up,
            rounds: VecDeque::new(),
            next_id: 0,
            forgotten: 0,
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// A round starts at `at`; its probes report with the returned id.
    pub fn start_round(&mut self, at: Duration) -> RoundId {
        let id = self.next_id;
        self.next_id += 1;
        self.rounds.push_back(Round {
            id,
            start: at,
            answers: 0,
            failures: 0,
            rtt_total: Duration::ZERO,
            failure: None,
        });
        self.forget(at);
        id
    }

    /// A probe of round `id` was answered at `at`, `rtt` after it was sent. Answers after
    /// the round's timeout do not count.
    pub fn answer(&mut self, id: RoundId, at: Duration, rtt: Duration) {
        let p = self.params;
        if let Some(r) = self.in_time(id, at) {
            if r.answers + r.failures < p.probes {
                r.answers += 1;
                r.rtt_total += rtt;
            }
        }
    }

    /// A probe of round `id` failed explicitly at `at` (ICMP error, connection refused,
    /// send error).
    pub fn fail(&mut self, id: RoundId, at: Duration, reason: String) {
        let p = self.params;
        if let Some(r) = self.in_time(id, at) {
            if r.answers + r.failures < p.probes {
                r.failures += 1;
            }
            r.failure = Some(reason);
        }
    }

    /// Round `id` could not probe at all (no socket, no device): every probe failed.
    pub fn fail_round(&mut self, id: RoundId, at: Duration, reason: String) {
        let p = self.params;
        if let Some(r) = self.in_time(id, at) {
            r.failures = p.probes - r.answers;
            r.failure = Some(reason);
        }
    }

    /// Decides at `now`: the change of state, if any. Call after every event and at every
    /// [`Detector::next_deadline`].
    pub fn evaluate(&mut self, now: Duration) -> Option<Change> {
        let change = if self.up {
            self.went_down(now)
        } else {
            self.came_up(now)
        }?;
        self.up = change.up;
        Some(change)
    }

    /// When a round in flight times out, after `now`: evaluate then.
    pub fn next_deadline(&self, now: Duration) -> Option<Duration> {
        let p = &self.params;
        self.rounds
            .iter()
            .filter(|r| !r.complete(now, p))
            .map(|r| r.deadline(p))
            .min()
    }

    /// Loss and RTT over the newest complete rounds, and how many rounds completed.
    pub fn stats(&self, now: Duration) -> Stats {
        let p = &self.params;
        let complete: Vec<&Round> = self
            .rounds
            .iter()
            .rev()
            .filter(|r| r.complete(now, p))
            .collect();
        let mut s = stats::of(&complete, p.probes);
        s.rounds += self.forgotten;
        s
    }

    /// Up → down once the newest `down` rounds that are past due all missed.
    fn went_down(&self, now: Duration) -> Option<Change> {
        let streak = self.past_due(now, self.params.down)?;
        if streak.iter().any(|r| r.answered()) {
            return None;
        }
        Some(Change {
            up: false,
            cause: Cause::Missed {
                rounds: self.params.down,
                failure: streak.iter().find_map(|r| r.failure.clone()),
                explicit: streak.iter().all(|r| r.all_failed(&self.params)),
            },
        })
    }

    /// Down → up once the newest `up` rounds that are past due were all answered. A
    /// provisional miss counts here too: a round overtaken by a newer one without an
    /// answer must not let older answers vouch for a link that is failing now.
    fn came_up(&self, now: Duration) -> Option<Change> {
        let streak = self.past_due(now, self.params.up)?;
        streak.iter().all(|r| r.answered()).then_some(Change {
            up: true,
            cause: Cause::Answered {
                rounds: self.params.up,
            },
        })
    }

    /// The newest `n` rounds whose outcome counts at `now`, newest first; `None` while
    /// there are fewer. All but the newest round are past due (the next round started);
    /// the newest is once it is answered or missed.
    fn past_due(&self, now: Duration, n: u32) -> Option<Vec<&Round>> {
        let p = &self.params;
        let newest = self.rounds.back()?.id;
        let streak: Vec<&Round> = self
            .rounds
            .iter()
            .rev()
            .filter(|r| r.id != newest || r.answered() || r.missed(now, p))
            .take(n as usize)
            .collect();
        (streak.len() == n as usize).then_some(streak)
    }

    /// The round `id` if `at` is within its timeout.
    fn in_time(&mut self, id: RoundId, at: Duration) -> Option<&mut Round> {
        let timeout = self.params.timeout;
        self.rounds
            .iter_mut()
            .find(|r| r.id == id)
            .filter(|r| at <= r.start + timeout)
    }

    /// Drops the oldest complete rounds beyond what decisions (the newest streak and the
    /// round in flight) and statistics (the newest complete rounds) look at.
    fn forget(&mut self, now: Duration) {
        let p = self.params;
        let decide = p.down.max(p.up) as usize + 1;
        while self.rounds.len() > decide
            && self.rounds.front().is_some_and(|r| r.complete(now, &p))
            && self.rounds.iter().filter(|r| r.complete(now, &p)).count() > stats::WINDOW
        {
            self.rounds.pop_front();
            self.forgotten += 1;
        }
    }
}
