//! # quicmesh
//!
//! A service mesh on QUIC. Every host runs a node; nodes keep one mutually authenticated QUIC
//! connection per peer and carry one stream per request. Identities are SPIFFE-style names in
//! certificates from the mesh's own CA (`quicmesh certs`), and roles are enforced: a client
//! can call services but cannot pose as a node.
//!
//! ## Quick start
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use quicmesh::{Client, ClientConfig, Echo, Node, NodeConfig, TlsPaths};
//!
//! // A node that serves `echo` in-process (certificates made by `quicmesh certs`).
//! let tls = TlsPaths::new("certs/ca.crt", "certs/node-a.crt", "certs/node-a.key");
//! let mut config = NodeConfig::new("a", tls);
//! config.listen = "127.0.0.1:7401".parse()?;
//! let node = Node::builder(config).handler("echo", Echo).start().await?;
//!
//! // A client that calls it.
//! let tls = TlsPaths::new("certs/ca.crt", "certs/client-web.crt", "certs/client-web.key");
//! let client = Client::connect(ClientConfig::new(tls, vec!["127.0.0.1:7401".into()])).await?;
//! assert_eq!(&client.call("echo", "hi").await?[..], b"hi");
//! node.shutdown().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
// Allowed in the tokio layer; the pure cores deny it for themselves (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod backoff;
#[cfg(feature = "testkit")]
pub mod chaos;
mod client;
pub mod config;
mod direct;
pub mod discovery;
pub mod gossip;
pub mod health;
mod identity;
#[cfg(feature = "testkit")]
pub mod impair;
#[cfg(feature = "testkit")]
pub mod lbsim;
mod logbudget;
mod node;
pub mod overlay;
pub mod protocol;
mod race;
pub mod routing;
mod service;
#[cfg(feature = "testkit")]
pub mod sim;
mod sysload;
mod table;
mod transport;
pub mod warm;

pub use backoff::{Backoff, BackoffPolicy};
pub use client::{CallError, CallOptions, Client, ClientError, Reply, StreamError};
pub use config::{ClientConfig, ConfigError, NodeConfig};
pub use identity::{
    issue_leaf, validate_name, CaFiles, CertError, Identity, IdentityError, IssueOptions, IssuedCert, LeafFiles,
    MeshCa, RevokeReason, Role, TlsError, TlsMaterial, TlsPaths, ALPN,
};
pub use node::{Node, NodeBuilder, NodeError, NodeStats, PeerInfo, ReloadError, Reloaded};
pub use protocol::RejectCode;
pub use service::{request_handler, BoxFuture, Echo, Handler, RequestContext, RequestFn, ServiceStream};
pub use table::{render_status, Table};
pub use transport::TransportError;

/// Time since the Unix epoch by the system clock (zero if the clock is before 1970): the
/// one place the crate reads wall-clock time, for incarnations, certificate expiry and logs.
pub fn unix_time() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}
