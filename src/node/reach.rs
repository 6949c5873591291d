//! Dials that keep failing: per dialled address, the failures in a row, the last error and
//! when the trouble began, for the log, `/metrics`, `/readyz` and `/status`.
//!
//! A peer that cannot be reached is worth a warning, but not one per attempt: the first
//! failure warns, then the 2nd, 4th, 8th... in a row, so once the reconnect backoff is at its
//! cap a peer that stays down costs one line per doubling of its downtime. Owns its lock;
//! takes nothing else of the node's state.

#![deny(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::failure::HandshakeFailure;
use super::sync::lock;

/// Why a dial failed, each with its own fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DialFailure {
    /// The host name does not resolve (or resolves to nothing).
    Resolve,
    /// No handshake within `transport.connect_timeout`: nothing listens there, or packets
    /// are dropped.
    Timeout,
    /// The peer refused the connection (draining, or at `limits.max_connections`).
    Refused,
    /// TLS refused a certificate, ours or the peer's.
    Certificate,
    /// The peer's certificate names no node of this trust domain.
    Identity,
    /// The peer does not speak quicmesh/1 (ALPN).
    Protocol,
    /// Anything else (a bad address, a protocol error).
    Other,
}

impl DialFailure {
    /// Every reason, for metrics.
    pub const ALL: [DialFailure; 7] = [
        DialFailure::Resolve,
        DialFailure::Timeout,
        DialFailure::Refused,
        DialFailure::Certificate,
        DialFailure::Identity,
        DialFailure::Protocol,
        DialFailure::Other,
    ];

    /// A stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            DialFailure::Resolve => "resolve",
            DialFailure::Timeout => "timeout",
            DialFailure::Refused => "refused",
            DialFailure::Certificate => "certificate",
            DialFailure::Identity => "identity",
            DialFailure::Protocol => "protocol",
            DialFailure::Other => "other",
        }
    }

    /// What the operator should check.
    pub fn advice(self) -> &'static str {
        match self {
            DialFailure::Resolve => "the host name does not resolve; check the peers entry and DNS",
            DialFailure::Timeout => {
                "no handshake within transport.connect_timeout; is a node listening on that UDP port, and do packets reach it?"
            }
            DialFailure::Refused => "the peer refused the connection (draining, or at limits.max_connections)",
            DialFailure::Certificate => {
                "a certificate was refused; do both nodes have certificates from the same mesh CA (tls.ca), valid and not revoked?"
            }
            DialFailure::Identity => "the peer's certificate is not a node's of this trust domain",
            DialFailure::Protocol => {
                "the peer does not speak quicmesh/1 (ALPN): not a quicmesh node at that address, or another version"
            }
            DialFailure::Other => "the dial failed",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Classifies a failed handshake as the dialling side sees it.
    pub fn of_handshake(e: &quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::TimedOut => DialFailure::Timeout,
            quinn::ConnectionError::ConnectionClosed(c)
                if c.error_code == quinn_proto::TransportErrorCode::CONNECTION_REFUSED =>
            {
                DialFailure::Refused
            }
            quinn::ConnectionError::ConnectionClosed(_) | quinn::ConnectionError::TransportError(_) => {
                match HandshakeFailure::classify(e) {
                    HandshakeFailure::CertExpired
                    | HandshakeFailure::CertNotYetValid
                    | HandshakeFailure::UnknownCa
                    | HandshakeFailure::CertRevoked
                    | HandshakeFailure::NoCertificate => DialFailure::Certificate,
                    HandshakeFailure::BadIdentity => DialFailure::Identity,
                    HandshakeFailure::Timeout => DialFailure::Timeout,
                    HandshakeFailure::WrongAlpn => DialFailure::Protocol,
                    HandshakeFailure::Other => DialFailure::Other,
                }
            }
            _ => DialFailure::Other,
        }
    }
}

impl std::fmt::Display for DialFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One address that cannot be reached now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trouble {
    /// Failed dials in a row.
    pub failures: u32,
    /// Why the last one failed.
    pub reason: DialFailure,
    /// The last error, as text.
    pub error: String,
    /// When the first of these failures happened, in seconds since the Unix epoch.
    pub since_unix: u64,
}

/// The failing dials of a node, and its dial failures by reason since it started.
#[derive(Debug, Default)]
pub(crate) struct Reach {
    troubles: Mutex<BTreeMap<String, Trouble>>,
    counts: [AtomicU64; DialFailure::ALL.len()],
}

impl Reach {
    /// Records a failed dial of `target`. Returns the failures in a row if this one is worth
    /// a warning (the 1st, 2nd, 4th, 8th...).
    pub fn failed(&self, target: &str, reason: DialFailure, error: String, now_unix: u64) -> Option<u32> {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed);
        let mut troubles = lock(&self.troubles);
        let t = troubles.entry(target.to_owned()).or_insert(Trouble {
            failures: 0,
            reason,
            error: String::new(),
            since_unix: now_unix,
        });
        t.failures = t.failures.saturating_add(1);
        t.reason = reason;
        t.error = error;
        t.failures.is_power_of_two().then_some(t.failures)
    }

    /// Records that `target` was reached; returns the trouble it was in, if any.
    pub fn reached(&self, target: &str) -> Option<Trouble> {
        lock(&self.troubles).remove(target)
    }

    /// Whether the last dial of `target` failed (and it is still being dialled).
    pub fn in_trouble(&self, target: &str) -> bool {
        lock(&self.troubles).contains_key(target)
    }

    /// Forgets `target`: it is no longer dialled.
    pub fn forget(&self, target: &str) {
        lock(&self.troubles).remove(target);
    }

    /// Every address in trouble now.
    pub fn troubles(&self) -> Vec<(String, Trouble)> {
        lock(&self.troubles)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Dial failures of `reason` since the node started.
    pub fn count(&self, reason: DialFailure) -> u64 {
        self.counts[reason.index()].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_at_the_first_failure_then_at_each_doubling_and_forgets_on_success() {
        let r = Reach::default();
        let warned: Vec<u32> = (0..20)
            .filter_map(|i| r.failed("a:1", DialFailure::Timeout, format!("e{i}"), 100 + i))
            .collect();
        assert_eq!(warned, [1, 2, 4, 8, 16]);
        let t = &r.troubles()[0].1;
        assert_eq!((t.failures, t.since_unix, t.error.as_str()), (20, 100, "e19"));
        assert_eq!(r.count(DialFailure::Timeout), 20);
        assert_eq!(r.reached("a:1").map(|t| t.failures), Some(20));
        assert!(r.troubles().is_empty());
        // A new run of failures warns from the start again; counts keep adding up.
        assert_eq!(r.failed("a:1", DialFailure::Resolve, "x".into(), 200), Some(1));
        assert_eq!(r.count(DialFailure::Timeout), 20);
        assert_eq!(r.count(DialFailure::Resolve), 1);
        r.forget("a:1");
        assert!(r.reached("a:1").is_none());
    }

    #[test]
    fn handshake_errors_are_told_apart() {
        let tls = |reason: &str| {
            quinn::ConnectionError::TransportError(quinn_proto::TransportError {
                code: quinn_proto::TransportErrorCode::crypto(42),
                frame: None,
                reason: reason.into(),
            })
        };
        assert_eq!(
            DialFailure::of_handshake(&tls("invalid peer certificate: UnknownIssuer")),
            DialFailure::Certificate
        );
        assert_eq!(
            DialFailure::of_handshake(&tls("invalid peer certificate: ApplicationVerificationFailure")),
            DialFailure::Identity
        );
        assert_eq!(
            DialFailure::of_handshake(&quinn::ConnectionError::TimedOut),
            DialFailure::Timeout
        );
        // The peer answered with TLS alert 120 (no_application_protocol).
        assert_eq!(
            DialFailure::of_handshake(&quinn::ConnectionError::ConnectionClosed(
                quinn_proto::ConnectionClose {
                    error_code: quinn_proto::TransportErrorCode::crypto(120),
                    frame_type: None,
                    reason: bytes::Bytes::from_static(b"peer doesn't support any known protocol"),
                }
            )),
            DialFailure::Protocol
        );
        assert_eq!(
            DialFailure::of_handshake(&quinn::ConnectionError::ConnectionClosed(
                quinn_proto::ConnectionClose {
                    error_code: quinn_proto::TransportErrorCode::CONNECTION_REFUSED,
                    frame_type: None,
                    reason: bytes::Bytes::new(),
                }
            )),
            DialFailure::Refused
        );
    }
}
