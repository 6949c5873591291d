//! Choosing the node for a stream: power of two choices over the load table, and the classic
//! alternatives. Pure: candidates, time and the rng are passed in.
//!
//! ## P2C cost
//! `cost = latency × (gossiped_inflight + local_inflight + 1) / weight`
//!
//! - `latency` is a peak-sensitive EWMA ([`PeakEwma`]) of the streams this node sent to the
//!   candidate (its own local service time for the local node).
//! - `gossiped_inflight` is what the candidate last published (up to a gossip round stale);
//!   `local_inflight` is this node's own open streams to it, exact and current: it corrects the
//!   stale figure for the work this node itself just sent (Finagle/Linkerd's "peak EWMA with
//!   pending requests").
//! - `weight` is the candidate's published capacity, optionally scaled by the origin design's
//!   score (see [`origin_score`]).
//!
//! Two random candidates are compared and the cheaper one wins (Mitzenmacher, *The Power of Two
//! Choices in Randomized Load Balancing*, 2001): nearly the benefit of picking the best, without
//! every router herding onto the same "best" node when the table is stale.
//!
//! **Failure awareness.** A refusal or reset is fast, and a fast answer would make a broken node
//! look cheap. So a failure is recorded as a latency sample of `FAILURE_PENALTY` (or four times
//! the current estimate, if larger), kept apart from the latency estimate: it fades back to
//! the node's measured latency with a time constant of 2 s, whether or not streams go there,
//! so a node that lost every comparison since is tried again. After `eject_after` consecutive
//! failures a node is ejected for a back-off.

#![deny(clippy::disallowed_methods)]

mod ewma;
mod hash;
pub mod subset;
mod table;

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};

pub use ewma::{Ewma, PeakEwma};
pub use hash::{fnv1a, Ring};
pub use table::{Ejection, Offer, Policy, Table, TAU};

/// Latency charged for a failed attempt, seconds.
pub const FAILURE_PENALTY: f64 = 1.0;

/// Load-balancing strategy, per service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Power of two choices on the P2C cost (default).
    #[default]
    P2c,
    /// Each candidate in turn.
    RoundRobin,
    /// Smooth weighted round-robin (nginx's algorithm).
    Weighted,
    /// The candidate with the fewest in-flight streams per unit of weight.
    LeastLoaded,
    /// Uniformly at random.
    Random,
    /// Consistent hashing of the request key with bounded loads; P2C for requests without a key.
    ConsistentHash,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Strategy::P2c => "p2c",
            Strategy::RoundRobin => "round_robin",
            Strategy::Weighted => "weighted",
            Strategy::LeastLoaded => "least_loaded",
            Strategy::Random => "random",
            Strategy::ConsistentHash => "consistent_hash",
        };
        f.write_str(s)
    }
}

/// Routing settings of a node (`[routing]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Strategy for services not listed in `services`. Default `"p2c"`.
    pub strategy: Strategy,
    /// Per-service strategy, e.g. `services.cache = "consistent_hash"`.
    pub services: BTreeMap<String, Strategy>,
    /// Consistent hashing's load bound: no node above (1 + ε)× the average. Default 0.25.
    pub hash_epsilon: f64,
    /// Consecutive failures that eject a node. Default 5.
    pub eject_after: u32,
    /// How long an ejected node gets no streams. Default `"10s"`.
    #[serde(with = "crate::config::duration_str")]
    pub eject_for: std::time::Duration,
    /// Retries allowed as a fraction of requests (plus a small reserve). Default 0.2.
    pub retry_budget: f64,
    /// Scale each node's weight by the origin design's score of its CPU, memory, latency and
    /// in-flight load ([`origin_score`]). Default false.
    pub dynamic_weights: bool,
    /// Servers of a service each node routes over ([`subset`]): at least this many (all of
    /// them when fewer), more under load; `0` routes over every server. Default 12. Services
    /// balanced by `consistent_hash` always use every server (a key must map to the same
    /// server from every caller).
    pub subset_size: usize,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            strategy: Strategy::P2c,
            services: BTreeMap::new(),
            hash_epsilon: 0.25,
            eject_after: 5,
            eject_for: std::time::Duration::from_secs(10),
            retry_budget: 0.2,
            dynamic_weights: false,
            subset_size: subset::DEFAULT_SUBSET,
        }
    }
}

impl RoutingConfig {
    /// An empty routing table with these settings' retry budget and ejection.
    pub fn table(&self) -> Table {
        Table::new(
            self.retry_budget,
            Ejection {
                after: self.eject_after,
                eject_for: self.eject_for,
            },
        )
    }

    /// How `service`'s streams are balanced.
    pub fn policy_for(&self, service: &str) -> Policy {
        Policy {
            strategy: self.strategy_for(service),
            epsilon: self.hash_epsilon,
        }
    }

    /// The strategy for `service`.
    pub fn strategy_for(&self, service: &str) -> Strategy {
        self.services.get(service).copied().unwrap_or(self.strategy)
    }

    /// Checks the values; errors name the key under `routing.`.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        let bad = |key: &str, reason: &str| crate::ConfigError::Invalid {
            key: format!("routing.{key}"),
            reason: reason.to_owned(),
        };
        if !(self.hash_epsilon.is_finite() && self.hash_epsilon > 0.0) {
            return Err(bad("hash_epsilon", "must be a positive number"));
        }
        if self.eject_after == 0 {
            return Err(bad("eject_after", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.retry_budget) {
            return Err(bad("retry_budget", "must be between 0 and 1"));
        }
        if self.subset_size == 1 {
            return Err(bad(
                "subset_size",
                "must be 0 (every server) or at least 2 (the balancer compares two)",
            ));
        }
        Ok(())
    }
}

/// Finagle-style retry budget: each request deposits `ratio` of a retry, each retry spends one,
/// with a small reserve so that a quiet node can still retry. Keeps retries from multiplying
/// load on a mesh that is already failing.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    tokens: f64,
    ratio: f64,
}

impl RetryBudget {
    /// Reserve of retries available at start and kept at most.
    const RESERVE: f64 = 10.0;

    /// A budget allowing `ratio` retries per request.
    pub fn new(ratio: f64) -> Self {
        RetryBudget {
            tokens: Self::RESERVE,
            ratio,
        }
    }

    /// A request started.
    pub fn deposit(&mut self) {
        self.tokens = (self.tokens + self.ratio).min(Self::RESERVE + 100.0 * self.ratio);
    }

    /// Takes one retry if the budget allows.
    pub fn withdraw(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the balancer knows of one candidate node.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Node name.
    pub name: String,
    /// Relative capacity (> 0).
    pub weight: f64,
    /// In-flight streams as the node last published them.
    pub gossiped_inflight: u32,
    /// This node's own open streams to it now.
    pub local_inflight: u32,
    /// Peak-EWMA latency, seconds.
    pub latency: f64,
}

impl Candidate {
    /// The P2C cost; lower is better.
    pub fn cost(&self) -> f64 {
        let pending = f64::from(self.gossiped_inflight) + f64::from(self.local_inflight) + 1.0;
        self.latency.max(1e-6) * pending / self.weight.max(1e-6)
    }

    fn load(&self) -> f64 {
        (f64::from(self.gossiped_inflight) + f64::from(self.local_inflight)) / self.weight.max(1e-6)
    }
}

/// The origin design's node score (section 4.2): `0.4(1−cpu) + 0.3(1−mem) + 0.2(1−latency) +
/// 0.1(1−requests/max)`, each input a fraction in [0, 1]. Multiply a node's capacity by it to
/// turn host load into a weight; floored at 0.05 so a busy node still gets a trickle.
pub fn origin_score(cpu: f64, mem: f64, latency_frac: f64, request_frac: f64) -> f64 {
    let c = |x: f64| 1.0 - x.clamp(0.0, 1.0);
    (0.4 * c(cpu) + 0.3 * c(mem) + 0.2 * c(latency_frac) + 0.1 * c(request_frac)).max(0.05)
}

/// Per-service balancer state (round-robin position, smooth-WRR weights, the hash ring).
#[derive(Debug, Clone, Default)]
pub struct Balancer {
    strategy: Strategy,
    epsilon: f64,
    next: usize,
    current: BTreeMap<String, f64>,
    ring: Option<(Vec<String>, Ring)>,
}

impl Balancer {
    /// A balancer using `strategy`; `epsilon` bounds consistent-hash loads at (1+ε)× average.
    pub fn new(strategy: Strategy, epsilon: f64) -> Self {
        Balancer {
            strategy,
            epsilon,
            ..Default::default()
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Picks a candidate index. `candidates` should be in a stable order (by name).
    pub fn pick<R: Rng + ?Sized>(
        &mut self,
        candidates: &[Candidate],
        key: Option<&[u8]>,
        rng: &mut R,
    ) -> Option<usize> {
        let n = candidates.len();
        if n <= 1 {
            return (n == 1).then_some(0);
        }
        Some(match self.strategy {
            Strategy::P2c => p2c(candidates, rng),
            Strategy::Random => rng.random_range(0..n),
            Strategy::RoundRobin => {
                self.next = self.next.wrapping_add(1);
                self.next % n
            }
            Strategy::Weighted => self.smooth_weighted(candidates),
            Strategy::LeastLoaded => {
                let best = candidates.iter().map(Candidate::load).fold(f64::INFINITY, f64::min);
                let ties: Vec<usize> = (0..n).filter(|i| candidates[*i].load() <= best).collect();
                ties[rng.random_range(0..ties.len())]
            }
            Strategy::ConsistentHash => match key {
                Some(k) => self.hashed(candidates, k).unwrap_or_else(|| p2c(candidates, rng)),
                None => p2c(candidates, rng),
            },
        })
    }

    /// nginx's smooth weighted round-robin: every pick adds each weight to its counter, takes
    /// the largest counter, and subtracts the total from it. Interleaves instead of bursting.
    fn smooth_weighted(&mut self, candidates: &[Candidate]) -> usize {
        let total: f64 = candidates.iter().map(|c| c.weight.max(0.0)).sum();
        self.current.retain(|k, _| candidates.iter().any(|c| &c.name == k));
        let mut best = 0;
        let mut best_val = f64::NEG_INFINITY;
        for (i, c) in candidates.iter().enumerate() {
            let v = self.current.entry(c.name.clone()).or_insert(0.0);
            *v += c.weight.max(0.0);
            if *v > best_val {
                best_val = *v;
                best = i;
            }
        }
        if let Some(v) = self.current.get_mut(&candidates[best].name) {
            *v -= total;
        }
        best
    }

    fn hashed(&mut self, candidates: &[Candidate], key: &[u8]) -> Option<usize> {
        // Compared in place: cloning every name on each pick cost more than the pick itself
        // at a thousand candidates (benches/micro.rs).
        let same = |(n, _): &(Vec<String>, Ring)| n.iter().eq(candidates.iter().map(|c| &c.name));
        if !self.ring.as_ref().is_some_and(same) {
            let names: Vec<String> = candidates.iter().map(|c| c.name.clone()).collect();
            let ring = Ring::new(&names);
            self.ring = Some((names, ring));
        }
        let loads: Vec<u64> = candidates
            .iter()
            .map(|c| u64::from(c.gossiped_inflight) + u64::from(c.local_inflight))
            .collect();
        self.ring.as_ref().and_then(|(_, r)| r.pick(key, &loads, self.epsilon))
    }
}

/// Two distinct random candidates; the cheaper wins (a coin decides ties).
fn p2c<R: Rng + ?Sized>(candidates: &[Candidate], rng: &mut R) -> usize {
    let n = candidates.len();
    let a = rng.random_range(0..n);
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    let (ca, cb) = (candidates[a].cost(), candidates[b].cost());
    if ca < cb || (ca == cb && rng.random_bool(0.5)) {
        a
    } else {
        b
    }
}

/// Consecutive-failure ejection with a back-off (outlier detection).
#[derive(Debug, Clone, Default)]
pub struct Ejector {
    failures: BTreeMap<String, (u32, Option<std::time::Duration>)>,
}

impl Ejector {
    /// Records a failure of `node` at `now`; after `after` in a row it is ejected until
    /// `now + backoff`.
    pub fn failure(&mut self, node: &str, now: std::time::Duration, after: u32, backoff: std::time::Duration) {
        let e = self.failures.entry(node.to_owned()).or_insert((0, None));
        e.0 += 1;
        if e.0 >= after {
            e.1 = Some(now + backoff);
            e.0 = 0;
        }
    }

    /// Ejects `node` until `now + backoff`, whatever its streak.
    pub fn eject(&mut self, node: &str, now: std::time::Duration, backoff: std::time::Duration) {
        self.failures.insert(node.to_owned(), (0, Some(now + backoff)));
    }

    /// Records a success: the failure streak ends.
    pub fn success(&mut self, node: &str) {
        self.failures.remove(node);
    }

    /// Whether `node` is ejected at `now`.
    pub fn is_ejected(&self, node: &str, now: std::time::Duration) -> bool {
        self.failures
            .get(node)
            .and_then(|e| e.1)
            .is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn cand(name: &str, weight: f64, inflight: u32, latency: f64) -> Candidate {
        Candidate {
            name: name.into(),
            weight,
            gossiped_inflight: inflight,
            local_inflight: 0,
            latency,
        }
    }

    fn shares(strategy: Strategy, cands: &[Candidate], picks: usize) -> Vec<usize> {
        let mut b = Balancer::new(strategy, 0.25);
        let mut rng = StdRng::seed_from_u64(1);
        let mut counts = vec![0; cands.len()];
        for _ in 0..picks {
            counts[b.pick(cands, None, &mut rng).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn p2c_avoids_the_slow_and_the_busy() {
        let cands = [
            cand("a", 1.0, 0, 0.001),
            cand("b", 1.0, 0, 0.001),
            cand("c", 1.0, 0, 0.010),
        ];
        let c = shares(Strategy::P2c, &cands, 3000);
        // c loses every comparison it is in: it is never picked.
        assert_eq!(c[2], 0, "{c:?}");
        let busy = [
            cand("a", 1.0, 20, 0.001),
            cand("b", 1.0, 0, 0.001),
            cand("c", 1.0, 0, 0.001),
        ];
        assert!(shares(Strategy::P2c, &busy, 3000)[0] == 0);
    }

    #[test]
    fn a_failing_node_does_not_look_cheap() {
        let mut fast_failer = PeakEwma::new(0.001, std::time::Duration::from_secs(10), Default::default());
        fast_failer.observe(FAILURE_PENALTY, std::time::Duration::from_millis(1));
        let cands = [cand("ok", 1.0, 3, 0.005), cand("failing", 1.0, 0, fast_failer.get())];
        assert!(cands[1].cost() > cands[0].cost());
    }

    #[test]
    fn round_robin_and_random_spread_evenly() {
        let cands: Vec<Candidate> = (0..4).map(|i| cand(&format!("n{i}"), 1.0, 0, 0.001)).collect();
        assert_eq!(shares(Strategy::RoundRobin, &cands, 400), vec![100; 4]);
        for n in shares(Strategy::Random, &cands, 4000) {
            assert!((850..1150).contains(&n), "{n}");
        }
    }

    #[test]
    fn smooth_weighted_respects_weights_and_interleaves() {
        let cands = [cand("a", 5.0, 0, 0.0), cand("b", 1.0, 0, 0.0), cand("c", 1.0, 0, 0.0)];
        let mut b = Balancer::new(Strategy::Weighted, 0.25);
        let mut rng = StdRng::seed_from_u64(1);
        let seq: Vec<usize> = (0..7).map(|_| b.pick(&cands, None, &mut rng).unwrap()).collect();
        // nginx's example: a a b a c a a (no burst of five a's).
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(shares(Strategy::Weighted, &cands, 700), vec![500, 100, 100]);
    }

    #[test]
    fn least_loaded_takes_the_emptiest_per_weight() {
        let cands = [cand("a", 1.0, 4, 0.0), cand("b", 4.0, 8, 0.0), cand("c", 1.0, 3, 0.0)];
        assert_eq!(shares(Strategy::LeastLoaded, &cands, 10), vec![0, 10, 0]);
    }

    #[test]
    fn consistent_hash_is_sticky_per_key_and_p2c_without_one() {
        let cands: Vec<Candidate> = (0..5).map(|i| cand(&format!("n{i}"), 1.0, 0, 0.001)).collect();
        let mut b = Balancer::new(Strategy::ConsistentHash, 0.25);
        let mut rng = StdRng::seed_from_u64(2);
        for k in 0..50 {
            let key = format!("user-{k}");
            let first = b.pick(&cands, Some(key.as_bytes()), &mut rng);
            assert_eq!(first, b.pick(&cands, Some(key.as_bytes()), &mut rng));
        }
        assert!(b.pick(&cands, None, &mut rng).is_some());
    }

    #[test]
    fn ejection_after_consecutive_failures_then_back() {
        let s = std::time::Duration::from_secs;
        let mut e = Ejector::default();
        e.failure("a", s(0), 3, s(10));
        e.failure("a", s(0), 3, s(10));
        assert!(!e.is_ejected("a", s(1)));
        e.failure("a", s(1), 3, s(10));
        assert!(e.is_ejected("a", s(5)));
        assert!(!e.is_ejected("a", s(11)));
        e.success("a");
        assert!(!e.is_ejected("a", s(5)));
    }

    #[test]
    fn origin_score_prefers_idle_hosts() {
        assert!(origin_score(0.1, 0.2, 0.1, 0.1) > origin_score(0.9, 0.8, 0.5, 0.9));
        assert!(origin_score(1.0, 1.0, 1.0, 1.0) >= 0.05);
    }

    proptest! {
        #[test]
        fn every_strategy_picks_a_valid_index(
            n in 1usize..12,
            seed in any::<u64>(),
            inflight in proptest::collection::vec(0u32..50, 12),
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
        ) {
            let cands: Vec<Candidate> = (0..n).map(|i| cand(&format!("n{i}"), 1.0 + i as f64, inflight[i], 0.001 * (1 + i) as f64)).collect();
            let mut rng = StdRng::seed_from_u64(seed);
            for s in [Strategy::P2c, Strategy::RoundRobin, Strategy::Weighted, Strategy::LeastLoaded, Strategy::Random, Strategy::ConsistentHash] {
                let mut b = Balancer::new(s, 0.25);
                for _ in 0..5 {
                    let i = b.pick(&cands, key.as_deref(), &mut rng);
                    prop_assert!(i.is_some_and(|i| i < n));
                }
            }
        }

        #[test]
        fn p2c_compares_two_distinct_candidates(seed in any::<u64>()) {
            // With two candidates P2C must always compare both, so the cheaper always wins.
            let cands = [cand("a", 1.0, 0, 0.001), cand("b", 1.0, 0, 0.002)];
            let mut rng = StdRng::seed_from_u64(seed);
            prop_assert_eq!(p2c(&cands, &mut rng), 0);
        }
    }
}
