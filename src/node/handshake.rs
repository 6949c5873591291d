//! Incoming handshakes: address validation under load (QUIC Retry), the handshake itself,
//! and a reason for every one that fails, for the log and `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::conn::run_connection;
use super::shared::Shared;
use crate::identity::peer_identity;
use crate::protocol::codes;

/// Why an incoming handshake failed. Certificate problems are told apart because each needs
/// a different fix by the holder of the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HandshakeFailure {
    /// The peer's certificate has expired.
    CertExpired,
    /// The peer's certificate is not valid yet (or the clocks disagree).
    CertNotYetValid,
    /// The peer's certificate is not signed by the mesh CA.
    UnknownCa,
    /// The peer's certificate is on the CRL.
    CertRevoked,
    /// The certificate chains to the CA but names no usable identity of this trust domain.
    BadIdentity,
    /// The peer presented no certificate.
    NoCertificate,
    /// The handshake did not finish within `transport.connect_timeout`.
    Timeout,
    /// Any other TLS or QUIC failure (wrong ALPN, protocol violation, peer gave up).
    Other,
}

impl HandshakeFailure {
    /// Every reason, for metrics.
    pub const ALL: [HandshakeFailure; 8] = [
        HandshakeFailure::CertExpired,
        HandshakeFailure::CertNotYetValid,
        HandshakeFailure::UnknownCa,
        HandshakeFailure::CertRevoked,
        HandshakeFailure::BadIdentity,
        HandshakeFailure::NoCertificate,
        HandshakeFailure::Timeout,
        HandshakeFailure::Other,
    ];

    /// A stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::CertExpired => "cert_expired",
            HandshakeFailure::CertNotYetValid => "cert_not_yet_valid",
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::CertRevoked => "cert_revoked",
            HandshakeFailure::BadIdentity => "bad_identity",
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Other => "other",
        }
    }

    /// What the peer's operator should do.
    fn advice(self) -> &'static str {
        match self {
            HandshakeFailure::CertExpired => "the peer's certificate has expired; issue it a new one",
            HandshakeFailure::CertNotYetValid => "the peer's certificate is not valid yet; check both hosts' clocks",
            HandshakeFailure::UnknownCa => "the peer's certificate is not from this mesh's CA",
            HandshakeFailure::CertRevoked => "the peer's certificate is revoked (tls.crl)",
            HandshakeFailure::BadIdentity => "the peer's certificate names no identity of this trust domain",
            HandshakeFailure::NoCertificate => "the peer presented no certificate",
            HandshakeFailure::Timeout => "the handshake did not finish within transport.connect_timeout",
            HandshakeFailure::Other => "the handshake failed",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Classifies a failed handshake by the TLS error quinn reports.
    pub fn classify(e: &quinn::ConnectionError) -> Self {
        let text = match e {
            quinn::ConnectionError::TimedOut => return HandshakeFailure::Timeout,
            quinn::ConnectionError::TransportError(t) => t.reason.to_ascii_lowercase(),
            quinn::ConnectionError::ConnectionClosed(c) => String::from_utf8_lossy(&c.reason).to_ascii_lowercase(),
            _ => return HandshakeFailure::Other,
        };
        let has = |s: &str| text.contains(s);
        if has("revoked") {
            HandshakeFailure::CertRevoked
        } else if has("revocation list") {
            // Our own CRL is stale or unusable: not the peer's fault.
            HandshakeFailure::Other
        } else if has("expired") {
            HandshakeFailure::CertExpired
        } else if has("not valid yet") || has("notvalidyet") {
            HandshakeFailure::CertNotYetValid
        } else if has("unknown issuer") || has("unknownissuer") || has("badsignature") || has("bad signature") {
            // A certificate from another CA with the same name as ours fails on the signature.
            HandshakeFailure::UnknownCa
        } else if has("no certificate") || has("nocertificatespresented") {
            HandshakeFailure::NoCertificate
        } else if has("invalid peer certificate") {
            HandshakeFailure::BadIdentity
        } else {
            HandshakeFailure::Other
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Admits an incoming connection attempt, or answers it with a Retry first.
///
/// Above `limits.max_pending_handshakes`, a source that has not proved it owns its address
/// gets a stateless Retry: a spoofed flood then costs us a packet each, not a TLS
/// handshake and its state, while a real peer pays one round trip and carries on.
pub(crate) fn admit(shared: &Arc<Shared>, incoming: quinn::Incoming) {
    let pending = shared.pending_handshakes.load(Ordering::Relaxed);
    if pending >= shared.cfg.limits.max_pending_handshakes && !incoming.remote_address_validated() {
        if incoming.may_retry() {
            shared.stats.retries.fetch_add(1, Ordering::Relaxed);
            debug!(remote = %incoming.remote_address(), pending, "address validation: sent Retry");
            // Only fails if a Retry was already sent, which may_retry ruled out.
            let _ = incoming.retry();
            return;
        }
        // A Retry token was presented but did not validate: a replay or a forgery.
        incoming.refuse();
        return;
    }
    tokio::spawn(handshake(shared.clone(), incoming));
}

async fn handshake(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let pending = super::shared::Counted::new(&shared.pending_handshakes);
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            debug!(%remote, error = %e, "could not accept connection");
            return;
        }
    };
    let conn = match tokio::time::timeout(shared.cfg.transport.connect_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return failed(&shared, remote, HandshakeFailure::classify(&e), &e.to_string()),
        Err(_) => return failed(&shared, remote, HandshakeFailure::Timeout, "timed out"),
    };
    drop(pending);
    let id = match peer_identity(&conn) {
        Ok(id) => id,
        Err(e) => {
            // The verifier already checked this; reaching here means a bug, not an attacker.
            warn!(%remote, error = %e, "connection without a usable identity");
            conn.close(codes::FORBIDDEN, e.to_string().as_bytes());
            return;
        }
    };
    run_connection(shared, conn, id, false).await;
}

fn failed(shared: &Shared, remote: std::net::SocketAddr, reason: HandshakeFailure, error: &str) {
    shared.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
    shared.stats.handshake_failure_reasons[reason.index()].fetch_add(1, Ordering::Relaxed);
    // Once per failed handshake, at info: each costs the peer a full round trip, so this is
    // not per-packet spam, and an operator needs the address to find the misconfigured host.
    info!(%remote, %reason, error, "handshake refused: {}", reason.advice());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_error(reason: &str) -> quinn::ConnectionError {
        quinn::ConnectionError::TransportError(quinn_proto::TransportError {
            code: quinn_proto::TransportErrorCode::crypto(42),
            frame: None,
            reason: reason.into(),
        })
    }

    #[test]
    fn certificate_errors_get_their_own_reason() {
        for (text, want) in [
            ("invalid peer certificate: Expired", HandshakeFailure::CertExpired),
            (
                "invalid peer certificate: certificate expired: verification time 1 (UNIX), but certificate is not valid after 0 (1 seconds ago)",
                HandshakeFailure::CertExpired,
            ),
            ("invalid peer certificate: NotValidYet", HandshakeFailure::CertNotYetValid),
            (
                "invalid peer certificate: certificate not valid yet: verification time 0 (UNIX), but certificate is not valid before 5",
                HandshakeFailure::CertNotYetValid,
            ),
            ("invalid peer certificate: UnknownIssuer", HandshakeFailure::UnknownCa),
            ("invalid peer certificate: BadSignature", HandshakeFailure::UnknownCa),
            (
                "invalid peer certificate: certificate revocation list expired: verification time 9",
                HandshakeFailure::Other,
            ),
            ("invalid peer certificate: Revoked", HandshakeFailure::CertRevoked),
            (
                "invalid peer certificate: ApplicationVerificationFailure",
                HandshakeFailure::BadIdentity,
            ),
            ("peer sent no certificates", HandshakeFailure::NoCertificate),
            ("no application protocol", HandshakeFailure::Other),
        ] {
            assert_eq!(HandshakeFailure::classify(&tls_error(text)), want, "{text}");
        }
        assert_eq!(
            HandshakeFailure::classify(&quinn::ConnectionError::TimedOut),
            HandshakeFailure::Timeout
        );
    }
}
