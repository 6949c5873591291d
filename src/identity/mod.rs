//! Who is who in the mesh: SPIFFE-style identities, certificate issuing, and the rustls
//! configurations that enforce them on both sides of every QUIC handshake.
//!
//! Every certificate carries exactly one URI SAN, `spiffe://<trust-domain>/<role>/<name>`.
//! The trust domain of a node or client is read from its own certificate, so it cannot
//! drift from what the CA actually signed.

mod certgen;
mod spiffe;
mod tls;

pub use certgen::{issue_leaf, CaFiles, CertError, IssueOptions, IssuedCert, LeafFiles, MeshCa, RevokeReason};
pub use spiffe::{validate_name, Identity, IdentityError, Role};
pub use tls::{peer_identity, TlsError, TlsMaterial, TlsPaths};

/// ALPN protocol id of quicmesh version 1. Peers that do not offer it fail the handshake.
pub const ALPN: &[u8] = b"quicmesh/1";
