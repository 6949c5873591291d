//! What a node is and was told, fixed for its lifetime: name, identity, configuration, the
//! QUIC endpoint, its clock's origin, DNS discovery, and the shutdown signal.
//!
//! Nothing here changes after start except the shutdown flag, so every task reads it without
//! a lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::Endpoint;
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::discovery::Discovery;
use crate::identity::Identity;

/// Re-reads the configuration for a reload (the file and the flags over it, for the CLI).
pub(crate) type ConfigSource = Arc<dyn Fn() -> Result<NodeConfig, String> + Send + Sync>;

/// The immutable context of a node.
pub(crate) struct Context {
    pub name: String,
    pub identity: Identity,
    pub cfg: NodeConfig,
    pub endpoint: Endpoint,
    /// This process's boot id (see [`crate::protocol::Hello`]).
    pub boot: u64,
    /// How to re-read the configuration for a reload, if the node has a file to re-read.
    pub config_source: Option<ConfigSource>,
    /// Origin of the node's clock (gossip, routing, log budgets).
    epoch: Instant,
    /// DNS discovery, if configured.
    pub discovery: Option<Arc<Discovery>>,
    /// Set once when the node stops; tasks watch it.
    shutdown: watch::Sender<bool>,
}

impl Context {
    pub fn new(
        identity: Identity,
        cfg: NodeConfig,
        endpoint: Endpoint,
        boot: u64,
        discovery: Option<Arc<Discovery>>,
        config_source: Option<ConfigSource>,
    ) -> Self {
        Context {
            name: cfg.name.clone(),
            identity,
            cfg,
            endpoint,
            boot,
            config_source,
            epoch: Instant::now(),
            discovery,
            shutdown: watch::channel(false).0,
        }
    }

    /// Time since the node started: the clock of its pure state machines.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Tells every task to stop.
    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// A receiver that changes when the node stops.
    pub fn on_shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}
