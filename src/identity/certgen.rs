//! The mesh's own certificate authority: `quicmesh certs init|node|client`.
//!
//! ECDSA P-256 everywhere: small certificates and the fastest handshakes rustls offers.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};

use super::spiffe::{validate_trust_domain, Identity, IdentityError, Role};

/// Errors of certificate generation and of writing certificate files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A name or trust domain was rejected.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A file exists and `--force` was not given.
    #[error("{0} already exists; pass --force to overwrite it")]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file in question.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The CA files could not be used to sign.
    #[error("CA in {path} is unusable: {reason}")]
    BadCa {
        /// The CA certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rcgen refused the parameters.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A certificate to revoke could not be read.
    #[error("certificate to revoke: {0}")]
    BadCert(String),
    /// A validity period of zero days was asked for.
    #[error("--days must be at least 1")]
    ZeroDays,
}

/// Where a CA's files live inside a directory: `ca.crt` and `ca.key`.
#[derive(Debug, Clone)]
pub struct CaFiles {
    /// PEM certificate, safe to distribute.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key, mode 0600; never distribute.
    pub key: PathBuf,
}

impl CaFiles {
    /// The standard file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        CaFiles {
            cert: dir.join("ca.crt"),
            key: dir.join("ca.key"),
        }
    }

    /// The CA named by `path`: the CA certificate itself (an existing file, or a name ending
    /// in `.crt` or `.pem`) with its key beside it (`certs/ca.crt` and `certs/ca.key`), or else
    /// a directory holding `ca.crt` and `ca.key` (so a missing directory is reported as such).
    pub fn locate(path: &Path) -> Self {
        let cert_file = path.is_file() || path.extension().is_some_and(|e| e == "crt" || e == "pem");
        if !cert_file {
            return CaFiles::in_dir(path);
        }
        CaFiles {
            cert: path.to_path_buf(),
            key: path.with_extension("key"),
        }
    }

    /// The CA certificate named by `path`: the file itself, or `ca.crt` inside a directory.
    pub fn cert_at(path: &Path) -> PathBuf {
        CaFiles::locate(path).cert
    }
}

/// Where a leaf certificate's files live: `<role>-<name>.crt` and `.key`.
#[derive(Debug, Clone)]
pub struct LeafFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key, mode 0600.
    pub key: PathBuf,
}

impl LeafFiles {
    /// The standard file names for `role`/`name` inside `dir`.
    pub fn in_dir(dir: &Path, role: Role, name: &str) -> Self {
        LeafFiles {
            cert: dir.join(format!("{role}-{name}.crt")),
            key: dir.join(format!("{role}-{name}.key")),
        }
    }
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// Node or client.
    pub role: Role,
    /// The holder's name, `[a-z0-9-]{1,63}`.
    pub name: String,
    /// DNS SANs (nodes only; default `localhost`).
    pub dns: Vec<String>,
    /// IP SANs (nodes only; default `127.0.0.1`).
    pub ips: Vec<IpAddr>,
    /// Validity in days from now (default 365).
    pub days: u32,
    /// An explicit validity window `(not_before, not_after)` instead of `days` (default
    /// none): for short-lived certificates, and for tests of expired or future ones.
    pub window: Option<(std::time::SystemTime, std::time::SystemTime)>,
}

impl IssueOptions {
    /// Defaults for `role` and `name`: a year's validity; nodes get `localhost` and `127.0.0.1`.
    pub fn new(role: Role, name: &str) -> Self {
        let (dns, ips) = match role {
            Role::Node => (vec!["localhost".to_owned()], vec![IpAddr::from([127, 0, 0, 1])]),
            Role::Client => (Vec::new(), Vec::new()),
        };
        IssueOptions {
            role,
            name: name.to_owned(),
            dns,
            ips,
            days: 365,
            window: None,
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM PKCS#8 private key.
    pub key_pem: String,
}

/// A mesh certificate authority held in memory.
pub struct MeshCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn validity(days: u32) -> Result<(time::OffsetDateTime, time::OffsetDateTime), CertError> {
    if days == 0 {
        return Err(CertError::ZeroDays);
    }
    // Back-date by an hour so that small clock skew between hosts does not reject fresh certificates.
    let now = time::OffsetDateTime::now_utc();
    Ok((
        now - time::Duration::hours(1),
        now + time::Duration::days(i64::from(days)),
    ))
}

impl MeshCa {
    /// Makes a new CA for `trust_domain`, valid for `days`.
    ///
    /// The CA certificate carries the URI SAN `spiffe://<trust-domain>`, which is how leaf
    /// issuing and peers learn the trust domain, and is constrained to sign leaves only.
    pub fn generate(trust_domain: &str, days: u32) -> Result<Self, CertError> {
        validate_trust_domain(trust_domain)?;
        let (not_before, not_after) = validity(days)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("quicmesh CA {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&key)?;
        Ok(MeshCa {
            trust_domain: trust_domain.to_owned(),
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// Loads a CA made by [`MeshCa::generate`] (or `quicmesh certs init`) from its PEM files.
    pub fn load(files: &CaFiles) -> Result<Self, CertError> {
        let cert_pem = read_to_string(&files.cert)?;
        let key_pem = read_to_string(&files.key)?;
        let bad = |reason: String| CertError::BadCa {
            path: files.cert.clone(),
            reason,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(format!("ca.key: {e}")))?;
        let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .ok_or_else(|| bad("no CERTIFICATE block".into()))?
            .map_err(|e| bad(e.to_string()))?;
        let trust_domain = ca_trust_domain(&der).map_err(bad)?;
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| bad(e.to_string()))?;
        Ok(MeshCa {
            trust_domain,
            issuer,
            cert_pem,
        })
    }

    /// The trust domain this CA issues identities in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a node or client certificate.
    ///
    /// Nodes get both server and client auth (they accept and dial); clients get client auth
    /// only, so a client certificate can never pass as a node's server certificate.
    pub fn issue(&self, opts: &IssueOptions) -> Result<IssuedCert, CertError> {
        let id = Identity::new(&self.trust_domain, opts.role, &opts.name)?;
        let (not_before, not_after) = match opts.window {
            Some((from, to)) => (from.into(), to.into()),
            None => validity(opts.days)?,
        };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{} {}", opts.role, opts.name));
        params.distinguished_name = dn;
        params.not_before = not_before;
        params.not_after = not_after;
        // basicConstraints CA:FALSE and a subject key identifier (rcgen writes both for an
        // explicit non-CA), plus the authority key identifier: what chain building needs to
        // pick the right issuer while two CAs are trusted during a rotation.
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match opts.role {
            Role::Node => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let mut sans = vec![SanType::URI(id.uri().try_into()?)];
        if opts.role == Role::Node {
            for d in &opts.dns {
                sans.push(SanType::DnsName(d.clone().try_into()?));
            }
            sans.extend(opts.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        }
        params.subject_alt_names = sans;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Makes a certificate revocation list (PEM) naming the given certificates (PEM), valid
    /// for `days`, with reason keyCompromise. Nodes load it from `tls.crl` and refuse those
    /// certificates.
    pub fn revoke(&self, certs_pem: &[String], days: u32) -> Result<String, CertError> {
        self.revoke_for(certs_pem, days, RevokeReason::KeyCompromise)
    }

    /// [`MeshCa::revoke`] with the reason recorded for every certificate named.
    pub fn revoke_for(&self, certs_pem: &[String], days: u32, reason: RevokeReason) -> Result<String, CertError> {
        let (this_update, next_update) = validity(days)?;
        let mut revoked = Vec::new();
        for pem in certs_pem {
            for der in rustls_pemfile::certs(&mut pem.as_bytes()) {
                let der = der.map_err(|e| CertError::BadCert(e.to_string()))?;
                let (_, cert) =
                    x509_parser::parse_x509_certificate(&der).map_err(|e| CertError::BadCert(e.to_string()))?;
                revoked.push(rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(cert.raw_serial()),
                    revocation_time: this_update,
                    reason_code: Some(reason.into()),
                    invalidity_date: None,
                });
            }
        }
        let crl_number = u64::try_from(next_update.unix_timestamp()).unwrap_or_default();
        let params = rcgen::CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: rcgen::SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Writes `ca.crt` and `ca.key` into `dir` (created if missing).
    pub fn write(&self, dir: &Path, force: bool) -> Result<CaFiles, CertError> {
        let files = CaFiles::in_dir(dir);
        write_pair(dir, (&files.cert, &self.cert_pem), (&files.key, &self.key_pem()), force)?;
        Ok(files)
    }
}

impl IssuedCert {
    /// Writes `<role>-<name>.crt` and `.key` into `dir` (created if missing).
    pub fn write(&self, dir: &Path, role: Role, name: &str, force: bool) -> Result<LeafFiles, CertError> {
        let files = LeafFiles::in_dir(dir, role, name);
        write_pair(dir, (&files.cert, &self.cert_pem), (&files.key, &self.key_pem), force)?;
        Ok(files)
    }
}

/// Loads the CA in `ca_dir`, issues a leaf, and writes it into `out_dir`.
pub fn issue_leaf(ca_dir: &Path, out_dir: &Path, opts: &IssueOptions, force: bool) -> Result<LeafFiles, CertError> {
    let ca = MeshCa::load(&CaFiles::locate(ca_dir))?;
    // Check before generating so that a refusal costs nothing and writes nothing.
    let files = LeafFiles::in_dir(out_dir, opts.role, &opts.name);
    refuse_existing(&[&files.cert, &files.key], force)?;
    ca.issue(opts)?.write(out_dir, opts.role, &opts.name, force)
}

fn ca_trust_domain(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    if !cert.is_ca() {
        return Err("not a CA certificate".into());
    }
    let san = cert.subject_alternative_name().map_err(|e| e.to_string())?;
    san.into_iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .find_map(|gn| match gn {
            x509_parser::extensions::GeneralName::URI(u) => u
                .strip_prefix("spiffe://")
                .filter(|td| !td.contains('/'))
                .map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| "no spiffe://<trust-domain> URI SAN (was it made by `quicmesh certs init`?)".into())
}

fn read_to_string(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

fn refuse_existing(paths: &[&PathBuf], force: bool) -> Result<(), CertError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(CertError::Exists((*p).clone())),
        None => Ok(()),
    }
}

fn write_pair(dir: &Path, cert: (&PathBuf, &str), key: (&PathBuf, &str), force: bool) -> Result<(), CertError> {
    refuse_existing(&[cert.0, key.0], force)?;
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;
    write_file(key.0, key.1, 0o600)?;
    write_file(cert.0, cert.1, 0o644)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    // `mode` only applies on creation; an overwritten file keeps its old bits otherwise.
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)
}

/// Why certificates are revoked (RFC 5280 CRLReason), as recorded in the CRL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevokeReason {
    /// No reason given.
    Unspecified,
    /// The private key was (or may have been) stolen.
    KeyCompromise,
    /// The holder's name or role changed.
    AffiliationChanged,
    /// A new certificate replaces it.
    Superseded,
    /// The node or client was decommissioned.
    CessationOfOperation,
}

impl From<RevokeReason> for rcgen::RevocationReason {
    fn from(r: RevokeReason) -> Self {
        match r {
            RevokeReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevokeReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevokeReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevokeReason::Superseded => rcgen::RevocationReason::Superseded,
            RevokeReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_issue_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::generate("mesh.test", 30).unwrap();
        let files = ca.write(dir.path(), false).unwrap();
        let mode = fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(ca.write(dir.path(), false), Err(CertError::Exists(_))));

        let opts = IssueOptions::new(Role::Node, "a");
        let leaf = issue_leaf(dir.path(), dir.path(), &opts, false).unwrap();
        let pem = fs::read_to_string(&leaf.cert).unwrap();
        let der = rustls_pemfile::certs(&mut pem.as_bytes()).next().unwrap().unwrap();
        let id = Identity::from_cert_der(&der).unwrap();
        assert_eq!(id.uri(), "spiffe://mesh.test/node/a");
        assert!(matches!(
            issue_leaf(dir.path(), dir.path(), &opts, false),
            Err(CertError::Exists(_))
        ));
        assert!(issue_leaf(dir.path(), dir.path(), &opts, true).is_ok());
        let bad = IssueOptions::new(Role::Client, "Bad_Name");
        assert!(matches!(
            issue_leaf(dir.path(), dir.path(), &bad, false),
            Err(CertError::Identity(IdentityError::InvalidName(_)))
        ));
    }

    #[test]
    fn leaves_say_they_are_no_ca_and_carry_key_identifiers_and_crls_their_reason() {
        use x509_parser::extensions::ParsedExtension;
        let ca = MeshCa::generate("mesh.test", 30).unwrap();
        let leaf = ca.issue(&IssueOptions::new(Role::Node, "n1")).unwrap();
        let der = rustls_pemfile::certs(&mut leaf.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let bc = cert.basic_constraints().unwrap().expect("basicConstraints present");
        assert!(bc.critical && !bc.value.ca, "{bc:?}");
        let exts: Vec<_> = cert.extensions().iter().map(|e| e.parsed_extension()).collect();
        assert!(exts
            .iter()
            .any(|e| matches!(e, ParsedExtension::SubjectKeyIdentifier(_))));
        assert!(exts
            .iter()
            .any(|e| matches!(e, ParsedExtension::AuthorityKeyIdentifier(_))));

        let crl_pem = ca
            .revoke_for(std::slice::from_ref(&leaf.cert_pem), 30, RevokeReason::Superseded)
            .unwrap();
        let crl_der = rustls_pemfile::crls(&mut crl_pem.as_bytes()).next().unwrap().unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&crl_der).unwrap();
        let reasons: Vec<_> = crl
            .iter_revoked_certificates()
            .map(|r| r.reason_code().map(|c| c.1))
            .collect();
        assert_eq!(reasons, vec![Some(x509_parser::x509::ReasonCode::Superseded)]);
    }
}
