//! Warm backend pools, pure: the bookkeeping of the idle TCP connections a node keeps open
//! to a service's backend (`services.NAME.preconnect`), so that a new stream does not wait
//! for the backend's connect.
//!
//! A connection is handed out at most once: a stream takes it, splices it and closes it
//! with the stream (a backend speaks to one caller per connection; handing one back after
//! a stream could leak one caller's half-read reply to the next). An idle connection is
//! closed after `idle` (so the pool never holds one a backend is about to time out), and
//! one the backend closed or reset is dropped when seen (the caller's `alive` test). Failed
//! connects back off with full jitter, so a dead backend is not hammered.
//!
//! Generic over the connection, with time and randomness passed in: the node's driver
//! (src/node/preconnect.rs) does the connects, this decides how many and which.

#![deny(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::backoff::{Backoff, BackoffPolicy};

/// The largest `preconnect`: beyond this a pool is a connection flood, not a warm-up.
pub const MAX_SIZE: u32 = 1024;

/// Default for `preconnect_idle`: below the idle timeouts of common servers (nginx closes a
/// connection without a request after 60 s, HAProxy's `timeout client` is often 30 s).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(20);

/// What a pool keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle connections kept open.
    pub size: usize,
    /// How long one may stay idle before it is closed (and replaced).
    pub idle: Duration,
}

impl PoolConfig {
    /// Checks `preconnect = size` and `preconnect_idle = idle`; an error is the key at fault
    /// (`"preconnect"` or `"preconnect_idle"`) and why.
    pub fn validate(size: u32, idle: Duration) -> Result<(), (&'static str, String)> {
        if size > MAX_SIZE {
            return Err(("preconnect", format!("{size} is too many: give at most {MAX_SIZE}")));
        }
        if idle < Duration::from_millis(100) {
            return Err((
                "preconnect_idle",
                format!("{idle:?} is too short: give at least 100ms, e.g. \"20s\""),
            ));
        }
        Ok(())
    }
}

/// Counters of one pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Streams that got a warm connection.
    pub hits: u64,
    /// Streams that found the pool empty and connected themselves.
    pub misses: u64,
    /// Connections opened into the pool.
    pub opened: u64,
    /// Connects that failed.
    pub failed: u64,
    /// Idle connections closed for being idle too long.
    pub expired: u64,
    /// Idle connections dropped because the backend had closed them.
    pub dead: u64,
}

/// One service's pool of idle backend connections.
#[derive(Debug)]
pub struct WarmPool<C> {
    cfg: PoolConfig,
    /// Oldest first, each with the time it was opened.
    idle: VecDeque<(C, Instant)>,
    /// Connects under way.
    opening: usize,
    backoff: Backoff,
    /// No connect before this, after a failure.
    retry_at: Option<Instant>,
    /// Counters.
    pub stats: PoolStats,
}

impl<C> WarmPool<C> {
    /// An empty pool; [`WarmPool::to_open`] says how many connects fill it.
    pub fn new(cfg: PoolConfig) -> Self {
        WarmPool {
            cfg,
            idle: VecDeque::new(),
            opening: 0,
            backoff: Backoff::new(BackoffPolicy {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(10),
                stable_after: Duration::ZERO,
            }),
            retry_at: None,
            stats: PoolStats::default(),
        }
    }

    /// What the pool keeps.
    pub fn config(&self) -> PoolConfig {
        self.cfg
    }

    /// Connects that failed in a row (0 once one succeeds).
    pub fn failing(&self) -> u32 {
        self.backoff.attempts()
    }

    /// Idle connections held now.
    pub fn idle(&self) -> usize {
        self.idle.len()
    }

    /// A connection for a new stream: the newest idle one `alive` accepts (the least likely
    /// to have been timed out by the backend). Dead ones met on the way are dropped. `None`
    /// (a miss): the stream connects itself.
    pub fn take(&mut self, alive: impl Fn(&C) -> bool) -> Option<C> {
        while let Some((c, _)) = self.idle.pop_back() {
            if alive(&c) {
                self.stats.hits += 1;
                return Some(c);
            }
            self.stats.dead += 1;
        }
        self.stats.misses += 1;
        None
    }

    /// How many connects to start now (counted as under way until [`WarmPool::opened`] or
    /// [`WarmPool::failed`]): what the pool lacks, none while backing off after a failure,
    /// and one at a time until a connect has succeeded again.
    pub fn to_open(&mut self, now: Instant) -> usize {
        match self.retry_at {
            Some(t) if now < t => return 0,
            // Past: forgotten, so it is no deadline to wake for while the probe runs.
            Some(_) => self.retry_at = None,
            None => {}
        }
        let lacking = self.cfg.size.saturating_sub(self.idle.len() + self.opening);
        let n = if self.backoff.attempts() > 0 {
            lacking.min(1usize.saturating_sub(self.opening))
        } else {
            lacking
        };
        self.opening += n;
        n
    }

    /// A connect finished. `Some(c)`: the connection to keep, unless the pool has shrunk
    /// meanwhile (then it is handed back, to be closed).
    pub fn opened(&mut self, c: C, now: Instant) -> Option<C> {
        self.opening = self.opening.saturating_sub(1);
        self.stats.opened += 1;
        self.backoff.reset();
        self.retry_at = None;
        if self.idle.len() >= self.cfg.size {
            return Some(c);
        }
        self.idle.push_back((c, now));
        None
    }

    /// A connect failed: the next waits a jittered, growing delay, returned. The connects of
    /// one round that fail together count as one step of the backoff, not one each.
    pub fn failed<R: Rng + ?Sized>(&mut self, now: Instant, rng: &mut R) -> Duration {
        self.opening = self.opening.saturating_sub(1);
        self.stats.failed += 1;
        if let Some(t) = self.retry_at {
            return t.saturating_duration_since(now);
        }
        let wait = self.backoff.next_delay(rng);
        self.retry_at = Some(now + wait);
        wait
    }

    /// Takes out the connections to close now: idle longer than the limit, refused by
    /// `alive`, or beyond a smaller size.
    pub fn sweep(&mut self, now: Instant, alive: impl Fn(&C) -> bool) -> Vec<C> {
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.idle.len());
        for (c, at) in self.idle.drain(..) {
            if now.saturating_duration_since(at) >= self.cfg.idle {
                self.stats.expired += 1;
                out.push(c);
            } else if !alive(&c) {
                self.stats.dead += 1;
                out.push(c);
            } else {
                keep.push_back((c, at));
            }
        }
        while keep.len() > self.cfg.size {
            if let Some((c, _)) = keep.pop_front() {
                out.push(c);
            }
        }
        self.idle = keep;
        out
    }

    /// Changes what the pool keeps; [`WarmPool::sweep`] then closes any excess.
    pub fn resize(&mut self, cfg: PoolConfig) {
        self.cfg = cfg;
    }

    /// When the pool next needs attention without being asked: the oldest idle connection's
    /// expiry, or the end of a backoff.
    pub fn next_deadline(&self) -> Option<Instant> {
        let expiry = self.idle.iter().map(|(_, at)| *at + self.cfg.idle).min();
        match (expiry, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Empties the pool (the service is gone): every idle connection, to close.
    pub fn close(&mut self) -> Vec<C> {
        self.cfg.size = 0;
        self.idle.drain(..).map(|(c, _)| c).collect()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // `Instant::now()` as an arbitrary origin; only differences matter
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn cfg(size: usize) -> PoolConfig {
        PoolConfig {
            size,
            idle: Duration::from_secs(20),
        }
    }

    fn fill(p: &mut WarmPool<u32>, now: Instant, first: u32) -> u32 {
        let n = p.to_open(now) as u32;
        for i in 0..n {
            assert!(p.opened(first + i, now).is_none());
        }
        n
    }

    #[test]
    fn fills_to_size_and_hands_out_the_newest_once() {
        let t0 = Instant::now();
        let mut p = WarmPool::new(cfg(3));
        assert_eq!(fill(&mut p, t0, 1), 3);
        assert_eq!(p.to_open(t0), 0, "full");
        assert_eq!(p.take(|_| true), Some(3));
        assert_eq!(p.take(|_| true), Some(2));
        assert_eq!(p.idle(), 1);
        assert_eq!(p.to_open(t0), 2, "refills what was taken");
        assert_eq!(p.stats.hits, 2);
    }

    #[test]
    fn a_miss_when_empty_and_dead_connections_are_skipped() {
        let t0 = Instant::now();
        let mut p = WarmPool::new(cfg(3));
        assert_eq!(p.take(|_| true), None);
        assert_eq!(p.stats.misses, 1);
        fill(&mut p, t0, 1);
        // 3 and 2 are dead (the backend closed them): 1 is handed out.
        assert_eq!(p.take(|c| *c == 1), Some(1));
        assert_eq!(p.stats.dead, 2);
        assert_eq!(p.idle(), 0);
    }

    #[test]
    fn idle_connections_expire_and_are_replaced() {
        let t0 = Instant::now();
        let mut p = WarmPool::new(cfg(2));
        fill(&mut p, t0, 1);
        let t1 = t0 + Duration::from_secs(5);
        assert!(
            p.opened(9, t1).is_some(),
            "the pool is full: a late connect is handed back"
        );
        assert_eq!(p.next_deadline(), Some(t0 + Duration::from_secs(20)));
        assert!(p.sweep(t0 + Duration::from_secs(19), |_| true).is_empty());
        assert_eq!(p.sweep(t0 + Duration::from_secs(20), |_| true), vec![1, 2]);
        assert_eq!(p.stats.expired, 2);
        assert_eq!(p.to_open(t0 + Duration::from_secs(20)), 2);
    }

    #[test]
    fn sweep_drops_the_dead_and_the_excess_after_a_resize() {
        let t0 = Instant::now();
        let mut p = WarmPool::new(cfg(4));
        fill(&mut p, t0, 1);
        p.resize(cfg(2));
        // 2 is dead; of 1, 3 and 4 the oldest goes to fit the new size.
        assert_eq!(p.sweep(t0, |c| *c != 2), vec![2, 1]);
        assert_eq!(p.take(|_| true), Some(4));
        assert_eq!(p.close(), vec![3]);
        assert_eq!(p.to_open(t0), 0, "a closed pool opens nothing");
    }

    #[test]
    fn failed_connects_back_off_then_retry_one_at_a_time() {
        let mut rng = StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let mut p: WarmPool<u32> = WarmPool::new(cfg(8));
        assert_eq!(p.to_open(t0), 8);
        let first = p.failed(t0, &mut rng);
        for _ in 1..8 {
            assert_eq!(
                p.failed(t0, &mut rng),
                first,
                "one round's failures are one backoff step"
            );
        }
        assert_eq!(p.failing(), 1);
        assert!(first <= Duration::from_millis(100), "the first ceiling");
        let retry = p.next_deadline().expect("a retry is due");
        assert_eq!(retry, t0 + first);
        if first > Duration::ZERO {
            assert_eq!(p.to_open(t0), 0, "backing off");
        }
        assert_eq!(p.to_open(retry), 1, "one probe connect after a failure");
        assert_eq!(p.next_deadline(), None, "no deadline in the past while the probe runs");
        assert_eq!(p.to_open(retry), 0, "and only one while it is under way");
        assert!(p.opened(1, retry).is_none());
        assert_eq!(p.to_open(retry), 7, "a success fills the rest at once");
        assert_eq!(p.stats.failed, 8);
    }

    #[test]
    fn ceilings_grow_until_the_maximum() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut p: WarmPool<u32> = WarmPool::new(cfg(1));
        let mut waits = Vec::new();
        for _ in 0..20 {
            let now = p.next_deadline().unwrap_or(t0);
            assert_eq!(p.to_open(now), 1);
            waits.push(p.failed(now, &mut rng));
        }
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(10)));
        assert!(
            waits.iter().rev().take(5).any(|w| *w > Duration::from_secs(1)),
            "{waits:?}"
        );
    }

    #[test]
    fn validate_names_the_key() {
        assert!(PoolConfig::validate(4, DEFAULT_IDLE).is_ok());
        let (key, why) = PoolConfig::validate(MAX_SIZE + 1, DEFAULT_IDLE).unwrap_err();
        assert_eq!(key, "preconnect");
        assert!(why.contains("at most 1024"), "{why}");
        let (key, _) = PoolConfig::validate(4, Duration::from_millis(5)).unwrap_err();
        assert_eq!(key, "preconnect_idle");
    }
}
