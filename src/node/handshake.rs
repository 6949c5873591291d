//! Incoming connections: refusal while draining or full, address validation under load
//! (QUIC Retry), the handshake itself, and a reason for every one that fails, for the log and
//! `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::conn::run_connection;
use super::failure::HandshakeFailure;
use super::metrics::bump;
use super::state::State;
use super::sync::Counted;
use crate::identity::peer_identity;
use crate::protocol::codes;

/// Accepts connections until shutdown.
pub(crate) async fn accept_loop(shared: Arc<State>) {
    let mut shutdown = shared.ctx.on_shutdown();
    loop {
        let incoming = tokio::select! {
            i = shared.ctx.endpoint.accept() => i,
            _ = shutdown.changed() => break,
        };
        let Some(incoming) = incoming else { break };
        if shared.is_draining() {
            // Refused outright (CONNECTION_REFUSED), so a client moves on to its next entry
            // node at once instead of waiting out its handshake timeout.
            debug!(remote = %incoming.remote_address(), "refusing connection: draining");
            incoming.refuse();
            continue;
        }
        if shared.metrics.connections() >= shared.ctx.cfg.limits.max_connections {
            debug!(remote = %incoming.remote_address(), "refusing connection: at limits.max_connections");
            incoming.refuse();
            continue;
        }
        admit(&shared, incoming);
    }
}

/// Admits an incoming connection attempt, or answers it with a Retry first.
///
/// Above `limits.max_pending_handshakes`, a source that has not proved it owns its address
/// gets a stateless Retry: a spoofed flood then costs us a packet each, not a TLS
/// handshake and its state, while a real peer pays one round trip and carries on.
pub(crate) fn admit(shared: &Arc<State>, incoming: quinn::Incoming) {
    let pending = shared.metrics.pending_handshakes.load(Ordering::Relaxed);
    if pending >= shared.ctx.cfg.limits.max_pending_handshakes && !incoming.remote_address_validated() {
        if incoming.may_retry() {
            bump(&shared.metrics.stats.retries);
            debug!(remote = %incoming.remote_address(), pending, "address validation: sent Retry");
            // Only fails if a Retry was already sent, which may_retry ruled out.
            let _ = incoming.retry();
            return;
        }
        // A Retry token was presented but did not validate: a replay or a forgery.
        incoming.refuse();
        return;
    }
    tokio::spawn(handshake(shared.clone(), incoming));
}

async fn handshake(shared: Arc<State>, incoming: quinn::Incoming) {
    let pending = Counted::new(&shared.metrics.pending_handshakes);
    let remote = incoming.remote_address();
    // The first flight (the ClientHello) is processed here: an ALPN mismatch fails now.
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => return failed(&shared, remote, HandshakeFailure::classify(&e), &e.to_string()),
    };
    let conn = match tokio::time::timeout(shared.ctx.cfg.transport.connect_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return failed(&shared, remote, HandshakeFailure::classify(&e), &e.to_string()),
        Err(_) => return failed(&shared, remote, HandshakeFailure::Timeout, "timed out"),
    };
    drop(pending);
    let id = match peer_identity(&conn) {
        Ok(id) => id,
        Err(e) => {
            // The verifier already checked this; reaching here means a bug, not an attacker.
            warn!(%remote, error = %e, "connection without a usable identity");
            conn.close(codes::FORBIDDEN, e.to_string().as_bytes());
            return;
        }
    };
    run_connection(shared, conn, id, false).await;
}

fn failed(shared: &State, remote: std::net::SocketAddr, reason: HandshakeFailure, error: &str) {
    shared.metrics.handshake_failed(reason);
    // At info, with the address an operator needs to find the misconfigured host; within the
    // rejected-stream log budget, since some failures (a wrong ALPN) cost the sender a
    // single packet. What is held back is counted in the next line, and all in /metrics.
    match shared.metrics.log_budget(shared.ctx.now()) {
        Some(0) => info!(%remote, %reason, error, "handshake refused: {}", reason.advice()),
        Some(held_back) => info!(%remote, %reason, error, held_back, "handshake refused: {}", reason.advice()),
        None => {}
    }
}
