//! Connections: accepting handshakes, running a connection's stream loop, the control stream.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use quinn::{Connection, RecvStream, SendStream};
use tracing::{debug, info, warn, Instrument};

use super::shared::Shared;
use super::streams::handle_stream;
use crate::identity::{peer_identity, Identity, Role};
use crate::protocol::{
    codes, read_frame, write_frame, ControlMsg, FrameError, Response, StreamHeader,
    MAX_CONTROL_MESSAGE,
};

/// Counts a live connection for the `max_connections` limit while it exists.
struct ConnGuard<'a>(&'a Shared);

impl<'a> ConnGuard<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        ConnGuard(shared)
    }
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until shutdown.
pub(crate) async fn accept_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            i = shared.endpoint.accept() => i,
            _ = shutdown.changed() => break,
        };
        let Some(incoming) = incoming else { break };
        if shared.connections.load(Ordering::Relaxed) >= shared.cfg.limits.max_connections {
            debug!(remote = %incoming.remote_address(), "refusing connection: at limits.max_connections");
            incoming.refuse();
            continue;
        }
        tokio::spawn(handshake(shared.clone(), incoming));
    }
}

async fn handshake(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            debug!(%remote, error = %e, "could not accept connection");
            return;
        }
    };
    let conn = match tokio::time::timeout(shared.cfg.transport.connect_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            shared
                .stats
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            info!(%remote, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            shared
                .stats
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            info!(%remote, "handshake timed out");
            return;
        }
    };
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

/// Runs an established connection until it closes: registers node peers, opens the control
/// stream if we dialled, and serves the streams the peer opens.
pub(crate) async fn run_connection(
    shared: Arc<Shared>,
    conn: Connection,
    id: Identity,
    dialed_by_me: bool,
) {
    let span = tracing::info_span!("conn", peer = %id, remote = %conn.remote_address());
    async move {
        let _guard = ConnGuard::new(&shared);
        let is_node = id.role == Role::Node;
        if is_node {
            if id.name == shared.name {
                warn!("a peer address points back at this node; dropping the connection");
                conn.close(codes::FORBIDDEN, b"connected to itself");
                return;
            }
            if !shared.register_peer(&id.name, &conn, dialed_by_me) {
                debug!("duplicate connection closed (the other one is kept)");
                return;
            }
            info!(dialed_by_me, "peer connected");
            if dialed_by_me {
                tokio::spawn(
                    open_control(shared.clone(), conn.clone(), id.name.clone()).in_current_span(),
                );
            }
        } else {
            debug!("client connected");
        }
        let id = Arc::new(id);
        let reason = loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    tokio::spawn(
                        handle_stream(shared.clone(), conn.clone(), id.clone(), send, recv)
                            .in_current_span(),
                    );
                }
                Err(e) => break e,
            }
        };
        if is_node {
            shared.unregister_peer(&id.name, &conn);
            info!(%reason, "peer disconnected");
        } else {
            debug!(%reason, "client disconnected");
        }
    }
    .instrument(span)
    .await
}

/// Errors on a control stream; any of them ends the stream (the connection stays).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    #[error("opening the control stream: {0}")]
    Open(#[from] quinn::ConnectionError),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("peer refused the control stream: {0}")]
    Refused(String),
    #[error("peer said hello as {said:?} but its certificate names {cert:?}")]
    NameMismatch { said: String, cert: String },
    #[error("no answer within the header timeout")]
    Timeout,
}

async fn open_control(shared: Arc<Shared>, conn: Connection, peer: String) {
    let result = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, &StreamHeader::control()).await?;
        let resp: Response = tokio::time::timeout(
            shared.cfg.transport.header_timeout,
            read_frame(&mut recv, shared.cfg.limits.max_header_bytes),
        )
        .await
        .map_err(|_| ControlError::Timeout)??;
        if let Response::Reject { code, reason } = resp {
            return Err(ControlError::Refused(format!("{code}: {reason}")));
        }
        run_control(&shared, &conn, &peer, send, recv).await
    }
    .await;
    end_control(&conn, result);
}

pub(crate) fn end_control(conn: &Connection, result: Result<(), ControlError>) {
    match result {
        Ok(()) => {}
        Err(ControlError::Frame(FrameError::Eof)) => debug!("control stream ended"),
        Err(e) if conn.close_reason().is_some() => {
            debug!(error = %e, "control stream ended with the connection")
        }
        Err(e) => {
            // Without a control stream the peer's services are unknown; a fresh connection
            // (the dialler reconnects) is the clean way back.
            warn!(error = %e, "control stream failed; closing the connection");
            conn.close(codes::PROTOCOL, e.to_string().as_bytes());
        }
    }
}

/// Both sides of a control stream after its header: send our hello, then process messages.
pub(crate) async fn run_control(
    shared: &Shared,
    conn: &Connection,
    peer: &str,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), ControlError> {
    let hello = ControlMsg::Hello {
        node: shared.name.clone(),
        services: shared.local.keys().cloned().collect(),
        listen: shared.cfg.listen.to_string(),
    };
    write_frame(&mut send, &hello).await?;
    loop {
        let msg: ControlMsg = read_frame(&mut recv, MAX_CONTROL_MESSAGE).await?;
        match msg {
            ControlMsg::Hello { node, services, .. } => {
                if node != peer {
                    return Err(ControlError::NameMismatch {
                        said: node,
                        cert: peer.to_owned(),
                    });
                }
                debug!(?services, "peer hello");
                shared.set_peer_services(peer, conn, services);
            }
            ControlMsg::Ping { nonce } => {
                write_frame(&mut send, &ControlMsg::Pong { nonce }).await?
            }
            ControlMsg::Pong { .. } => {}
        }
    }
}
