//! One SRV name's lookup schedule and last good answer: a pure state machine.
//!
//! A successful answer is kept until the next one, and re-resolved when its TTL runs out
//! (clamped to `[min_refresh, max_refresh]`). A failed lookup (NXDOMAIN, SERVFAIL, a timeout,
//! or an answer with nothing usable in it) changes nothing a node acts on: the last good
//! answer keeps being served (hickory's cache forgets it at the TTL; we do not), and the
//! lookup is retried with jittered exponential backoff.

#![deny(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use rand::Rng;

use super::name::SrvName;
use super::order::Endpoint;
use super::settings::DnsConfig;
use crate::backoff::Backoff;

/// What changed between two good answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Endpoints in the new answer only.
    pub added: Vec<Endpoint>,
    /// Endpoints in the old answer only.
    pub removed: Vec<Endpoint>,
}

/// The result of feeding a lookup's outcome to a [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A usable answer replaced the last one.
    Fresh {
        /// Against the previous answer.
        diff: Diff,
        /// When to look again.
        next: Duration,
        /// The lookups before this one had been failing.
        recovered: bool,
    },
    /// The lookup failed; the last good answer stays in use.
    Failed {
        /// When to try again.
        retry: Duration,
        /// How many endpoints the last good answer holds.
        stale: usize,
        /// Consecutive failures so far, this one included.
        streak: u32,
    },
}

/// A snapshot of one name's discovery, for status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchStatus {
    /// The SRV name.
    pub name: String,
    /// The endpoints in use (the last good answer).
    pub endpoints: Vec<Endpoint>,
    /// How old the last good answer is, if there was one.
    pub answer_age: Option<Duration>,
    /// The error of the last lookup, if it failed.
    pub error: Option<String>,
    /// Lookups done.
    pub lookups: u64,
    /// Lookups that failed.
    pub failures: u64,
}

/// Lookup schedule and serve-stale memory of one SRV name.
#[derive(Debug, Clone)]
pub struct Watch {
    name: SrvName,
    min_refresh: Duration,
    max_refresh: Duration,
    backoff: Backoff,
    endpoints: Vec<Endpoint>,
    answered_at: Option<Instant>,
    due: Instant,
    error: Option<String>,
    lookups: u64,
    failures: u64,
}

impl Watch {
    /// A watch whose first lookup is due at `now`.
    pub fn new(name: SrvName, settings: &DnsConfig, now: Instant) -> Self {
        Watch {
            name,
            min_refresh: settings.min_refresh,
            max_refresh: settings.max_refresh,
            backoff: Backoff::new(settings.retry_policy()),
            endpoints: Vec::new(),
            answered_at: None,
            due: now,
            error: None,
            lookups: 0,
            failures: 0,
        }
    }

    /// The name watched.
    pub fn name(&self) -> &SrvName {
        &self.name
    }

    /// When the next lookup is due.
    pub fn due(&self) -> Instant {
        self.due
    }

    /// The endpoints in use: the last good answer, however old.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Feeds a lookup's answer, valid for `ttl`. An answer with no endpoints counts as a
    /// failure: a mesh that vanished from DNS is far more often a broken zone than a fleet
    /// scaled to zero, and forgetting every peer would gain nothing.
    pub fn answered<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        mut endpoints: Vec<Endpoint>,
        ttl: Duration,
        rng: &mut R,
    ) -> Step {
        if endpoints.is_empty() {
            return self.failed(now, "the answer has no usable SRV records".to_owned(), rng);
        }
        endpoints.sort();
        endpoints.dedup();
        let diff = Diff {
            added: endpoints
                .iter()
                .filter(|e| self.endpoints.binary_search(e).is_err())
                .cloned()
                .collect(),
            removed: self
                .endpoints
                .iter()
                .filter(|e| endpoints.binary_search(e).is_err())
                .cloned()
                .collect(),
        };
        let recovered = self.error.take().is_some();
        self.lookups += 1;
        self.endpoints = endpoints;
        self.answered_at = Some(now);
        self.backoff.reset();
        let next = ttl.clamp(self.min_refresh, self.max_refresh);
        self.due = now + next;
        Step::Fresh { diff, next, recovered }
    }

    /// Feeds a failed lookup; the last good answer stays in use.
    pub fn failed<R: Rng + ?Sized>(&mut self, now: Instant, error: String, rng: &mut R) -> Step {
        self.lookups += 1;
        self.failures += 1;
        self.error = Some(error);
        let retry = self.backoff.next_delay(rng);
        self.due = now + retry;
        Step::Failed {
            retry,
            stale: self.endpoints.len(),
            streak: self.backoff.attempts(),
        }
    }

    /// A snapshot for status output.
    pub fn status(&self, now: Instant) -> WatchStatus {
        WatchStatus {
            name: self.name.to_string(),
            endpoints: self.endpoints.clone(),
            answer_age: self.answered_at.map(|t| now.saturating_duration_since(t)),
            error: self.error.clone(),
            lookups: self.lookups,
            failures: self.failures,
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // `Instant::now()` as an arbitrary origin; only differences matter
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::net::SocketAddr;

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            priority: 10,
            weight: 1,
            target: format!("n{port}.mesh."),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn watch(t0: Instant) -> Watch {
        let settings = DnsConfig {
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(60),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(8),
            ..DnsConfig::default()
        };
        Watch::new(SrvName::parse("srv:_quicmesh._udp.mesh.test").unwrap(), &settings, t0)
    }

    #[test]
    fn ttl_is_clamped_and_diffs_are_reported() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let mut w = watch(t0);
        assert_eq!(w.due(), t0);
        let step = w.answered(t0, vec![ep(2), ep(1), ep(1)], Duration::ZERO, &mut rng);
        assert_eq!(
            step,
            Step::Fresh {
                diff: Diff {
                    added: vec![ep(1), ep(2)],
                    removed: vec![]
                },
                next: Duration::from_secs(1),
                recovered: false
            }
        );
        let t1 = t0 + Duration::from_secs(1);
        let step = w.answered(t1, vec![ep(2), ep(3)], Duration::from_secs(3600), &mut rng);
        let Step::Fresh { diff, next, .. } = step else {
            panic!("{step:?}")
        };
        assert_eq!(diff.added, vec![ep(3)]);
        assert_eq!(diff.removed, vec![ep(1)]);
        assert_eq!(next, Duration::from_secs(60));
        assert_eq!(w.due(), t1 + Duration::from_secs(60));
        let t2 = t1 + Duration::from_secs(60);
        let Step::Fresh { next, .. } = w.answered(t2, vec![ep(2)], Duration::from_secs(30), &mut rng) else {
            panic!()
        };
        assert_eq!(next, Duration::from_secs(30));
    }

    #[test]
    fn failures_serve_stale_and_back_off_then_recover() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(2);
        let mut w = watch(t0);
        w.answered(t0, vec![ep(1), ep(2)], Duration::from_secs(5), &mut rng);
        let mut now = t0 + Duration::from_secs(5);
        for n in 1..=6u32 {
            let step = w.failed(now, "SERVFAIL".into(), &mut rng);
            let Step::Failed { retry, stale, streak } = step else {
                panic!("{step:?}")
            };
            assert_eq!((stale, streak), (2, n));
            let ceiling = Duration::from_millis(500 * 2u64.pow(n - 1)).min(Duration::from_secs(8));
            assert!(retry <= ceiling, "retry {retry:?} > {ceiling:?}");
            assert_eq!(w.due(), now + retry);
            assert_eq!(w.endpoints(), &[ep(1), ep(2)]);
            now += retry;
        }
        // An empty answer is a failure too: nothing is forgotten.
        assert!(matches!(
            w.answered(now, vec![], Duration::from_secs(5), &mut rng),
            Step::Failed {
                stale: 2,
                streak: 7,
                ..
            }
        ));
        let status = w.status(now);
        assert_eq!(status.failures, 7);
        assert_eq!(status.error.as_deref(), Some("the answer has no usable SRV records"));
        assert_eq!(status.endpoints.len(), 2);
        let step = w.answered(now, vec![ep(1)], Duration::from_secs(5), &mut rng);
        assert!(matches!(step, Step::Fresh { recovered: true, .. }), "{step:?}");
        assert_eq!(w.status(now).error, None);
        // The backoff starts over after a success.
        let Step::Failed { retry, streak, .. } = w.failed(now, "timeout".into(), &mut rng) else {
            panic!()
        };
        assert_eq!(streak, 1);
        assert!(retry <= Duration::from_millis(500));
    }

    #[test]
    fn first_lookup_failing_leaves_nothing_to_serve() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(3);
        let mut w = watch(t0);
        assert!(matches!(
            w.failed(t0, "NXDOMAIN".into(), &mut rng),
            Step::Failed {
                stale: 0,
                streak: 1,
                ..
            }
        ));
        assert!(w.endpoints().is_empty());
        assert_eq!(w.status(t0).answer_age, None);
    }
}
