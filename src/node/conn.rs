//! An established connection: registering a node peer, serving the streams it opens, noticing
//! migrations, and forgetting the peer when it closes.

use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use tracing::{debug, info, warn, Instrument};

use super::control::open_control;
use super::metrics::bump;
use super::peers::Registered;
use super::state::State;
use super::streams::handle_stream;
use super::sync::{lock, Counted};
use crate::identity::{Identity, Role};
use crate::protocol::codes;

/// How often a connection's remote address is compared with the last one seen.
const MIGRATION_CHECK: Duration = Duration::from_millis(250);

/// Runs an established connection until it closes: registers node peers, opens the control
/// stream if we dialled, and serves the streams the peer opens.
pub(crate) async fn run_connection(shared: Arc<State>, conn: Connection, id: Identity, dialed_by_me: bool) {
    let span = tracing::info_span!("conn", peer = %id, remote = %conn.remote_address());
    async move {
        let _counted = Counted::new(&shared.metrics.connections);
        let is_node = id.role == Role::Node;
        let limits = &shared.ctx.cfg.limits;
        let streams = if is_node {
            limits.max_streams_per_connection
        } else {
            limits.max_streams_per_client
        };
        conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(streams));
        if is_node {
            if id.name == shared.ctx.name {
                warn!("a peer address points back at this node; dropping the connection");
                conn.close(codes::FORBIDDEN, b"connected to itself");
                return;
            }
            match shared.peers.register(&shared.ctx.name, &id.name, &conn, dialed_by_me) {
                Registered::Duplicate => {
                    debug!("duplicate connection closed (the other one is kept)");
                    return;
                }
                // We had a connection to this peer and lost it; whichever side dialled, it is back.
                Registered::Reconnected => bump(&shared.metrics.stats.reconnects),
                Registered::New | Registered::Replaced => {}
            }
            info!(dialed_by_me, "peer connected");
            if dialed_by_me {
                tokio::spawn(open_control(shared.clone(), conn.clone(), id.name.clone()).in_current_span());
            }
        } else {
            debug!("client connected");
        }
        let id = Arc::new(id);
        // QUIC migrates a connection whose peer's address changes (a client on a new
        // network, a NAT rebinding) without telling the application; look now and then so
        // it is logged and counted.
        let mut remote = conn.remote_address();
        let mut look = tokio::time::interval(MIGRATION_CHECK);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            tokio::select! {
                accepted = conn.accept_bi() => match accepted {
                    Ok((send, recv)) => {
                        tokio::spawn(handle_stream(shared.clone(), conn.clone(), id.clone(), send, recv).in_current_span());
                    }
                    Err(e) => break e,
                },
                _ = look.tick() => {
                    let now = conn.remote_address();
                    if now != remote {
                        bump(&shared.metrics.stats.migrations);
                        info!(from = %remote, to = %now, "peer address changed; connection migrated");
                        remote = now;
                    }
                }
            }
        };
        if is_node {
            if shared.peers.unregister(&id.name, &conn) {
                // Direct evidence: suspect it now; gossip decides whether it is dead.
                lock(&shared.gossip).disconnected(&id.name, shared.ctx.now());
            }
            info!(%reason, "peer disconnected");
        } else {
            debug!(%reason, "client disconnected");
        }
    }
    .instrument(span)
    .await
}
