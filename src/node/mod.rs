//! A mesh node: one QUIC endpoint, a connection per peer, a stream per request.
//!
//! ```no_run
//! # async fn run() -> Result<(), quicmesh::NodeError> {
//! use quicmesh::{Node, NodeConfig, Echo};
//! let config = NodeConfig::load("node.toml".as_ref())?;
//! let node = Node::builder(config).handler("echo", Echo).start().await?;
//! println!("listening on {}", node.local_addr());
//! node.shutdown().await;
//! # Ok(()) }
//! ```

// State, split by owner (no file here imports a driver):
mod config_reload;
mod conn_use;
mod context;
mod ended;
mod error;
mod failure;
mod health_table;
mod load;
mod metrics;
mod migrations;
mod peers;
mod pushed_load;
mod reach;
mod rebuild;
mod registry;
mod route;
mod services;
mod state;
mod subsets;
mod sync;
mod tls;
mod warm_pools;
// Decisions over several parts of the state:
mod balance;
mod checks;
mod clash;
mod coverage;
mod on_demand;
// Drivers (tasks and the streams they serve), above the state:
mod admin;
mod conn;
mod control;
mod dashboard;
mod dial;
mod discover;
mod handshake;
mod membership;
mod preconnect;
mod reload;
mod services_api;
mod streams;
// Start-up: resolve options, build the state, spawn the drivers.
mod start;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tracing::{debug, info};

pub use config_reload::{ReloadError, Reloaded};
pub(crate) use dial::SNI;
pub use error::NodeError;
pub use start::NodeBuilder;
pub(crate) use sync::lock as lock_std;

use state::State;
use sync::lock;

use crate::identity::Identity;
use crate::protocol::{codes, RejectCode, StatusReport};

/// A running node. Dropping it stops it abruptly; [`Node::shutdown`] closes connections cleanly.
pub struct Node {
    state: std::sync::Arc<State>,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    tasks: Mutex<JoinSet<()>>,
}

/// One peer node as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node name (from its certificate).
    pub name: String,
    /// Whether a connection is up now.
    pub connected: bool,
    /// The peer's address as last seen.
    pub remote: SocketAddr,
    /// Round-trip time: the control-stream ping EWMA, else QUIC's own estimate, if connected.
    pub rtt: Option<Duration>,
    /// Whether this node dialled the connection (else the peer did).
    pub dialed_by_me: bool,
    /// The largest UDP payload path MTU discovery has confirmed on the connection, if
    /// connected: at most `transport.max_udp_payload` of either side.
    pub mtu: Option<u16>,
}

/// Counters of a node's work since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Service streams accepted (past the in-flight limit).
    pub streams_accepted: u64,
    /// Service streams served by this node's own services.
    pub served_local: u64,
    /// Service streams relayed to a peer.
    pub relayed: u64,
    /// Streams rejected, by code.
    pub rejected: BTreeMap<RejectCode, u64>,
    /// Incoming handshakes that failed (bad certificate, timeout, ...).
    pub handshake_failures: u64,
    /// Failed incoming handshakes by reason (`cert_expired`, `unknown_ca`, ...), non-zero only.
    pub handshake_failure_reasons: BTreeMap<&'static str, u64>,
    /// Connections open now (peers and clients).
    pub connections: usize,
    /// Connections whose peer's address changed (QUIC migration).
    pub migrations: u64,
    /// Retry packets sent for address validation.
    pub retries: u64,
    /// Certificate reloads after the files changed.
    pub tls_reloads: u64,
    /// Connections to peers re-established after one was lost.
    pub peer_reconnects: u64,
    /// Connections to peers lost (not duplicates retired by either side, not closed in
    /// order); each made gossip suspect the peer. Zero in a healthy mesh.
    pub peer_losses: u64,
    /// Connections refused because another live process holds the same node identity (a
    /// misconfiguration or a stolen key). Zero in a sound mesh.
    pub identity_clashes: u64,
    /// Peer connections this node let go for being past `limits.max_peer_connections` (a
    /// mesh larger than the cap keeps a bounded overlay). Zero in a full mesh.
    pub peer_links_trimmed: u64,
    /// Accepted streams reset because their deadline passed while being served or relayed
    /// (refusals of streams whose deadline had passed on arrival are in `rejected`).
    pub deadlines_exceeded: u64,
    /// Failed dials of peers by reason (`resolve`, `timeout`, `certificate`, ...), non-zero only.
    pub dial_failures: BTreeMap<&'static str, u64>,
}

/// How long shutdown waits for peers to acknowledge its Left record, and for its closes to be
/// sent; both take a round trip or less when peers are up.
const SHUTDOWN_ACK_LIMIT: Duration = Duration::from_millis(500);

impl Node {
    /// Starts building a node from its configuration.
    pub fn builder(config: crate::NodeConfig) -> NodeBuilder {
        NodeBuilder::new(config)
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.state.ctx.name
    }

    /// This node's identity.
    pub fn identity(&self) -> &Identity {
        &self.state.ctx.identity
    }

    /// The UDP address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin HTTP address (`/metrics`, `/status`, `/healthz`, `/readyz`), if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Services served by this node itself.
    pub fn local_services(&self) -> Vec<String> {
        self.state.services.names()
    }

    /// DNS discovery: each `srv:` name's last good answer, its age and the last error.
    /// Empty without `discovery` in the configuration.
    pub fn discovery(&self) -> Vec<crate::discovery::WatchStatus> {
        self.state
            .ctx
            .discovery
            .as_ref()
            .map(|d| d.status())
            .unwrap_or_default()
    }

    /// The peers this node knows, connected or not.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let rtt = self.state.peers.rtts();
        self.state
            .peers
            .snapshot()
            .into_iter()
            .map(|(name, p)| {
                let live = p.live();
                PeerInfo {
                    connected: live.is_some(),
                    remote: live.map(|c| c.remote_address()).unwrap_or(p.remote),
                    rtt: live.map(|c| {
                        rtt.get(&name)
                            .map(|s| Duration::from_secs_f64(*s))
                            .unwrap_or_else(|| c.rtt())
                    }),
                    dialed_by_me: p.dialed_by_me,
                    mtu: live.map(|c| c.stats().path.current_mtu),
                    name,
                }
            })
            .collect()
    }

    /// For every service reachable from this node, the nodes that would take a new stream for
    /// it now (this one included).
    pub fn service_map(&self) -> BTreeMap<String, Vec<String>> {
        self.state.service_map()
    }

    /// This node's view of the mesh: every member's gossiped record, with connection state and
    /// ping RTT.
    pub fn status(&self) -> StatusReport {
        self.state.status_report()
    }

    /// Marks this node Draining (peers route no new streams to it) or Alive again.
    pub fn set_draining(&self, draining: bool) {
        lock(&self.state.gossip).set_draining(draining);
    }

    /// Stops gracefully: the node gossips Draining (so peers route new streams elsewhere),
    /// refuses new connections, rejects new service streams with `Draining` (clients and
    /// relaying nodes retry those elsewhere; nothing was processed), lets the streams in
    /// flight finish for up to `grace`, then leaves the mesh as [`Node::shutdown`] does.
    /// Returns how many streams were still in flight when the grace period ran out.
    pub async fn drain(&self, grace: Duration) -> usize {
        let started = Instant::now();
        self.state.set_draining();
        self.state.announce(|g| g.set_draining(true));
        let max = u32::try_from(self.state.load.max_inflight()).unwrap_or(u32::MAX);
        let inflight = self.state.load.inflight.clone();
        info!(node = %self.state.ctx.name, ?grace, in_flight = self.in_flight(), "draining");
        let deadline = tokio::time::Instant::now() + grace;
        let left = match tokio::time::timeout_at(deadline, inflight.acquire_many_owned(max)).await {
            Ok(_all) => 0,
            Err(_) => self.in_flight(),
        };
        // The last replies are written but perhaps not yet acknowledged, and closing the
        // connection would discard them: wait until the callers have them (within the grace).
        let mut undelivered = self.state.load.undelivered();
        let waiting = *undelivered.borrow();
        if waiting > 0 {
            debug!(replies = waiting, "waiting for the last replies to be acknowledged");
        }
        if tokio::time::timeout_at(deadline, undelivered.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            let unacked = *undelivered.borrow();
            tracing::warn!(node = %self.state.ctx.name, unacked, "drain grace ran out with replies unacknowledged (callers gone without closing?)");
        }
        if left > 0 {
            tracing::warn!(node = %self.state.ctx.name, abandoned = left, ?grace, "drain grace ran out; closing with streams in flight");
        }
        info!(node = %self.state.ctx.name, took = ?started.elapsed(), "drained");
        self.shutdown().await;
        left
    }

    /// Service streams in flight on this node now (served here or relayed).
    pub fn in_flight(&self) -> usize {
        self.state.load.in_flight()
    }

    /// A snapshot of the node's counters.
    pub fn stats(&self) -> NodeStats {
        let s = &self.state.metrics.stats;
        NodeStats {
            streams_accepted: s.accepted.load(Ordering::Relaxed),
            served_local: s.served_local.load(Ordering::Relaxed),
            relayed: s.relayed.load(Ordering::Relaxed),
            rejected: RejectCode::ALL
                .iter()
                .map(|c| (*c, s.rejected[c.index()].load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            handshake_failures: s.handshake_failures.load(Ordering::Relaxed),
            handshake_failure_reasons: failure::HandshakeFailure::ALL
                .iter()
                .map(|r| {
                    (
                        r.as_str(),
                        s.handshake_failure_reasons[r.index()].load(Ordering::Relaxed),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            connections: self.state.metrics.connections(),
            migrations: s.migrations.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            tls_reloads: s.tls_reloads.load(Ordering::Relaxed),
            peer_reconnects: s.reconnects.load(Ordering::Relaxed),
            peer_losses: s.peer_losses.load(Ordering::Relaxed),
            identity_clashes: s.identity_clashes.load(Ordering::Relaxed),
            peer_links_trimmed: s.links_trimmed.load(Ordering::Relaxed),
            deadlines_exceeded: s.deadlines_exceeded.load(Ordering::Relaxed),
            dial_failures: reach::DialFailure::ALL
                .iter()
                .map(|r| (r.as_str(), self.state.reach.count(*r)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }

    /// Moves the node's endpoint to a new UDP socket (a new address or port). Connections
    /// this node dialled migrate to it and keep their streams; peers that dial this node
    /// must learn the new address (by gossip of `advertise`, or DNS).
    pub fn rebind(&self, socket: std::net::UdpSocket) -> std::io::Result<()> {
        self.state.ctx.endpoint.rebind(socket)
    }

    /// Re-reads the configuration through [`NodeBuilder::reload_from`] and applies it: the
    /// services are added, changed and removed (streams in flight on a removed one finish);
    /// a change to any other key, or a configuration that does not load, is refused whole
    /// and the running configuration stays.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        config_reload::reload_from_source(&self.state)
    }

    /// Waits until the peer table changes (a peer connects, disconnects, or says hello).
    pub async fn peers_changed(&self) {
        let mut rx = self.state.peers.subscribe();
        let _ = rx.changed().await;
    }

    /// Stops the node: closes every connection with an orderly close, waits briefly for the
    /// close to be delivered, and stops all tasks.
    pub async fn shutdown(&self) {
        // SHUTDOWN promises callers that every stream taken was answered (they may resend
        // what got no answer); with streams still in flight, or replies not yet delivered,
        // that would not be true.
        let code = if self.in_flight() > 0 || *self.state.load.undelivered().borrow() > 0 {
            codes::ABANDONED
        } else {
            codes::SHUTDOWN
        };
        // Say goodbye first, and wait until each peer has it, so peers mark us Left rather
        // than suspecting a crash.
        self.state
            .announce_acked(crate::gossip::Gossip::leave, SHUTDOWN_ACK_LIMIT)
            .await;
        self.state.ctx.stop();
        // Close every connection and wait until each close is sent: no more. (The endpoint's
        // wait_idle would also wait out every connection's draining period, 3 PTOs, which
        // is about 3 s for a handshake still in progress with a peer that is down.)
        let conns = self.state.peers.all_connections();
        crate::transport::close_and_flush(&conns, code, b"node shutting down", SHUTDOWN_ACK_LIMIT).await;
        self.state.ctx.endpoint.close(code, b"node shutting down");
        // Draining connections keep the endpoint, and so its socket, alive for those 3 PTOs;
        // free the address now, for a restart on it.
        crate::transport::release_socket(&self.state.ctx.endpoint, self.local_addr, SHUTDOWN_ACK_LIMIT).await;
        lock(&self.tasks).abort_all();
        info!(node = %self.state.ctx.name, "node stopped");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.state.ctx.stop();
        self.state.ctx.endpoint.close(codes::SHUTDOWN, b"node dropped");
    }
}
