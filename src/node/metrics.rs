//! The node's counters and gauges, read by `/metrics`, [`crate::Node::stats`] and the
//! rejected-stream log. Every field is an atomic or behind its own lock, so counting never
//! waits on routing or the peer table.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::failure::HandshakeFailure;
use super::sync::lock;
use crate::logbudget::LogBudget;
use crate::protocol::RejectCode;

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
    /// Failed incoming handshakes, by [`HandshakeFailure`].
    pub handshake_failure_reasons: [AtomicU64; HandshakeFailure::ALL.len()],
    /// Connections whose peer's address changed (QUIC connection migration).
    pub migrations: AtomicU64,
    /// Retry packets sent for address validation under handshake load.
    pub retries: AtomicU64,
    /// Certificate files reloaded after a change.
    pub tls_reloads: AtomicU64,
    /// Reloads that failed (the old certificates stayed in use).
    pub tls_reload_failures: AtomicU64,
    /// Connections to peers lost (not retired as duplicates, not closed in order), each one
    /// direct evidence that made gossip suspect the peer.
    pub peer_losses: AtomicU64,
    /// Connections refused because another live process holds the same node identity.
    pub identity_clashes: AtomicU64,
    /// Peer connections this node closed for being past `limits.max_peer_connections`.
    pub links_trimmed: AtomicU64,
    /// Accepted streams stopped because their deadline passed while being served or relayed.
    pub deadlines_exceeded: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The node's metrics.
pub(crate) struct Metrics {
    pub stats: Stats,
    /// Connections open now (peers and clients).
    pub connections: AtomicUsize,
    /// Handshakes in progress, for `limits.max_pending_handshakes`.
    pub pending_handshakes: AtomicUsize,
    /// Rate limit of the info line logged per rejected stream.
    reject_log: Mutex<LogBudget>,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            stats: Stats::default(),
            connections: AtomicUsize::new(0),
            pending_handshakes: AtomicUsize::new(0),
            // 20 lines a second, bursts of 100: every rejection of a misconfigured caller
            // shows, a flood of garbage does not drown the log.
            reject_log: Mutex::new(LogBudget::new(20, 100)),
        }
    }

    /// Counts a rejected stream; returns what the log budget allows at `now` (see
    /// [`LogBudget::take`]).
    pub fn reject(&self, code: RejectCode, now: Duration) -> Option<u64> {
        bump(&self.stats.rejected[code.index()]);
        self.log_budget(now)
    }

    /// Whether a per-stream info line may be logged at `now`, and how many were held back
    /// (see [`LogBudget::take`]); rejected and timed-out streams share the budget.
    pub fn log_budget(&self, now: Duration) -> Option<u64> {
        lock(&self.reject_log).take(now)
    }

    /// Counts a failed incoming handshake.
    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        bump(&self.stats.handshake_failures);
        bump(&self.stats.handshake_failure_reasons[reason.index()]);
    }

    /// Adds a finished splice's bytes to the counters.
    pub fn count_bytes(&self, up: u64, down: u64) {
        self.stats.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.stats.bytes_down.fetch_add(down, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}
