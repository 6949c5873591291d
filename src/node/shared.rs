//! State shared by a node's tasks: configuration, local services, the peer table, counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint};
use rand::rngs::StdRng;
use tokio::sync::{watch, Semaphore};

use crate::config::NodeConfig;
use crate::gossip::{Gossip, Load};
use crate::identity::Identity;
use crate::protocol::{ControlMsg, RejectCode};
use crate::service::Handler;
use crate::transport::{keep_new_connection, DEDUP_WINDOW};

/// How a local service is served.
#[derive(Clone)]
pub(crate) enum Local {
    /// Spliced to a TCP backend at `host:port`.
    Tcp(String),
    /// Handled in-process.
    Handler(Arc<dyn Handler>),
    /// The built-in status service.
    Status,
}

/// What this node knows of one peer node.
#[derive(Debug, Clone)]
pub(crate) struct PeerState {
    /// The live connection, if any.
    pub conn: Option<Connection>,
    /// Whether we dialled `conn`.
    pub dialed_by_me: bool,
    /// When `conn` was registered.
    pub since: Instant,
    /// The peer's address as we last saw it.
    pub remote: SocketAddr,
}

/// Counters for the node's own view of its work.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub accepted: AtomicU64,
    pub served_local: AtomicU64,
    pub relayed: AtomicU64,
    pub rejected: [AtomicU64; RejectCode::ALL.len()],
    pub handshake_failures: AtomicU64,
    /// Bytes spliced from callers to services (local TCP backends and relays).
    pub bytes_up: AtomicU64,
    /// Bytes spliced from services back to callers.
    pub bytes_down: AtomicU64,
    /// Peers connected again after their connection was lost (whichever side dialled).
    pub reconnects: AtomicU64,
    /// Gossip rounds run.
    pub gossip_rounds: AtomicU64,
    /// Bytes of gossip messages sent and received on control streams (frames included).
    pub gossip_bytes_sent: AtomicU64,
    pub gossip_bytes_received: AtomicU64,
    /// Failed incoming handshakes, by [`super::handshake::HandshakeFailure`].
    pub handshake_failure_reasons: [AtomicU64; super::handshake::HandshakeFailure::ALL.len()],
    /// Connections whose peer's address changed (QUIC connection migration).
    pub migrations: AtomicU64,
    /// Retry packets sent for address validation under handshake load.
    pub retries: AtomicU64,
    /// Certificate files reloaded after a change.
    pub tls_reloads: AtomicU64,
    /// Reloads that failed (the old certificates stayed in use).
    pub tls_reload_failures: AtomicU64,
}

impl Stats {
    pub fn count_reject(&self, code: RejectCode) {
        self.rejected[code.index()].fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) struct Shared {
    pub name: String,
    pub identity: Identity,
    pub cfg: NodeConfig,
    pub endpoint: Endpoint,
    /// How this node dials peers; replaced when the certificates are reloaded.
    pub client_config: Mutex<quinn::ClientConfig>,
    pub local: BTreeMap<String, Local>,
    pub peers: Mutex<BTreeMap<String, PeerState>>,
    /// Bumped whenever the peer table changes, so waiters need not poll.
    pub peers_changed: watch::Sender<u64>,
    pub inflight: Arc<Semaphore>,
    pub connections: AtomicUsize,
    pub stats: Stats,
    pub shutdown: watch::Sender<bool>,
    pub rng: Mutex<StdRng>,
    /// Origin of the gossip clock.
    pub epoch: Instant,
    pub gossip: Mutex<Gossip>,
    /// The writer of each peer's control stream.
    pub control: Mutex<BTreeMap<String, ControlHandle>>,
    /// Ping RTT per peer (EWMA, seconds).
    pub rtt: Mutex<BTreeMap<String, f64>>,
    /// In-flight streams per service, for the load table.
    pub per_service: Mutex<BTreeMap<String, u32>>,
    /// EWMA of locally served stream durations, microseconds.
    pub latency_us: Mutex<f64>,
    /// Gossip-learned members being dialled now.
    pub dialing: Mutex<std::collections::BTreeSet<String>>,
    /// Balancers, latency estimates, pending counts, ejections, retry budget.
    pub routing: Mutex<super::balance::RoutingState>,
    /// Replies written but not yet acknowledged by their callers. A connection close discards
    /// unacknowledged data, so a drain waits for this to reach zero before closing.
    pub undelivered: watch::Sender<usize>,
    /// When this node's certificate expires (Unix seconds), for `/metrics`; updated on reload.
    pub cert_not_after: Mutex<Option<i64>>,
    /// Handshakes in progress, for `limits.max_pending_handshakes`.
    pub pending_handshakes: AtomicUsize,
    /// Rate limit of the info line logged per rejected stream.
    pub reject_log: Mutex<crate::logbudget::LogBudget>,
    /// Who may call each service (`services.NAME.allow`); a service not listed is open to
    /// every identity of the trust domain.
    pub allow: BTreeMap<String, Vec<Identity>>,
    /// Streams running per connection; retired duplicates close when theirs end.
    pub conn_use: super::conn_use::ConnUseTable,
    /// Set by [`super::Node::drain`]: new connections are refused and new service streams
    /// rejected with `Draining`.
    pub draining: std::sync::atomic::AtomicBool,
    /// DNS discovery, if configured.
    pub discovery: Option<Arc<crate::discovery::Discovery>>,
    /// Dials of discovered addresses, and who was found at each.
    pub discovered: Mutex<super::discover::Discovered>,
}

/// Holds one unit of a gauge (live connections, pending handshakes) while it exists.
pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    pub fn new(gauge: &'a AtomicUsize) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The sending side of one peer's control stream.
pub(crate) struct ControlHandle {
    /// The connection the stream belongs to.
    pub conn_id: usize,
    pub tx: tokio::sync::mpsc::Sender<ControlMsg>,
}

/// Locks a mutex, recovering the data if a panicking task poisoned it: every critical
/// section here leaves the table consistent, so the data is still good.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn bump(&self) {
        self.peers_changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Registers a new connection to node `peer`. Returns false if it lost the duplicate
    /// tie-break, in which case it has been closed.
    pub fn register_peer(&self, peer: &str, conn: &Connection, dialed_by_me: bool) -> bool {
        let now = Instant::now();
        let mut peers = lock(&self.peers);
        let live = peers.get(peer).and_then(|e| {
            e.conn
                .as_ref()
                .filter(|c| c.close_reason().is_none())
                .map(|c| (c.clone(), e.dialed_by_me, e.since))
        });
        if let Some((old, old_by_me, since)) = live {
            let keep_new = keep_new_connection(
                &self.name,
                peer,
                old_by_me,
                now.saturating_duration_since(since),
                dialed_by_me,
                DEDUP_WINDOW,
            );
            if !keep_new {
                drop(peers);
                super::conn_use::retire(&self.conn_use, conn);
                return false;
            }
            // Streams may already run on the old one; it closes when they are done.
            super::conn_use::retire(&self.conn_use, &old);
        } else if peers.contains_key(peer) {
            // We had a connection to this peer and lost it; whichever side dialled, it is back.
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        peers.insert(
            peer.to_owned(),
            PeerState {
                conn: Some(conn.clone()),
                dialed_by_me,
                since: now,
                remote: conn.remote_address(),
            },
        );
        drop(peers);
        self.bump();
        true
    }

    /// Forgets `conn` as the connection to `peer`, if it still is; returns whether it was.
    pub fn unregister_peer(&self, peer: &str, conn: &Connection) -> bool {
        let mut peers = lock(&self.peers);
        if let Some(e) = peers.get_mut(peer) {
            if e.conn.as_ref().map(|c| c.stable_id()) == Some(conn.stable_id()) {
                e.conn = None;
                drop(peers);
                self.bump();
                return true;
            }
        }
        false
    }

    /// The live connection to `peer`, if any.
    pub fn peer_conn(&self, peer: &str) -> Option<Connection> {
        lock(&self.peers)
            .get(peer)
            .and_then(|e| e.conn.clone())
            .filter(|c| c.close_reason().is_none())
    }

    /// Nodes that may take a new stream for `service`: Alive or Suspect in the gossip view,
    /// offering it, and connected. The flag says whether some node offers it but cannot take
    /// it now (disconnected, draining, dead), which makes the answer Unavailable rather than
    /// UnknownService.
    /// Each live candidate comes with its gossiped load, so the balancer needs no second pass.
    pub fn candidates(&self, service: &str) -> (Vec<(String, Connection, Load)>, bool) {
        let offering: Vec<(String, bool, Load)> = lock(&self.gossip)
            .members()
            .filter(|m| m.name != self.name && m.services.iter().any(|s| s == service))
            .map(|m| (m.name.clone(), m.status.takes_work(), m.load.clone()))
            .collect();
        let mut live = Vec::new();
        let mut offline = false;
        for (name, takes_work, load) in offering {
            match self.peer_conn(&name).filter(|_| takes_work) {
                Some(c) => live.push((name, c, load)),
                None => offline = true,
            }
        }
        (live, offline)
    }

    /// Time since the node started: the clock of the gossip state machine.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Sends a control message to `peer` if a control stream to it is up; drops it if the
    /// stream is congested (gossip repeats itself, pings are periodic).
    pub fn send_control(&self, peer: &str, msg: ControlMsg) -> bool {
        match lock(&self.control).get(peer) {
            Some(h) => h.tx.try_send(msg).is_ok(),
            None => false,
        }
    }

    /// Changes this node's own gossip record with `change` and tells every connected peer at
    /// once, rather than at the next gossip round (for Draining and Left).
    pub fn announce(&self, change: impl FnOnce(&mut Gossip)) {
        let news = {
            let mut g = lock(&self.gossip);
            change(&mut g);
            g.syn()
        };
        let peers: Vec<String> = lock(&self.control).keys().cloned().collect();
        for p in peers {
            self.send_control(&p, ControlMsg::Gossip(news.clone()));
        }
    }

    /// Service streams in flight now (served here or relayed).
    pub fn in_flight(&self) -> usize {
        self.cfg
            .limits
            .max_inflight
            .saturating_sub(self.inflight.available_permits())
    }

    /// Adds a finished splice's bytes to the counters.
    pub fn count_bytes(&self, up: u64, down: u64) {
        self.stats.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.stats.bytes_down.fetch_add(down, Ordering::Relaxed);
    }

    /// Counts a reply in [`Shared::undelivered`] until `delivered` (a `SendStream::stopped`
    /// future) resolves or the idle timeout passes, whichever comes first.
    /// `keep` (the stream's [`super::conn_use::InUse`] guard) lives as long.
    pub fn track_delivery<F, K>(&self, delivered: F, keep: K)
    where
        F: std::future::Future + Send + 'static,
        K: Send + 'static,
    {
        let counter = self.undelivered.clone();
        let limit = self.cfg.transport.idle_timeout;
        counter.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(limit, delivered).await;
            counter.send_modify(|n| *n = n.saturating_sub(1));
            drop(keep);
        });
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}
