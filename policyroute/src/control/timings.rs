//! `POLICYROUTE_TIMINGS=1`: how long each stage of a command took, on stderr, for the
//! control-plane benchmark's "where the time goes".
use std::time::Instant;

pub struct Timings {
    enabled: bool,
    last: Instant,
}

impl Timings {
    pub fn start() -> Self {
        Self {
            enabled: std::env::var_os("POLICYROUTE_TIMINGS").is_some(),
            last: Instant::now(),
        }
    }

    /// Prints the time since the previous mark, labelled `stage`.
    pub fn mark(&mut self, stage: &str) {
        if self.enabled {
            let ms = self.last.elapsed().as_secs_f64() * 1e3;
            eprintln!("timing: {stage}: {ms:.1} ms");
        }
        self.last = Instant::now();
    }
}
