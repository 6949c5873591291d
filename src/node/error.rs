//! Why a node could not start (or reload its certificates); each error says what to change.

use std::net::SocketAddr;

use crate::config::ConfigError;
use crate::identity::{Identity, TlsError};
use crate::transport::TransportError;

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
