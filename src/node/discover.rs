//! Dialling the nodes DNS discovery finds.
//!
//! Every address in the current answers (the last good ones, while DNS is down) is dialled
//! until a connection to whoever answers there is up. An address is only a hint: once a
//! dial tells us which node lives there, that node's live connection (whoever dialled it)
//! covers the address. An address that leaves DNS is no longer dialled, but a connection up
//! to it is not cut: gossip decides whether that node is alive.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{debug, Instrument};

use super::dial::{keep_connected, Purpose};
use super::shared::{lock, Shared};
use crate::discovery::Discovery;

/// What this node has learned about discovered addresses.
#[derive(Debug, Default)]
pub(crate) struct Discovered {
    /// Addresses with a dial task running.
    pub dialing: BTreeSet<SocketAddr>,
    /// The node found at each address dialled (this node's own name for its own address).
    pub found: BTreeMap<SocketAddr, String>,
}

/// Addresses that need no dial of their own: this node's, configured peers' (they have their
/// own dial), and every address a live connection covers — where a dial found a node now
/// connected, where a connected peer dialled us from, or what a connected member advertises.
/// Built once per pass, so a pass over N endpoints is O(N), not O(N²).
fn covered(shared: &Shared) -> HashSet<SocketAddr> {
    let mut out: HashSet<SocketAddr> = shared.cfg.peers.iter().filter_map(|p| p.parse().ok()).collect();
    out.extend(shared.endpoint.local_addr().ok());
    let live: HashSet<String> = lock(&shared.peers)
        .iter()
        .filter(|(_, p)| p.conn.as_ref().is_some_and(|c| c.close_reason().is_none()))
        .map(|(name, p)| {
            out.insert(p.remote);
            name.clone()
        })
        .collect();
    let counts = |name: &str| name == shared.name || live.contains(name);
    for (addr, name) in &lock(&shared.discovered).found {
        if counts(name) {
            out.insert(*addr);
        }
    }
    for m in lock(&shared.gossip).members() {
        if !m.status.is_gone() && counts(&m.name) {
            out.extend(m.addr.parse::<SocketAddr>().ok());
        }
    }
    out
}

/// Whether `addr` still needs a dial of its own: it is in the current answers and no live
/// connection covers it.
pub(crate) fn wanted(shared: &Shared, addr: SocketAddr) -> bool {
    let listed = shared
        .discovery
        .as_ref()
        .is_some_and(|d| d.endpoints().iter().any(|e| e.addr == addr));
    listed && !covered(shared).contains(&addr)
}

/// Starts a dial for every wanted address without one, whenever the answers or the peer
/// table change, until shutdown.
pub(crate) async fn discover_loop(shared: Arc<Shared>, disc: Arc<Discovery>) {
    let mut answers = disc.subscribe();
    let mut peers = shared.peers_changed.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let skip = covered(&shared);
        for e in disc.endpoints() {
            if skip.contains(&e.addr) {
                continue;
            }
            if !lock(&shared.discovered).dialing.insert(e.addr) {
                continue;
            }
            debug!(addr = %e.addr, target = %e.target, "dialling a discovered address");
            let span = tracing::Span::current();
            tokio::spawn(keep_connected(shared.clone(), e.addr.to_string(), Purpose::Discovered).instrument(span));
        }
        tokio::select! {
            r = answers.changed() => if r.is_err() { return },
            r = peers.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}
