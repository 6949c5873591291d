//! The peer table: who this node is connected to and how to reach each peer's control stream,
//! ping RTTs, the streams running on each connection, and what is being dialled.
//!
//! Owns its locks; takes nothing else of the node's state. The peer map, the control writers
//! and the RTTs are separate locks because they are written by different tasks (connection,
//! control stream, pinger) and never need to change together.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use quinn::Connection;
use tokio::sync::{mpsc, oneshot, watch};

use super::conn_use::{self, ConnUseTable, InUse};
use super::sync::lock;
use crate::overlay::Link;
use crate::protocol::{codes, ControlMsg};
use crate::routing::Ewma;
use crate::transport::{keep_new_connection, DEDUP_WINDOW};

/// Weight of each ping in the RTT average: follows a real change in a few pings, shrugs off
/// one outlier.
const RTT_ALPHA: f64 = 0.3;

/// A link that carried a service stream this recently is kept past the overlay cap: closing
/// it would only make the next call dial it again.
pub(crate) const SERVICE_LINK_KEPT: std::time::Duration = std::time::Duration::from_secs(30);

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
    /// The boot id of the peer process on `conn`, once known (see [`crate::protocol::Hello`]).
    pub boot: Option<u64>,
}

impl PeerState {
    /// The connection, if it is still open.
    pub fn live(&self) -> Option<&Connection> {
        self.conn.as_ref().filter(|c| c.close_reason().is_none())
    }
}

/// The sending side of one peer's control stream.
pub(crate) struct ControlHandle {
    /// The connection the stream belongs to.
    pub conn_id: usize,
    pub tx: mpsc::Sender<ControlMsg>,
    /// The peer takes bounded gossip rounds (its hello said so, or it sent one).
    pub sums: Arc<AtomicBool>,
}

/// How [`PeerTable::register`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Registered {
    /// The first connection to this peer.
    New,
    /// The peer is back after its connection was lost.
    Reconnected,
    /// Replaced a live connection (a restart, or the winner of a simultaneous dial).
    Replaced,
    /// Lost the duplicate tie-break to the live connection; it has been retired.
    Duplicate,
}

/// What this node has learned about addresses found by DNS discovery.
#[derive(Debug, Default)]
pub(crate) struct Discovered {
    /// Addresses with a dial task running.
    pub dialing: BTreeSet<SocketAddr>,
    /// The node found at each address dialled (this node's own name for its own address).
    pub found: BTreeMap<SocketAddr, String>,
}

/// The peer table.
pub(crate) struct PeerTable {
    peers: Mutex<BTreeMap<String, PeerState>>,
    /// Bumped whenever the peer table changes, so waiters need not poll.
    changed: watch::Sender<u64>,
    /// The writer of each peer's control stream.
    control: Mutex<BTreeMap<String, ControlHandle>>,
    /// Ping RTT per peer, seconds.
    rtt: Mutex<BTreeMap<String, Ewma>>,
    /// Streams running per connection; retired duplicates close when theirs end.
    conn_use: ConnUseTable,
    /// Members learned by gossip that are being dialled now.
    dialing: Mutex<BTreeSet<String>>,
    /// Dials of discovered addresses, and who was found at each.
    discovered: Mutex<Discovered>,
    /// Waiters for the pong to a given ping, by peer and nonce (shutdown waits for peers to
    /// have taken its Left record).
    pongs: Mutex<BTreeMap<(String, u64), oneshot::Sender<()>>>,
    /// Client connections, by stable id, so shutdown can close each and see it sent.
    clients: Mutex<BTreeMap<usize, Connection>>,
    /// Identities held by two live processes at once, by node name.
    clashes: Mutex<BTreeMap<String, Clash>>,
    /// When a service stream last went to or came from each peer: the overlay keeps those
    /// links past its cap (see [`PeerTable::links`]).
    service_use: Mutex<BTreeMap<String, Instant>>,
    /// Nodes that let this node's service link go (`TRIMMED`: they are past their own cap),
    /// and when: on_demand.rs prefers other nodes of the service for a while.
    trimmed_by: Mutex<BTreeMap<String, Instant>>,
    /// Dials of service nodes asked for by streams, for the dial driver.
    dial_requests: Mutex<BTreeMap<String, String>>,
    dial_requested: tokio::sync::Notify,
}

/// Two live processes with one node identity, as this node saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Clash {
    /// The address of the connection kept.
    pub kept: SocketAddr,
    /// The address of the last connection refused.
    pub refused: SocketAddr,
    /// Connections refused so far.
    pub count: u64,
    /// When the last was refused, seconds since the Unix epoch.
    pub last_unix: u64,
}

impl PeerTable {
    pub fn new() -> Self {
        PeerTable {
            peers: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
            control: Mutex::new(BTreeMap::new()),
            rtt: Mutex::new(BTreeMap::new()),
            conn_use: ConnUseTable::default(),
            dialing: Mutex::new(BTreeSet::new()),
            discovered: Mutex::new(Discovered::default()),
            pongs: Mutex::new(BTreeMap::new()),
            clients: Mutex::new(BTreeMap::new()),
            clashes: Mutex::new(BTreeMap::new()),
            service_use: Mutex::new(BTreeMap::new()),
            trimmed_by: Mutex::new(BTreeMap::new()),
            dial_requests: Mutex::new(BTreeMap::new()),
            dial_requested: tokio::sync::Notify::new(),
        }
    }

    /// Tells waiters the table changed.
    pub fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that changes with the table.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Registers a new connection to node `peer` (this node is `me`). A connection that
    /// loses the duplicate tie-break is retired (closed once its streams end).
    pub fn register(
        &self,
        me: &str,
        peer: &str,
        conn: &Connection,
        dialed_by_me: bool,
        boot: Option<u64>,
    ) -> Registered {
        let now = Instant::now();
        let mut peers = lock(&self.peers);
        let live = peers
            .get(peer)
            .and_then(|e| e.live().map(|c| (c.clone(), e.dialed_by_me, e.since)));
        let how = if let Some((old, old_by_me, since)) = live {
            let age = now.saturating_duration_since(since);
            if !keep_new_connection(me, peer, old_by_me, age, dialed_by_me, DEDUP_WINDOW) {
                drop(peers);
                conn_use::retire(&self.conn_use, conn);
                return Registered::Duplicate;
            }
            // Streams may already run on the old one; it closes when they are done.
            conn_use::retire(&self.conn_use, &old);
            Registered::Replaced
        } else if peers.contains_key(peer) {
            Registered::Reconnected
        } else {
            Registered::New
        };
        peers.insert(
            peer.to_owned(),
            PeerState {
                conn: Some(conn.clone()),
                dialed_by_me,
                since: now,
                remote: conn.remote_address(),
                boot,
            },
        );
        drop(peers);
        self.bump();
        how
    }

    /// Forgets `conn` as the connection to `peer`, if it still is; returns whether it was.
    pub fn unregister(&self, peer: &str, conn: &Connection) -> bool {
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
        lock(&self.peers).get(peer).and_then(|e| e.live().cloned())
    }

    /// Every peer known, connected or not.
    pub fn snapshot(&self) -> Vec<(String, PeerState)> {
        lock(&self.peers).iter().map(|(n, p)| (n.clone(), p.clone())).collect()
    }

    /// Whether any peer is connected now.
    pub fn any_connected(&self) -> bool {
        lock(&self.peers).values().any(|p| p.live().is_some())
    }

    /// Installs the writer of `peer`'s control stream.
    pub fn set_control(&self, peer: &str, handle: ControlHandle) {
        lock(&self.control).insert(peer.to_owned(), handle);
    }

    /// Removes `peer`'s control writer if it still belongs to connection `conn_id`.
    pub fn drop_control(&self, peer: &str, conn_id: usize) {
        let mut control = lock(&self.control);
        if control.get(peer).is_some_and(|h| h.conn_id == conn_id) {
            control.remove(peer);
        }
    }

    /// The peers with a control stream up (sorted), and those of them that do not take
    /// bounded gossip rounds (older nodes), in one look at the control table.
    pub fn control_peers_and_legacy(&self) -> (Vec<String>, BTreeSet<String>) {
        let control = lock(&self.control);
        let legacy = control
            .iter()
            .filter(|(_, h)| !h.sums.load(Ordering::Relaxed))
            .map(|(p, _)| p.clone())
            .collect();
        (control.keys().cloned().collect(), legacy)
    }

    /// Sends a control message to `peer` if a control stream to it is up; drops it if the
    /// stream is congested (gossip repeats itself, pings are periodic).
    pub fn send_control(&self, peer: &str, msg: ControlMsg) -> bool {
        match lock(&self.control).get(peer) {
            Some(h) => h.tx.try_send(msg).is_ok(),
            None => false,
        }
    }

    /// Sends `peer` a ping with `nonce` on its control stream and returns a receiver that
    /// fires when the pong comes back: the peer has then processed everything sent before
    /// it on that ordered stream. `None` if no control stream is up or it is congested.
    pub fn ping_acked(&self, peer: &str, nonce: u64) -> Option<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        lock(&self.pongs).insert((peer.to_owned(), nonce), tx);
        if self.send_control(peer, ControlMsg::Ping { nonce }) {
            Some(rx)
        } else {
            lock(&self.pongs).remove(&(peer.to_owned(), nonce));
            None
        }
    }

    /// Stops waiting for the pong to `nonce` from `peer` (it did not come in time).
    pub fn forget_pong(&self, peer: &str, nonce: u64) {
        lock(&self.pongs).remove(&(peer.to_owned(), nonce));
    }

    /// A pong arrived from `peer`: wakes whoever waits for it.
    pub fn pong(&self, peer: &str, nonce: u64) {
        if let Some(tx) = lock(&self.pongs).remove(&(peer.to_owned(), nonce)) {
            let _ = tx.send(());
        }
    }

    /// The live connection to `peer` and the boot id of the process on it, if known.
    pub fn live_boot(&self, peer: &str) -> Option<(Connection, Option<u64>)> {
        lock(&self.peers)
            .get(peer)
            .and_then(|e| e.live().map(|c| (c.clone(), e.boot)))
    }

    /// Records the boot id learned on `conn` (a connection this node dialled, from the
    /// peer's answer on the control stream).
    pub fn set_boot(&self, peer: &str, conn: &Connection, boot: u64) {
        if let Some(e) = lock(&self.peers).get_mut(peer) {
            if e.conn.as_ref().map(Connection::stable_id) == Some(conn.stable_id()) {
                e.boot = Some(boot);
            }
        }
    }

    /// Counts a refused connection of a clash over `peer`'s identity.
    pub fn record_clash(&self, peer: &str, kept: SocketAddr, refused: SocketAddr, now_unix: u64) -> u64 {
        let mut clashes = lock(&self.clashes);
        let c = clashes.entry(peer.to_owned()).or_insert(Clash {
            kept,
            refused,
            count: 0,
            last_unix: now_unix,
        });
        c.kept = kept;
        c.refused = refused;
        c.count += 1;
        c.last_unix = now_unix;
        c.count
    }

    /// Clashes seen since `since_unix`.
    pub fn clashes_since(&self, since_unix: u64) -> Vec<(String, Clash)> {
        lock(&self.clashes)
            .iter()
            .filter(|(_, c)| c.last_unix >= since_unix)
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect()
    }

    /// Remembers a client connection until [`PeerTable::forget_client`].
    pub fn add_client(&self, conn: &Connection) {
        lock(&self.clients).insert(conn.stable_id(), conn.clone());
    }

    pub fn forget_client(&self, conn: &Connection) {
        lock(&self.clients).remove(&conn.stable_id());
    }

    /// Every open connection, peers' and clients'.
    pub fn all_connections(&self) -> Vec<Connection> {
        let mut all: Vec<Connection> = lock(&self.peers).values().filter_map(|p| p.live().cloned()).collect();
        all.extend(lock(&self.clients).values().cloned());
        all
    }

    /// Peers with a control stream up.
    pub fn control_peers(&self) -> Vec<String> {
        lock(&self.control).keys().cloned().collect()
    }

    /// Adds a ping RTT sample (seconds) for `peer`.
    pub fn observe_rtt(&self, peer: &str, sample: f64) {
        lock(&self.rtt)
            .entry(peer.to_owned())
            .or_insert(Ewma::new(RTT_ALPHA))
            .observe(sample);
    }

    /// Ping RTT per peer, seconds.
    pub fn rtts(&self) -> BTreeMap<String, f64> {
        lock(&self.rtt)
            .iter()
            .filter_map(|(n, e)| e.get().map(|v| (n.clone(), v)))
            .collect()
    }

    /// A service stream goes to, or comes from, `peer` now.
    pub fn used_for_service(&self, peer: &str) {
        let now = Instant::now();
        let mut used = lock(&self.service_use);
        match used.get_mut(peer) {
            Some(t) => *t = now,
            None => {
                used.insert(peer.to_owned(), now);
            }
        }
    }

    /// Asks the dial driver for a link to node `name` at `addr` (a service's node).
    pub fn request_dial(&self, name: String, addr: String) {
        lock(&self.dial_requests).insert(name, addr);
        self.dial_requested.notify_one();
    }

    /// Waits for dial requests and takes them.
    pub async fn dial_requests(&self) -> BTreeMap<String, String> {
        loop {
            let taken = std::mem::take(&mut *lock(&self.dial_requests));
            if !taken.is_empty() {
                return taken;
            }
            self.dial_requested.notified().await;
        }
    }

    /// `peer` closed this node's service link to it for its own cap.
    pub fn trimmed_by(&self, peer: &str) {
        let mut t = lock(&self.trimmed_by);
        // Bounded by the members this node routes to; old entries go at each insert.
        t.retain(|_, at| at.elapsed() < SERVICE_LINK_KEPT);
        t.insert(peer.to_owned(), Instant::now());
    }

    /// Whether `peer` closed this node's service link to it within `within`.
    pub fn trimmed_within(&self, peer: &str, within: std::time::Duration) -> bool {
        lock(&self.trimmed_by).get(peer).is_some_and(|t| t.elapsed() < within)
    }

    /// Whether a service stream went to or came from `peer` within `within`.
    pub fn used_within(&self, peer: &str, within: std::time::Duration) -> bool {
        lock(&self.service_use).get(peer).is_some_and(|t| t.elapsed() < within)
    }

    /// The live peer links as the overlay sees them, with times on the node's clock (`now` is
    /// [`super::context::Context::now`]); a link that carried a service stream within
    /// `keep_within` is kept past the cap. Forgets older service use.
    pub fn links(&self, now: std::time::Duration, keep_within: std::time::Duration) -> Vec<Link<String>> {
        let used = {
            let mut used = lock(&self.service_use);
            used.retain(|_, t| t.elapsed() < keep_within);
            used.keys().cloned().collect::<BTreeSet<String>>()
        };
        lock(&self.peers)
            .iter()
            .filter(|(_, p)| p.live().is_some())
            .map(|(name, p)| Link {
                peer: name.clone(),
                since: now.saturating_sub(p.since.elapsed()),
                keep: used.contains(name),
            })
            .collect()
    }

    /// Lets the link to `peer` go for the overlay cap (close code `TRIMMED`, once the streams
    /// on it are done), unless it is younger than `grace` (a new connection replaced the one
    /// the overlay saw) or a service stream used it within `kept`; true if it goes.
    pub fn trim(&self, peer: &str, grace: std::time::Duration, kept: std::time::Duration) -> bool {
        if self.used_within(peer, kept) {
            return false;
        }
        let peers = lock(&self.peers);
        let Some((conn, since)) = peers.get(peer).and_then(|p| p.live().map(|c| (c, p.since))) else {
            return false;
        };
        if since.elapsed() < grace {
            return false;
        }
        conn_use::retire_with(
            &self.conn_use,
            conn,
            codes::TRIMMED,
            b"more peer connections than limits.max_peer_connections",
        );
        true
    }

    /// Counts a stream on `conn` until the guard drops.
    pub fn in_use(&self, conn: &Connection) -> InUse {
        conn_use::in_use(&self.conn_use, conn)
    }

    /// Marks gossip member `name` as being dialled; false if it already was.
    pub fn start_dialing(&self, name: &str) -> bool {
        lock(&self.dialing).insert(name.to_owned())
    }

    /// The dial of member `name` ended.
    pub fn stop_dialing(&self, name: &str) {
        lock(&self.dialing).remove(name);
    }

    /// Marks discovered address `addr` as being dialled; false if it already was.
    pub fn start_dialing_addr(&self, addr: SocketAddr) -> bool {
        lock(&self.discovered).dialing.insert(addr)
    }

    /// The dial of discovered address `addr` ended.
    pub fn stop_dialing_addr(&self, addr: SocketAddr) {
        lock(&self.discovered).dialing.remove(&addr);
        // The answers or the peer table may have changed while that dial was ending.
        self.bump();
    }

    /// Remembers that node `name` answered at discovered address `addr`.
    pub fn found_at(&self, addr: SocketAddr, name: &str) {
        lock(&self.discovered).found.insert(addr, name.to_owned());
    }

    /// Who answered at each discovered address dialled.
    pub fn found(&self) -> BTreeMap<SocketAddr, String> {
        lock(&self.discovered).found.clone()
    }
}
