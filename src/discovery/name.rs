//! The `srv:` discovery names of the configuration.

use std::fmt;

/// A DNS SRV name to discover nodes by, written `srv:_quicmesh._udp.mesh.example` in
/// configuration. A name without a trailing dot may be completed by the resolver's search
/// domains (as in Kubernetes); one with a trailing dot is looked up as written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SrvName(String);

/// Why a discovery string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SrvNameError {
    /// The string does not start with `srv:`.
    #[error("{0:?}: only SRV discovery is supported; write srv:<name>, e.g. srv:_quicmesh._udp.mesh.example")]
    Scheme(String),
    /// The name after `srv:` is empty or not a valid DNS name.
    #[error("{input:?}: {why}")]
    Name {
        /// The string as given.
        input: String,
        /// What is wrong with it.
        why: String,
    },
}

impl SrvName {
    /// Parses `srv:<dns name>`.
    pub fn parse(s: &str) -> Result<Self, SrvNameError> {
        let Some(name) = s.strip_prefix("srv:") else {
            return Err(SrvNameError::Scheme(s.to_owned()));
        };
        let bad = |why: String| SrvNameError::Name {
            input: s.to_owned(),
            why,
        };
        let body = name.strip_suffix('.').unwrap_or(name);
        if body.is_empty() {
            return Err(bad("the name after srv: is empty".into()));
        }
        if name.len() > 253 {
            return Err(bad(format!(
                "the name is {} characters long; DNS allows 253",
                name.len()
            )));
        }
        for label in body.split('.') {
            if label.is_empty() {
                return Err(bad("the name has an empty label (two dots in a row)".into()));
            }
            if label.len() > 63 {
                return Err(bad(format!("label {label:?} is longer than 63 characters")));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            {
                return Err(bad(format!(
                    "label {label:?} has {c:?}; use letters, digits, '-' and '_'"
                )));
            }
        }
        Ok(SrvName(name.to_owned()))
    }

    /// The DNS name, without the `srv:` prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SrvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SrvName {
    type Err = SrvNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SrvName::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_parse() {
        for s in [
            "srv:_quicmesh._udp.mesh.example",
            "srv:_quicmesh._udp.mesh.example.",
            "srv:_quicmesh._udp.quicmesh.default.svc.cluster.local",
            "srv:mesh",
        ] {
            let n = SrvName::parse(s).unwrap();
            assert_eq!(format!("srv:{n}"), s);
        }
    }

    #[test]
    fn bad_names_say_why() {
        for (s, why) in [
            ("dns:mesh.example", "only SRV"),
            ("_quicmesh._udp.mesh", "only SRV"),
            ("srv:", "empty"),
            ("srv:.", "empty"),
            ("srv:a..b", "empty label"),
            ("srv:a b.c", "' '"),
            ("srv:mesh.example:53", "':'"),
        ] {
            let err = SrvName::parse(s).unwrap_err().to_string();
            assert!(err.contains(why), "{s}: {err}");
        }
        let long = format!("srv:{}.x", "a".repeat(64));
        assert!(SrvName::parse(&long).unwrap_err().to_string().contains("63"));
    }
}
