//! Reconnect backoff: exponential with full jitter, reset once a connection has proved stable.
//!
//! "Full jitter" (Brooker, *Exponential Backoff And Jitter*, AWS Architecture Blog, 2015):
//! the n-th wait is uniform in `[0, min(max, initial · 2ⁿ)]`. Spreading retries over the
//! whole window is what keeps a fleet that lost a peer at the same instant from reconnecting
//! in lockstep. Pure: time and randomness are passed in.

#![deny(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use rand::Rng;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Ceiling of the first wait (default 100 ms).
    pub initial: Duration,
    /// Largest ceiling (default 30 s).
    pub max: Duration,
    /// A connection that stayed up this long resets the backoff (default 10 s).
    pub stable_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
        }
    }
}

/// The backoff state of one reconnecting dialler.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
    connected_at: Option<Instant>,
    ever_connected: bool,
}

impl Backoff {
    /// Fresh state: the next wait is drawn from `[0, initial]`.
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            policy,
            attempt: 0,
            connected_at: None,
            ever_connected: false,
        }
    }

    /// Whether a connection has come up before (the next one is a reconnect).
    pub fn ever_connected(&self) -> bool {
        self.ever_connected
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next wait.
    pub fn ceiling(&self) -> Duration {
        // 2^20 · 100 ms is far past any sane max; capping the shift avoids overflow.
        let factor = 1u32 << self.attempt.min(20);
        self.policy.initial.saturating_mul(factor).min(self.policy.max)
    }

    /// Draws the next wait and counts the attempt.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// Starts over: the next wait is drawn from `[0, initial]` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.connected_at = None;
    }

    /// Records that a connection came up at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
        self.ever_connected = true;
    }

    /// Records that the connection went down at `now`; resets if it had been up long enough.
    pub fn disconnected(&mut self, now: Instant) {
        if let Some(at) = self.connected_at.take() {
            if now.saturating_duration_since(at) >= self.policy.stable_after {
                self.attempt = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn ceilings_double_up_to_max() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(b.ceiling().as_millis());
            let d = b.next_delay(&mut rng);
            assert!(d <= Duration::from_millis(*ceilings.last().unwrap() as u64));
        }
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
    }

    #[test]
    fn jitter_spreads_over_the_whole_window() {
        let mut rng = StdRng::seed_from_u64(7);
        let policy = BackoffPolicy {
            initial: Duration::from_secs(1),
            ..Default::default()
        };
        let draws: Vec<Duration> = (0..2000).map(|_| Backoff::new(policy).next_delay(&mut rng)).collect();
        let below_quarter = draws.iter().filter(|d| d.as_millis() < 250).count();
        let above_three_quarters = draws.iter().filter(|d| d.as_millis() > 750).count();
        // Uniform on [0, 1 s]: each quarter holds ~500 of 2000 draws.
        assert!((400..600).contains(&below_quarter), "{below_quarter}");
        assert!((400..600).contains(&above_three_quarters), "{above_three_quarters}");
    }

    #[test]
    fn resets_only_after_a_stable_connection() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = Backoff::new(BackoffPolicy::default());
        for _ in 0..5 {
            b.next_delay(&mut rng);
        }
        #[allow(clippy::disallowed_methods)] // an arbitrary origin; only differences matter
        let t0 = Instant::now();
        b.connected(t0);
        b.disconnected(t0 + Duration::from_secs(2));
        assert_eq!(b.attempts(), 5, "a flapping connection must not reset the backoff");
        b.connected(t0 + Duration::from_secs(3));
        b.disconnected(t0 + Duration::from_secs(13));
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let mut rng = StdRng::seed_from_u64(0);
        for _ in 0..100 {
            assert!(b.next_delay(&mut rng) <= Duration::from_secs(30));
        }
    }
}
