//! The control stream between two nodes: opened by the dialling side, it carries gossip
//! and pings for the life of the connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::peers::ControlHandle;
use super::state::State;
use super::sync::lock;
use crate::gossip::GossipMsg;
use crate::protocol::{
    codes, encode_frame, features, is_newer_control_kind, read_frame_bytes, write_frame, ControlMsg, FrameError, Hello,
    Response, StreamHeader, MAX_CONTROL_MESSAGE,
};

/// Errors on a control stream; any of them ends the stream, and [`end_control`] closes the
/// connection with `PROTOCOL` unless the stream simply ended or the connection was closing.
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

/// Opens the control stream on a connection this node dialled, and runs it.
pub(crate) async fn open_control(shared: Arc<State>, conn: Connection, peer: String) {
    let result = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, &StreamHeader::control()).await?;
        let body = tokio::time::timeout(
            shared.ctx.cfg.transport.header_timeout,
            read_frame_bytes(&mut recv, shared.ctx.cfg.limits.max_header_bytes),
        )
        .await
        .map_err(|_| ControlError::Timeout)??;
        let (resp, rest) = postcard::take_from_bytes::<Response>(&body).map_err(FrameError::from)?;
        if let Response::Reject { code, reason } = resp {
            return Err(ControlError::Refused(format!("{code}: {reason}")));
        }
        let hello = Hello::decode(rest);
        if let Some(h) = hello {
            shared.peers.set_boot(&peer, &conn, h.boot);
        }
        let takes_load = hello.is_some_and(|h| h.takes(features::LOAD_PUSH));
        let takes_sums = hello.is_some_and(|h| h.takes(features::GOSSIP_SUMS));
        run_control(&shared, &conn, &peer, send, recv, takes_load, Some(takes_sums)).await
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
/// process messages until the stream or connection ends. `takes_sums` is what the peer's
/// hello said of bounded gossip rounds, on the dialling side; the accepting side (`None`)
/// learns it from the first such round the dialler opens, and opens none itself before.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_control(
    shared: &Arc<State>,
    conn: &Connection,
    peer: &str,
    send: SendStream,
    mut recv: RecvStream,
    takes_load: bool,
    takes_sums: Option<bool>,
) -> Result<(), ControlError> {
    let (tx, mut rx) = mpsc::channel::<ControlMsg>(256);
    let conn_id = conn.stable_id();
    let sums = Arc::new(AtomicBool::new(takes_sums == Some(true)));
    shared.peers.set_control(
        peer,
        ControlHandle {
            conn_id,
            tx: tx.clone(),
            sums: sums.clone(),
        },
    );
    // One task writes the stream and pings on it: a task and a timer per peer, not two.
    let writer = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut send = send;
            let mut every = tokio::time::interval(shared.ctx.cfg.transport.ping_interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let msg = tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(msg) => msg,
                        None => break,
                    },
                    _ = every.tick() => ControlMsg::Ping {
                        nonce: u64::try_from(shared.ctx.now().as_micros()).unwrap_or(u64::MAX),
                    },
                };
                let Ok(frame) = encode_frame(&msg) else { break };
                if send.write_all(&frame).await.is_err() {
                    break;
                }
                if matches!(msg, ControlMsg::Gossip(_)) {
                    shared
                        .metrics
                        .stats
                        .gossip_bytes_sent
                        .fetch_add(frame.len() as u64, Ordering::Relaxed);
                }
            }
        })
    };
    let opener = {
        let mut g = lock(&shared.gossip);
        let now = shared.ctx.now();
        g.connected(peer, now);
        match takes_sums {
            Some(true) => Some(g.opener()),
            // An older node that accepted: the full-digest round it knows.
            Some(false) => Some(g.legacy_syn(now)),
            // An older dialler opens its own round; a newer one opens with sums.
            None => None,
        }
    };
    if let Some(opener) = opener {
        let _ = tx.try_send(ControlMsg::Gossip(opener));
    }
    // A peer whose hello says it takes pushed load gets ours now, not at the next change.
    shared
        .pushed
        .control_up(peer, conn_id, tx.clone(), takes_load, shared.ctx.now());
    let result = loop {
        let body = match read_frame_bytes(&mut recv, MAX_CONTROL_MESSAGE).await {
            Ok(b) => b,
            Err(e) => break Err(ControlError::from(e)),
        };
        let msg: ControlMsg = match postcard::from_bytes(&body) {
            Ok(m) => m,
            Err(_) if is_newer_control_kind(&body) => {
                debug!(
                    peer,
                    bytes = body.len(),
                    "skipping a control message of a kind a newer quicmesh added"
                );
                continue;
            }
            Err(e) => break Err(ControlError::from(FrameError::from(e))),
        };
        if matches!(msg, ControlMsg::Gossip(_)) {
            // 4 bytes of length prefix, as on the sending side.
            shared
                .metrics
                .stats
                .gossip_bytes_received
                .fetch_add(body.len() as u64 + 4, Ordering::Relaxed);
        }
        if !matches!(msg, ControlMsg::Gossip(_)) {
            // Pings, pongs and pushes are evidence that the peer is up, as gossip is.
            lock(&shared.gossip).heard(peer, shared.ctx.now());
        }
        match msg {
            ControlMsg::Gossip(g) => {
                if matches!(g, GossipMsg::Sums { .. } | GossipMsg::Buckets { .. }) {
                    sums.store(true, Ordering::Relaxed);
                }
                let now = shared.ctx.now();
                let replies = lock(&shared.gossip).handle(peer, g, now);
                for (_, reply) in replies {
                    let _ = tx.try_send(ControlMsg::Gossip(reply));
                }
            }
            ControlMsg::Ping { nonce } => {
                let _ = tx.try_send(ControlMsg::Pong { nonce });
            }
            // The first push is also how a peer that dialled says it takes ours.
            ControlMsg::Load(load) => shared.pushed.received(peer, conn_id, load, shared.ctx.now()),
            ControlMsg::Pong { nonce } => {
                let now = u64::try_from(shared.ctx.now().as_micros()).unwrap_or(u64::MAX);
                let sample = Duration::from_micros(now.saturating_sub(nonce)).as_secs_f64();
                shared.peers.observe_rtt(peer, sample);
                shared.peers.pong(peer, nonce);
            }
        }
    };
    writer.abort();
    shared.peers.drop_control(peer, conn_id);
    shared.pushed.control_down(peer, conn_id);
    result
}
