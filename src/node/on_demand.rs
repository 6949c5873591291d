//! Links to the nodes of a service, made when a stream needs one. Past the overlay cap a node
//! has links to a few dozen members, so the nodes offering a service it is asked for may all
//! be beyond them; it then asks for dials to the servers of its subset of them (the dial
//! driver makes them: `service_dials` in dial.rs) and holds the stream until one is up, or
//! sends it through a linked node when none can be reached.

use quinn::Connection;
use tokio::time::Instant;
use tracing::debug;

use super::peers::SERVICE_LINK_KEPT;
use super::state::State;
use super::sync::lock;
use crate::routing::fnv1a;

/// Past the overlay cap: if some servers of this node's subset of `service`
/// ([`State::subset`]) are not linked, asks for links to them, and if none is linked yet,
/// waits until one is up, at most `transport.connect_timeout` and never past `deadline`; but
/// not when every one of them is failing to dial and `can_relay` (the stream then goes through
/// a linked node, [`relay_via`]). In a full mesh every member is dialled anyway, so this does
/// nothing.
pub(crate) async fn reach(shared: &State, service: &str, deadline: Option<Instant>, can_relay: bool) {
    // Checked first: it is the common case, and cheaper than the candidates.
    if lock(&shared.overlay).is_full_mesh() {
        return;
    }
    let (live, offline) = shared.candidates(service);
    if !offline {
        return;
    }
    let servers = shared.subset(service).servers;
    let offering: Vec<(String, String)> = {
        let g = lock(&shared.gossip);
        servers
            .iter()
            .filter_map(|n| g.member(n))
            .filter(|m| m.status.takes_work())
            .map(|m| (m.name.clone(), m.addr.clone()))
            .collect()
    };
    // Passed over unless nothing else is left: a node whose dial is failing (a stream would
    // wait out the connect timeout for it) and one that let our link go for its cap within
    // the last 30 s (it would again, and the link would flap).
    let (fine, passed): (Vec<_>, Vec<_>) = offering.into_iter().partition(|(name, addr)| {
        shared.peers.peer_conn(name).is_some()
            || !(shared.reach.in_trouble(addr) || shared.peers.trimmed_within(name, SERVICE_LINK_KEPT))
    });
    let hopeless = fine.is_empty() && live.is_empty();
    let pick = if hopeless { passed } else { fine };
    let mut asked = 0;
    for (name, addr) in pick {
        // Marked before the dial starts, so the dial and the overlay keep the new link.
        shared.peers.used_for_service(&name);
        if shared.peers.peer_conn(&name).is_none() {
            debug!(%service, peer = %name, "dialling a node of the service");
            shared.peers.request_dial(name, addr);
            asked += 1;
        }
    }
    if !live.is_empty() || asked == 0 || (hopeless && can_relay) {
        return;
    }
    let mut wait = Instant::now() + shared.ctx.cfg.transport.connect_timeout;
    if let Some(d) = deadline {
        wait = wait.min(d);
    }
    let mut changed = shared.peers.subscribe();
    let linked = async {
        while shared.candidates(service).0.is_empty() {
            if changed.changed().await.is_err() {
                return;
            }
        }
    };
    if tokio::time::timeout_at(wait, linked).await.is_err() {
        debug!(%service, asked, "no node offering the service could be reached in time");
    }
}

/// A linked node to relay a stream for `service` through when no server of this node's
/// subset of it is linked (dials failing, or not up yet in time), though some take work:
/// the linked node, at the next hop, routes it over its own links. One per service (the
/// first in rendezvous order of service and node name, so its links to the servers are
/// reused), among the linked members that take work, leaving out `exclude` (the previous
/// hop and the nodes tried). None if no server takes work, or no other node is linked.
pub(crate) fn relay_via(shared: &State, service: &str, exclude: &[&str]) -> Option<(String, Connection)> {
    let servers = shared.subset(service).servers;
    let linked: Vec<String> = shared.peers.control_peers();
    let g = lock(&shared.gossip);
    let someone_serves = servers
        .iter()
        .any(|n| g.member(n).is_some_and(|m| m.status.takes_work()));
    if !someone_serves {
        return None;
    }
    let mut via: Vec<(u64, String)> = linked
        .into_iter()
        .filter(|n| !exclude.contains(&n.as_str()))
        .filter(|n| g.member(n).is_some_and(|m| m.status.takes_work()))
        .map(|n| (fnv1a(format!("{service}\u{0}{n}").as_bytes()), n))
        .collect();
    drop(g);
    via.sort();
    via.into_iter()
        .find_map(|(_, n)| shared.peers.peer_conn(&n).map(|c| (n, c)))
}
