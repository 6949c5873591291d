//! Dialling the nodes DNS discovery finds.
//!
//! Every address in the current answers (the last good ones, while DNS is down) is dialled
//! until a connection to whoever answers there is up. An address is only a hint: once a
//! dial tells us which node lives there, that node's live connection (whoever dialled it)
//! covers the address. An address that leaves DNS is no longer dialled, but a connection up
//! to it is not cut: gossip decides whether that node is alive.

use std::collections::{BTreeMap, BTreeSet};
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

/// Whether `addr` still needs a dial of its own: it is in the current answers, it is not a
/// configured peer (those have their own dial), and no live connection covers it.
pub(crate) fn wanted(shared: &Shared, disc: &Discovery, addr: SocketAddr) -> bool {
    if !disc.endpoints().iter().any(|e| e.addr == addr) {
        return false;
    }
    if shared
        .cfg
        .peers
        .iter()
        .any(|p| p.parse::<SocketAddr>().ok() == Some(addr))
    {
        return false;
    }
    if shared.endpoint.local_addr().ok() == Some(addr) {
        return false;
    }
    if let Some(name) = lock(&shared.discovered).found.get(&addr).cloned() {
        if name == shared.name || shared.peer_conn(&name).is_some() {
            return false;
        }
    }
    // A connection the peer dialled from this address, or one to a member advertising it.
    let by_remote = lock(&shared.peers)
        .values()
        .any(|p| p.remote == addr && p.conn.as_ref().is_some_and(|c| c.close_reason().is_none()));
    if by_remote {
        return false;
    }
    let advertised: Vec<String> = lock(&shared.gossip)
        .members()
        .filter(|m| m.addr.parse::<SocketAddr>().ok() == Some(addr) && !m.status.is_gone())
        .map(|m| m.name.clone())
        .collect();
    !advertised
        .iter()
        .any(|n| n == &shared.name || shared.peer_conn(n).is_some())
}

/// Starts a dial for every wanted address without one, whenever the answers or the peer
/// table change, until shutdown.
pub(crate) async fn discover_loop(shared: Arc<Shared>, disc: Arc<Discovery>) {
    let mut answers = disc.subscribe();
    let mut peers = shared.peers_changed.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        for e in disc.endpoints() {
            if !wanted(&shared, &disc, e.addr) {
                continue;
            }
            if !lock(&shared.discovered).dialing.insert(e.addr) {
                continue;
            }
            debug!(addr = %e.addr, target = %e.target, "dialling a discovered address");
            let span = tracing::Span::current();
            let purpose = Purpose::Discovered(disc.clone());
            tokio::spawn(keep_connected(shared.clone(), e.addr.to_string(), purpose).instrument(span));
        }
        tokio::select! {
            r = answers.changed() => if r.is_err() { return },
            r = peers.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}
