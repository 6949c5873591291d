//! SPIFFE-style identities: `spiffe://<trust-domain>/<role>/<name>`.

use std::fmt;
use std::str::FromStr;

/// What a certificate holder may do in the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// A mesh node: may open control streams, relay, and serve.
    Node,
    /// A client: may only open service streams.
    Client,
}

impl Role {
    /// The path segment used for the role in a SPIFFE id.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verified mesh identity, as carried in a certificate's URI SAN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The mesh's trust domain, e.g. `mesh.example`.
    pub trust_domain: String,
    /// Node or client.
    pub role: Role,
    /// The node or client name, `[a-z0-9-]{1,63}`.
    pub name: String,
}

/// Why a string or certificate does not name a valid identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The name does not match `[a-z0-9-]{1,63}`.
    #[error("invalid name {0:?}: use 1 to 63 characters from a-z, 0-9 and '-'")]
    InvalidName(String),
    /// The trust domain is not a plausible DNS-like name.
    #[error("invalid trust domain {0:?}: use lowercase letters, digits, '-' and '.', at most 253 characters")]
    InvalidTrustDomain(String),
    /// The URI is not of the form `spiffe://<td>/<node|client>/<name>`.
    #[error("invalid identity URI {0:?}: expected spiffe://<trust-domain>/<node|client>/<name>")]
    InvalidUri(String),
    /// The certificate carries no `spiffe://` URI SAN.
    #[error("certificate has no spiffe:// URI SAN; issue it with `quicmesh certs`")]
    Missing,
    /// The certificate carries more than one `spiffe://` URI SAN, which would make its identity ambiguous.
    #[error("certificate has {0} spiffe:// URI SANs; exactly one is allowed")]
    Ambiguous(usize),
    /// The certificate could not be parsed as X.509.
    #[error("certificate is not valid X.509: {0}")]
    Unparsable(String),
}

/// Checks a node or client name: 1 to 63 characters from `a-z`, `0-9` and `-`.
pub fn validate_name(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(IdentityError::InvalidName(name.to_owned()))
    }
}

/// Checks a trust domain: lowercase DNS-like labels separated by dots.
pub fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    let ok = !td.is_empty()
        && td.len() <= 253
        && td.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(IdentityError::InvalidTrustDomain(td.to_owned()))
    }
}

impl Identity {
    /// Builds an identity after validating its parts.
    pub fn new(trust_domain: &str, role: Role, name: &str) -> Result<Self, IdentityError> {
        validate_trust_domain(trust_domain)?;
        validate_name(name)?;
        Ok(Identity {
            trust_domain: trust_domain.to_owned(),
            role,
            name: name.to_owned(),
        })
    }

    /// The identity as a SPIFFE URI.
    pub fn uri(&self) -> String {
        self.to_string()
    }

    /// Extracts the single SPIFFE identity from a DER certificate.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
        let uris: Vec<&str> = san
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|gn| match gn {
                        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                        _ => None,
                    })
                    .filter(|u| u.starts_with("spiffe://"))
                    .collect()
            })
            .unwrap_or_default();
        match uris.as_slice() {
            [] => Err(IdentityError::Missing),
            [one] => one.parse(),
            many => Err(IdentityError::Ambiguous(many.len())),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/{}/{}", self.trust_domain, self.role, self.name)
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdentityError::InvalidUri(s.to_owned());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(td), Some(role), Some(name), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let role = match role {
            "node" => Role::Node,
            "client" => Role::Client,
            _ => return Err(bad()),
        };
        Identity::new(td, role, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_uri() {
        let id = Identity::new("mesh.example", Role::Node, "node-1").unwrap();
        assert_eq!(id.uri(), "spiffe://mesh.example/node/node-1");
        assert_eq!(id.uri().parse::<Identity>().unwrap(), id);
    }

    #[test]
    fn rejects_bad_names_and_uris() {
        for n in ["", "A", "a_b", "a.b", &"x".repeat(64)] {
            assert!(validate_name(n).is_err(), "{n:?} accepted");
        }
        assert!(validate_name(&"x".repeat(63)).is_ok());
        for u in [
            "spiffe://d/node",
            "spiffe://d/admin/x",
            "spiffe://d/node/x/y",
            "http://d/node/x",
            "spiffe:///node/x",
            "spiffe://D/node/x",
        ] {
            assert!(u.parse::<Identity>().is_err(), "{u:?} accepted");
        }
    }
}
