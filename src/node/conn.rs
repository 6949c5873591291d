//! An established connection: registering a node peer, serving the streams it opens, noticing
//! migrations, and forgetting the peer when it closes.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use tracing::{debug, info, warn, Instrument};

use super::clash;
use super::control::open_control;
use super::ended::Ended;
use super::metrics::bump;
use super::peers::Registered;
use super::state::State;
use super::streams::handle_stream;
use super::sync::{lock, Counted, CountedArc};
use crate::identity::{Identity, Role};
use crate::protocol::codes;
use crate::transport::{stream_release_lag, StreamAllowance};

/// How often the node compares every connection's remote address with the last one seen.
const MIGRATION_CHECK: Duration = Duration::from_millis(250);

/// Runs an established connection until it closes: registers node peers, opens the control
/// stream if we dialled, and serves the streams the peer opens. Returns how it ended.
pub(crate) async fn run_connection(shared: Arc<State>, conn: Connection, id: Identity, dialed_by_me: bool) -> Ended {
    let span = tracing::info_span!("conn", peer = %id, remote = %conn.remote_address());
    async move {
        let _counted = Counted::new(&shared.metrics.connections);
        let is_node = id.role == Role::Node;
        let limits = &shared.ctx.cfg.limits;
        let mut allowance = StreamAllowance::new(if is_node {
            limits.max_streams_per_connection
        } else {
            limits.max_streams_per_client
        });
        conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(allowance.current()));
        let open = Arc::new(AtomicUsize::new(0));
        if is_node {
            if id.name == shared.ctx.name {
                warn!("a peer address points back at this node; dropping the connection");
                conn.close(codes::FORBIDDEN, b"connected to itself");
                return Ended::Retired;
            }
            // A dialler that says which process it is (its boot id) while another process of
            // the same identity holds a live connection here: a restart, or a clash.
            let boot = if dialed_by_me { None } else { clash::boot_of_dialler(&conn) };
            if let (Some(new_boot), Some((old, Some(old_boot)))) = (boot, shared.peers.live_boot(&id.name)) {
                if new_boot != old_boot {
                    if clash::still_alive(&shared, &id.name, &old).await {
                        clash::refuse(&shared, &id.name, &old, &conn);
                        return Ended::Retired;
                    }
                    debug!(old = %old.remote_address(), "the peer restarted; its new connection replaces the silent old one");
                }
            }
            match shared.peers.register(&shared.ctx.name, &id.name, &conn, dialed_by_me, boot) {
                Registered::Duplicate => {
                    debug!("duplicate connection closed (the other one is kept)");
                    return Ended::Retired;
                }
                // We had a connection to this peer and lost it; whichever side dialled, it is back.
                Registered::Reconnected => bump(&shared.metrics.stats.reconnects),
                Registered::New | Registered::Replaced => {}
            }
            super::balance::reinstate(&shared, &id.name);
            info!(dialed_by_me, "peer connected");
            if dialed_by_me {
                tokio::spawn(open_control(shared.clone(), conn.clone(), id.name.clone()).in_current_span());
            }
        } else {
            shared.peers.add_client(&conn);
            debug!("client connected");
        }
        let id = Arc::new(id);
        // Migrations are noticed by the node's one sweep (`watch_migrations`).
        shared.migrations.connected(conn.stable_id(), conn.remote_address());
        let reason = loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(sr) => sr,
                Err(e) => break e,
            };
            let (guard, now) = CountedArc::new(&open);
            if let Some(more) = allowance.on_accept(u32::try_from(now).unwrap_or(u32::MAX)) {
                conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(more));
                debug!(streams = more, "stream allowance raised");
            }
            // Boxed: moved into the task below, the stream's state would be
            // stored twice (once captured, once awaited), 3.1 KB for each stream.
            let stream = Box::pin(handle_stream(shared.clone(), conn.clone(), id.clone(), send, recv));
            // quinn counts a stream against the allowance until the peer has
            // acknowledged our end of it, about a round trip and an ack delay after
            // the handler returns: a burst of short calls holds that many slots, so
            // the count holds them as long (only while the allowance may grow).
            let lag = (!allowance.at_limit()).then(|| stream_release_lag(conn.rtt()));
            tokio::spawn(async move {
                stream.await;
                if let Some(lag) = lag {
                    tokio::time::sleep(lag).await;
                }
                drop(guard);
            }.in_current_span());
        };
        shared.migrations.closed(conn.stable_id());
        let ended = Ended::of(&reason, shared.ctx.is_shutting_down());
        if is_node {
            let current = shared.peers.unregister(&id.name, &conn);
            // Direct evidence that the peer is gone: suspect it now (gossip decides whether it
            // is dead; a peer that left is already Left), unless another connection to it is
            // up. A duplicate the peer retired is no evidence: the peer is alive, and the
            // connection it kept may just not have registered on this side yet.
            let gone = matches!(ended, Ended::Lost | Ended::PeerLeft);
            if gone && current && shared.peers.peer_conn(&id.name).is_none() {
                if ended == Ended::Lost {
                    bump(&shared.metrics.stats.peer_losses);
                }
                lock(&shared.gossip).disconnected(&id.name, shared.ctx.now());
            }
            match ended {
                Ended::Clash => tracing::error!(
                    %reason,
                    "refused: another live process holds this node's identity ({}) and is connected to {}; two nodes with one name and certificate, or a stolen key",
                    shared.ctx.name, id.name
                ),
                e if e.expected() => debug!(%reason, ?ended, "peer connection ended"),
                _ => info!(%reason, "peer disconnected"),
            }
        } else {
            shared.peers.forget_client(&conn);
            debug!(%reason, "client disconnected");
        }
        ended
    }
    .instrument(span)
    .await
}

/// Logs and counts connections whose peer moved to a new address. One task for the node,
/// over every connection: a timer per connection woke the node 4 times a second for each
/// idle client.
pub(crate) async fn watch_migrations(shared: Arc<State>) {
    let mut look = tokio::time::interval(MIGRATION_CHECK);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        look.tick().await;
        let conns = shared.peers.all_connections();
        let moved = shared
            .migrations
            .look(conns.iter().map(|c| (c.stable_id(), c.remote_address())));
        for m in moved {
            bump(&shared.metrics.stats.migrations);
            // Read from the certificate only now: moves are rare.
            let peer = conns
                .iter()
                .find(|c| c.stable_id() == m.id)
                .and_then(|c| crate::identity::peer_identity(c).ok())
                .map_or_else(|| "unknown".to_owned(), |id| id.to_string());
            info!(%peer, from = %m.from, to = %m.to, "peer address changed; connection migrated");
        }
    }
}
