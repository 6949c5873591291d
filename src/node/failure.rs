//! Why an incoming handshake failed, told from the TLS error quinn reports, for the log and
//! `/metrics`. Pure.

#![deny(clippy::disallowed_methods)]

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
    /// The peer offered no protocol this node speaks (ALPN): not a quicmesh peer, or
    /// another version of it.
    WrongAlpn,
    /// The handshake did not finish within `transport.connect_timeout`.
    Timeout,
    /// Any other TLS or QUIC failure (protocol violation, peer gave up).
    Other,
}

impl HandshakeFailure {
    /// Every reason, for metrics.
    pub const ALL: [HandshakeFailure; 9] = [
        HandshakeFailure::CertExpired,
        HandshakeFailure::CertNotYetValid,
        HandshakeFailure::UnknownCa,
        HandshakeFailure::CertRevoked,
        HandshakeFailure::BadIdentity,
        HandshakeFailure::NoCertificate,
        HandshakeFailure::WrongAlpn,
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
            HandshakeFailure::WrongAlpn => "wrong_alpn",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Other => "other",
        }
    }

    /// What the peer's operator should do.
    pub fn advice(self) -> &'static str {
        match self {
            HandshakeFailure::CertExpired => "the peer's certificate has expired; issue it a new one",
            HandshakeFailure::CertNotYetValid => "the peer's certificate is not valid yet; check both hosts' clocks",
            HandshakeFailure::UnknownCa => "the peer's certificate is not from this mesh's CA",
            HandshakeFailure::CertRevoked => "the peer's certificate is revoked (tls.crl)",
            HandshakeFailure::BadIdentity => "the peer's certificate names no identity of this trust domain",
            HandshakeFailure::NoCertificate => "the peer presented no certificate",
            HandshakeFailure::WrongAlpn => {
                "the peer does not speak quicmesh/1 (ALPN): not a quicmesh client or node, or another version"
            }
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
            // TLS alert 120, no_application_protocol, whatever the text says, sent or received.
            quinn::ConnectionError::TransportError(t) if t.code == quinn_proto::TransportErrorCode::crypto(120) => {
                return HandshakeFailure::WrongAlpn
            }
            quinn::ConnectionError::ConnectionClosed(c)
                if c.error_code == quinn_proto::TransportErrorCode::crypto(120) =>
            {
                return HandshakeFailure::WrongAlpn
            }
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
        } else if has("no application protocol") || has("noapplicationprotocol") {
            HandshakeFailure::WrongAlpn
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
            ("no application protocol", HandshakeFailure::WrongAlpn),
            ("peer doesn't support any known protocol", HandshakeFailure::Other),
        ] {
            assert_eq!(HandshakeFailure::classify(&tls_error(text)), want, "{text}");
        }
        assert_eq!(
            HandshakeFailure::classify(&quinn::ConnectionError::TimedOut),
            HandshakeFailure::Timeout
        );
    }
}
