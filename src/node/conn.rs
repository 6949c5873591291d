//! Connections: accepting handshakes, running a connection's stream loop, the control stream.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use tracing::{debug, info, warn, Instrument};

use tokio::sync::mpsc;

use super::shared::{lock, ControlHandle, Shared};
use super::streams::handle_stream;
use crate::identity::{Identity, Role};
use crate::protocol::{
    codes, encode_frame, read_frame, read_frame_bytes, write_frame, ControlMsg, FrameError, Response, StreamHeader,
    MAX_CONTROL_MESSAGE,
};

/// How often a connection's remote address is compared with the last one seen.
const MIGRATION_CHECK: Duration = Duration::from_millis(250);

/// Accepts connections until shutdown.
pub(crate) async fn accept_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            i = shared.endpoint.accept() => i,
            _ = shutdown.changed() => break,
        };
        let Some(incoming) = incoming else { break };
        if shared.draining.load(Ordering::Relaxed) {
            // Refused outright (CONNECTION_REFUSED), so a client moves on to its next entry
            // node at once instead of waiting out its handshake timeout.
            debug!(remote = %incoming.remote_address(), "refusing connection: draining");
            incoming.refuse();
            continue;
        }
        if shared.connections.load(Ordering::Relaxed) >= shared.cfg.limits.max_connections {
            debug!(remote = %incoming.remote_address(), "refusing connection: at limits.max_connections");
            incoming.refuse();
            continue;
        }
        super::handshake::admit(&shared, incoming);
    }
}

/// Runs an established connection until it closes: registers node peers, opens the control
/// stream if we dialled, and serves the streams the peer opens.
pub(crate) async fn run_connection(shared: Arc<Shared>, conn: Connection, id: Identity, dialed_by_me: bool) {
    let span = tracing::info_span!("conn", peer = %id, remote = %conn.remote_address());
    async move {
        let _counted = super::shared::Counted::new(&shared.connections);
        let is_node = id.role == Role::Node;
        let limits = &shared.cfg.limits;
        let streams = if is_node {
            limits.max_streams_per_connection
        } else {
            limits.max_streams_per_client
        };
        conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(streams));
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
                        shared.stats.migrations.fetch_add(1, Ordering::Relaxed);
                        info!(from = %remote, to = %now, "peer address changed; connection migrated");
                        remote = now;
                    }
                }
            }
        };
        if is_node {
            if shared.unregister_peer(&id.name, &conn) {
                // Direct evidence: suspect it now; gossip decides whether it is dead.
                lock(&shared.gossip).disconnected(&id.name, shared.now());
            }
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

/// Both sides of a control stream after its header: open a gossip round, ping for RTT, and
/// process messages until the stream or connection ends.
pub(crate) async fn run_control(
    shared: &Arc<Shared>,
    conn: &Connection,
    peer: &str,
    send: SendStream,
    mut recv: RecvStream,
) -> Result<(), ControlError> {
    let (tx, mut rx) = mpsc::channel::<ControlMsg>(256);
    let conn_id = conn.stable_id();
    lock(&shared.control).insert(
        peer.to_owned(),
        ControlHandle {
            conn_id,
            tx: tx.clone(),
        },
    );
    let writer = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut send = send;
            while let Some(msg) = rx.recv().await {
                let Ok(frame) = encode_frame(&msg) else { break };
                if send.write_all(&frame).await.is_err() {
                    break;
                }
                if matches!(msg, ControlMsg::Gossip(_)) {
                    shared
                        .stats
                        .gossip_bytes_sent
                        .fetch_add(frame.len() as u64, Ordering::Relaxed);
                }
            }
        })
    };
    let syn = lock(&shared.gossip).connected(peer, shared.now());
    let _ = tx.try_send(ControlMsg::Gossip(syn));
    let pinger = {
        let tx = tx.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(shared.cfg.transport.ping_interval);
            loop {
                every.tick().await;
                let nonce = u64::try_from(shared.now().as_micros()).unwrap_or(u64::MAX);
                if tx.send(ControlMsg::Ping { nonce }).await.is_err() {
                    break;
                }
            }
        })
    };
    let result = loop {
        let body = match read_frame_bytes(&mut recv, MAX_CONTROL_MESSAGE).await {
            Ok(b) => b,
            Err(e) => break Err(ControlError::from(e)),
        };
        let msg: ControlMsg = match postcard::from_bytes(&body) {
            Ok(m) => m,
            Err(e) => break Err(ControlError::from(FrameError::from(e))),
        };
        if matches!(msg, ControlMsg::Gossip(_)) {
            // 4 bytes of length prefix, as on the sending side.
            shared
                .stats
                .gossip_bytes_received
                .fetch_add(body.len() as u64 + 4, Ordering::Relaxed);
        }
        match msg {
            ControlMsg::Gossip(g) => {
                let now = shared.now();
                let replies = lock(&shared.gossip).handle(peer, g, now);
                for (_, reply) in replies {
                    let _ = tx.try_send(ControlMsg::Gossip(reply));
                }
            }
            ControlMsg::Ping { nonce } => {
                let _ = tx.try_send(ControlMsg::Pong { nonce });
            }
            ControlMsg::Pong { nonce } => {
                let now = u64::try_from(shared.now().as_micros()).unwrap_or(u64::MAX);
                let sample = Duration::from_micros(now.saturating_sub(nonce)).as_secs_f64();
                let mut rtt = lock(&shared.rtt);
                let e = rtt.entry(peer.to_owned()).or_insert(sample);
                // EWMA with α = 0.3: follows a real change in a few pings, shrugs off one outlier.
                *e = 0.7 * *e + 0.3 * sample;
            }
        }
    };
    pinger.abort();
    writer.abort();
    let mut control = lock(&shared.control);
    if control.get(peer).is_some_and(|h| h.conn_id == conn_id) {
        control.remove(peer);
    }
    result
}
