//! Keeping a connection to each static peer: dial, run, back off, dial again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn, Instrument};

use super::conn::run_connection;
use super::coverage;
use super::ended::Ended;
use super::peers::SERVICE_LINK_KEPT;
use super::reach::DialFailure;
use super::state::State;
use super::sync::lock;
use crate::backoff::Backoff;
use crate::identity::{peer_identity, Role};

/// Server name sent in the TLS SNI. Peers are verified by SPIFFE id, not by this name.
pub(crate) const SNI: &str = "quicmesh";

/// Whether gossip still lists `name` as a live member at `addr`.
fn member_wanted(shared: &State, name: &str, addr: &str) -> bool {
    lock(&shared.gossip)
        .member(name)
        .is_some_and(|m| !m.status.is_gone() && m.addr == addr)
}

/// Why an address is dialled, which decides for how long.
pub(crate) enum Purpose {
    /// A configured peer: dialled for as long as the node runs, except while the node is past
    /// the overlay cap with links up (then it is only a contact point).
    Seed,
    /// A member learned by gossip: dialled while gossip lists it alive at that address and the
    /// overlay wants a link to it.
    Member(String),
    /// An address found by DNS discovery: dialled while discovery lists it and no live
    /// connection covers it.
    Discovered,
    /// A node that offers a service this node routes to, past the overlay cap where it may
    /// have no link: dialled while gossip lists it alive at that address and service streams
    /// went to it within [`SERVICE_LINK_KEPT`].
    Service(String),
}

/// Whether the dial of `target` for `purpose` should go on now.
fn still_wanted(shared: &State, target: &str, purpose: &Purpose, discovered: Option<SocketAddr>) -> bool {
    match purpose {
        Purpose::Seed => true,
        Purpose::Member(name) => {
            // A probe of a member held gone (past the cap, for a healed partition) is dialled
            // although gossip lists it gone; the overlay stops it after one failed attempt.
            let probing = lock(&shared.overlay).is_probe(name);
            let probe = probing && lock(&shared.gossip).member(name).is_some_and(|m| m.addr == target);
            if !probe && !member_wanted(shared, name, target) {
                debug!(member = %name, "member gone or moved; no longer dialling it");
                return false;
            }
            if !lock(&shared.overlay).wants_dial(name) {
                debug!(member = %name, "the overlay no longer wants a link to this member");
                return false;
            }
            true
        }
        Purpose::Discovered => {
            let wanted = discovered.is_some_and(|a| coverage::wanted(shared, a));
            if !wanted {
                debug!("address left DNS or is covered by a live connection; no longer dialling it");
            }
            wanted
        }
        Purpose::Service(name) => {
            let wanted = member_wanted(shared, name, target) && shared.peers.used_within(name, SERVICE_LINK_KEPT);
            if !wanted {
                debug!(member = %name, "no service stream for this node lately, or it is gone; no longer dialling it");
            }
            wanted
        }
    }
}

/// Dials the service nodes streams ask for (see on_demand.rs) until shutdown.
pub(crate) async fn service_dials(shared: Arc<State>) {
    let mut shutdown = shared.ctx.on_shutdown();
    loop {
        let requests = tokio::select! {
            r = shared.peers.dial_requests() => r,
            _ = shutdown.changed() => return,
        };
        for (name, addr) in requests {
            if shared.peers.peer_conn(&name).is_none() && shared.peers.start_dialing(&name) {
                let span = tracing::Span::current();
                tokio::spawn(keep_connected(shared.clone(), addr, Purpose::Service(name)).instrument(span));
            }
        }
    }
}

/// Waits while the node is only using its configured peers as contact points (past the
/// overlay cap, with links up); false on shutdown.
async fn wait_while_contact_only(shared: &State) -> bool {
    let mut changed = shared.peers.subscribe();
    let mut shutdown = shared.ctx.on_shutdown();
    let mut logged = false;
    while shared.contact_only() {
        if !std::mem::replace(&mut logged, true) {
            debug!("the overlay has links up; the configured peer is dialled again once no peer is left");
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return false },
            // The overlay can return to a full mesh without the peer table changing.
            () = tokio::time::sleep(shared.ctx.cfg.gossip.interval * 5) => {}
            _ = shutdown.changed() => return false,
        }
    }
    !shared.ctx.is_shutting_down()
}

/// Dials `target` (`host:port`) and keeps a connection to it for as long as `purpose` says.
pub(crate) async fn keep_connected(shared: Arc<State>, target: String, purpose: Purpose) {
    let span = tracing::info_span!("dial", peer = %target);
    let discovered_addr = target.parse::<SocketAddr>().ok();
    async {
        let mut backoff = Backoff::new(shared.ctx.cfg.reconnect.policy());
        let mut shutdown = shared.ctx.on_shutdown();
        loop {
            if shared.ctx.is_shutting_down() {
                return;
            }
            if matches!(purpose, Purpose::Seed) && !wait_while_contact_only(&shared).await {
                return;
            }
            if !still_wanted(&shared, &target, &purpose, discovered_addr) {
                return;
            }
            let failure = match dial_once(&shared, &target, &mut backoff).await {
                Ok(DialOutcome::Ran { peer, ended }) => {
                    if let (Purpose::Discovered, Some(addr)) = (&purpose, discovered_addr) {
                        shared.peers.found_at(addr, &peer);
                    }
                    backoff.disconnected(Instant::now());
                    if ended == Ended::Clash {
                        // Redialling soon would only be refused again (and flap the peer if it
                        // were let in): wait the longest reconnect interval.
                        tokio::select! {
                            () = tokio::time::sleep(shared.ctx.cfg.reconnect.max) => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                    if ended == Ended::PeerRetired {
                        // The peer kept its own dial to us; give it time to register here
                        // rather than dialling a third connection.
                        wait_for_replacement(&shared, &peer).await;
                    }
                    // The tie-break may have kept the peer's own dial instead of ours; while
                    // that one lives there is nothing to redial.
                    wait_until_disconnected(&shared, &peer).await;
                    if let (Ended::PeerTrimmed, Purpose::Service(name)) = (ended, &purpose) {
                        // The server is past its cap and this link carried too little to be
                        // kept: redialling would only be let go again. Streams go to the
                        // service's other nodes for a while (on_demand.rs).
                        debug!(member = %name, "the node let this service link go; not redialling it");
                        shared.peers.trimmed_by(name);
                        return;
                    }
                    if let Purpose::Member(name) = &purpose {
                        lock(&shared.overlay).dial_ended(name, true, shared.ctx.now());
                    }
                    None
                }
                Ok(DialOutcome::Itself) => {
                    match (&purpose, discovered_addr) {
                        // DNS lists every node, this one included: expected, and remembered.
                        (Purpose::Discovered, Some(addr)) => {
                            debug!("discovered address is this node itself");
                            shared.peers.found_at(addr, &shared.ctx.name);
                        }
                        _ => warn!("peer address is this node itself; not dialling it again"),
                    }
                    return;
                }
                Err(e) => Some(e),
            };
            let delay = {
                let mut rng = lock(&shared.rng);
                backoff.next_delay(&mut *rng)
            };
            if let Some(e) = failure {
                failed(&shared, &target, &e, delay);
                if let Purpose::Member(name) = &purpose {
                    // Past the cap the overlay draws another member rather than wait for this one.
                    let mut overlay = lock(&shared.overlay);
                    overlay.dial_ended(name, false, shared.ctx.now());
                    if !overlay.wants_dial(name) {
                        return;
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
    .instrument(span)
    .await;
    shared.reach.forget(&target);
    match purpose {
        Purpose::Seed => {}
        Purpose::Member(name) => {
            lock(&shared.overlay).dial_dropped(&name);
            shared.peers.stop_dialing(&name);
        }
        Purpose::Service(name) => {
            shared.peers.stop_dialing(&name);
        }
        Purpose::Discovered => {
            if let Some(addr) = discovered_addr {
                shared.peers.stop_dialing_addr(addr);
            }
        }
    }
}

enum DialOutcome {
    /// A connection ran and has ended.
    Ran { peer: String, ended: Ended },
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

impl DialError {
    fn reason(&self) -> DialFailure {
        match self {
            DialError::Resolve(_) | DialError::NoAddress => DialFailure::Resolve,
            DialError::Connect(_) => DialFailure::Other,
            DialError::Handshake(e) => DialFailure::of_handshake(e),
            DialError::Timeout => DialFailure::Timeout,
            DialError::Identity(_) | DialError::NotANode(_) => DialFailure::Identity,
        }
    }
}

/// Records a failed dial; warns at the first failure in a row and at each doubling, so a
/// peer that stays down is loud at first and then costs a line per doubling of its downtime.
fn failed(shared: &State, target: &str, e: &DialError, retry_in: std::time::Duration) {
    let reason = e.reason();
    if shared.ctx.is_shutting_down() {
        // Our own endpoint closing under a dial in progress is no news.
        debug!(%reason, error = %e, "dial ended by shutdown");
        return;
    }
    match shared
        .reach
        .failed(target, reason, e.to_string(), crate::unix_time().as_secs())
    {
        Some(failures) => warn!(
            %reason, error = %e, failures, ?retry_in,
            "cannot reach peer: {}", reason.advice()
        ),
        None => debug!(%reason, error = %e, ?retry_in, "dial failed"),
    }
}

async fn resolve(target: &str) -> Result<SocketAddr, DialError> {
    let mut addrs = tokio::net::lookup_host(target).await.map_err(DialError::Resolve)?;
    addrs.next().ok_or(DialError::NoAddress)
}

async fn dial_once(shared: &Arc<State>, target: &str, backoff: &mut Backoff) -> Result<DialOutcome, DialError> {
    let addr = resolve(target).await?;
    let connecting = shared.ctx.endpoint.connect_with(
        shared.tls.client_config(),
        addr,
        &crate::protocol::Hello::server_name(shared.ctx.boot),
    )?;
    let conn = tokio::time::timeout(shared.ctx.cfg.transport.connect_timeout, connecting)
        .await
        .map_err(|_| DialError::Timeout)??;
    let id = peer_identity(&conn)?;
    // The server verifier only accepts node certificates, so this holds; check anyway.
    if id.role != Role::Node {
        return Err(DialError::NotANode(id));
    }
    if id.name == shared.ctx.name {
        conn.close(crate::protocol::codes::FORBIDDEN, b"connected to itself");
        return Ok(DialOutcome::Itself);
    }
    let peer = id.name.clone();
    match shared.reach.reached(target) {
        Some(t) => info!(%addr, %peer, failures = t.failures, "dialled, after {} failed attempts", t.failures),
        None => info!(%addr, %peer, "dialled"),
    }
    let started = Instant::now();
    backoff.connected(started);
    let ended = run_connection(shared.clone(), conn, id, true).await;
    debug!(up_for = ?started.elapsed(), ?ended, "connection ended");
    Ok(DialOutcome::Ran { peer, ended })
}

/// Waits, at most `transport.connect_timeout`, until a live connection to `peer` registers.
async fn wait_for_replacement(shared: &State, peer: &str) {
    let mut changed = shared.peers.subscribe();
    let registered = async {
        while shared.peers.peer_conn(peer).is_none() {
            if changed.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(shared.ctx.cfg.transport.connect_timeout, registered).await;
}

async fn wait_until_disconnected(shared: &State, peer: &str) {
    // `peer_conn` skips closed connections, so this ends once no live one is left.
    while let Some(conn) = shared.peers.peer_conn(peer) {
        conn.closed().await;
    }
}
