//! Membership, failure detection and the load table, spread by gossip.
//!
//! A pure state machine ([`Gossip`]): no sockets, no clock reads, no global randomness. The
//! node feeds it messages ([`Gossip::handle`]), connection events, and timer ticks
//! ([`Gossip::tick`]) with the current time and an rng, and sends what it returns over the
//! QUIC control streams. [`crate::sim`] drives a thousand of them in one process.
//!
//! - **Dissemination** costs the same per node and round at any size: changed records go out
//!   as news piggybacked on round openers, each a bounded number of times (memberlist's
//!   broadcasts, Das et al. 2002), and anti-entropy compares one sum per bucket of members
//!   before any member-by-member digest, then runs scuttlebutt (van Renesse et al., *Efficient
//!   Reconciliation and Flow Control for Anti-Entropy Protocols*, 2008) over the buckets that
//!   differ only (`exchange.rs`, `sums.rs`, `news.rs`). Older nodes get full-digest rounds.
//! - **Failure detection** is φ-accrual on what a member sends over this node's own link to it
//!   (Hayashibara et al., 2004; only linked members are judged, see [`Gossip::heard`]) feeding
//!   SWIM-style suspicion with incarnation-number refutation (Das et al., 2002) and Lifeguard's
//!   refinements (Dadgar et al., 2018): a suspicion must outlive a timeout that shrinks as
//!   independent observers confirm it; a node only confirms what it observes itself; and a node
//!   that hears from nobody raises its own local-health multiplier before blaming others.
//! - **Dead and Left** records keep spreading for `dead_ttl`, then are dropped and remembered as
//!   a tombstone so that stale gossip cannot resurrect them. A restarted node comes back with a
//!   higher incarnation (its start time) and replaces its old record, even at a new address.

#![deny(clippy::disallowed_methods)]

mod detector;
mod exchange;
mod liveness;
mod merge;
mod names;
mod news;
mod state;
mod sums;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use detector::PhiDetector;
pub use names::Names;
pub use state::{Gossip, GossipEvent};
pub use sums::BUCKETS;

/// Liveness and intent of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Up and taking work.
    Alive,
    /// Up, finishing its work, taking none new (set by the member itself).
    Draining,
    /// Some member stopped hearing its heartbeats; it may refute with a higher incarnation.
    Suspect,
    /// Declared dead after an unrefuted suspicion.
    Dead,
    /// Left the mesh on purpose (set by the member itself).
    Left,
}

impl Status {
    /// Precedence between records of the same incarnation: an observer's Suspect overrides the
    /// owner's Alive, Dead overrides Suspect, and a graceful Left is final.
    pub fn rank(self) -> u8 {
        match self {
            Status::Alive | Status::Draining => 0,
            Status::Suspect => 1,
            Status::Dead => 2,
            Status::Left => 3,
        }
    }

    /// Whether the member should receive new work.
    pub fn takes_work(self) -> bool {
        matches!(self, Status::Alive | Status::Suspect)
    }

    /// Whether the member is gone (Dead or Left).
    pub fn is_gone(self) -> bool {
        matches!(self, Status::Dead | Status::Left)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A member's published load, as the member itself measures it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Service streams in flight now (served here or relayed).
    pub inflight: u32,
    /// Relative capacity (weight) from configuration; 0 means "unset", treated as 1.
    pub capacity: u32,
    /// CPU use of the host, in thousandths.
    pub cpu_permille: u16,
    /// Memory use of the host, in thousandths.
    pub mem_permille: u16,
    /// Smoothed latency of the streams this member served locally, in microseconds.
    pub latency_us: u32,
    /// In-flight streams per local service.
    pub per_service: Vec<(String, u32)>,
}

impl Load {
    /// Whether `self` differs from `old` in what routing compares, beyond sampling noise:
    /// in-flight counts, weight or services changed, or the service latency moved by more
    /// than a tenth (and 50 µs).
    pub fn routing_differs(&self, old: &Load) -> bool {
        let latency = self.latency_us.abs_diff(old.latency_us);
        self.inflight != old.inflight
            || self.capacity != old.capacity
            || self.per_service != old.per_service
            || (latency > old.latency_us / 10 && latency > 50)
    }

    /// Whether the host's CPU or memory use moved by at least 2 points (20 permille). The
    /// host's CPU reading moves nearly every sample (it counts every process on the host);
    /// only `routing.dynamic_weights` routes on it.
    pub fn host_differs(&self, old: &Load) -> bool {
        let moved = |a: u16, b: u16| a.abs_diff(b) >= 20;
        moved(self.cpu_permille, old.cpu_permille) || moved(self.mem_permille, old.mem_permille)
    }

    /// Either of the above.
    pub fn differs_from(&self, old: &Load) -> bool {
        self.routing_differs(old) || self.host_differs(old)
    }
}

/// One member's record: owned and versioned by the member, except for the Suspect/Dead
/// opinions other members attach to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Node name (from its certificate).
    pub name: String,
    /// Address it listens on, `host:port`.
    pub addr: String,
    /// Bumped by the member to refute a suspicion, and set anew (from its start time) when it
    /// restarts.
    pub incarnation: u64,
    /// Liveness and intent.
    pub status: Status,
    /// Services it serves locally.
    pub services: Vec<String>,
    /// Its load.
    pub load: Load,
    /// Bumped by the owner on every change of the fields above.
    pub version: u64,
    /// Bumped by the owner every gossip round; rides in digests, not in `version`.
    pub heartbeat: u64,
    /// Members that suspect it (only while Suspect; bounded).
    pub suspectors: Vec<String>,
}

impl Member {
    /// A fresh Alive record.
    pub fn new(name: &str, addr: &str, incarnation: u64, services: Vec<String>) -> Self {
        Member {
            name: name.to_owned(),
            addr: addr.to_owned(),
            incarnation,
            status: Status::Alive,
            services,
            load: Load::default(),
            version: 1,
            heartbeat: 0,
            suspectors: Vec::new(),
        }
    }

    /// The order in which records of one member supersede each other.
    pub fn key(&self) -> RecordKey {
        RecordKey {
            incarnation: self.incarnation,
            rank: self.status.rank(),
            version: self.version,
            suspectors: self.suspectors.len().min(u8::MAX as usize) as u8,
        }
    }
}

/// Lexicographic precedence of a member record (derived `Ord` compares fields in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordKey {
    /// Higher incarnation wins outright.
    pub incarnation: u64,
    /// Then the status rank.
    pub rank: u8,
    /// Then the owner's version.
    pub version: u64,
    /// Then the number of confirmations of a suspicion.
    pub suspectors: u8,
}

/// One digest entry: enough to tell who is behind, plus the heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestEntry {
    /// Member name.
    pub name: String,
    /// Its record key as the sender knows it.
    pub key: RecordKey,
    /// Its heartbeat as the sender knows it.
    pub heartbeat: u64,
    /// Who suspects it, if the sender holds it Suspect (empty otherwise). Carried in the digest
    /// because two suspicions with equally many confirmations have equal keys, so no delta
    /// would ever merge them.
    pub suspectors: Vec<String>,
}

/// Gossip messages (carried on the QUIC control streams).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GossipMsg {
    /// Round opener: the sender's digest.
    Syn {
        /// The sender's view (shared between the round's targets, not copied).
        digest: std::sync::Arc<Vec<DigestEntry>>,
    },
    /// Reply: the records the opener is behind on, and the names of those the replier is
    /// behind on (usually none, so the reply is small even at a thousand members).
    SynAck {
        /// Members whose records the replier wants.
        want: Vec<String>,
        /// Newer records (shared, not copied, between the messages they go out in).
        delta: Vec<std::sync::Arc<Member>>,
    },
    /// Completion: the records the replier is behind on.
    Ack {
        /// Newer records (shared, not copied, between the messages they go out in).
        delta: Vec<std::sync::Arc<Member>>,
    },
    /// Round opener of the bounded protocol (to peers whose hello has `GOSSIP_SUMS`): the
    /// sender's heartbeat, one sum per bucket of members, and the latest changes.
    Sums {
        /// The sender's own heartbeat.
        heartbeat: u64,
        /// [`BUCKETS`] sums of 4 bytes, little-endian.
        sums: Vec<u8>,
        /// Records that changed lately (the broadcast queue), at most `gossip.max_news`.
        news: Vec<std::sync::Arc<Member>>,
    },
    /// Reply to `Sums`: the replier's digest entries of the buckets whose sums differ; the
    /// opener answers with a `SynAck` over those buckets only.
    Buckets {
        /// The buckets compared.
        buckets: Vec<u16>,
        /// The replier's entries of those buckets, in name order.
        digest: Vec<DigestEntry>,
    },
}

/// Gossip tuning. Defaults aim at detection in a few seconds on a LAN without false alarms at
/// 10% loss; `examples/gossip_sim.rs` prints what they give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GossipConfig {
    /// Time between rounds. Default 200 ms.
    #[serde(with = "crate::config::duration_str")]
    pub interval: Duration,
    /// Peers contacted per round. Default 3.
    pub fanout: usize,
    /// φ above which a member is suspected. Default 8.
    pub phi_threshold: f64,
    /// Suspicion timeout once `confirmations` members agree. Default 1 s.
    #[serde(with = "crate::config::duration_str")]
    pub suspicion_min: Duration,
    /// Suspicion timeout with a single suspector. Default 6 s.
    #[serde(with = "crate::config::duration_str")]
    pub suspicion_max: Duration,
    /// Independent suspicions that bring the timeout down to `suspicion_min`. Default 3.
    pub confirmations: usize,
    /// How long Dead and Left records keep spreading before they are dropped. Default 60 s.
    #[serde(with = "crate::config::duration_str")]
    pub dead_ttl: Duration,
    /// Most records in one message; the rest follow in later rounds. Default 256.
    pub max_delta: usize,
    /// How often a node pushes its load (when it changed) to the peers it has links to, for
    /// their routing. Default 500 ms.
    #[serde(with = "crate::config::duration_str")]
    pub load_interval: Duration,
    /// Least time between two publications of this node's load in its gossip record (for
    /// status views of members without a link; routing uses the pushed load). Default 10 s.
    #[serde(with = "crate::config::duration_str")]
    pub load_gossip_interval: Duration,
    /// Highest local-health multiplier (Lifeguard); timeouts stretch by up to this factor + 1
    /// while this node hears from nobody. Default 8.
    pub max_local_health: u32,
    /// Each change of a record is sent this many times × ⌈log₁₀(members + 1)⌉ by every node
    /// that learns it (memberlist's retransmit multiplier). Default 4.
    pub retransmit_mult: u32,
    /// Most changed records piggybacked on one round opener. Default 8.
    pub max_news: usize,
    /// How long a member's record stands without the member renewing it (it does every third
    /// of this) before a node with no link to it takes it for silent and suspects it; past
    /// 4·lease/(3·interval) members it stretches to 3·N/4 rounds. Linked members are judged
    /// sooner, by φ on the link; this is what finds members no node on this side of a
    /// partition is linked to. Default 30 s.
    #[serde(with = "crate::config::duration_str")]
    pub lease: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            interval: Duration::from_millis(200),
            fanout: 3,
            phi_threshold: 8.0,
            suspicion_min: Duration::from_secs(1),
            suspicion_max: Duration::from_secs(6),
            confirmations: 3,
            dead_ttl: Duration::from_secs(60),
            max_delta: 256,
            load_interval: Duration::from_millis(500),
            load_gossip_interval: Duration::from_secs(10),
            max_local_health: 8,
            retransmit_mult: 4,
            max_news: 8,
            lease: Duration::from_secs(30),
        }
    }
}

impl GossipConfig {
    /// Checks the values; errors name the key under `gossip.`.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        let bad = |key: &str, reason: &str| crate::ConfigError::Invalid {
            key: format!("gossip.{key}"),
            reason: reason.to_owned(),
        };
        if self.interval < Duration::from_millis(10) {
            return Err(bad("interval", "must be at least 10ms"));
        }
        if self.fanout == 0 {
            return Err(bad("fanout", "must be at least 1"));
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold >= 1.0) {
            return Err(bad("phi_threshold", "must be a number of at least 1"));
        }
        if self.suspicion_max < self.suspicion_min {
            return Err(bad("suspicion_max", "must be at least suspicion_min"));
        }
        if self.confirmations == 0 {
            return Err(bad("confirmations", "must be at least 1"));
        }
        if self.max_delta == 0 {
            return Err(bad("max_delta", "must be at least 1"));
        }
        if self.retransmit_mult == 0 {
            return Err(bad("retransmit_mult", "must be at least 1"));
        }
        if self.max_news == 0 {
            return Err(bad("max_news", "must be at least 1"));
        }
        if self.lease < self.interval.saturating_mul(15) {
            let reason = format!(
                "must be at least 15 × gossip.interval ({}): a member renews its record every third of it",
                crate::config::format_duration(self.interval.saturating_mul(15))
            );
            return Err(bad("lease", &reason));
        }
        if self.load_interval < Duration::from_millis(10) {
            return Err(bad("load_interval", "must be at least 10ms"));
        }
        if self.load_gossip_interval < self.load_interval {
            let reason = format!(
                "must be at least gossip.load_interval ({}): the record would change more often than the load is measured",
                crate::config::format_duration(self.load_interval)
            );
            return Err(bad("load_gossip_interval", &reason));
        }
        Ok(())
    }
}
