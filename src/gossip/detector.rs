//! φ-accrual failure detection (Hayashibara, Défago, Yared, Katayama: *The φ Accrual Failure
//! Detector*, SRDS 2004), with exponentially distributed inter-arrival times as in Cassandra.
//!
//! φ = −log₁₀ P(no heartbeat for `elapsed` | mean interval) = elapsed / mean · log₁₀ e. With a
//! threshold of 8 and heartbeats seen every 200 ms on average, a member is suspected after
//! about 3.7 s of silence; if its heartbeats arrive irregularly (loss, slow paths), the mean
//! grows and the detector waits longer on its own.

use std::collections::VecDeque;
use std::time::Duration;

const WINDOW: usize = 64;

/// Heartbeat arrival history of one member.
#[derive(Debug, Clone)]
pub struct PhiDetector {
    last: Duration,
    intervals: VecDeque<f64>,
    sum: f64,
    floor: f64,
}

impl PhiDetector {
    /// Starts observing at `now`. `floor` is the least mean interval assumed, so that a burst
    /// of heartbeats (several gossip paths at once) does not make the detector jumpy.
    pub fn new(now: Duration, floor: Duration) -> Self {
        PhiDetector {
            last: now,
            // Allocated on the first heartbeat: most members of a large mesh are never linked.
            intervals: VecDeque::new(),
            sum: 0.0,
            floor: floor.as_secs_f64(),
        }
    }

    /// Records a heartbeat seen at `now`.
    pub fn heartbeat(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.last = now;
        if self.intervals.len() == WINDOW {
            if let Some(old) = self.intervals.pop_front() {
                self.sum -= old;
            }
        }
        self.intervals.push_back(dt);
        self.sum += dt;
    }

    /// Mean interval, never below the floor.
    pub fn mean(&self) -> f64 {
        if self.intervals.is_empty() {
            return self.floor;
        }
        (self.sum / self.intervals.len() as f64).max(self.floor)
    }

    /// φ at `now`.
    pub fn phi(&self, now: Duration) -> f64 {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        elapsed / self.mean() * std::f64::consts::LOG10_E
    }

    /// When the last heartbeat was seen.
    pub fn last_heartbeat(&self) -> Duration {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_grows_with_silence_and_adapts_to_slow_heartbeats() {
        let ms = Duration::from_millis;
        let mut d = PhiDetector::new(ms(0), ms(100));
        for i in 1..=20 {
            d.heartbeat(ms(i * 200));
        }
        let t = ms(20 * 200);
        assert!(d.phi(t + ms(200)) < 1.0);
        // 8 at about 18.4 mean intervals of silence.
        assert!(d.phi(t + ms(3600)) < 8.0);
        assert!(d.phi(t + ms(3800)) > 8.0);
        // A member whose heartbeats come every 1 s gets five times the patience.
        let mut slow = PhiDetector::new(ms(0), ms(100));
        for i in 1..=20 {
            slow.heartbeat(ms(i * 1000));
        }
        assert!(slow.phi(ms(20_000) + ms(3800)) < 2.0);
    }

    #[test]
    fn bursts_do_not_shrink_the_mean_below_the_floor() {
        let ms = Duration::from_millis;
        let mut d = PhiDetector::new(ms(0), ms(200));
        for i in 1..=50 {
            d.heartbeat(ms(i));
        }
        assert!((d.mean() - 0.2).abs() < 1e-9);
    }
}
