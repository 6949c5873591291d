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

mod admin;
mod balance;
mod conn;
mod conn_use;
mod dial;
mod discover;
mod handshake;
mod membership;
mod reload;
mod shared;
mod streams;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, Instrument};

pub(crate) use dial::SNI;
pub(crate) use shared::lock as lock_std;
use shared::{lock, Local, Shared, Stats};

use crate::config::{ConfigError, NodeConfig};
use crate::gossip::{Gossip, Member};
use crate::identity::{Identity, Role, TlsError, TlsMaterial};
use crate::protocol::{codes, MemberStatus, RejectCode, StatusReport};
use crate::service::Handler;
use crate::transport::{bind_udp, transport_config, TransportError};

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Certificates could not be loaded or used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The endpoint could not be created.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The certificate names another node than the configuration.
    #[error("config says name = {config:?} but the certificate is for {cert}; issue one with `quicmesh certs node {config}`")]
    NameMismatch {
        /// `name` from the configuration.
        config: String,
        /// The certificate's identity.
        cert: Identity,
    },
    /// A service is defined twice (as a TCP backend and a handler, or twice as a handler).
    #[error("service {0:?} is defined more than once")]
    DuplicateService(String),
    /// A handler's service name is not valid.
    #[error("handler name: {0}")]
    BadServiceName(#[from] crate::identity::IdentityError),
    /// DNS discovery could not be set up.
    #[error("discovery: {0}")]
    Discovery(#[from] crate::discovery::DiscoveryError),
    /// The admin HTTP address could not be bound.
    #[error("admin.listen {addr}: {source}; set admin.listen (or --admin) to a free address, or \"off\"")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// quinn could not start the endpoint.
    #[error("starting the QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
}

/// Builds and starts a [`Node`].
pub struct NodeBuilder {
    config: NodeConfig,
    handlers: Vec<(String, Arc<dyn Handler>)>,
    allow: Vec<(String, Vec<String>)>,
    tls: Option<TlsMaterial>,
}

impl NodeBuilder {
    /// Serves `service` with an in-process handler.
    pub fn handler(mut self, service: &str, handler: impl Handler) -> Self {
        self.handlers.push((service.to_owned(), Arc::new(handler)));
        self
    }

    /// Lets only these identities (`spiffe://...` URIs) call `service`; others get
    /// `Unauthorized`. The same as `allow` under `[services.NAME]` in the configuration,
    /// for in-process handlers.
    pub fn allow<I, S>(mut self, service: &str, identities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allow
            .push((service.to_owned(), identities.into_iter().map(Into::into).collect()));
        self
    }

    /// Uses already-loaded TLS material instead of reading `config.tls`.
    pub fn tls(mut self, tls: TlsMaterial) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Binds the endpoint, starts accepting, and starts dialling the configured peers.
    pub async fn start(self) -> Result<Node, NodeError> {
        let NodeBuilder {
            config,
            handlers,
            allow,
            tls,
        } = self;
        config.validate()?;
        let tls_from_files = tls.is_none();
        let tls = match tls {
            Some(t) => t,
            None => TlsMaterial::load(&config.tls, Role::Node)?,
        };
        let identity = tls.identity().clone();
        let cert_not_after = tls.not_after();
        log_cert_expiry(cert_not_after);
        if identity.name != config.name {
            return Err(NodeError::NameMismatch {
                config: config.name.clone(),
                cert: identity,
            });
        }
        let mut local = BTreeMap::new();
        for (name, svc) in &config.services {
            local.insert(name.clone(), Local::Tcp(svc.backend.clone()));
        }
        for (name, h) in handlers {
            crate::identity::validate_name(&name)?;
            if local.insert(name.clone(), Local::Handler(h)).is_some() {
                return Err(NodeError::DuplicateService(name));
            }
        }

        let allow = allow_lists(&config, allow, &local, &identity)?;
        let discovery = if config.discovery.is_empty() {
            None
        } else {
            Some(crate::discovery::Discovery::new(
                &config.discovery_names()?,
                &config.dns,
            )?)
        };
        let admin = match config.admin.addr()? {
            Some(addr) => Some(
                admin::bind(addr)
                    .await
                    .map_err(|source| NodeError::Admin { addr, source })?,
            ),
            None => None,
        };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let (server_transport, dial_transport) = transports(&config)?;
        let mut server_config = quinn::ServerConfig::with_crypto(tls.server_config()?);
        server_config.transport_config(server_transport);
        let mut client_config = quinn::ClientConfig::new(tls.client_config()?);
        client_config.transport_config(dial_transport);
        let socket = bind_udp(config.listen, config.transport.udp_buffer)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| NodeError::Endpoint(std::io::Error::other("no async runtime found")))?;
        let mut endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server_config), socket, runtime)
            .map_err(NodeError::Endpoint)?;
        endpoint.set_default_client_config(client_config.clone());
        let local_addr = endpoint.local_addr().map_err(NodeError::Endpoint)?;

        let (shutdown, _) = watch::channel(false);
        let (peers_changed, _) = watch::channel(0);
        // The incarnation is the start time: a restarted node always outranks its old record,
        // with nothing to persist.
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(1);
        let services: Vec<String> = local.keys().cloned().collect();
        // Advertise the bound address (the port may have been 0) unless told otherwise.
        let advertised = config.advertise.clone().unwrap_or_else(|| local_addr.to_string());
        let mut me = Member::new(&config.name, &advertised, incarnation, services);
        me.load.capacity = config.weight;
        let epoch = Instant::now();
        let gossip = Gossip::new(config.gossip.clone(), me, Duration::ZERO);
        if config.advertise.is_none() && config.listen.ip().is_unspecified() {
            tracing::warn!(
                listen = %config.listen,
                "listen address is unspecified and `advertise` is not set: nodes that learn of this one by gossip cannot dial it"
            );
        }
        let config_retry_budget = config.routing.retry_budget;
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            identity,
            inflight: Arc::new(Semaphore::new(config.limits.max_inflight)),
            cfg: config,
            endpoint,
            client_config: Mutex::new(client_config),
            local,
            peers: Mutex::new(BTreeMap::new()),
            peers_changed,
            connections: AtomicUsize::new(0),
            stats: Stats::default(),
            shutdown,
            rng: Mutex::new(StdRng::from_os_rng()),
            epoch,
            gossip: Mutex::new(gossip),
            control: Mutex::new(BTreeMap::new()),
            rtt: Mutex::new(BTreeMap::new()),
            per_service: Mutex::new(BTreeMap::new()),
            latency_us: Mutex::new(0.0),
            dialing: Mutex::new(std::collections::BTreeSet::new()),
            routing: Mutex::new(balance::RoutingState::new(config_retry_budget)),
            draining: std::sync::atomic::AtomicBool::new(false),
            undelivered: watch::channel(0).0,
            conn_use: Arc::default(),
            cert_not_after: Mutex::new(cert_not_after),
            pending_handshakes: AtomicUsize::new(0),
            // 20 lines a second, bursts of 100: every rejection of a misconfigured caller
            // shows, a flood of garbage does not drown the log.
            reject_log: Mutex::new(crate::logbudget::LogBudget::new(20, 100)),
            allow,
            discovery,
            discovered: Mutex::new(discover::Discovered::default()),
        });
        let span = tracing::info_span!("node", name = %shared.name);
        let mut tasks = JoinSet::new();
        tasks.spawn(conn::accept_loop(shared.clone()).instrument(span.clone()));
        tasks.spawn(membership::gossip_loop(shared.clone()).instrument(span.clone()));
        if tls_from_files {
            tasks.spawn(reload::reload_loop(shared.clone()).instrument(span.clone()));
        }
        for peer in &shared.cfg.peers {
            let purpose = dial::Purpose::Seed;
            tasks.spawn(dial::keep_connected(shared.clone(), peer.clone(), purpose).instrument(span.clone()));
        }
        if let Some(listener) = admin {
            tasks.spawn(admin::serve(shared.clone(), listener).instrument(span.clone()));
        }
        if let Some(disc) = &shared.discovery {
            tasks.spawn(disc.clone().run(shared.shutdown.subscribe()).instrument(span.clone()));
            tasks.spawn(discover::discover_loop(shared.clone(), disc.clone()).instrument(span.clone()));
        }
        span.in_scope(|| {
            info!(
                listen = %local_addr,
                identity = %shared.identity,
                services = ?shared.local.keys().collect::<Vec<_>>(),
                peers = ?shared.cfg.peers,
                discovery = ?shared.cfg.discovery,
                dns = shared.discovery.as_ref().map(|d| d.servers()),
                admin = admin_addr.map(|a| a.to_string()),
                "node started"
            )
        });
        Ok(Node {
            shared,
            local_addr,
            admin_addr,
            tasks: Mutex::new(tasks),
        })
    }
}

/// Transport settings for accepted and for dialled connections. An accepted connection
/// starts with the smaller of the two stream limits (the peer's role is known only after the
/// handshake) and is raised or lowered then; dialled connections go to nodes only.
pub(crate) fn transports(
    config: &NodeConfig,
) -> Result<(Arc<quinn::TransportConfig>, Arc<quinn::TransportConfig>), TransportError> {
    let l = &config.limits;
    let accept = transport_config(
        &config.transport,
        l.max_streams_per_client.min(l.max_streams_per_connection),
    )?;
    let dial = transport_config(&config.transport, l.max_streams_per_connection)?;
    Ok((accept, dial))
}

/// Gathers the allow-lists of the configuration and the builder, checking each names a
/// service served here and identities of this trust domain.
fn allow_lists(
    config: &NodeConfig,
    extra: Vec<(String, Vec<String>)>,
    local: &BTreeMap<String, Local>,
    me: &Identity,
) -> Result<BTreeMap<String, Vec<Identity>>, ConfigError> {
    let invalid = |key: String, reason: String| ConfigError::Invalid { key, reason };
    let mut out: BTreeMap<String, Vec<Identity>> = BTreeMap::new();
    let from_config = config.services.iter().map(|(n, s)| (n.clone(), s.allow.clone()));
    for (service, list) in from_config.chain(extra) {
        let key = format!("services.{service}.allow");
        if !local.contains_key(&service) {
            return Err(invalid(key, "this node does not serve that service".into()));
        }
        for id in crate::config::parse_allow(&key, &list)? {
            if id.trust_domain != me.trust_domain {
                return Err(invalid(
                    key,
                    format!("{id} is outside this node's trust domain {:?}", me.trust_domain),
                ));
            }
            out.entry(service.clone()).or_default().push(id);
        }
    }
    out.retain(|_, v| !v.is_empty());
    Ok(out)
}

/// Logs when the node's certificate expires: a warning inside 30 days, an error once expired.
fn log_cert_expiry(not_after: Option<i64>) {
    let Some(t) = not_after else { return };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let days = (t - now) / 86_400;
    if t <= now {
        tracing::error!(
            expired_days_ago = -days,
            "this node's certificate has expired; issue a new one with `quicmesh certs node`"
        );
    } else if days < 30 {
        tracing::warn!(
            days_left = days,
            "this node's certificate expires soon; issue a new one with `quicmesh certs node`"
        );
    } else {
        info!(days_left = days, "certificate valid");
    }
}

/// A running node. Dropping it stops it abruptly; [`Node::shutdown`] closes connections cleanly.
pub struct Node {
    shared: Arc<Shared>,
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
}

impl Node {
    /// Starts building a node from its configuration.
    pub fn builder(config: NodeConfig) -> NodeBuilder {
        NodeBuilder {
            config,
            handlers: Vec::new(),
            allow: Vec::new(),
            tls: None,
        }
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// This node's identity.
    pub fn identity(&self) -> &Identity {
        &self.shared.identity
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
        self.shared.local.keys().cloned().collect()
    }

    /// DNS discovery: each `srv:` name's last good answer, its age and the last error.
    /// Empty without `discovery` in the configuration.
    pub fn discovery(&self) -> Vec<crate::discovery::WatchStatus> {
        self.shared.discovery.as_ref().map(|d| d.status()).unwrap_or_default()
    }

    /// The peers this node knows, connected or not.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let rtt = lock(&self.shared.rtt).clone();
        lock(&self.shared.peers)
            .iter()
            .map(|(name, p)| {
                let live = p.conn.as_ref().filter(|c| c.close_reason().is_none());
                PeerInfo {
                    name: name.clone(),
                    connected: live.is_some(),
                    remote: live.map(|c| c.remote_address()).unwrap_or(p.remote),
                    rtt: live.map(|c| {
                        rtt.get(name)
                            .map(|s| Duration::from_secs_f64(*s))
                            .unwrap_or_else(|| c.rtt())
                    }),
                    dialed_by_me: p.dialed_by_me,
                }
            })
            .collect()
    }

    /// For every service reachable from this node, the nodes that would take a new stream for
    /// it now (this one included).
    pub fn service_map(&self) -> BTreeMap<String, Vec<String>> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in self.shared.local.keys() {
            map.entry(s.clone()).or_default().push(self.shared.name.clone());
        }
        let services: std::collections::BTreeSet<String> = lock(&self.shared.gossip)
            .members()
            .flat_map(|m| m.services.clone())
            .collect();
        for s in services {
            for (name, _, _) in self.shared.candidates(&s).0 {
                let nodes = map.entry(s.clone()).or_default();
                if !nodes.contains(&name) {
                    nodes.push(name);
                }
            }
        }
        map
    }

    /// This node's view of the mesh: every member's gossiped record, with connection state and
    /// ping RTT.
    pub fn status(&self) -> StatusReport {
        status_report(&self.shared)
    }

    /// Marks this node Draining (peers route no new streams to it) or Alive again.
    pub fn set_draining(&self, draining: bool) {
        lock(&self.shared.gossip).set_draining(draining);
    }

    /// Stops gracefully: the node gossips Draining (so peers route new streams elsewhere),
    /// refuses new connections, rejects new service streams with `Draining` (clients and
    /// relaying nodes retry those elsewhere; nothing was processed), lets the streams in
    /// flight finish for up to `grace`, then leaves the mesh as [`Node::shutdown`] does.
    /// Returns how many streams were still in flight when the grace period ran out.
    pub async fn drain(&self, grace: Duration) -> usize {
        let started = Instant::now();
        self.shared.draining.store(true, Ordering::Relaxed);
        self.shared.announce(|g| g.set_draining(true));
        let max = u32::try_from(self.shared.cfg.limits.max_inflight).unwrap_or(u32::MAX);
        let inflight = self.shared.inflight.clone();
        info!(node = %self.shared.name, ?grace, in_flight = self.in_flight(), "draining");
        let deadline = tokio::time::Instant::now() + grace;
        let left = match tokio::time::timeout_at(deadline, inflight.acquire_many_owned(max)).await {
            Ok(_all) => 0,
            Err(_) => self.in_flight(),
        };
        // The last replies are written but perhaps not yet acknowledged, and closing the
        // connection would discard them: wait until the callers have them (within the grace).
        let mut undelivered = self.shared.undelivered.subscribe();
        let waiting = *undelivered.borrow();
        if waiting > 0 {
            debug!(replies = waiting, "waiting for the last replies to be acknowledged");
        }
        if tokio::time::timeout_at(deadline, undelivered.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            let unacked = *undelivered.borrow();
            tracing::warn!(node = %self.shared.name, unacked, "drain grace ran out with replies unacknowledged (callers gone without closing?)");
        }
        if left > 0 {
            tracing::warn!(node = %self.shared.name, abandoned = left, ?grace, "drain grace ran out; closing with streams in flight");
        }
        info!(node = %self.shared.name, took = ?started.elapsed(), "drained");
        self.shutdown().await;
        left
    }

    /// Service streams in flight on this node now (served here or relayed).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// A snapshot of the node's counters.
    pub fn stats(&self) -> NodeStats {
        let s = &self.shared.stats;
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
            handshake_failure_reasons: handshake::HandshakeFailure::ALL
                .iter()
                .map(|r| {
                    (
                        r.as_str(),
                        s.handshake_failure_reasons[r.index()].load(Ordering::Relaxed),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            connections: self.shared.connections.load(Ordering::Relaxed),
            migrations: s.migrations.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            tls_reloads: s.tls_reloads.load(Ordering::Relaxed),
            peer_reconnects: s.reconnects.load(Ordering::Relaxed),
        }
    }

    /// Moves the node's endpoint to a new UDP socket (a new address or port). Connections
    /// this node dialled migrate to it and keep their streams; peers that dial this node
    /// must learn the new address (by gossip of `advertise`, or DNS).
    pub fn rebind(&self, socket: std::net::UdpSocket) -> std::io::Result<()> {
        self.shared.endpoint.rebind(socket)
    }

    /// Waits until the peer table changes (a peer connects, disconnects, or says hello).
    pub async fn peers_changed(&self) {
        let mut rx = self.shared.peers_changed.subscribe();
        let _ = rx.changed().await;
    }

    /// Stops the node: closes every connection with an orderly close, waits briefly for the
    /// close to be delivered, and stops all tasks.
    pub async fn shutdown(&self) {
        // Say goodbye first, so peers mark us Left rather than suspecting a crash.
        self.shared.announce(crate::gossip::Gossip::leave);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.shared.shutdown.send_replace(true);
        self.shared.endpoint.close(codes::SHUTDOWN, b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.shared.endpoint.wait_idle()).await;
        lock(&self.tasks).abort_all();
        info!(node = %self.shared.name, "node stopped");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        self.shared.endpoint.close(codes::SHUTDOWN, b"node dropped");
    }
}

/// Builds the node's status report (also served as the built-in status service).
pub(crate) fn status_report(shared: &Shared) -> StatusReport {
    let rtt = lock(&shared.rtt).clone();
    let members: Vec<crate::gossip::Member> = lock(&shared.gossip).members().cloned().collect();
    StatusReport {
        node: shared.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        members: members
            .into_iter()
            .map(|m| {
                let connected = m.name == shared.name || shared.peer_conn(&m.name).is_some();
                let rtt_us = rtt.get(&m.name).map(|s| (s * 1e6) as u64);
                MemberStatus {
                    member: m,
                    connected,
                    rtt_us,
                }
            })
            .collect(),
        routes: lock(&shared.routing).shares(),
    }
}
