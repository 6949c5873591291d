//! `[dns]`: which name servers discovery asks and how often.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff::BackoffPolicy;
use crate::config::{duration_str, ConfigError};

/// DNS settings for `discovery` (`[dns]` in node and client configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers to ask, each `ip`, `ip:port`, `[v6]:port`, optionally prefixed `udp:` or
    /// `tcp:` to use only that transport (else both: UDP, and TCP for truncated answers).
    /// Default: none, meaning the system's (`/etc/resolv.conf`).
    pub servers: Vec<String>,
    /// How long to wait for one answer. Default `"2s"`.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Shortest wait between two lookups of a name, whatever the records' TTL. Default `"1s"`.
    #[serde(with = "duration_str")]
    pub min_refresh: Duration,
    /// Longest wait between two lookups of a name, whatever the records' TTL. Default `"5m"`.
    #[serde(with = "duration_str")]
    pub max_refresh: Duration,
    /// First retry after a failed lookup (doubling, with jitter, up to `retry_max`). Default `"500ms"`.
    #[serde(with = "duration_str")]
    pub retry_initial: Duration,
    /// Longest wait between retries of a failing lookup. Default `"30s"`.
    #[serde(with = "duration_str")]
    pub retry_max: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            timeout: Duration::from_secs(2),
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(300),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// Transports to reach one name server over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsTransport {
    /// UDP, with TCP for truncated answers.
    Both,
    /// UDP only.
    Udp,
    /// TCP only.
    Tcp,
}

/// A parsed `dns.servers` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameServer {
    /// Address and port (53 unless given).
    pub addr: SocketAddr,
    /// Transports.
    pub transport: DnsTransport,
}

impl std::fmt::Display for NameServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.transport {
            DnsTransport::Both => write!(f, "{}", self.addr),
            DnsTransport::Udp => write!(f, "udp:{}", self.addr),
            DnsTransport::Tcp => write!(f, "tcp:{}", self.addr),
        }
    }
}

impl NameServer {
    /// Parses a `dns.servers` entry.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (transport, rest) = if let Some(r) = s.strip_prefix("udp:") {
            (DnsTransport::Udp, r)
        } else if let Some(r) = s.strip_prefix("tcp:") {
            (DnsTransport::Tcp, r)
        } else {
            (DnsTransport::Both, s)
        };
        let addr = if let Ok(a) = rest.parse::<SocketAddr>() {
            a
        } else if let Ok(ip) = rest.parse::<IpAddr>() {
            SocketAddr::new(ip, 53)
        } else {
            return Err(format!(
                "{s:?} is not an IP address with an optional port (e.g. 10.0.0.2, 10.0.0.2:5353, [fd00::2]:53, tcp:10.0.0.2)"
            ));
        };
        if addr.port() == 0 {
            return Err(format!("{s:?}: port 0 is not a name server port"));
        }
        Ok(NameServer { addr, transport })
    }
}

impl DnsConfig {
    /// The parsed `servers`.
    pub fn name_servers(&self) -> Result<Vec<NameServer>, ConfigError> {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                NameServer::parse(s).map_err(|reason| ConfigError::Invalid {
                    key: format!("dns.servers[{i}]"),
                    reason,
                })
            })
            .collect()
    }

    /// Checks every value; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| ConfigError::Invalid {
            key: format!("dns.{key}"),
            reason: reason.to_owned(),
        };
        self.name_servers()?;
        if self.timeout < Duration::from_millis(10) {
            return Err(bad("timeout", "must be at least 10ms"));
        }
        if self.min_refresh < Duration::from_millis(100) {
            return Err(bad("min_refresh", "must be at least 100ms, to spare the name servers"));
        }
        if self.max_refresh < self.min_refresh {
            return Err(bad("max_refresh", "must be at least min_refresh"));
        }
        if self.retry_initial < Duration::from_millis(10) {
            return Err(bad("retry_initial", "must be at least 10ms"));
        }
        if self.retry_max < self.retry_initial {
            return Err(bad("retry_max", "must be at least retry_initial"));
        }
        Ok(())
    }

    /// The backoff between retries of a failing lookup.
    pub fn retry_policy(&self) -> BackoffPolicy {
        BackoffPolicy {
            initial: self.retry_initial,
            max: self.retry_max,
            stable_after: Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse() {
        let ns = |s| NameServer::parse(s).unwrap();
        assert_eq!(ns("10.0.0.2").addr, "10.0.0.2:53".parse().unwrap());
        assert_eq!(ns("127.0.0.1:5353").transport, DnsTransport::Both);
        assert_eq!(ns("tcp:[::1]:53").transport, DnsTransport::Tcp);
        assert_eq!(ns("udp:::1").addr, "[::1]:53".parse().unwrap());
        assert_eq!(ns("tcp:10.0.0.2:54").to_string(), "tcp:10.0.0.2:54");
        for bad in ["dns.example", "10.0.0.2:0", "quic:10.0.0.2", ""] {
            assert!(NameServer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bounds_are_checked() {
        let mut s = DnsConfig {
            max_refresh: Duration::from_millis(500),
            ..DnsConfig::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("dns.max_refresh"));
        s = DnsConfig {
            servers: vec!["nope".into()],
            ..DnsConfig::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("dns.servers[0]"));
        assert!(DnsConfig::default().validate().is_ok());
    }
}
