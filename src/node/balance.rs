//! The node's routing state and the choice of a node for each stream, on top of the pure
//! balancers in [`crate::routing`].

use std::collections::BTreeMap;
use std::time::Duration;

use quinn::Connection;

use super::shared::{lock, Shared};
use crate::routing::{origin_score, Balancer, Candidate, Ejector, PeakEwma, RetryBudget, FAILURE_PENALTY};

/// Latency assumed for a node with no samples yet (seconds): zero, so that an unmeasured node
/// (new, or back from draining) wins its first comparison and gets measured; otherwise under
/// sequential load it could lose every comparison to a measured node and never be tried.
const FRESH_LATENCY: f64 = 0.0;
/// Time constant of the latency EWMAs.
const TAU: Duration = Duration::from_secs(10);

/// Mutable routing state of a node.
pub(crate) struct RoutingState {
    balancers: BTreeMap<String, Balancer>,
    latency: BTreeMap<String, PeakEwma>,
    pending: BTreeMap<String, u32>,
    ejector: Ejector,
    pub budget: RetryBudget,
    /// Streams sent per service and node, halved every minute (for `quicmesh status`).
    sent: BTreeMap<String, BTreeMap<String, f64>>,
    sent_decayed_at: Duration,
    /// Streams sent per (service, node) since start, for `/metrics`.
    pub decisions: BTreeMap<(String, String), u64>,
}

impl RoutingState {
    pub fn new(retry_budget: f64) -> Self {
        RoutingState {
            balancers: BTreeMap::new(),
            latency: BTreeMap::new(),
            pending: BTreeMap::new(),
            ejector: Ejector::default(),
            budget: RetryBudget::new(retry_budget),
            sent: BTreeMap::new(),
            sent_decayed_at: Duration::ZERO,
            decisions: BTreeMap::new(),
        }
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
}

/// Where a stream goes.
pub(crate) enum Choice {
    /// Served by this node.
    Local,
    /// Relayed to this peer.
    Remote(String, Connection),
}

impl Shared {
    /// Picks the node for a stream to `service` among this node (if `local`) and the connected
    /// peers that take work and are not ejected, leaving out `exclude`.
    pub fn choose(&self, service: &str, key: Option<&[u8]>, local: bool, exclude: &[String]) -> Option<Choice> {
        let now = self.now();
        let own_load = lock(&self.gossip).me().load.clone();
        let (remote, _) = self.candidates(service);
        let own_inflight = self.in_flight();
        let dynamic = self.cfg.routing.dynamic_weights;
        let mut st = lock(&self.routing);
        let mut cands: Vec<(Candidate, Option<Connection>)> = Vec::new();
        let weight_of = |load: Option<&crate::gossip::Load>, fallback: u32| {
            let cap = f64::from(load.map(|l| l.capacity).unwrap_or(fallback).max(1));
            match (dynamic, load) {
                (true, Some(l)) => {
                    let lat = (f64::from(l.latency_us) / 1e6 / 1.0).min(1.0);
                    let req = f64::from(l.inflight) / self.cfg.limits.max_inflight.max(1) as f64;
                    cap * origin_score(
                        f64::from(l.cpu_permille) / 1000.0,
                        f64::from(l.mem_permille) / 1000.0,
                        lat,
                        req,
                    )
                }
                _ => cap,
            }
        };
        if local && !exclude.contains(&self.name) {
            cands.push((
                Candidate {
                    name: self.name.clone(),
                    weight: weight_of(Some(&own_load), self.cfg.weight),
                    gossiped_inflight: u32::try_from(own_inflight.saturating_sub(1)).unwrap_or(u32::MAX),
                    local_inflight: 0,
                    latency: st.latency.get(&self.name).map_or(FRESH_LATENCY, PeakEwma::get),
                },
                None,
            ));
        }
        for (name, conn, load) in remote {
            if exclude.contains(&name) || st.ejector.is_ejected(&name, now) {
                continue;
            }
            let load = Some(&load);
            cands.push((
                Candidate {
                    weight: weight_of(load, 1),
                    gossiped_inflight: load.map_or(0, |l| l.inflight),
                    local_inflight: st.pending.get(&name).copied().unwrap_or(0),
                    latency: st.latency.get(&name).map_or(FRESH_LATENCY, PeakEwma::get),
                    name,
                },
                Some(conn),
            ));
        }
        cands.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let strategy = self.cfg.routing.strategy_for(service);
        let epsilon = self.cfg.routing.hash_epsilon;
        let only: Vec<Candidate> = cands.iter().map(|(c, _)| c.clone()).collect();
        let picked = {
            let balancer = st
                .balancers
                .entry(service.to_owned())
                .or_insert_with(|| Balancer::new(strategy, epsilon));
            let mut rng = lock(&self.rng);
            balancer.pick(&only, key, &mut *rng)?
        };
        let (cand, conn) = cands.swap_remove(picked);
        // Count the choice for the status table, halving old counts every minute.
        if now.saturating_sub(st.sent_decayed_at) >= Duration::from_secs(60) {
            st.sent_decayed_at = now;
            for by in st.sent.values_mut() {
                by.values_mut().for_each(|c| *c /= 2.0);
            }
        }
        *st.decisions.entry((service.to_owned(), cand.name.clone())).or_default() += 1;
        *st.sent
            .entry(service.to_owned())
            .or_default()
            .entry(cand.name.clone())
            .or_default() += 1.0;
        Some(match conn {
            None => Choice::Local,
            Some(c) => Choice::Remote(cand.name, c),
        })
    }

    /// Counts a stream this node sends to `node` until the guard drops.
    pub fn pending(&self, node: &str) -> PendingGuard<'_> {
        *lock(&self.routing).pending.entry(node.to_owned()).or_insert(0) += 1;
        PendingGuard {
            shared: self,
            node: node.to_owned(),
        }
    }

    /// A stream to `node` got its first byte back after `latency`.
    pub fn record_success(&self, node: &str, latency: Duration) {
        let now = self.now();
        let mut st = lock(&self.routing);
        st.ejector.success(node);
        st.latency
            .entry(node.to_owned())
            .or_insert_with(|| PeakEwma::new(latency.as_secs_f64(), TAU, now))
            .observe(latency.as_secs_f64(), now);
    }

    /// A stream to `node` was refused or failed before any byte flowed.
    pub fn record_failure(&self, node: &str) {
        let now = self.now();
        let (after, backoff) = (self.cfg.routing.eject_after, self.cfg.routing.eject_for);
        let mut st = lock(&self.routing);
        st.ejector.failure(node, now, after, backoff);
        let e = st
            .latency
            .entry(node.to_owned())
            .or_insert_with(|| PeakEwma::new(0.001, TAU, now));
        let penalty = FAILURE_PENALTY.max(4.0 * e.get());
        e.observe(penalty, now);
    }
}

/// See [`Shared::pending`].
pub(crate) struct PendingGuard<'a> {
    shared: &'a Shared,
    node: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.routing);
        if let Some(n) = st.pending.get_mut(&self.node) {
            *n = n.saturating_sub(1);
        }
    }
}
