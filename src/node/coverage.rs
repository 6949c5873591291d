//! Which discovered addresses still need a dial of their own.
//!
//! An address found by DNS is only a hint: once a dial tells us which node lives there, that
//! node's live connection (whoever dialled it) covers the address. An address that leaves
//! DNS is no longer dialled, but a connection up to it is not cut: gossip decides whether
//! that node is alive.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::state::State;
use super::sync::lock;

/// Addresses that need no dial of their own: this node's, configured peers' (they have their
/// own dial), and every address a live connection covers — where a dial found a node now
/// connected, where a connected peer dialled us from, or what a connected member advertises.
/// Built once per pass, so a pass over N endpoints is O(N), not O(N²).
pub(crate) fn covered(state: &State) -> HashSet<SocketAddr> {
    let ctx = &state.ctx;
    let mut out: HashSet<SocketAddr> = ctx.cfg.peers.iter().filter_map(|p| p.parse().ok()).collect();
    out.extend(ctx.endpoint.local_addr().ok());
    let mut live: HashSet<String> = HashSet::new();
    for (name, p) in state.peers.snapshot() {
        if p.live().is_some() {
            out.insert(p.remote);
            live.insert(name);
        }
    }
    let counts = |name: &str| name == ctx.name || live.contains(name);
    for (addr, name) in state.peers.found() {
        if counts(&name) {
            out.insert(addr);
        }
    }
    for m in lock(&state.gossip).members() {
        if !m.status.is_gone() && counts(&m.name) {
            out.extend(m.addr.parse::<SocketAddr>().ok());
        }
    }
    out
}

/// Whether `addr` still needs a dial of its own: it is in the current answers, no live
/// connection covers it, and the node is not past the overlay cap with links up (then DNS
/// answers are only contact points, and the overlay picks the members to link to).
pub(crate) fn wanted(state: &State, addr: SocketAddr) -> bool {
    if state.contact_only() {
        return false;
    }
    let listed = state
        .ctx
        .discovery
        .as_ref()
        .is_some_and(|d| d.endpoints().iter().any(|e| e.addr == addr));
    listed && !covered(state).contains(&addr)
}
