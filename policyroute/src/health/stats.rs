//! Loss and round-trip time of a check, for its report.
use super::detector::Round;

/// Rounds the loss and RTT are averaged over.
pub const WINDOW: usize = 20;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Lost probes per sent probe over the newest [`WINDOW`] complete rounds, in percent.
    pub loss_percent: f64,
    /// Mean round-trip time of the answers in those rounds.
    pub rtt_ms: Option<f64>,
    /// Complete rounds since the check started.
    pub rounds: u64,
}

/// The statistics of `complete` (newest first), rounds of `probes` probes each.
pub(super) fn of(complete: &[&Round], probes: u32) -> Stats {
    let window = &complete[..complete.len().min(WINDOW)];
    let sent = window.len() as f64 * f64::from(probes);
    let answers: u32 = window.iter().map(|r| r.answers).sum();
    let rtt_total: f64 = window.iter().map(|r| r.rtt_total.as_secs_f64()).sum();
    Stats {
        loss_percent: if sent > 0.0 {
            100.0 * (sent - f64::from(answers)) / sent
        } else {
            0.0
        },
        rtt_ms: (answers > 0).then(|| 1000.0 * rtt_total / f64::from(answers)),
        rounds: complete.len() as u64,
    }
}
