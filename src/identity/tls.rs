//! rustls configurations for mutual TLS inside one trust domain.
//!
//! Peers are authenticated by their SPIFFE identity, not by host name: a node may be dialled
//! at any address (DNS, SRV, NAT) and what matters is that its certificate chains to the mesh
//! CA and names a node of this trust domain. Both verifiers below enforce exactly that during
//! the handshake, so a wrong certificate never reaches the stream layer.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::spiffe::{Identity, IdentityError, Role};
use super::ALPN;

/// Errors while loading certificates or building TLS configurations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("{what}: {source}")]
    Io {
        /// The file in question.
        path: PathBuf,
        /// The file with the config key and flag that name it, e.g.
        /// `certs/node-n1.crt (tls.cert, --cert)`.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{what}: {reason}")]
    Pem {
        /// Which file (or in-memory input) it was.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Our own certificate does not carry a usable identity.
    #[error("{cert}: {source}")]
    OwnIdentity {
        /// The certificate file, with its key and flag.
        cert: String,
        /// What is wrong with its identity.
        source: IdentityError,
    },
    /// Our own certificate has a role other than the one we run as.
    #[error("{cert}: the certificate is {found} but this process runs as a {expected}; issue a {expected} certificate with `quicmesh certs {expected} NAME`")]
    WrongRole {
        /// The certificate file, with its key and flag.
        cert: String,
        /// What the certificate says.
        found: Box<Identity>,
        /// What the process runs as.
        expected: Role,
    },
    /// Our own certificate is from another trust domain than the CA's.
    #[error("{cert}: the certificate {found} is not in the trust domain {ca_domain:?} of the CA {ca}")]
    ForeignCa {
        /// The certificate file, with its key and flag.
        cert: String,
        /// The CA file, with its key and flag.
        ca: String,
        /// What the certificate says.
        found: Box<Identity>,
        /// The trust domain of the CA file.
        ca_domain: String,
    },
    /// The private key does not belong to the certificate.
    #[error("the private key {key} does not belong to the certificate {cert}; use the key issued with it (`quicmesh certs` writes NAME.crt and NAME.key as a pair)")]
    KeyMismatch {
        /// The key file, with its key and flag.
        key: String,
        /// The certificate file, with its key and flag.
        cert: String,
    },
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The crypto provider lacks the cipher suite QUIC needs for Initial packets.
    #[error("{0}")]
    NoInitialCipherSuite(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// The three files every node and client needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The mesh CA certificate (PEM).
    pub ca: PathBuf,
    /// This holder's certificate (PEM), signed by the CA.
    pub cert: PathBuf,
    /// This holder's private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// A certificate revocation list from the mesh CA (PEM), made by `quicmesh certs revoke`;
    /// certificates it lists are refused in both directions. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
    /// Nodes only: how often the files are checked for changes and reloaded without a
    /// restart (existing connections are kept). `"0ms"` turns reloading off. Default `"5s"`.
    #[serde(default = "default_reload", with = "crate::config::duration_str")]
    pub reload: std::time::Duration,
}

fn default_reload() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

impl TlsPaths {
    /// The three files, with no CRL and the default reload interval.
    pub fn new(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsPaths {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            crl: None,
            reload: default_reload(),
        }
    }
}

/// Loaded, checked TLS material: trust roots, our chain and key, and our identity.
#[derive(Clone)]
pub struct TlsMaterial {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    identity: Identity,
    crls: Arc<Vec<CertificateRevocationListDer<'static>>>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("identity", &self.identity.uri())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        what: what.to_owned(),
        source,
    })
}

/// A file named with the config key and the command-line flag that set it, so an error about
/// it says what to change where: `certs/node-n1.crt (tls.cert, --cert)`.
fn labelled(path: &Path, key: &str, flag: &str) -> String {
    format!("{} ({key}, {flag})", path.display())
}

fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: what.to_owned(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// The crypto provider used everywhere: ring, TLS 1.3 only (QUIC requires it).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsMaterial {
    /// Loads and checks the files for a holder that runs as `role`.
    pub fn load(paths: &TlsPaths, role: Role) -> Result<Self, TlsError> {
        let ca_name = labelled(&paths.ca, "tls.ca", "--ca");
        let cert_name = labelled(&paths.cert, "tls.cert", "--cert");
        let key_name = labelled(&paths.key, "tls.key", "--cert-key");
        let ca = read(&paths.ca, &ca_name)?;
        let cert = read(&paths.cert, &cert_name)?;
        let key = read(&paths.key, &key_name)?;
        let material = Self::from_pem_named((&ca, &ca_name), (&cert, &cert_name), (&key, &key_name), role)?;
        match &paths.crl {
            Some(crl) => {
                let flag = match role {
                    Role::Node => "--set tls.crl=PATH",
                    Role::Client => "in the client config",
                };
                let name = labelled(crl, "tls.crl", flag);
                material.with_crl_named(&read(crl, &name)?, &name)
            }
            None => Ok(material),
        }
    }

    /// Adds a certificate revocation list (PEM) from the mesh CA: certificates it lists are
    /// refused when they are presented to us, whichever side dialled.
    pub fn with_crl_pem(self, crl_pem: &str) -> Result<Self, TlsError> {
        self.with_crl_named(crl_pem.as_bytes(), "CRL")
    }

    fn with_crl_named(mut self, pem: &[u8], what: &str) -> Result<Self, TlsError> {
        let bad = |reason: String| TlsError::Pem {
            what: what.to_owned(),
            reason,
        };
        let crls = rustls_pemfile::crls(&mut &pem[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if crls.is_empty() {
            return Err(bad("no X509 CRL block found".into()));
        }
        // Check our own certificate against the list now: that proves the list parses and is
        // signed by the CA in the `ca` file, so a wrong file is a clear error at start (or a
        // kept old list on reload) rather than refused handshakes later.
        let now = UnixTime::now();
        match verify_chain(
            &self.roots,
            &crls,
            &self.chain[0],
            &self.chain[1..],
            now,
            webpki::KeyUsage::client_auth(),
        ) {
            Ok(()) => {}
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {
                return Err(bad(format!(
                    "it revokes this holder's own certificate ({})",
                    self.identity
                )))
            }
            Err(e) => return Err(bad(format!("not a usable CRL from the mesh CA: {e}"))),
        }
        self.crls = Arc::new(crls);
        Ok(self)
    }

    /// Builds material from PEM text held in memory (tests, the demo).
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str, role: Role) -> Result<Self, TlsError> {
        Self::from_pem_named(
            (ca_pem.as_bytes(), "CA certificate"),
            (cert_pem.as_bytes(), "certificate"),
            (key_pem.as_bytes(), "private key"),
            role,
        )
    }

    fn from_pem_named(
        ca: (&[u8], &str),
        cert: (&[u8], &str),
        key: (&[u8], &str),
        role: Role,
    ) -> Result<Self, TlsError> {
        let ca_certs = certs_from_pem(ca.0, ca.1)?;
        let mut roots = RootCertStore::empty();
        for c in &ca_certs {
            roots.add(c.clone()).map_err(|e| TlsError::Pem {
                what: ca.1.to_owned(),
                reason: format!("not a usable trust anchor: {e}"),
            })?;
        }
        let chain = certs_from_pem(cert.0, cert.1)?;
        let key_name = key.1;
        let key = rustls_pemfile::private_key(&mut &key.0[..])
            .map_err(|e| TlsError::Pem {
                what: key.1.to_owned(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| TlsError::Pem {
                what: key.1.to_owned(),
                reason: "no PRIVATE KEY block found".into(),
            })?;
        let identity = Identity::from_cert_der(&chain[0]).map_err(|source| TlsError::OwnIdentity {
            cert: cert.1.to_owned(),
            source,
        })?;
        if identity.role != role {
            return Err(TlsError::WrongRole {
                cert: cert.1.to_owned(),
                found: Box::new(identity),
                expected: role,
            });
        }
        let ca_domain = ca_certs.iter().find_map(|c| ca_spiffe_domain(c)).unwrap_or_default();
        if !ca_domain.is_empty() && ca_domain != identity.trust_domain {
            return Err(TlsError::ForeignCa {
                cert: cert.1.to_owned(),
                ca: ca.1.to_owned(),
                found: Box::new(identity),
                ca_domain,
            });
        }
        // Catch a key that does not belong to the certificate now, not at the first handshake.
        let signing = provider().key_provider.load_private_key(key.clone_key())?;
        let ck = rustls::sign::CertifiedKey::new(chain.clone(), signing);
        ck.keys_match().map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => TlsError::KeyMismatch {
                key: key_name.to_owned(),
                cert: cert.1.to_owned(),
            },
            other => TlsError::Rustls(other),
        })?;
        Ok(TlsMaterial {
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
            identity,
            crls: Arc::default(),
        })
    }

    /// Our own identity, as our certificate states it.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// When our own certificate stops being valid, in seconds since the Unix epoch.
    pub fn not_after(&self) -> Option<i64> {
        let der = self.chain.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// The server side of a node: requires a client certificate from the mesh CA naming an
    /// identity (node or client) of our trust domain.
    pub fn server_config(&self) -> Result<Arc<QuicServerConfig>, TlsError> {
        let mut builder = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider());
        if !self.crls.is_empty() {
            // Leaves only: the CA itself is the trust anchor and has no CRL above it.
            builder = builder
                .with_crls(self.crls.iter().cloned())
                .only_check_end_entity_revocation();
        }
        let inner = builder.build()?;
        let verifier = Arc::new(MeshClientVerifier {
            inner,
            trust_domain: self.identity.trust_domain.clone(),
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        // 0-RTT stays off: replayable early data has no place in an authenticated mesh.
        cfg.max_early_data_size = 0;
        // No session resumption either: a resumed handshake skips the certificate checks, so
        // every connection verifies the chain, its expiry and the CRL in full. Connections in
        // a mesh live long, so resumption would save little, and the cache cost about 2.4 KiB
        // per connection (up to 256 sessions).
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        Ok(Arc::new(QuicServerConfig::try_from(cfg)?))
    }

    /// The client side (a node dialling a peer, or a client dialling a node): presents our
    /// certificate and accepts only a *node* of our trust domain.
    pub fn client_config(&self) -> Result<Arc<QuicClientConfig>, TlsError> {
        let verifier = Arc::new(MeshServerVerifier {
            roots: self.roots.clone(),
            provider: provider(),
            trust_domain: self.identity.trust_domain.clone(),
            crls: self.crls.clone(),
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        cfg.enable_early_data = false;
        // Every handshake in full, as on the server side.
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(QuicClientConfig::try_from(cfg)?))
    }
}

fn ca_spiffe_domain(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|gn| match gn {
        x509_parser::extensions::GeneralName::URI(u) => u
            .strip_prefix("spiffe://")
            .filter(|td| !td.contains('/'))
            .map(str::to_owned),
        _ => None,
    })
}

/// The identity of the peer of an established connection.
///
/// The verifiers have already checked it during the handshake; this re-reads it for the
/// stream layer, which enforces roles.
pub fn peer_identity(conn: &quinn::Connection) -> Result<Identity, IdentityError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(IdentityError::Missing)?;
    let leaf = certs.first().ok_or(IdentityError::Missing)?;
    Identity::from_cert_der(leaf)
}

fn identity_error(e: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

fn check_domain(id: &Identity, trust_domain: &str) -> Result<(), rustls::Error> {
    if id.trust_domain == trust_domain {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }
}

/// Checks a node's server certificate: chain to the mesh CA, server-auth usage, and a single
/// SPIFFE id naming a node of our trust domain. The host name is deliberately not checked.
#[derive(Debug)]
struct MeshServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    trust_domain: String,
    crls: Arc<Vec<CertificateRevocationListDer<'static>>>,
}

/// A chain check with CRLs (leaf revocation only). rustls's public helpers take no revocation
/// options, so this calls webpki, which rustls itself uses underneath.
fn verify_chain(
    roots: &RootCertStore,
    crls: &[CertificateRevocationListDer<'_>],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<(), rustls::Error> {
    let crls: Vec<webpki::CertRevocationList<'_>> = crls
        .iter()
        .map(|d| webpki::BorrowedCertRevocationList::from_der(d.as_ref()).map(Into::into))
        .collect::<Result<_, _>>()
        .map_err(webpki_error)?;
    let refs: Vec<&webpki::CertRevocationList<'_>> = crls.iter().collect();
    let revocation = webpki::RevocationOptionsBuilder::new(&refs)
        .map_err(|_| rustls::Error::General("no CRLs".into()))?
        .with_depth(webpki::RevocationCheckDepth::EndEntity)
        .build();
    let ee = webpki::EndEntityCert::try_from(end_entity).map_err(webpki_error)?;
    ee.verify_for_usage(
        provider().signature_verification_algorithms.all,
        &roots.roots,
        intermediates,
        now,
        usage,
        Some(revocation),
        None,
    )
    .map(|_| ())
    .map_err(webpki_error)
}

fn webpki_error(e: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as C;
    rustls::Error::InvalidCertificate(match e {
        webpki::Error::CertRevoked => C::Revoked,
        webpki::Error::CertExpired { .. } => C::Expired,
        webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
        other => C::Other(rustls::OtherError(Arc::new(other))),
    })
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.crls.is_empty() {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                &self.roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        } else {
            verify_chain(
                &self.roots,
                &self.crls,
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
            )?;
        }
        let id = Identity::from_cert_der(end_entity).map_err(identity_error)?;
        check_domain(&id, &self.trust_domain)?;
        if id.role != Role::Node {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC is TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks a dialler's client certificate: webpki chain validation, then a single SPIFFE id
/// in our trust domain. Roles are enforced per stream, after the handshake.
#[derive(Debug)]
struct MeshClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let id = Identity::from_cert_der(end_entity).map_err(identity_error)?;
        check_domain(&id, &self.trust_domain)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
