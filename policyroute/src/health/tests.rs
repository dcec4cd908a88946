//! The detector against simulated networks: rounds every interval, each probe's fate drawn
//! by the test, events replayed in time order.
use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{
    check::reason,
    detector::{Cause, Change, Detector, Params},
    CheckSpec, Family, Method,
};

const INTERVAL: Duration = Duration::from_secs(1);
const RTT: Duration = Duration::from_millis(20);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn params(timeout: Duration, probes: u32, down: u32, up: u32) -> Params {
    Params {
        interval: INTERVAL,
        timeout,
        probes,
        down,
        up,
    }
}

/// What the network does to a probe.
#[derive(Clone, Copy, Debug)]
enum Fate {
    Answer(Duration),
    Lost,
    /// An explicit failure (RST, ICMP error) after this long.
    Refused(Duration),
}

enum Ev {
    Answer(u64, Duration),
    Fail(u64),
}

/// Runs rounds every [`INTERVAL`] from 0 until `until`, each of `params.probes` probes sent
/// at the round's start with the fate `fate(send time)`; returns every change and when.
fn simulate(
    det: &mut Detector,
    until: Duration,
    mut fate: impl FnMut(Duration) -> Fate,
) -> Vec<(Duration, Change)> {
    let probes = det.params().probes;
    let mut changes = Vec::new();
    let mut pending: Vec<(Duration, Ev)> = Vec::new();
    let mut next_round = Duration::ZERO;
    let mut now = Duration::ZERO;
    loop {
        let event = (0..pending.len()).min_by_key(|&i| pending[i].0);
        let event_at = event.map(|i| pending[i].0);
        let deadline = det.next_deadline(now);
        // Events before deadlines before round starts when they coincide.
        let t = [event_at, deadline, Some(next_round)]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
        if t > until {
            return changes;
        }
        now = t;
        if event_at == Some(t) {
            match pending.swap_remove(event.unwrap()).1 {
                Ev::Answer(id, rtt) => det.answer(id, t, rtt),
                Ev::Fail(id) => det.fail(id, t, "198.51.100.2 refused".into()),
            }
        } else if deadline != Some(t) {
            let id = det.start_round(t);
            for _ in 0..probes {
                match fate(t) {
                    Fate::Answer(rtt) => pending.push((t + rtt, Ev::Answer(id, rtt))),
                    Fate::Refused(after) => pending.push((t + after, Ev::Fail(id))),
                    Fate::Lost => {}
                }
            }
            next_round += INTERVAL;
        }
        if let Some(change) = det.evaluate(now) {
            changes.push((now, change));
        }
    }
}

/// Answers with `rtt` unless the probe or its answer falls into `[from, to)`.
fn outage(from: Duration, to: Duration, rtt: Duration) -> impl FnMut(Duration) -> Fate {
    move |sent| {
        let hit = |t: Duration| t >= from && t < to;
        if hit(sent) || hit(sent + rtt) || (sent < from && sent + rtt >= to) {
            Fate::Lost
        } else {
            Fate::Answer(rtt)
        }
    }
}

fn ups(changes: &[(Duration, Change)]) -> Vec<(Duration, bool)> {
    changes.iter().map(|(t, c)| (*t, c.up)).collect()
}

#[test]
fn random_loss_of_30_percent_never_flaps() {
    // A round of 3 probes is lost with p = 0.3³ ≈ 2.7 %: about 54 of 2,000, yet 3 in a row
    // (≈ 2·10⁻⁵ per round) must not happen.
    for timeout in [ms(500), ms(1000), ms(2000)] {
        let mut rng = StdRng::seed_from_u64(7);
        let (mut probes, mut lost_now, mut lost_rounds) = (0, 0, 0);
        let mut det = Detector::new(params(timeout, 3, 3, 2));
        let changes = simulate(&mut det, INTERVAL * 2000 - ms(1), |_| {
            let lost = rng.gen_bool(0.3);
            probes += 1;
            lost_now += u32::from(lost);
            if probes % 3 == 0 {
                lost_rounds += u32::from(lost_now == 3);
                lost_now = 0;
            }
            if lost {
                Fate::Lost
            } else {
                Fate::Answer(ms(rng.gen_range(5..80)))
            }
        });
        assert_eq!(probes, 6000);
        assert!((25..90).contains(&lost_rounds), "{lost_rounds} rounds lost");
        assert_eq!(ups(&changes), vec![], "timeout {timeout:?}");
    }
}

#[test]
fn never_answered_goes_down_after_down_intervals() {
    let mut det = Detector::new(params(ms(1000), 3, 3, 2));
    let changes = simulate(&mut det, INTERVAL * 20, |_| Fate::Lost);
    assert_eq!(ups(&changes), vec![(INTERVAL * 3, false)]);
    assert_eq!(
        changes[0].1.cause,
        Cause::Missed {
            rounds: 3,
            failure: None,
            explicit: false
        }
    );
}

#[test]
fn total_outage_goes_down_within_down_plus_one_intervals() {
    for down in [1, 3, 5] {
        for timeout in [ms(300), ms(1000), ms(2500)] {
            for offset in [0, 1, 20, 500, 980, 999] {
                let d = INTERVAL * 10 + ms(offset);
                let mut det = Detector::new(params(timeout, 3, down, 2));
                let changes = simulate(&mut det, INTERVAL * 30, outage(d, INTERVAL * 100, RTT));
                let case = format!("down {down}, timeout {timeout:?}, outage at {d:?}");
                assert_eq!(changes.len(), 1, "{case}: {changes:?}");
                let (at, change) = &changes[0];
                assert!(!change.up, "{case}");
                assert!(*at >= d, "{case}: down at {at:?}");
                assert!(*at <= d + INTERVAL * (down + 1), "{case}: down at {at:?}");
            }
        }
    }
}

#[test]
fn recovery_goes_up_within_up_intervals_and_rtt() {
    for up in [1, 2, 4] {
        for timeout in [ms(300), ms(1000), ms(2500)] {
            for offset in [0, 1, 20, 500, 980, 999] {
                let r = INTERVAL * 20 + ms(offset);
                let mut det = Detector::new(params(timeout, 3, 3, up));
                let changes = simulate(&mut det, INTERVAL * 40, outage(INTERVAL * 5, r, RTT));
                let case = format!("up {up}, timeout {timeout:?}, recovery at {r:?}");
                let states = ups(&changes);
                assert_eq!(states.len(), 2, "{case}: {changes:?}");
                assert!(!states[0].1 && states[1].1, "{case}");
                let at = states[1].0;
                assert!(at >= r, "{case}: up at {at:?}");
                assert!(at <= r + INTERVAL * up + RTT, "{case}: up at {at:?}");
            }
        }
    }
}

#[test]
fn late_answers_within_timeout_do_not_take_it_down() {
    let mut rng = StdRng::seed_from_u64(3);
    let timeout = ms(2500);
    let mut det = Detector::new(params(timeout, 3, 3, 2));
    let changes = simulate(&mut det, INTERVAL * 1000, |_| {
        Fate::Answer(ms(rng.gen_range(1001..2500)))
    });
    assert_eq!(ups(&changes), vec![]);
    assert!(det.stats(INTERVAL * 1000).rtt_ms.unwrap() > 1000.0);
}

#[test]
fn answers_after_the_timeout_do_not_count() {
    let mut det = Detector::new(params(ms(800), 3, 3, 2));
    let changes = simulate(&mut det, INTERVAL * 10, |_| Fate::Answer(ms(900)));
    assert_eq!(ups(&changes), vec![(INTERVAL * 2 + ms(800), false)]);
    assert_eq!(det.stats(INTERVAL * 10).loss_percent, 100.0);
}

#[test]
fn refused_rounds_count_at_once() {
    // With a long timeout, waiting for it would take 3 + 10 s; the refusals decide at once.
    let timeout = ms(10_000);
    let d = INTERVAL * 10 + ms(300);
    let mut det = Detector::new(params(timeout, 3, 3, 2));
    let changes = simulate(&mut det, INTERVAL * 30, |sent| {
        if sent >= d {
            Fate::Refused(ms(1))
        } else {
            Fate::Answer(RTT)
        }
    });
    assert_eq!(changes.len(), 1, "{changes:?}");
    let (at, change) = &changes[0];
    assert!(*at <= d + INTERVAL * 3 + ms(1), "down at {at:?}");
    assert_eq!(
        change.cause,
        Cause::Missed {
            rounds: 3,
            failure: Some("198.51.100.2 refused".into()),
            explicit: true
        }
    );
}

#[test]
fn one_refusal_among_answers_is_not_a_miss() {
    let mut n = 0;
    let mut det = Detector::new(params(ms(1000), 3, 1, 1));
    let changes = simulate(&mut det, INTERVAL * 100, |_| {
        n += 1;
        if n % 3 == 0 {
            Fate::Refused(ms(1))
        } else {
            Fate::Answer(RTT)
        }
    });
    assert_eq!(ups(&changes), vec![]);
}

#[test]
fn a_failed_round_is_a_miss_at_once() {
    let mut det = Detector::new(params(ms(1000), 3, 1, 1));
    let id = det.start_round(Duration::ZERO);
    assert_eq!(det.evaluate(ms(10)), None);
    det.fail_round(id, ms(10), "cannot open a raw ICMP socket on wan1".into());
    let change = det.evaluate(ms(10)).expect("down");
    assert!(!change.up);
}

#[test]
fn a_provisional_miss_is_revoked_by_its_answer() {
    let mut det = Detector::new(params(ms(2500), 1, 1, 1));
    let first = det.start_round(Duration::ZERO);
    det.start_round(INTERVAL);
    // Round 0 is overtaken without an answer: down=1 takes the gateway down...
    assert!(!det.evaluate(INTERVAL).expect("down").up);
    // ...and its answer before the timeout brings it up at once (up=1).
    det.answer(first, ms(1500), ms(1500));
    assert!(det.evaluate(ms(1500)).expect("up").up);
}

#[test]
fn loss_is_per_probe_over_the_last_20_rounds() {
    let mut n = 0;
    let mut det = Detector::new(params(ms(1000), 3, 100, 1));
    simulate(&mut det, INTERVAL * 30 - ms(1), |_| {
        n += 1;
        if n % 3 == 0 {
            Fate::Lost
        } else {
            Fate::Answer(RTT)
        }
    });
    let stats = det.stats(INTERVAL * 30);
    assert!((stats.loss_percent - 100.0 / 3.0).abs() < 1e-9, "{stats:?}");
    assert!((stats.rtt_ms.unwrap() - 20.0).abs() < 1e-9, "{stats:?}");
    assert_eq!(stats.rounds, 30);

    // 30 rounds of total loss, then 20 answered: the window has forgotten the loss.
    let mut det = Detector::new(params(ms(1000), 3, 100, 1));
    simulate(
        &mut det,
        INTERVAL * 50 - ms(1),
        outage(Duration::ZERO, INTERVAL * 30, RTT),
    );
    let stats = det.stats(INTERVAL * 50);
    assert_eq!(stats.loss_percent, 0.0, "{stats:?}");
    assert_eq!(stats.rounds, 50);
}

fn spec(method: Method, targets: &[&str]) -> CheckSpec {
    CheckSpec {
        gateway: "isp2".into(),
        family: Family::V4,
        dev: "wan2".into(),
        mark: 0x42,
        targets: targets.iter().map(|t| t.parse().unwrap()).collect(),
        method,
        interval: INTERVAL,
        timeout: INTERVAL,
        count: 3,
        down: 3,
        up: 3,
    }
}

#[test]
fn reasons_name_the_targets_and_the_method() {
    let icmp = spec(Method::Icmp, &["198.18.0.53"]);
    let timeout = Cause::Missed {
        rounds: 3,
        failure: None,
        explicit: false,
    };
    assert_eq!(
        reason(&icmp, &timeout),
        "3 rounds without an answer from 198.18.0.53 (icmp)"
    );
    let tcp = spec(Method::Tcp(443), &["198.51.100.2", "198.51.100.3"]);
    let refused = Cause::Missed {
        rounds: 3,
        failure: Some("198.51.100.2 refused".into()),
        explicit: true,
    };
    assert_eq!(
        reason(&tcp, &refused),
        "3 rounds failed (tcp:443): 198.51.100.2 refused"
    );
    assert_eq!(
        reason(&tcp, &Cause::Answered { rounds: 3 }),
        "3 rounds answered"
    );
}

#[test]
fn reports_serialize_the_family_in_lower_case() {
    let report = super::CheckReport {
        gateway: "isp2".into(),
        family: Family::V6,
        up: true,
        since: 1,
        loss_percent: 0.0,
        rtt_ms: None,
        rounds: 0,
        transitions: 0,
    };
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["family"], "ipv6");
}
