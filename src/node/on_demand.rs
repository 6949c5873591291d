//! Links to the nodes of a service, made when a stream needs one. Past the overlay cap a node
//! has links to a few dozen members, so the nodes offering a service it is asked for may all
//! be beyond them; it then asks for dials to a few of those nodes (the dial driver makes
//! them: `service_dials` in dial.rs) and holds the stream until one is up.

use tokio::time::Instant;
use tracing::debug;

use super::peers::SERVICE_LINK_KEPT;
use super::state::State;
use super::sync::lock;
use crate::routing::fnv1a;

/// Linked nodes a node keeps for each service it routes, when more offer it: enough for the
/// balancer's two choices and one to spare.
const SERVICE_LINKS: usize = 3;

/// Rendezvous order of `server` for `me`: each caller prefers different servers (spreading
/// callers over them), and a server keeps its rank when others join or leave.
fn rank(me: &str, server: &str) -> u64 {
    fnv1a(format!("{me}\u{0}{server}").as_bytes())
}

/// Past the overlay cap: if fewer than [`SERVICE_LINKS`] linked nodes take `service` and gossip
/// lists more that offer it, asks for links to the missing ones (the first in rendezvous
/// rank), and if none is linked yet, waits until one is up, at most
/// `transport.connect_timeout` and never past `deadline`. In a full mesh every member is
/// dialled anyway, so this does nothing.
pub(crate) async fn reach(shared: &State, service: &str, deadline: Option<Instant>) {
    // Checked first: it is the common case, and cheaper than the candidates.
    if lock(&shared.overlay).is_full_mesh() {
        return;
    }
    let (live, offline) = shared.candidates(service);
    if !offline || live.len() >= SERVICE_LINKS {
        return;
    }
    let mut offering: Vec<(u64, String, String)> = lock(&shared.gossip)
        .members()
        .filter(|m| m.name != shared.ctx.name && m.status.takes_work() && m.services.iter().any(|s| s == service))
        .map(|m| (rank(&shared.ctx.name, &m.name), m.name.clone(), m.addr.clone()))
        .collect();
    offering.sort();
    // Passed over unless nothing else is left: a node whose dial is failing (a stream would
    // wait out the connect timeout for it) and one that let our link go for its cap within
    // the last 30 s (it would again, and the link would flap).
    let (fine, passed): (Vec<_>, Vec<_>) = offering.into_iter().partition(|(_, name, addr)| {
        shared.peers.peer_conn(name).is_some()
            || !(shared.reach.in_trouble(addr) || shared.peers.trimmed_within(name, SERVICE_LINK_KEPT))
    });
    let pick = if fine.is_empty() && live.is_empty() {
        passed
    } else {
        fine
    };
    let mut asked = 0;
    for (_, name, addr) in pick.into_iter().take(SERVICE_LINKS) {
        // Marked before the dial starts, so the dial and the overlay keep the new link.
        shared.peers.used_for_service(&name);
        if shared.peers.peer_conn(&name).is_none() {
            debug!(%service, peer = %name, "dialling a node of the service");
            shared.peers.request_dial(name, addr);
            asked += 1;
        }
    }
    if !live.is_empty() || asked == 0 {
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
