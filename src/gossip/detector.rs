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
///
/// 24 bytes until the first heartbeat: a node holds one per member, and at 10,000 members most
/// are never linked to it, so the window is allocated only for those that send heartbeats.
#[derive(Debug, Clone)]
pub struct PhiDetector {
    /// The last heartbeat (or the start of observation), in microseconds.
    last_us: u64,
    history: Option<Box<History>>,
    floor: f64,
}

#[derive(Debug, Clone)]
struct History {
    intervals: VecDeque<f64>,
    sum: f64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl PhiDetector {
    /// Starts observing at `now`. `floor` is the least mean interval assumed, so that a burst
    /// of heartbeats (several gossip paths at once) does not make the detector jumpy.
    pub fn new(now: Duration, floor: Duration) -> Self {
        PhiDetector {
            last_us: micros(now),
            history: None,
            floor: floor.as_secs_f64(),
        }
    }

    /// Records a heartbeat seen at `now`.
    pub fn heartbeat(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.last_heartbeat()).as_secs_f64();
        self.last_us = micros(now);
        let h = self.history.get_or_insert_with(|| {
            Box::new(History {
                intervals: VecDeque::with_capacity(WINDOW),
                sum: 0.0,
            })
        });
        if h.intervals.len() == WINDOW {
            if let Some(old) = h.intervals.pop_front() {
                h.sum -= old;
            }
        }
        h.intervals.push_back(dt);
        h.sum += dt;
    }

    /// Mean interval, never below the floor.
    pub fn mean(&self) -> f64 {
        match &self.history {
            Some(h) if !h.intervals.is_empty() => (h.sum / h.intervals.len() as f64).max(self.floor),
            _ => self.floor,
        }
    }

    /// φ at `now`.
    pub fn phi(&self, now: Duration) -> f64 {
        let elapsed = now.saturating_sub(self.last_heartbeat()).as_secs_f64();
        elapsed / self.mean() * std::f64::consts::LOG10_E
    }

    /// When the last heartbeat was seen.
    pub fn last_heartbeat(&self) -> Duration {
        Duration::from_micros(self.last_us)
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
