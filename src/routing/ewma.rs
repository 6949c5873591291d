//! Moving averages: a peak-sensitive EWMA of latency, after Finagle's `PeakEwma` and tower's
//! `load::peak_ewma`, and a plain [`Ewma`].
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

    /// The estimate as of the last sample, seconds.
    pub fn get(&self) -> f64 {
        self.value
    }

    /// The estimate at `now`, seconds, decayed toward zero with time constant `tau` over the
    /// time since the last sample. For an estimate that is a failure penalty: a node nobody
    /// sends to is never measured again, so only time can bring it back. (Not for a real
    /// latency: a slow node with a long queue answers rarely, and decaying its estimate
    /// between answers sends it more work the longer its queue grows.)
    pub fn at(&self, now: Duration, tau: Duration) -> f64 {
        let dt = now.saturating_sub(self.stamp).as_secs_f64();
        self.value * (-dt / tau.as_secs_f64().max(1e-9)).exp()
    }
}

/// A plain exponentially weighted moving average: the first sample sets it, each later one
/// moves it by `alpha` of the difference. For figures sampled at a steady pace (pings, served
/// streams), where a time constant would add nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ewma {
    alpha: f64,
    value: Option<f64>,
}

impl Ewma {
    /// An average with no samples that gives each new sample weight `alpha` (0..=1).
    pub const fn new(alpha: f64) -> Self {
        Ewma { alpha, value: None }
    }

    /// Adds a sample; returns the new average.
    pub fn observe(&mut self, sample: f64) -> f64 {
        let v = match self.value {
            None => sample,
            Some(v) => (1.0 - self.alpha) * v + self.alpha * sample,
        };
        self.value = Some(v);
        v
    }

    /// The average, if any sample was seen.
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_sample_sets_an_ewma_and_later_ones_blend() {
        let mut e = Ewma::new(0.25);
        assert_eq!(e.get(), None);
        assert_eq!(e.observe(8.0), 8.0);
        assert_eq!(e.observe(0.0), 6.0);
        assert_eq!(e.get(), Some(6.0));
    }

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

    #[test]
    fn a_penalty_read_at_a_time_decays_toward_zero() {
        let s = Duration::from_secs;
        let mut e = PeakEwma::new(0.001, s(10), s(0));
        e.observe(1.0, s(5));
        let tau = s(2);
        assert_eq!(e.at(s(5), tau), 1.0, "read at the sample: the sample");
        assert!(
            (e.at(s(7), tau) - (-1.0f64).exp()).abs() < 1e-9,
            "one time constant: 1/e"
        );
        assert!(e.at(s(25), tau) < 1e-4, "ten time constants: about gone");
        assert_eq!(e.at(s(1), tau), 1.0, "a read from before the sample does not grow it");
        assert_eq!(e.get(), 1.0, "reading changes nothing");
    }
}
