//! Starting a node, in three steps: resolve the options (configuration, certificates,
//! services, discovery, admin listener), build the state (endpoint, gossip, the parts), and
//! spawn the tasks that drive it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{info, Instrument};

use super::context::Context;
use super::error::NodeError;
use super::services::{LocalServices, ServiceSet};
use super::state::State;
use super::tls::{log_cert_expiry, quinn_configs, TlsState};
use super::{admin, checks, conn, dial, discover, handshake, membership, preconnect, reload, services_api, Node};
use crate::config::NodeConfig;
use crate::discovery::Discovery;
use crate::gossip::{Gossip, Member};
use crate::identity::{Role, TlsMaterial};
use crate::service::Handler;
use crate::transport::bind_udp;

/// Builds and starts a [`Node`].
pub struct NodeBuilder {
    config: NodeConfig,
    handlers: Vec<(String, Arc<dyn Handler>)>,
    allow: Vec<(String, Vec<String>)>,
    tls: Option<TlsMaterial>,
    rng_seed: Option<u64>,
    config_source: Option<super::context::ConfigSource>,
}

/// What [`NodeBuilder::start`] resolved before building anything that runs.
struct Resolved {
    config: NodeConfig,
    tls: TlsMaterial,
    /// Whether `tls` came from the files in `config.tls` (and so may be reloaded from them).
    tls_from_files: bool,
    services: ServiceSet,
    discovery: Option<Arc<Discovery>>,
    admin: Option<TcpListener>,
    rng: StdRng,
    config_source: Option<super::context::ConfigSource>,
}

impl NodeBuilder {
    pub(super) fn new(config: NodeConfig) -> Self {
        NodeBuilder {
            config,
            handlers: Vec::new(),
            allow: Vec::new(),
            tls: None,
            rng_seed: None,
            config_source: None,
        }
    }

    /// How to re-read the configuration when asked to reload (SIGHUP in the CLI,
    /// `POST /v1/reload`, [`Node::reload`]): the CLI re-reads the file and merges its flags.
    /// Only `services` may change; see [`crate::ReloadError`].
    pub fn reload_from(mut self, source: impl Fn() -> Result<NodeConfig, String> + Send + Sync + 'static) -> Self {
        self.config_source = Some(Arc::new(source));
        self
    }

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

    /// Seeds the node's randomness (gossip targets, balancer choices, reconnect jitter), for
    /// reproducible runs; by default it is seeded from the operating system.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.rng_seed = Some(seed);
        self
    }

    /// Binds the endpoint, starts accepting, and starts dialling the configured peers.
    pub async fn start(self) -> Result<Node, NodeError> {
        let resolved = self.resolve().await?;
        let tls_from_files = resolved.tls_from_files;
        let (state, admin, local_addr) = build(resolved)?;
        Ok(spawn(Arc::new(state), admin, local_addr, tls_from_files))
    }

    /// Checks the configuration and loads what the node needs from disk, DNS settings and
    /// the admin address; nothing runs yet.
    async fn resolve(self) -> Result<Resolved, NodeError> {
        let NodeBuilder {
            config,
            handlers,
            allow,
            tls,
            rng_seed,
            config_source,
        } = self;
        config.validate()?;
        let tls_from_files = tls.is_none();
        let tls = match tls {
            Some(t) => t,
            None => TlsMaterial::load(&config.tls, Role::Node)?,
        };
        let identity = tls.identity();
        log_cert_expiry(tls.not_after());
        if identity.name != config.name {
            return Err(NodeError::NameMismatch {
                config: config.name.clone(),
                cert: identity.clone(),
            });
        }
        let services = ServiceSet::build(&config, handlers, allow, identity)?;
        let discovery = if config.discovery.is_empty() {
            None
        } else {
            Some(Discovery::new(&config.discovery_names()?, &config.dns)?)
        };
        let admin = match config.admin.addr()? {
            Some(addr) => Some(
                admin::bind(addr)
                    .await
                    .map_err(|source| NodeError::Admin { addr, source })?,
            ),
            None => None,
        };
        let rng = match rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Ok(Resolved {
            config,
            tls,
            tls_from_files,
            services,
            discovery,
            admin,
            rng,
            config_source,
        })
    }
}

/// Binds the QUIC endpoint and puts the node's state together.
fn build(r: Resolved) -> Result<(State, Option<TcpListener>, SocketAddr), NodeError> {
    let Resolved {
        config,
        tls,
        services,
        discovery,
        admin,
        rng,
        config_source,
        ..
    } = r;
    let (server_config, client_config) = quinn_configs(&config, &tls)?;
    let socket = bind_udp(config.listen, config.transport.udp_buffer)?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| NodeError::Endpoint(std::io::Error::other("no async runtime found")))?;
    let mut endpoint = quinn::Endpoint::new(
        crate::transport::endpoint_config(&config.transport),
        Some(server_config),
        socket,
        runtime,
    )
    .map_err(NodeError::Endpoint)?;
    endpoint.set_default_client_config(client_config.clone());
    let local_addr = endpoint.local_addr().map_err(NodeError::Endpoint)?;

    // The incarnation is the start time: a restarted node always outranks its old record,
    // with nothing to persist.
    let incarnation = u64::try_from(crate::unix_time().as_millis()).unwrap_or(u64::MAX).max(1);
    // Advertise the bound address (the port may have been 0) unless told otherwise.
    let advertised = config.advertise.clone().unwrap_or_else(|| local_addr.to_string());
    let mut me = Member::new(
        &config.name,
        &advertised,
        incarnation,
        services.local.keys().cloned().collect(),
    );
    me.load.capacity = config.weight;
    let gossip = Gossip::new(config.gossip.clone(), me, Duration::ZERO);
    if config.advertise.is_none() && config.listen.ip().is_unspecified() {
        tracing::warn!(
            listen = %config.listen,
            "listen address is unspecified and `advertise` is not set: nodes that learn of this one by gossip cannot dial it"
        );
    }
    let tls_state = TlsState::new(client_config, tls.not_after());
    // Drawn from the OS even when the rng is seeded: two processes must never share one.
    let boot: u64 = rand::Rng::random(&mut StdRng::from_os_rng());
    let ctx = Context::new(tls.identity().clone(), config, endpoint, boot, discovery, config_source);
    let state = State::new(ctx, tls_state, LocalServices::new(services), gossip, rng);
    Ok((state, admin, local_addr))
}

/// Starts the tasks that drive the node.
fn spawn(state: Arc<State>, admin: Option<TcpListener>, local_addr: SocketAddr, tls_from_files: bool) -> Node {
    let ctx = &state.ctx;
    let span = tracing::info_span!("node", name = %ctx.name);
    let mut tasks = JoinSet::new();
    tasks.spawn(handshake::accept_loop(state.clone()).instrument(span.clone()));
    tasks.spawn(conn::watch_migrations(state.clone()).instrument(span.clone()));
    tasks.spawn(membership::gossip_loop(state.clone()).instrument(span.clone()));
    tasks.spawn(dial::service_dials(state.clone()).instrument(span.clone()));
    if tls_from_files {
        tasks.spawn(reload::reload_loop(state.clone()).instrument(span.clone()));
    }
    for peer in &ctx.cfg.peers {
        let dial = dial::keep_connected(state.clone(), peer.clone(), dial::Purpose::Seed);
        tasks.spawn(dial.instrument(span.clone()));
    }
    tasks.spawn(services_api::expire_leases(state.clone()).instrument(span.clone()));
    tasks.spawn(checks::run(state.clone()).instrument(span.clone()));
    tasks.spawn(preconnect::run(state.clone()).instrument(span.clone()));
    // Starts the configuration's health checks.
    super::rebuild::apply(&state);
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(listener) = admin {
        tasks.spawn(admin::serve(state.clone(), listener).instrument(span.clone()));
    }
    if let Some(disc) = &ctx.discovery {
        tasks.spawn(disc.clone().run(ctx.on_shutdown()).instrument(span.clone()));
        tasks.spawn(discover::discover_loop(state.clone(), disc.clone()).instrument(span.clone()));
    }
    span.in_scope(|| {
        info!(
            listen = %local_addr,
            identity = %ctx.identity,
            services = ?state.services.names(),
            peers = ?ctx.cfg.peers,
            discovery = ?ctx.cfg.discovery,
            dns = ctx.discovery.as_ref().map(|d| d.servers()),
            admin = admin_addr.map(|a| a.to_string()),
            "node started"
        )
    });
    Node {
        state,
        local_addr,
        admin_addr,
        tasks: Mutex::new(tasks),
    }
}
