//! Dialling the nodes DNS discovery finds: every address in the current answers (the last
//! good ones, while DNS is down) is dialled until a connection to whoever answers there is
//! up (see [`super::coverage`] for when an address counts as covered).

use std::sync::Arc;

use tracing::{debug, Instrument};

use super::coverage::covered;
use super::dial::{keep_connected, Purpose};
use super::state::State;
use crate::discovery::Discovery;

/// Starts a dial for every wanted address without one, whenever the answers or the peer
/// table change, until shutdown.
pub(crate) async fn discover_loop(shared: Arc<State>, disc: Arc<Discovery>) {
    let mut answers = disc.subscribe();
    let mut peers = shared.peers.subscribe();
    let mut shutdown = shared.ctx.on_shutdown();
    loop {
        let skip = covered(&shared);
        // Past the overlay cap with links up, DNS answers are only contact points.
        let endpoints = if shared.contact_only() {
            Vec::new()
        } else {
            disc.endpoints()
        };
        for e in endpoints {
            if skip.contains(&e.addr) {
                continue;
            }
            if !shared.peers.start_dialing_addr(e.addr) {
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
