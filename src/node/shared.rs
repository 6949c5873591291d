//! State shared by a node's tasks: configuration, local services, the peer table, counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use quinn::{Connection, Endpoint};
use rand::rngs::StdRng;
use tokio::sync::{watch, Semaphore};

use crate::config::NodeConfig;
use crate::identity::Identity;
use crate::protocol::{codes, RejectCode};
use crate::service::Handler;
use crate::transport::{keep_new_connection, DEDUP_WINDOW};

/// How a local service is served.
#[derive(Clone)]
pub(crate) enum Local {
    /// Spliced to a TCP backend at `host:port`.
    Tcp(String),
    /// Handled in-process.
    Handler(Arc<dyn Handler>),
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
    /// Services the peer announced in its last hello (kept while disconnected, so that a
    /// request for them gets Unavailable rather than UnknownService).
    pub services: Vec<String>,
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
    pub local: BTreeMap<String, Local>,
    pub peers: Mutex<BTreeMap<String, PeerState>>,
    /// Bumped whenever the peer table changes, so waiters need not poll.
    pub peers_changed: watch::Sender<u64>,
    pub inflight: Arc<Semaphore>,
    pub connections: AtomicUsize,
    pub stats: Stats,
    pub shutdown: watch::Sender<bool>,
    pub rng: Mutex<StdRng>,
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
        let entry = peers.get_mut(peer);
        let live = entry.as_ref().and_then(|e| {
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
                conn.close(codes::DUPLICATE, b"duplicate connection");
                return false;
            }
            old.close(codes::DUPLICATE, b"duplicate connection");
        }
        let services = entry
            .map(|e| std::mem::take(&mut e.services))
            .unwrap_or_default();
        peers.insert(
            peer.to_owned(),
            PeerState {
                conn: Some(conn.clone()),
                dialed_by_me,
                since: now,
                services,
                remote: conn.remote_address(),
            },
        );
        drop(peers);
        self.bump();
        true
    }

    /// Forgets `conn` as the connection to `peer`, if it still is.
    pub fn unregister_peer(&self, peer: &str, conn: &Connection) {
        let mut peers = lock(&self.peers);
        if let Some(e) = peers.get_mut(peer) {
            if e.conn.as_ref().map(|c| c.stable_id()) == Some(conn.stable_id()) {
                e.conn = None;
                drop(peers);
                self.bump();
            }
        }
    }

    /// Records the services a peer announced on `conn`.
    pub fn set_peer_services(&self, peer: &str, conn: &Connection, services: Vec<String>) {
        let mut peers = lock(&self.peers);
        if let Some(e) = peers.get_mut(peer) {
            if e.conn.as_ref().map(|c| c.stable_id()) == Some(conn.stable_id()) {
                e.services = services;
                drop(peers);
                self.bump();
            }
        }
    }

    /// The live connection to `peer`, if any.
    pub fn peer_conn(&self, peer: &str) -> Option<Connection> {
        lock(&self.peers)
            .get(peer)
            .and_then(|e| e.conn.clone())
            .filter(|c| c.close_reason().is_none())
    }

    /// Peers offering `service`: (connected ones, whether any disconnected one offers it).
    pub fn candidates(&self, service: &str) -> (Vec<(String, Connection)>, bool) {
        let peers = lock(&self.peers);
        let mut live = Vec::new();
        let mut offline = false;
        for (name, e) in peers.iter() {
            if !e.services.iter().any(|s| s == service) {
                continue;
            }
            match e.conn.as_ref().filter(|c| c.close_reason().is_none()) {
                Some(c) => live.push((name.clone(), c.clone())),
                None => offline = true,
            }
        }
        (live, offline)
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}
