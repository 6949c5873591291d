//! Keeping a connection to each static peer: dial, run, back off, dial again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn, Instrument};

use super::conn::run_connection;
use super::shared::{lock, Shared};
use crate::backoff::Backoff;
use crate::identity::{peer_identity, Role};

/// Server name sent in the TLS SNI. Peers are verified by SPIFFE id, not by this name.
pub(crate) const SNI: &str = "quicmesh";

/// Whether gossip still lists `name` as a live member at `addr`.
fn member_wanted(shared: &Shared, name: &str, addr: &str) -> bool {
    lock(&shared.gossip)
        .member(name)
        .is_some_and(|m| !m.status.is_gone() && m.addr == addr)
}

/// Dials `target` (`host:port`) and keeps a connection to it: forever for a configured peer
/// (`member` is `None`), or while gossip lists `member` alive at that address.
pub(crate) async fn keep_connected(shared: Arc<Shared>, target: String, member: Option<String>) {
    let span = tracing::info_span!("dial", peer = %target);
    async {
        let mut backoff = Backoff::new(shared.cfg.reconnect.policy());
        let mut shutdown = shared.shutdown.subscribe();
        loop {
            if shared.is_shutting_down() {
                return;
            }
            if let Some(name) = &member {
                if !member_wanted(&shared, name, &target) {
                    debug!(member = %name, "member gone or moved; no longer dialling it");
                    return;
                }
            }
            match dial_once(&shared, &target, &mut backoff).await {
                Ok(DialOutcome::Ran { peer }) => {
                    backoff.disconnected(Instant::now());
                    // The tie-break may have kept the peer's own dial instead of ours; while
                    // that one lives there is nothing to redial.
                    wait_until_disconnected(&shared, &peer).await;
                }
                Ok(DialOutcome::Itself) => {
                    warn!("peer address is this node itself; not dialling it again");
                    return;
                }
                Err(e) => debug!(error = %e, attempt = backoff.attempts(), "dial failed"),
            }
            let delay = {
                let mut rng = lock(&shared.rng);
                backoff.next_delay(&mut *rng)
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
    .instrument(span)
    .await;
    if let Some(name) = member {
        lock(&shared.dialing).remove(&name);
    }
}

enum DialOutcome {
    /// A connection ran and has ended.
    Ran { peer: String },
    /// The address is our own.
    Itself,
}

#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("cannot resolve: {0}")]
    Resolve(std::io::Error),
    #[error("resolves to no address")]
    NoAddress,
    #[error("{0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("handshake: {0}")]
    Handshake(#[from] quinn::ConnectionError),
    #[error("handshake timed out")]
    Timeout,
    #[error("peer identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("{0} is not a node")]
    NotANode(crate::identity::Identity),
}

async fn resolve(target: &str) -> Result<SocketAddr, DialError> {
    let mut addrs = tokio::net::lookup_host(target).await.map_err(DialError::Resolve)?;
    addrs.next().ok_or(DialError::NoAddress)
}

async fn dial_once(shared: &Arc<Shared>, target: &str, backoff: &mut Backoff) -> Result<DialOutcome, DialError> {
    let addr = resolve(target).await?;
    let connecting = shared.endpoint.connect(addr, SNI)?;
    let conn = tokio::time::timeout(shared.cfg.transport.connect_timeout, connecting)
        .await
        .map_err(|_| DialError::Timeout)??;
    let id = peer_identity(&conn)?;
    // The server verifier only accepts node certificates, so this holds; check anyway.
    if id.role != Role::Node {
        return Err(DialError::NotANode(id));
    }
    if id.name == shared.name {
        conn.close(crate::protocol::codes::FORBIDDEN, b"connected to itself");
        return Ok(DialOutcome::Itself);
    }
    let peer = id.name.clone();
    info!(%addr, %peer, "dialled");
    let started = Instant::now();
    backoff.connected(started);
    run_connection(shared.clone(), conn, id, true).await;
    debug!(up_for = ?started.elapsed(), "connection ended");
    Ok(DialOutcome::Ran { peer })
}

async fn wait_until_disconnected(shared: &Shared, peer: &str) {
    // `peer_conn` skips closed connections, so this ends once no live one is left.
    while let Some(conn) = shared.peer_conn(peer) {
        conn.closed().await;
    }
}
