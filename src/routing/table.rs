//! The routing table of one router (a node, or a client that routes for itself): latency
//! estimates, pending counts, ejections, per-service balancers, the retry budget and the
//! recent share of streams per node. Pure: time and the rng are passed in.
//!
//! A router offers the table the nodes that could take a stream ([`Offer`]: name, weight and
//! gossiped load); the table adds what only it knows (its own pending streams to each node,
//! the latency it measured, whether the node is ejected) and lets the service's balancer pick.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;

use super::{Balancer, Candidate, Ejector, PeakEwma, RetryBudget, Strategy, FAILURE_PENALTY};

/// Time constant of the latency estimates.
pub const TAU: Duration = Duration::from_secs(10);

/// Latency assumed for a node with no samples yet (seconds): zero, so that an unmeasured node
/// (new, or back from draining) wins its first comparison and gets measured; otherwise under
/// sequential load it could lose every comparison to a measured node and never be tried.
const FRESH_LATENCY: f64 = 0.0;

/// Time constant over which a failure penalty fades back to the node's latency estimate.
/// Held until successes pulled it down, a node charged one penalty (1 s) beside a fast
/// measured node under sequential load lost every comparison and, never measured again,
/// stayed out for good; fading, it is tried again once the penalty is below the other's
/// latency: ~16 s against a 300 µs node.
const PENALTY_TAU: Duration = Duration::from_secs(2);

/// How often the recent-share counts are halved.
const SHARE_HALF_LIFE: Duration = Duration::from_secs(60);

/// A node that could take a stream, as the router sees it before the table adds its own view.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Node name.
    pub name: String,
    /// Relative capacity (> 0), perhaps scaled by host load.
    pub weight: f64,
    /// In-flight streams as the node last published them.
    pub gossiped_inflight: u32,
}

/// How a service's streams are balanced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// The balancing strategy.
    pub strategy: Strategy,
    /// Consistent hashing's load bound (see [`super::RoutingConfig::hash_epsilon`]).
    pub epsilon: f64,
}

/// How the table ejects failing nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ejection {
    /// Consecutive failures that eject a node.
    pub after: u32,
    /// For how long.
    pub eject_for: Duration,
}

/// Mutable routing state of one router.
#[derive(Debug, Clone)]
pub struct Table {
    balancers: BTreeMap<String, Balancer>,
    latency: BTreeMap<String, PeakEwma>,
    /// Failure penalties, fading with `PENALTY_TAU` (read with [`PeakEwma::at`]); kept apart
    /// from the latency estimates so a penalty fades back to the node's real latency.
    penalty: BTreeMap<String, PeakEwma>,
    pending: BTreeMap<String, u32>,
    ejector: Ejector,
    ejection: Ejection,
    budget: RetryBudget,
    /// Streams sent per service and node, halved every minute.
    sent: BTreeMap<String, BTreeMap<String, f64>>,
    sent_decayed_at: Duration,
    /// Streams sent per (service, node) since start.
    decisions: BTreeMap<(String, String), u64>,
}

impl Table {
    /// An empty table allowing `retry_budget` retries per request.
    pub fn new(retry_budget: f64, ejection: Ejection) -> Self {
        Table {
            balancers: BTreeMap::new(),
            latency: BTreeMap::new(),
            penalty: BTreeMap::new(),
            pending: BTreeMap::new(),
            ejector: Ejector::default(),
            ejection,
            budget: RetryBudget::new(retry_budget),
            sent: BTreeMap::new(),
            sent_decayed_at: Duration::ZERO,
            decisions: BTreeMap::new(),
        }
    }

    /// Picks one of `offers` for a stream to `service` at `now`, skipping ejected nodes, with
    /// the service's balancer (made with `policy` on first use). Counts the choice. Returns
    /// the index into `offers`.
    pub fn pick<R: Rng + ?Sized>(
        &mut self,
        service: &str,
        policy: Policy,
        offers: &[Offer],
        key: Option<&[u8]>,
        now: Duration,
        rng: &mut R,
    ) -> Option<usize> {
        let mut order: Vec<usize> = (0..offers.len())
            .filter(|&i| !self.ejector.is_ejected(&offers[i].name, now))
            .collect();
        // Balancers keep positions (round-robin, the hash ring) over a stable order.
        order.sort_by(|&a, &b| offers[a].name.cmp(&offers[b].name));
        let cands: Vec<Candidate> = order
            .iter()
            .map(|&i| {
                let o = &offers[i];
                Candidate {
                    name: o.name.clone(),
                    weight: o.weight,
                    gossiped_inflight: o.gossiped_inflight,
                    local_inflight: self.pending.get(&o.name).copied().unwrap_or(0),
                    latency: self.estimate(&o.name, now),
                }
            })
            .collect();
        let balancer = self
            .balancers
            .entry(service.to_owned())
            .or_insert_with(|| Balancer::new(policy.strategy, policy.epsilon));
        let index = order[balancer.pick(&cands, key, rng)?];
        self.count(service, &offers[index].name, now);
        Some(index)
    }

    fn count(&mut self, service: &str, node: &str, now: Duration) {
        if now.saturating_sub(self.sent_decayed_at) >= SHARE_HALF_LIFE {
            self.sent_decayed_at = now;
            for by in self.sent.values_mut() {
                by.values_mut().for_each(|c| *c /= 2.0);
            }
        }
        *self.decisions.entry((service.to_owned(), node.to_owned())).or_default() += 1;
        *self
            .sent
            .entry(service.to_owned())
            .or_default()
            .entry(node.to_owned())
            .or_default() += 1.0;
    }

    /// A stream to `node` starts; pair with [`Table::end`].
    pub fn begin(&mut self, node: &str) {
        *self.pending.entry(node.to_owned()).or_insert(0) += 1;
    }

    /// A stream to `node` ended.
    pub fn end(&mut self, node: &str) {
        if let Some(n) = self.pending.get_mut(node) {
            *n = n.saturating_sub(1);
        }
    }

    /// Streams open to `node` now.
    pub fn pending(&self, node: &str) -> u32 {
        self.pending.get(node).copied().unwrap_or(0)
    }

    /// A stream to `node` got its first byte back after `latency`.
    pub fn record_success(&mut self, node: &str, latency: Duration, now: Duration) {
        self.ejector.success(node);
        let secs = latency.as_secs_f64();
        self.latency
            .entry(node.to_owned())
            .or_insert_with(|| PeakEwma::new(secs, TAU, now))
            .observe(secs, now);
    }

    /// The latency a pick compares for `node` at `now`: its latency estimate, or what is left
    /// of its failure penalty if that is more.
    fn estimate(&self, node: &str, now: Duration) -> f64 {
        let latency = self.latency.get(node).map_or(FRESH_LATENCY, PeakEwma::get);
        let penalty = self.penalty.get(node).map_or(0.0, |p| p.at(now, PENALTY_TAU));
        latency.max(penalty)
    }

    /// A stream to `node` was refused or failed before any byte flowed: its latency jumps to a
    /// penalty, and enough failures in a row eject it.
    pub fn record_failure(&mut self, node: &str, now: Duration) {
        self.ejector
            .failure(node, now, self.ejection.after, self.ejection.eject_for);
        let charge = FAILURE_PENALTY.max(4.0 * self.estimate(node, now));
        self.penalty
            .insert(node.to_owned(), PeakEwma::new(charge, PENALTY_TAU, now));
    }

    /// Ejects `node` at once for the ejection period (it does not answer at all), and
    /// charges its latency as a failure.
    pub fn eject(&mut self, node: &str, now: Duration) {
        self.record_failure(node, now);
        self.ejector.eject(node, now, self.ejection.eject_for);
    }

    /// A fresh connection to `node` came up (it reconnected or restarted): a completed
    /// handshake answers the silence or lost connection it was ejected for, so it is back in
    /// the rotation at once rather than at the end of `eject_for` (which can outlast a
    /// healed partition by seconds). A peer whose backend fails keeps its connection, so its
    /// ejection is not undone this way.
    pub fn reinstate(&mut self, node: &str) {
        self.ejector.success(node);
        // Its failure penalty belongs to the old connection too.
        self.latency.remove(node);
        self.penalty.remove(node);
    }

    /// The latency estimate of `node`, seconds, if measured.
    pub fn latency(&self, node: &str) -> Option<f64> {
        self.latency.get(node).map(PeakEwma::get)
    }

    /// Whether `node` is ejected at `now`.
    pub fn is_ejected(&self, node: &str, now: Duration) -> bool {
        self.ejector.is_ejected(node, now)
    }

    /// A request started: the retry budget grows.
    pub fn deposit(&mut self) {
        self.budget.deposit();
    }

    /// Takes one retry if the budget allows.
    pub fn withdraw(&mut self) -> bool {
        self.budget.withdraw()
    }

    /// Recent share of streams per service and node.
    pub fn shares(&self) -> Vec<(String, Vec<(String, f64)>)> {
        self.sent
            .iter()
            .map(|(svc, by)| {
                let total: f64 = by.values().sum();
                let shares = by
                    .iter()
                    .map(|(n, c)| (n.clone(), if total > 0.0 { c / total } else { 0.0 }))
                    .collect();
                (svc.clone(), shares)
            })
            .collect()
    }

    /// Streams sent per (service, node) since the table was made.
    pub fn decisions(&self) -> &BTreeMap<(String, String), u64> {
        &self.decisions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn offer(name: &str) -> Offer {
        Offer {
            name: name.into(),
            weight: 1.0,
            gossiped_inflight: 0,
        }
    }

    const P2C: Policy = Policy {
        strategy: Strategy::P2c,
        epsilon: 0.25,
    };
    const EJECT: Ejection = Ejection {
        after: 5,
        eject_for: Duration::from_secs(10),
    };

    #[test]
    fn a_failing_node_is_ejected_then_tried_again() {
        let mut t = Table::new(
            0.2,
            Ejection {
                after: 2,
                eject_for: Duration::from_secs(5),
            },
        );
        let mut rng = StdRng::seed_from_u64(1);
        let offers = [offer("a"), offer("b")];
        let s = Duration::from_secs;
        t.record_failure("a", s(1));
        assert_eq!(
            t.pick("svc", P2C, &offers[..1], None, s(1), &mut rng),
            Some(0),
            "one failure does not eject"
        );
        t.record_failure("a", s(1));
        assert!(t.is_ejected("a", s(2)));
        assert_eq!(t.pick("svc", P2C, &offers[..1], None, s(2), &mut rng), None);
        for _ in 0..20 {
            assert_eq!(
                t.pick("svc", P2C, &offers, None, s(2), &mut rng),
                Some(1),
                "a is ejected"
            );
        }
        assert_eq!(
            t.pick("svc", P2C, &offers[..1], None, s(7), &mut rng),
            Some(0),
            "back after eject_for"
        );
        assert!(!t.is_ejected("a", s(7)));
    }

    /// Two nodes, sequential streams (nothing pending): a node charged one failure penalty
    /// loses every comparison to a fast measured one, so only decay with time brings it back.
    #[test]
    fn a_penalised_node_that_gets_no_streams_is_tried_again_in_time() {
        let mut t = Table::new(0.2, EJECT);
        let mut rng = StdRng::seed_from_u64(9);
        let offers = [offer("a"), offer("b")];
        let ms = Duration::from_millis;
        t.record_failure("a", ms(0));
        let mut first_a = None;
        for i in 0..200_000u64 {
            let now = ms(i);
            let picked = t.pick("svc", P2C, &offers, None, now, &mut rng);
            if picked == Some(0) {
                first_a = Some(now);
                break;
            }
            t.record_success("b", Duration::from_micros(300), now);
        }
        let back = first_a.expect("a was never tried again");
        // Penalty 1 s against 300 µs fades past it after PENALTY_TAU·ln(1 / 0.0003) ≈ 16 s.
        assert!(
            back > Duration::from_secs(12) && back < Duration::from_secs(20),
            "a back after {back:?}"
        );
        // Measured again, it is a peer of b: its real latency and a faded penalty.
        t.record_success("a", Duration::from_micros(300), back);
        let later = back + Duration::from_secs(1);
        let picks: Vec<_> = (0..400)
            .filter_map(|_| t.pick("svc", P2C, &offers, None, later, &mut rng))
            .collect();
        let to_a = picks.iter().filter(|&&i| i == 0).count();
        assert!(
            (100..300).contains(&to_a),
            "a takes a fair share once measured again: {to_a} of 400"
        );
    }

    #[test]
    fn a_real_slow_estimate_does_not_fade_while_unmeasured() {
        let mut t = Table::new(0.2, EJECT);
        let s = Duration::from_secs;
        t.record_success("slow", Duration::from_millis(500), s(0));
        assert_eq!(
            t.estimate("slow", s(600)),
            0.5,
            "a slow node with a long queue answers rarely; fading it would feed the queue"
        );
        t.record_failure("slow", s(600));
        assert!(t.estimate("slow", s(600)) >= 2.0, "4x the estimate");
        assert_eq!(
            t.estimate("slow", s(640)),
            0.5,
            "the penalty fades back to its real latency, not to zero"
        );
    }

    #[test]
    fn a_success_soon_after_a_failure_does_not_hold_the_penalty() {
        let mut t = Table::new(0.2, EJECT);
        let ms = Duration::from_millis;
        t.record_failure("a", ms(0));
        // A stream that was already in flight answers fast.
        t.record_success("a", Duration::from_micros(300), ms(100));
        assert!(t.estimate("a", ms(100)) > 0.9, "the penalty still counts at first");
        let later = t.estimate("a", ms(20_000));
        assert!(
            (later - 0.0003).abs() < 1e-5,
            "it fades to the measured 300 us: {later}"
        );
    }

    #[test]
    fn a_silent_node_is_back_at_once_on_a_new_connection() {
        let mut t = Table::new(0.2, EJECT);
        let mut rng = StdRng::seed_from_u64(4);
        let s = Duration::from_secs;
        t.eject("a", s(1));
        assert_eq!(t.pick("svc", P2C, &[offer("a")], None, s(2), &mut rng), None);
        t.reinstate("a");
        assert!(!t.is_ejected("a", s(2)), "reinstated long before eject_for");
        assert_eq!(t.pick("svc", P2C, &[offer("a")], None, s(2), &mut rng), Some(0));
    }

    #[test]
    fn pending_streams_count_against_a_node() {
        let mut t = Table::new(0.2, EJECT);
        let mut rng = StdRng::seed_from_u64(2);
        let offers = [offer("a"), offer("b")];
        let now = Duration::from_secs(1);
        t.record_success("a", Duration::from_millis(1), now);
        t.record_success("b", Duration::from_millis(1), now);
        for _ in 0..10 {
            t.begin("a");
        }
        let to_b = (0..100)
            .filter(|_| t.pick("svc", P2C, &offers, None, now, &mut rng) == Some(1))
            .count();
        assert_eq!(to_b, 100, "with two candidates P2C compares both; a has 10 pending");
        for _ in 0..10 {
            t.end("a");
        }
        assert_eq!(t.pending("a"), 0);
    }

    #[test]
    fn shares_halve_every_minute_and_decisions_do_not() {
        let mut t = Table::new(0.2, EJECT);
        let mut rng = StdRng::seed_from_u64(3);
        let offers = [offer("a")];
        for _ in 0..4 {
            t.pick("svc", P2C, &offers, None, Duration::ZERO, &mut rng);
        }
        t.pick("other", P2C, &offers, None, Duration::from_secs(61), &mut rng);
        assert_eq!(t.decisions()[&("svc".to_owned(), "a".to_owned())], 4);
        assert_eq!(t.shares()[1], ("svc".to_owned(), vec![("a".to_owned(), 1.0)]));
        assert_eq!(t.sent["svc"]["a"], 2.0, "halved once");
    }

    #[test]
    fn the_retry_budget_runs_out() {
        let mut t = Table::new(0.0, EJECT);
        let granted = (0..20).filter(|_| t.withdraw()).count();
        assert_eq!(granted, 10, "the reserve only");
        t.deposit();
        assert!(!t.withdraw());
    }
}
