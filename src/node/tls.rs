//! The node's TLS part: the quinn configurations built from its certificates, the dialling
//! configuration that a certificate reload replaces, and the certificate's expiry.

use std::sync::{Arc, Mutex};

use tracing::info;

use super::error::NodeError;
use super::sync::lock;
use crate::config::NodeConfig;
use crate::identity::TlsMaterial;
use crate::transport::{transport_config, StreamAllowance, TransportError};

/// What may change when the certificate files are reloaded.
pub(crate) struct TlsState {
    /// How this node dials peers.
    client_config: Mutex<quinn::ClientConfig>,
    /// When this node's certificate expires (Unix seconds), for `/metrics`.
    not_after: Mutex<Option<i64>>,
}

impl TlsState {
    pub fn new(client_config: quinn::ClientConfig, not_after: Option<i64>) -> Self {
        TlsState {
            client_config: Mutex::new(client_config),
            not_after: Mutex::new(not_after),
        }
    }

    /// The configuration to dial a peer with now.
    pub fn client_config(&self) -> quinn::ClientConfig {
        lock(&self.client_config).clone()
    }

    /// When the certificate in use expires (Unix seconds).
    pub fn not_after(&self) -> Option<i64> {
        *lock(&self.not_after)
    }

    /// Installs reloaded material for the dials that follow.
    pub fn replace(&self, client_config: quinn::ClientConfig, not_after: Option<i64>) {
        *lock(&self.client_config) = client_config;
        *lock(&self.not_after) = not_after;
    }
}

/// Transport settings for accepted and for dialled connections. Every connection starts with
/// the initial stream allowance (of the smaller limit when accepted: the peer's role is known
/// only after the handshake) and raises it on demand; dialled connections go to nodes only.
fn transports(
    config: &NodeConfig,
) -> Result<(Arc<quinn::TransportConfig>, Arc<quinn::TransportConfig>), TransportError> {
    let l = &config.limits;
    // Both start at the initial allowance; the connection raises it as the peer uses it.
    let accept = transport_config(
        &config.transport,
        StreamAllowance::new(l.max_streams_per_client.min(l.max_streams_per_connection)).current(),
    )?;
    let dial = transport_config(
        &config.transport,
        StreamAllowance::new(l.max_streams_per_connection).current(),
    )?;
    Ok((accept, dial))
}

/// The quinn server and client configurations of a node with these certificates.
pub(crate) fn quinn_configs(
    config: &NodeConfig,
    tls: &TlsMaterial,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), NodeError> {
    let (accept, dial) = transports(config)?;
    let mut server = quinn::ServerConfig::with_crypto(tls.server_config()?);
    server.transport_config(accept);
    let mut client = quinn::ClientConfig::new(tls.client_config()?);
    client.transport_config(dial);
    Ok((server, client))
}

/// Logs when the node's certificate expires: a warning inside 30 days, an error once expired.
pub(crate) fn log_cert_expiry(not_after: Option<i64>) {
    let Some(t) = not_after else { return };
    let now = i64::try_from(crate::unix_time().as_secs()).unwrap_or(i64::MAX);
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
