//! SRV lookups with hickory-resolver: the records, then their targets' addresses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use super::name::SrvName;
use super::order::Endpoint;
use super::settings::{DnsConfig, DnsTransport};

/// Errors setting discovery up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// `dns.servers` is empty and the system's resolver configuration is unusable.
    #[error("cannot read the system's DNS configuration (/etc/resolv.conf): {0}; set dns.servers")]
    SystemConfig(String),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// hickory refused the configuration.
    #[error("building the DNS resolver: {0}")]
    Build(String),
}

/// Why one lookup gave nothing usable. Each says what the name server did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// The name does not exist.
    #[error("NXDOMAIN: the name does not exist (is the zone published, and the name spelled right?)")]
    NxDomain,
    /// The name exists but has no SRV records.
    #[error("the name has no SRV records")]
    NoRecords,
    /// The server answered with an error code.
    #[error("the server answered {0}")]
    Rcode(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// SRV records were found but none of their targets has an address.
    #[error("no SRV target has an address: {0}")]
    NoAddresses(String),
    /// Anything else (network errors, malformed answers).
    #[error("{0}")]
    Other(String),
}

/// A usable SRV answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Every address of every target.
    pub endpoints: Vec<Endpoint>,
    /// How long the records may be used (the smallest TTL among them).
    pub ttl: Duration,
    /// Targets that had no address, with why (the others are still used).
    pub unresolved: Vec<String>,
}

/// Resolves SRV names through the configured name servers (or the system's).
#[derive(Clone)]
pub struct SrvResolver {
    resolver: TokioResolver,
    servers: String,
    timeout: Duration,
}

impl std::fmt::Debug for SrvResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrvResolver").field("servers", &self.servers).finish()
    }
}

impl SrvResolver {
    /// A resolver for `settings`.
    pub fn new(settings: &DnsConfig) -> Result<Self, DiscoveryError> {
        settings.validate()?;
        let servers = settings.name_servers()?;
        let (config, mut opts) = if servers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| DiscoveryError::SystemConfig(e.to_string()))?
        } else {
            let mut list = Vec::new();
            for ns in &servers {
                let mut conns = Vec::new();
                if ns.transport != DnsTransport::Tcp {
                    let mut c = ConnectionConfig::udp();
                    c.port = ns.addr.port();
                    conns.push(c);
                }
                if ns.transport != DnsTransport::Udp {
                    let mut c = ConnectionConfig::tcp();
                    c.port = ns.addr.port();
                    conns.push(c);
                }
                list.push(NameServerConfig::new(ns.addr.ip(), true, conns));
            }
            (ResolverConfig::from_name_servers(list), ResolverOpts::default())
        };
        let described = if servers.is_empty() {
            let mut s: Vec<String> = config.name_servers().iter().map(|n| n.ip.to_string()).collect();
            if s.is_empty() {
                return Err(DiscoveryError::SystemConfig("it names no name server".into()));
            }
            s.insert(0, "system:".into());
            s.join(" ")
        } else {
            servers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        };
        opts.timeout = settings.timeout;
        // One try per lookup: the discovery loop retries with its own backoff and keeps the last
        // good answer meanwhile, which hickory's retries would only delay.
        opts.attempts = 1;
        // The cache must not outlive our refresh bounds, or a refresh would re-read it.
        opts.positive_max_ttl = Some(settings.max_refresh);
        opts.negative_max_ttl = Some(settings.min_refresh);
        opts.try_tcp_on_error = true;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| DiscoveryError::Build(e.to_string()))?;
        Ok(SrvResolver {
            resolver,
            servers: described,
            timeout: settings.timeout,
        })
    }

    /// The name servers asked, for log lines.
    pub fn servers(&self) -> &str {
        &self.servers
    }

    /// Looks `name` up: its SRV records, then each target's addresses (from the answer's
    /// additional section when present, else by A/AAAA lookups).
    pub async fn lookup(&self, name: &SrvName) -> Result<Answer, LookupError> {
        let started = Instant::now();
        let lookup = self
            .resolver
            .srv_lookup(name.as_str())
            .await
            .map_err(|e| self.describe(e))?;
        let mut ttl = lookup.valid_until().saturating_duration_since(started);
        let mut glue: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for r in lookup.additionals() {
            if let Some(ip) = r.data.ip_addr() {
                glue.entry(r.name.to_lowercase().to_ascii()).or_default().push(ip);
                ttl = ttl.min(Duration::from_secs(u64::from(r.ttl)));
            }
        }
        let mut endpoints = Vec::new();
        let mut unresolved = Vec::new();
        for r in lookup.answers() {
            let RData::SRV(srv) = &r.data else { continue };
            // RFC 2782: a target of "." means the service is decidedly not available there.
            if srv.target.is_root() {
                continue;
            }
            let target = srv.target.to_ascii();
            if srv.port == 0 {
                unresolved.push(format!("{target}: port 0 is not a port"));
                continue;
            }
            let ips = match glue.get(&srv.target.to_lowercase().to_ascii()) {
                Some(ips) => ips.clone(),
                None => match self.resolver.lookup_ip(srv.target.clone()).await {
                    Ok(found) => {
                        ttl = ttl.min(found.valid_until().saturating_duration_since(started));
                        found.iter().collect()
                    }
                    Err(e) => {
                        unresolved.push(format!("{target}: {}", self.describe(e)));
                        continue;
                    }
                },
            };
            for ip in ips {
                endpoints.push(Endpoint {
                    priority: srv.priority,
                    weight: srv.weight,
                    target: target.clone(),
                    addr: SocketAddr::new(ip, srv.port),
                });
            }
        }
        if endpoints.is_empty() && !unresolved.is_empty() {
            return Err(LookupError::NoAddresses(unresolved.join("; ")));
        }
        Ok(Answer {
            endpoints,
            ttl,
            unresolved,
        })
    }

    fn describe(&self, e: NetError) -> LookupError {
        match e {
            NetError::Dns(DnsError::NoRecordsFound(nr)) if nr.response_code == ResponseCode::NXDomain => {
                LookupError::NxDomain
            }
            NetError::Dns(DnsError::NoRecordsFound(_)) => LookupError::NoRecords,
            NetError::Dns(DnsError::ResponseCode(code)) => LookupError::Rcode(rcode_name(code)),
            NetError::Timeout => LookupError::Timeout(self.timeout),
            other => LookupError::Other(other.to_string()),
        }
    }
}

fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::Refused => "REFUSED (is this server authoritative for the zone, or open to us?)".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        other => other.to_string(),
    }
}
