//! Peak-sensitive EWMA of latency, after Finagle's `PeakEwma` and tower's `load::peak_ewma`.
//!
//! A sample above the current estimate replaces it at once (a node that just got slow looks
//! slow now); a sample below it pulls it down exponentially with time constant `tau` (a node
//! that recovers earns trust back gradually). Time is passed in.

use std::time::Duration;

/// The decaying latency estimate of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakEwma {
    value: f64,
    stamp: Duration,
    tau: f64,
}

impl PeakEwma {
    /// Starts at `initial` seconds (a guess before any sample) at time `now`.
    pub fn new(initial: f64, tau: Duration, now: Duration) -> Self {
        PeakEwma {
            value: initial,
            stamp: now,
            tau: tau.as_secs_f64().max(1e-9),
        }
    }

    /// Records a latency sample (seconds) observed at `now`.
    pub fn observe(&mut self, sample: f64, now: Duration) {
        if sample > self.value {
            self.value = sample;
        } else {
            let dt = now.saturating_sub(self.stamp).as_secs_f64();
            let w = (-dt / self.tau).exp();
            self.value = self.value * w + sample * (1.0 - w);
        }
        self.stamp = self.stamp.max(now);
    }

    /// The current estimate, seconds.
    pub fn get(&self) -> f64 {
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_at_once_and_decays_with_time() {
        let s = Duration::from_secs;
        let mut e = PeakEwma::new(0.01, s(10), s(0));
        e.observe(0.5, s(1));
        assert_eq!(e.get(), 0.5);
        e.observe(0.01, s(1));
        assert!(e.get() > 0.49, "no time passed, so a fast sample barely moves it");
        e.observe(0.01, s(31));
        assert!(
            e.get() < 0.04,
            "three time constants later it is mostly forgotten: {}",
            e.get()
        );
    }
}
