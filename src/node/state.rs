//! A node's state, split by owner. Each part has its own lock(s) and methods, and the files
//! that drive the node (connections, streams, dialling, gossip, admin) reach state only
//! through these parts:
//!
//! | part | owns | written by |
//! |---|---|---|
//! | [`Context`] | name, identity, configuration, endpoint, clock, discovery, shutdown | start only |
//! | [`TlsState`] | dialling configuration, certificate expiry | certificate reload |
//! | [`PeerTable`] | connections, control writers, RTTs, stream use, dials | connections, dials |
//! | [`Reach`] | dials failing now, dial failures by reason | dials |
//! | [`LocalServices`] | the services served here and their allow-lists | start, registration |
//! | [`Registry`] | services registered at run time and their leases | the admin API, lease expiry |
//! | `health` | the health of checked backends | the check driver |
//! | `pools` | warm backend connections | the preconnect driver, streams |
//! | [`LoadState`] | streams in flight, service time, undelivered replies | streams |
//! | [`PushedLoads`] | the load linked peers pushed, who takes ours, ours as last pushed | control streams, gossip loop |
//! | `routing` | latency estimates, pending, ejections, balancers, retry budget | streams |
//! | [`Subsets`] | the servers of each service this node routes to, their widening | streams |
//! | `gossip` | the membership state machine | control streams, gossip loop |
//! | `overlay` | which members to keep links to, the dials it asked for | gossip loop, dials |
//! | [`Metrics`] | counters and gauges | everyone, lock-free |
//!
//! A method here that spans parts takes their locks one at a time, never two at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use quinn::Connection;
use rand::rngs::StdRng;

use super::context::Context;
use super::load::LoadState;
use super::metrics::Metrics;
use super::peers::PeerTable;
use super::pushed_load::PushedLoads;
use super::reach::Reach;
use super::registry::Registry;
use super::services::LocalServices;
use super::subsets::{Subset, SubsetInputs, Subsets};
use super::sync::lock;
use super::tls::TlsState;
use crate::gossip::{Gossip, Load};
use crate::overlay::{Overlay, OverlayConfig};
use crate::protocol::{ControlMsg, IdentityClash, MemberStatus, StatusReport, Unreachable};
use crate::routing::Table;

/// Everything a node's tasks share.
pub(crate) struct State {
    pub ctx: Context,
    pub tls: TlsState,
    pub peers: PeerTable,
    pub reach: Reach,
    pub services: LocalServices,
    /// Services registered at run time, with leases (`/v1/services`).
    pub registry: Mutex<Registry>,
    /// Wakes the lease-expiry task when the registry changes.
    pub registry_changed: tokio::sync::Notify,
    /// Health of the services with checks.
    pub health: super::health_table::HealthTable,
    /// The warm backend pools (`services.NAME.preconnect`).
    pub pools: super::warm_pools::WarmPools,
    /// The dashboard's last view of the connections between nodes (`dashboard.rs`), shared
    /// by every browser polling it.
    pub dashboard: super::sync::Recent<serde_json::Value>,
    /// Held through a rebuild of the service set (and a reload's check-then-replace), so
    /// rebuilds never interleave.
    pub rebuilding: Mutex<()>,
    pub load: LoadState,
    pub pushed: PushedLoads,
    pub routing: Mutex<Table>,
    pub subsets: Subsets,
    pub gossip: Mutex<Gossip>,
    /// Which members to keep connections to (a full mesh up to `limits.max_peer_connections`).
    pub overlay: Mutex<Overlay<String>>,
    pub metrics: Metrics,
    /// The last address seen of each connection (`migrations.rs`).
    pub migrations: super::migrations::Migrations,
    /// Randomness of gossip, balancing and reconnect jitter; seeded by
    /// [`crate::NodeBuilder::rng_seed`] for reproducible runs.
    pub rng: Mutex<StdRng>,
    /// Set by [`crate::Node::drain`]: new connections are refused and new service streams
    /// rejected with `Draining`.
    draining: AtomicBool,
}

/// The overlay settings of a node's configuration: dials end within two connect timeouts.
fn overlay_config(cfg: &crate::NodeConfig) -> OverlayConfig {
    OverlayConfig {
        dial_timeout: cfg.transport.connect_timeout.saturating_mul(2),
        ..OverlayConfig::new(cfg.limits.max_peer_connections)
    }
}

impl State {
    /// Puts the parts together.
    pub fn new(ctx: Context, tls: TlsState, services: LocalServices, gossip: Gossip, rng: StdRng) -> Self {
        State {
            tls,
            peers: PeerTable::new(),
            reach: Reach::default(),
            services,
            registry: Mutex::new(Registry::default()),
            registry_changed: tokio::sync::Notify::new(),
            health: super::health_table::HealthTable::new(),
            pools: super::warm_pools::WarmPools::new(),
            dashboard: super::sync::Recent::new(),
            rebuilding: Mutex::new(()),
            load: LoadState::new(ctx.cfg.limits.max_inflight),
            pushed: PushedLoads::new(ctx.cfg.gossip.load_gossip_interval),
            routing: Mutex::new(ctx.cfg.routing.table()),
            subsets: Subsets::new(&ctx.name),
            gossip: Mutex::new(gossip),
            overlay: Mutex::new(Overlay::new(overlay_config(&ctx.cfg))),
            metrics: Metrics::new(),
            migrations: Default::default(),
            rng: Mutex::new(rng),
            draining: AtomicBool::new(false),
            ctx,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether this node is past the overlay cap and holds at least one peer connection: then
    /// configured peers and discovered addresses are only contact points, dialled again once
    /// the node has no peer left, and the overlay picks the members it links to.
    pub fn contact_only(&self) -> bool {
        !lock(&self.overlay).is_full_mesh() && self.peers.any_connected()
    }

    /// Nodes that may take a new stream for `service`: of this node's subset of its servers
    /// ([`State::subset`]), those Alive or Suspect in the gossip view and connected. The flag says whether some node offers it but cannot take
    /// it now (disconnected, draining, dead), which makes the answer Unavailable rather than
    /// UnknownService. Each live candidate comes with its load as it pushed it over the link (its gossip record's if it does not push).
    pub fn candidates(&self, service: &str) -> (Vec<(String, Connection, Load)>, bool) {
        let subset = self.subset(service);
        let offering: Vec<(String, bool, Load)> = {
            let g = lock(&self.gossip);
            subset
                .servers
                .iter()
                .filter_map(|name| g.member(name))
                .map(|m| (m.name.clone(), m.status.takes_work(), m.load.clone()))
                .collect()
        };
        let mut live = Vec::new();
        let mut offline = subset.idle_elsewhere;
        for (name, takes_work, load) in offering {
            match self.peers.peer_conn(&name).filter(|_| takes_work) {
                Some(c) => {
                    // Pushed over this link: fresher than the gossip record's.
                    let load = self.pushed.of(&name, c.stable_id()).unwrap_or(load);
                    live.push((name, c, load));
                }
                None => offline = true,
            }
        }
        (live, offline)
    }

    /// The servers of `service` this node routes to, other than itself: its subset of the
    /// members that offer it and take work (every one of them for a service balanced by
    /// `consistent_hash`, or with `routing.subset_size = 0`), widened under load; recomputed
    /// only when the gossip roster changed.
    pub fn subset(&self, service: &str) -> Subset {
        let routing = &self.ctx.cfg.routing;
        let size = match (routing.subset_size, routing.strategy_for(service)) {
            (0, _) | (_, crate::routing::Strategy::ConsistentHash) => usize::MAX,
            (n, _) => n,
        };
        let roster = lock(&self.gossip).roster();
        if let Some(s) = self.subsets.cached(service, roster, size) {
            return s;
        }
        let inputs = SubsetInputs::of(&lock(&self.gossip), service);
        self.subsets.compute(service, inputs, size)
    }

    /// Changes this node's own gossip record with `change` and tells every connected peer at
    /// once, rather than at the next gossip round (for Draining and Left). The record itself
    /// goes out (as an unsolicited Ack), not a digest of it: a digest would take the peer's
    /// request and our answer, a round trip a stopping node may not have.
    pub fn announce(&self, change: impl FnOnce(&mut Gossip)) {
        let news = {
            let mut g = lock(&self.gossip);
            change(&mut g);
            crate::gossip::GossipMsg::Ack {
                delta: vec![std::sync::Arc::new(g.me().clone())],
            }
        };
        for p in self.peers.control_peers() {
            self.peers.send_control(&p, ControlMsg::Gossip(news.clone()));
        }
    }

    /// Like [`State::announce`], then waits (at most `limit`) until every peer has the news:
    /// a ping sent after it on the same ordered control stream is answered only once the
    /// peer has processed it. For Left, so peers mark this node Left, not suspect, before its
    /// connections close.
    pub async fn announce_acked(&self, change: impl FnOnce(&mut Gossip), limit: std::time::Duration) {
        self.announce(change);
        let nonce = u64::try_from(self.ctx.now().as_micros()).unwrap_or(u64::MAX);
        let peers = self.peers.control_peers();
        let acks: Vec<_> = peers.iter().filter_map(|p| self.peers.ping_acked(p, nonce)).collect();
        let _ = tokio::time::timeout(limit, futures_util::future::join_all(acks)).await;
        for p in &peers {
            self.peers.forget_pong(p, nonce);
        }
    }

    /// The node's status report (also served as the built-in status service).
    pub fn status_report(&self) -> StatusReport {
        let rtt = self.peers.rtts();
        let mut members: Vec<crate::gossip::Member> = lock(&self.gossip).members().cloned().collect();
        // This node first (as `members()` gives it), then by name.
        if let Some(others) = members.get_mut(1..) {
            others.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        }
        StatusReport {
            node: self.ctx.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            members: members
                .into_iter()
                .map(|mut m| {
                    let conn = self.peers.peer_conn(&m.name);
                    let connected = m.name == self.ctx.name || conn.is_some();
                    let rtt_us = rtt.get(&m.name).map(|s| (s * 1e6) as u64);
                    // A linked peer's pushed load is fresher than its record's (and this
                    // node's own is as last measured, the record's only as last gossiped).
                    let pushed = match conn {
                        Some(c) => self.pushed.of(&m.name, c.stable_id()),
                        None if m.name == self.ctx.name => self.pushed.mine(),
                        None => None,
                    };
                    if let Some(load) = pushed {
                        m.load = load;
                    }
                    MemberStatus {
                        member: m,
                        connected,
                        rtt_us,
                    }
                })
                .collect(),
            routes: lock(&self.routing).shares(),
            unreachable: self
                .reach
                .troubles()
                .into_iter()
                .map(|(target, t)| Unreachable {
                    target,
                    failures: t.failures,
                    reason: t.reason.to_string(),
                    error: t.error,
                    advice: t.reason.advice().to_owned(),
                    since_unix: t.since_unix,
                })
                .collect(),
            identity_clashes: self
                .peers
                .clashes_since(crate::unix_time().as_secs().saturating_sub(600))
                .into_iter()
                .map(|(node, c)| IdentityClash {
                    node,
                    kept: c.kept.to_string(),
                    refused: c.refused.to_string(),
                    count: c.count,
                    last_unix: c.last_unix,
                })
                .collect(),
        }
    }

    /// For every service reachable from this node, the nodes that would take a new stream for
    /// it now (this one included).
    pub fn service_map(&self) -> BTreeMap<String, Vec<String>> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in self.services.names() {
            map.entry(s).or_default().push(self.ctx.name.clone());
        }
        let services: std::collections::BTreeSet<String> =
            lock(&self.gossip).members().flat_map(|m| m.services.clone()).collect();
        for s in services {
            for (name, _, _) in self.candidates(&s).0 {
                let nodes = map.entry(s.clone()).or_default();
                if !nodes.contains(&name) {
                    nodes.push(name);
                }
            }
        }
        map
    }
}
