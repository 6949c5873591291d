//! The choice of a node for each stream: the node's view of the candidates (its own load,
//! the connected peers' pushed load) offered to its [`crate::routing::Table`].

use std::time::Duration;

use quinn::Connection;

use super::state::State;
use super::sync::lock;
use crate::gossip::Load;
use crate::routing::{origin_score, Offer};

/// Where a stream goes.
pub(crate) enum Choice {
    /// Served by this node.
    Local,
    /// Relayed to this peer.
    Remote(String, Connection),
}

/// A node's weight: its published capacity, scaled by its host load's origin score when
/// `routing.dynamic_weights` is on.
fn weight(state: &State, load: &Load) -> f64 {
    let cap = f64::from(load.capacity.max(1));
    if !state.ctx.cfg.routing.dynamic_weights {
        return cap;
    }
    let lat = (f64::from(load.latency_us) / 1e6).min(1.0);
    let req = f64::from(load.inflight) / state.load.max_inflight().max(1) as f64;
    cap * origin_score(
        f64::from(load.cpu_permille) / 1000.0,
        f64::from(load.mem_permille) / 1000.0,
        lat,
        req,
    )
}

/// Picks the node for a stream to `service` among this node (if `local`) and the connected
/// peers that take work and are not ejected, leaving out `exclude`.
pub(crate) fn choose(
    state: &State,
    service: &str,
    key: Option<&[u8]>,
    local: bool,
    exclude: &[String],
) -> Option<Choice> {
    let now = state.ctx.now();
    let me = &state.ctx.name;
    let (remote, _) = state.candidates(service);
    let mut offers = Vec::with_capacity(remote.len() + 1);
    let mut conns = Vec::with_capacity(remote.len() + 1);
    if local && !exclude.contains(me) {
        // As last measured (the gossip record has it only every load_gossip_interval).
        let own = state
            .pushed
            .mine()
            .unwrap_or_else(|| lock(&state.gossip).me().load.clone());
        // This stream already holds a permit; it should not count against this node.
        let others = state.load.in_flight().saturating_sub(1);
        offers.push(Offer {
            name: me.clone(),
            weight: weight(state, &own),
            gossiped_inflight: u32::try_from(others).unwrap_or(u32::MAX),
        });
        conns.push(None);
    }
    for (name, conn, load) in remote {
        if exclude.contains(&name) {
            continue;
        }
        offers.push(Offer {
            weight: weight(state, &load),
            gossiped_inflight: load.inflight,
            name,
        });
        conns.push(Some(conn));
    }
    let routing = &state.ctx.cfg.routing;
    let (picked, mine) = {
        let mut table = lock(&state.routing);
        // This node's own streams open to the servers of its subset: what widens it.
        let mine: u64 = offers
            .iter()
            .zip(&conns)
            .filter(|(_, c)| c.is_some())
            .map(|(o, _)| u64::from(table.pending(&o.name)))
            .sum();
        let mut rng = lock(&state.rng);
        let picked = table.pick(service, routing.policy_for(service), &offers, key, now, &mut *rng);
        (picked, mine)
    };
    let remote = conns.iter().filter(|c| c.is_some()).count();
    if remote > 0 {
        state.subsets.observe(service, mine, remote, now);
    }
    let picked = picked?;
    Some(match conns.swap_remove(picked) {
        None => Choice::Local,
        Some(c) => Choice::Remote(offers.swap_remove(picked).name, c),
    })
}

/// Counts a stream this node sends to `node` until the guard drops.
pub(crate) fn pending<'a>(state: &'a State, node: &str) -> PendingGuard<'a> {
    lock(&state.routing).begin(node);
    PendingGuard {
        state,
        node: node.to_owned(),
    }
}

/// A stream to `node` got its first byte back after `latency`.
pub(crate) fn record_success(state: &State, node: &str, latency: Duration) {
    let now = state.ctx.now();
    lock(&state.routing).record_success(node, latency, now);
}

/// `node` is silent: out of the rotation at once, for `routing.eject_for`.
pub(crate) fn eject(state: &State, node: &str) {
    let now = state.ctx.now();
    lock(&state.routing).eject(node, now);
}

/// A new connection to `node` is up: see [`crate::routing::Table::reinstate`].
pub(crate) fn reinstate(state: &State, node: &str) {
    lock(&state.routing).reinstate(node);
}

/// A stream to `node` was refused or failed before any byte flowed.
pub(crate) fn record_failure(state: &State, node: &str) {
    let now = state.ctx.now();
    lock(&state.routing).record_failure(node, now);
}

/// See [`pending`].
pub(crate) struct PendingGuard<'a> {
    state: &'a State,
    node: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.state.routing).end(&self.node);
    }
}
