//! Node and client configuration: TOML with documented defaults, every key checked.
//!
//! Unknown keys are errors (serde `deny_unknown_fields`), and [`NodeConfig::validate`]
//! names the offending key in every error. Durations are written as `"250ms"`, `"5s"`,
//! `"2m"` or `"1h"`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff::BackoffPolicy;
use crate::discovery::SrvName;
use crate::identity::{validate_name, TlsPaths};

/// Configuration errors; each names the key or file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key, missing key or wrong type (the message names it).
    #[error("config {origin}: {message}")]
    Parse {
        /// File name or "flags".
        origin: String,
        /// The parser's message, with the key and position.
        message: String,
    },
    /// A required key is absent.
    #[error("no `{key}` given ({origin}): {hint}")]
    Missing {
        /// File name or "flags".
        origin: String,
        /// Dotted key path, e.g. `tls.cert`.
        key: String,
        /// Where to set it: the file's key and the command-line flag.
        hint: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key path, e.g. `transport.keepalive`.
        key: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// The keys a node or client cannot run without, with the flag that sets each.
const REQUIRED_TLS: [(&str, &str); 3] = [("ca", "--ca"), ("cert", "--cert"), ("key", "--cert-key")];

/// Checks that `table` has the keys serde would only call "missing field", and says where
/// each is set: serde knows neither the file's layout nor the flags.
fn require(table: &toml::Table, origin: &str, name: bool) -> Result<(), ConfigError> {
    let missing = |key: &str, hint: String| ConfigError::Missing {
        origin: origin.to_owned(),
        key: key.to_owned(),
        hint,
    };
    if name && !table.contains_key("name") {
        return Err(missing(
            "name",
            "set `name = \"n1\"` in the config file or pass --name n1 (it must match the node's certificate)".into(),
        ));
    }
    let tls = table.get("tls").and_then(|t| t.as_table());
    let holder = if name { "node-n1" } else { "client-cli" };
    for (key, flag) in REQUIRED_TLS {
        if !tls.is_some_and(|t| t.contains_key(key)) {
            let example = match key {
                "ca" => "certs/ca.crt".to_owned(),
                "cert" => format!("certs/{holder}.crt"),
                _ => format!("certs/{holder}.key"),
            };
            return Err(missing(
                &format!("tls.{key}"),
                if name {
                    format!("set `{key} = \"{example}\"` under [tls] in the config file or pass {flag} {example}")
                } else {
                    // A client's file is read whole before its flags apply.
                    format!("set `{key} = \"{example}\"` under [tls] in the client config file, or leave out --client-config and pass --ca, --cert and --cert-key")
                },
            ));
        }
    }
    Ok(())
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"` (also `"1.5s"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} has no unit; write e.g. \"500ms\", \"5s\", \"2m\""))?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a number followed by a unit"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) || ms == 0 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

pub(crate) mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Transport timing and socket settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// QUIC keepalive interval; at most a third of `idle_timeout`. Default `"5s"`.
    #[serde(with = "duration_str")]
    pub keepalive: Duration,
    /// A connection with no traffic for this long is dead. Default `"30s"`.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// Give up a handshake after this long. Default `"5s"`.
    #[serde(with = "duration_str")]
    pub connect_timeout: Duration,
    /// A stream whose header has not arrived after this long is reset. Default `"5s"`.
    #[serde(with = "duration_str")]
    pub header_timeout: Duration,
    /// Interval of RTT pings on each peer's control stream. Default `"1s"`.
    #[serde(with = "duration_str")]
    pub ping_interval: Duration,
    /// Receive and send buffer of the UDP socket, in bytes. The kernel's default (about
    /// 208 KiB) overflows at a few hundred MiB/s and every overflow is a lost packet to QUIC;
    /// Linux caps the size at `net.core.rmem_max`/`wmem_max` (a warning says so). 0 keeps the
    /// kernel's default. Default 2 MiB.
    pub udp_buffer: usize,
    /// The largest UDP payload sent and accepted, in bytes. Path MTU discovery (PLPMTUD)
    /// probes up from 1200 to this, and a path that carries less loses only the probes, so it
    /// is safe above the network's MTU; where the path carries it (loopback, jumbo frames),
    /// fewer and larger packets cost less per byte. At most 6550: quinn sends up to ten
    /// packets in one GSO batch, which UDP limits to 64 KiB. Default 6550.
    pub max_udp_payload: u16,
}

/// Default [`TransportConfig::udp_buffer`].
pub const DEFAULT_UDP_BUFFER: usize = 2 << 20;

/// The smallest UDP payload QUIC allows (RFC 9000 §14).
pub const MIN_UDP_PAYLOAD: u16 = 1200;
/// The largest [`TransportConfig::max_udp_payload`]: ten packets of it fit one GSO batch.
pub const MAX_UDP_PAYLOAD: u16 = 6550;

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            keepalive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(1),
            udp_buffer: DEFAULT_UDP_BUFFER,
            max_udp_payload: MAX_UDP_PAYLOAD,
        }
    }
}

impl TransportConfig {
    fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        for (key, d) in [
            ("keepalive", self.keepalive),
            ("idle_timeout", self.idle_timeout),
            ("connect_timeout", self.connect_timeout),
            ("header_timeout", self.header_timeout),
            ("ping_interval", self.ping_interval),
        ] {
            if d < Duration::from_millis(10) {
                return Err(invalid(format!("{prefix}.{key}"), "must be at least 10ms"));
            }
        }
        // QUIC idle timeouts are negotiated in milliseconds as a varint; keep well inside.
        if self.idle_timeout > Duration::from_secs(3600) {
            return Err(invalid(format!("{prefix}.idle_timeout"), "must be at most 1h"));
        }
        if self.udp_buffer > 256 << 20 {
            return Err(invalid(
                format!("{prefix}.udp_buffer"),
                "must be at most 268435456 (256 MiB)",
            ));
        }
        if !(MIN_UDP_PAYLOAD..=MAX_UDP_PAYLOAD).contains(&self.max_udp_payload) {
            return Err(invalid(
                format!("{prefix}.max_udp_payload"),
                format!(
                    "{} is outside {MIN_UDP_PAYLOAD}..={MAX_UDP_PAYLOAD}: QUIC needs 1200, and quinn batches up to ten packets per GSO send, which UDP limits to 64 KiB",
                    self.max_udp_payload
                ),
            ));
        }
        if self.keepalive * 3 > self.idle_timeout {
            return Err(invalid(
                format!("{prefix}.keepalive"),
                format!(
                    "{} is more than a third of idle_timeout {}; a lost keepalive or two would kill a healthy connection",
                    format_duration(self.keepalive),
                    format_duration(self.idle_timeout)
                ),
            ));
        }
        Ok(())
    }
}

/// Resource limits of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent bidirectional streams a peer node may open on one connection. A connection
    /// starts by allowing 16 and doubles the allowance as the peer uses it, up to this limit
    /// (quinn keeps state for every stream it allows). Default 1024.
    pub max_streams_per_connection: u32,
    /// Concurrent streams a client may open on its connection; raised on demand from 16 up to
    /// this, like `max_streams_per_connection`. Default 128.
    pub max_streams_per_client: u32,
    /// Concurrent service streams this node handles before answering Overloaded. Default 10000.
    pub max_inflight: usize,
    /// Largest stream header accepted, in bytes. Default 16384.
    pub max_header_bytes: usize,
    /// Concurrent connections (peers and clients) before new handshakes are refused. Default 10000.
    pub max_connections: usize,
    /// Connections to other nodes kept once the mesh is larger than this. A mesh of at most
    /// this many other nodes stays a full mesh; past it each node keeps between half this and
    /// this many, to members drawn at random (see docs/gossip.md, "The overlay"), and dials the
    /// nodes of a service it routes to on demand. Default 32.
    pub max_peer_connections: usize,
    /// Relay hops a service stream may take. Default 2: entry node → serving node, or entry
    /// node → a linked node → serving node when no server of the service is linked to the
    /// entry node (a node that serves the service always serves a relayed stream itself).
    pub hop_limit: u8,
    /// Handshakes in progress above which a new connection attempt must first prove it owns
    /// its source address (QUIC Retry, one extra round trip). Default 256; 0 validates every
    /// address.
    pub max_pending_handshakes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams_per_connection: 1024,
            max_streams_per_client: 128,
            max_inflight: 10_000,
            max_header_bytes: crate::protocol::DEFAULT_MAX_HEADER,
            max_connections: 10_000,
            max_peer_connections: 32,
            hop_limit: 2,
            max_pending_handshakes: 256,
        }
    }
}

impl Limits {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_streams_per_connection == 0 {
            return Err(invalid("limits.max_streams_per_connection", "must be at least 1"));
        }
        if self.max_streams_per_client == 0 {
            return Err(invalid("limits.max_streams_per_client", "must be at least 1"));
        }
        if self.max_inflight == 0 {
            return Err(invalid("limits.max_inflight", "must be at least 1"));
        }
        if !(256..=1 << 20).contains(&self.max_header_bytes) {
            return Err(invalid("limits.max_header_bytes", "must be between 256 and 1048576"));
        }
        if self.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if self.max_peer_connections < 4 {
            return Err(invalid(
                "limits.max_peer_connections",
                "must be at least 4 (a node in a large mesh keeps at least half of it, and fewer than 2 links each cannot keep the mesh connected)",
            ));
        }
        if self.hop_limit > 4 {
            return Err(invalid("limits.hop_limit", "must be at most 4"));
        }
        Ok(())
    }
}

/// Reconnect backoff for peer connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// Ceiling of the first wait. Default `"100ms"`.
    #[serde(with = "duration_str")]
    pub initial: Duration,
    /// Largest wait. Default `"30s"`.
    #[serde(with = "duration_str")]
    pub max: Duration,
    /// A connection up this long resets the backoff. Default `"10s"`.
    #[serde(with = "duration_str")]
    pub stable_after: Duration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        let p = BackoffPolicy::default();
        ReconnectConfig {
            initial: p.initial,
            max: p.max,
            stable_after: p.stable_after,
        }
    }
}

impl ReconnectConfig {
    /// As a backoff policy.
    pub fn policy(&self) -> BackoffPolicy {
        BackoffPolicy {
            initial: self.initial,
            max: self.max,
            stable_after: self.stable_after,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.initial < Duration::from_millis(1) {
            return Err(invalid("reconnect.initial", "must be at least 1ms"));
        }
        if self.max < self.initial {
            return Err(invalid("reconnect.max", "must be at least reconnect.initial"));
        }
        Ok(())
    }
}

/// A service this node serves from a local TCP backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// `host:port` of the TCP backend.
    pub backend: String,
    /// Identities allowed to call the service, e.g. `["spiffe://mesh.example/client/web"]`;
    /// others get `Unauthorized`. Default empty: every identity of the trust domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// An active health check of the backend (`docs/services.md`); default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<crate::health::CheckConfig>,
    /// Idle TCP connections to the backend kept open, so that a new stream does not wait
    /// for the connect (a warm pool; each is used by one stream only). Default 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub preconnect: u32,
    /// How long a preconnected connection may stay idle before it is closed and replaced;
    /// keep it below the backend's own idle timeout. Default `"20s"`.
    #[serde(
        default = "default_preconnect_idle",
        with = "duration_str",
        skip_serializing_if = "is_default_preconnect_idle"
    )]
    pub preconnect_idle: Duration,
}

impl ServiceConfig {
    /// A service spliced to the TCP backend at `backend` (`host:port`), open to the whole
    /// trust domain, unchecked, without a warm pool.
    pub fn tcp(backend: impl Into<String>) -> Self {
        ServiceConfig {
            backend: backend.into(),
            allow: Vec::new(),
            check: None,
            preconnect: 0,
            preconnect_idle: crate::warm::DEFAULT_IDLE,
        }
    }

    /// The warm pool this service asks for, if any.
    pub fn pool(&self) -> Option<crate::warm::PoolConfig> {
        (self.preconnect > 0).then_some(crate::warm::PoolConfig {
            size: self.preconnect as usize,
            idle: self.preconnect_idle,
        })
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_preconnect_idle() -> Duration {
    crate::warm::DEFAULT_IDLE
}

fn is_default_preconnect_idle(d: &Duration) -> bool {
    *d == crate::warm::DEFAULT_IDLE
}

/// Parses an allow-list of SPIFFE identities, naming the key and entry at fault.
pub(crate) fn parse_allow(key: &str, list: &[String]) -> Result<Vec<crate::identity::Identity>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse()
                .map_err(|e| invalid(format!("{key}[{i}]"), format!("{s:?}: {e}")))
        })
        .collect()
}

/// The configuration of one node (`quicmesh node --config node.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name; must match the name in its certificate.
    pub name: String,
    /// UDP address to listen on. Default `"0.0.0.0:7400"`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Certificate files.
    pub tls: TlsPaths,
    /// Static peers (seeds), `host:port`, dialled and kept connected; past
    /// `limits.max_peer_connections`, contact points only (dialled at start and when no peer
    /// link is left). Default none.
    #[serde(default, alias = "seeds")]
    pub peers: Vec<String>,
    /// SRV names to discover peers by, `"srv:_quicmesh._udp.mesh.example"`; merged with
    /// `peers`. Default none.
    #[serde(default)]
    pub discovery: Vec<String>,
    /// Name servers and refresh bounds for `discovery`.
    #[serde(default)]
    pub dns: crate::discovery::DnsConfig,
    /// Services served from local TCP backends, by name. Default none.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// Timeouts.
    #[serde(default)]
    pub transport: TransportConfig,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Peer reconnect backoff.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// Address other nodes should dial to reach this one, `host:port`. Default: the address
    /// the node actually bound (which must then not be unspecified, like 0.0.0.0, for
    /// gossip-learned peers to reach this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Relative capacity published in the load table. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Membership gossip and failure detection.
    #[serde(default)]
    pub gossip: crate::gossip::GossipConfig,
    /// Load balancing, retries and ejection.
    #[serde(default)]
    pub routing: crate::routing::RoutingConfig,
    /// Graceful stop on SIGTERM/SIGINT.
    #[serde(default)]
    pub drain: DrainConfig,
    /// The admin HTTP endpoint (`/metrics`, `/status`, `/healthz`, `/readyz`).
    #[serde(default)]
    pub admin: AdminConfig,
}

/// Where the admin HTTP endpoint listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `host:port` (TCP), or `"off"`. Default `"127.0.0.1:7480"` in configuration files;
    /// [`NodeConfig::new`] leaves it `"off"` so embedded nodes open no port unasked.
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:7480".into(),
        }
    }
}

impl AdminConfig {
    /// The address to serve on, or `None` when off.
    pub fn addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.listen == "off" {
            return Ok(None);
        }
        self.listen
            .parse()
            .map(Some)
            .map_err(|_| invalid("admin.listen", format!("{:?} is not ip:port or \"off\"", self.listen)))
    }
}

/// How a node stops on SIGTERM or SIGINT (see `Node::drain`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// How long streams in flight may take to finish before the node closes anyway.
    /// Default `"30s"`.
    #[serde(with = "duration_str")]
    pub grace: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            grace: Duration::from_secs(30),
        }
    }
}

fn default_weight() -> u32 {
    1
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7400))
}

/// Parses `discovery` entries; errors name the entry.
fn discovery_names(list: &[String]) -> Result<Vec<SrvName>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| SrvName::parse(s).map_err(|e| invalid(format!("discovery[{i}]"), e.to_string())))
        .collect()
}

/// Checks a `host:port` string without resolving it.
pub fn validate_host_port(key: &str, s: &str) -> Result<(), ConfigError> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(invalid(key, format!("{s:?} is not host:port")));
    };
    if host.is_empty() {
        return Err(invalid(key, format!("{s:?} has no host")));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(invalid(key, format!("{s:?} has no valid port (1-65535)"))),
    }
}

impl NodeConfig {
    /// A minimal configuration with defaults for everything optional.
    pub fn new(name: &str, tls: TlsPaths) -> Self {
        NodeConfig {
            name: name.to_owned(),
            listen: default_listen(),
            tls,
            peers: Vec::new(),
            discovery: Vec::new(),
            dns: crate::discovery::DnsConfig::default(),
            services: BTreeMap::new(),
            transport: TransportConfig::default(),
            limits: Limits::default(),
            reconnect: ReconnectConfig::default(),
            advertise: None,
            weight: default_weight(),
            gossip: crate::gossip::GossipConfig::default(),
            routing: crate::routing::RoutingConfig::default(),
            drain: DrainConfig::default(),
            admin: AdminConfig { listen: "off".into() },
        }
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        Self::from_table(table, origin)
    }

    /// Builds from a TOML table (a file's, with command-line overrides merged in).
    pub fn from_table(table: toml::Table, origin: &str) -> Result<Self, ConfigError> {
        require(&table, origin, true)?;
        let cfg: NodeConfig = table.try_into().map_err(|e: toml::de::Error| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_file(path)?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Checks every value; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_name(&self.name).map_err(|e| invalid("name", e.to_string()))?;
        for (i, p) in self.peers.iter().enumerate() {
            validate_host_port(&format!("peers[{i}]"), p)?;
        }
        discovery_names(&self.discovery)?;
        self.dns.validate()?;
        for (name, svc) in &self.services {
            validate_name(name).map_err(|e| invalid(format!("services.{name}"), e.to_string()))?;
            if let Some(c) = &svc.check {
                let key = format!("services.{name}.check");
                c.validate(&key).map_err(|e| invalid(key, e))?;
            }
            crate::warm::PoolConfig::validate(svc.preconnect, svc.preconnect_idle)
                .map_err(|(key, why)| invalid(format!("services.{name}.{key}"), why))?;
            if name == crate::protocol::STATUS_SERVICE {
                return Err(invalid(
                    format!("services.{name}"),
                    "this name is reserved for the built-in status service",
                ));
            }
            validate_host_port(&format!("services.{name}.backend"), &svc.backend)?;
            parse_allow(&format!("services.{name}.allow"), &svc.allow)?;
        }
        if let Some(a) = &self.advertise {
            validate_host_port("advertise", a)?;
        }
        if self.weight == 0 {
            return Err(invalid("weight", "must be at least 1"));
        }
        self.admin.addr()?;
        self.transport.validate("transport")?;
        self.limits.validate()?;
        self.gossip.validate()?;
        self.routing.validate()?;
        self.reconnect.validate()
    }

    /// The parsed `discovery` names.
    pub fn discovery_names(&self) -> Result<Vec<SrvName>, ConfigError> {
        discovery_names(&self.discovery)
    }

    /// The configuration as TOML, defaults filled in.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// The configuration of a client (library or CLI).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Certificate files (a `client` certificate).
    pub tls: TlsPaths,
    /// Entry nodes, `host:port` (after any found through `discovery`), raced in order: the next
    /// is dialled when the one before fails or has not answered within 250 ms, and the first
    /// to answer is used. Default none.
    #[serde(default)]
    pub entries: Vec<String>,
    /// SRV names to find entry nodes by, `"srv:_quicmesh._udp.mesh.example"`; tried in RFC 2782
    /// order (lower priority first, then by weight), before `entries`. Default none.
    #[serde(default)]
    pub discovery: Vec<String>,
    /// Name servers and refresh bounds for `discovery`.
    #[serde(default)]
    pub dns: crate::discovery::DnsConfig,
    /// Timeouts (`header_timeout` is unused by clients).
    #[serde(default)]
    pub transport: TransportConfig,
    /// Largest response `call()` will buffer, in bytes. Default 64 MiB.
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// Client-side routing.
    #[serde(default)]
    pub routing: ClientRouting,
    /// Local UDP address to send from, `ip:port`. Default: any address of the entry
    /// node's family, port chosen by the system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
}

/// Client-side routing: fetch the load table from the entry node and connect straight to the
/// node that should serve each request (P2C), skipping the relay hop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientRouting {
    /// Route from the client. Default false (the entry node routes).
    pub direct: bool,
    /// How old the fetched table may get before it is fetched again. Default `"1s"`.
    #[serde(with = "duration_str")]
    pub refresh: Duration,
}

impl Default for ClientRouting {
    fn default() -> Self {
        ClientRouting {
            direct: false,
            refresh: Duration::from_secs(1),
        }
    }
}

fn default_max_response() -> usize {
    64 << 20
}

impl ClientConfig {
    /// A configuration with defaults for everything optional.
    pub fn new(tls: TlsPaths, entries: Vec<String>) -> Self {
        ClientConfig {
            tls,
            entries,
            discovery: Vec::new(),
            dns: crate::discovery::DnsConfig::default(),
            transport: TransportConfig::default(),
            max_response_bytes: default_max_response(),
            routing: ClientRouting::default(),
            bind: None,
        }
    }

    /// The parsed `discovery` names.
    pub fn discovery_names(&self) -> Result<Vec<SrvName>, ConfigError> {
        discovery_names(&self.discovery)
    }

    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_file(path)?;
        let origin = path.display().to_string();
        let parse = |e: toml::de::Error| ConfigError::Parse {
            origin: origin.clone(),
            message: e.to_string(),
        };
        let table: toml::Table = toml::from_str(&text).map_err(parse)?;
        require(&table, &origin, false)?;
        let cfg: ClientConfig = table.try_into().map_err(parse)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.entries.is_empty() && self.discovery.is_empty() {
            return Err(invalid(
                "entries",
                "give at least one entry node (host:port) in `entries`, or an SRV name in `discovery`",
            ));
        }
        for (i, e) in self.entries.iter().enumerate() {
            validate_host_port(&format!("entries[{i}]"), e)?;
        }
        discovery_names(&self.discovery)?;
        self.dns.validate()?;
        if self.max_response_bytes == 0 {
            return Err(invalid("max_response_bytes", "must be at least 1"));
        }
        self.transport.validate("transport")
    }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "a"
[tls]
ca = "ca.crt"
cert = "node-a.crt"
key = "node-a.key"
"#;

    #[test]
    fn defaults_apply() {
        let c = NodeConfig::from_toml(BASE, "t").unwrap();
        assert_eq!(c.listen, "0.0.0.0:7400".parse().unwrap());
        assert_eq!(c.transport.keepalive, Duration::from_secs(5));
        assert_eq!(c.limits.hop_limit, 2);
        let round = NodeConfig::from_toml(&c.to_toml(), "t").unwrap();
        assert_eq!(round, c);
    }

    #[test]
    fn discovery_round_trips_and_seeds_is_an_alias() {
        let text = format!(
            "seeds = [\"10.0.0.1:7400\"]\ndiscovery = [\"srv:_quicmesh._udp.mesh.example\"]\n{BASE}\n[dns]\nservers = [\"10.0.0.2\"]\nmax_refresh = \"1m\"\n"
        );
        let c = NodeConfig::from_toml(&text, "t").unwrap();
        assert_eq!(c.peers, ["10.0.0.1:7400"]);
        assert_eq!(c.discovery_names().unwrap()[0].as_str(), "_quicmesh._udp.mesh.example");
        assert_eq!(c.dns.max_refresh, Duration::from_secs(60));
        assert_eq!(NodeConfig::from_toml(&c.to_toml(), "t").unwrap(), c);
    }

    #[test]
    fn a_client_needs_entries_or_discovery() {
        let tls = TlsPaths::new("ca.crt", "c.crt", "c.key");
        let mut c = ClientConfig::new(tls, vec![]);
        assert!(c.validate().unwrap_err().to_string().contains("discovery"));
        c.discovery = vec!["srv:_quicmesh._udp.mesh.example".into()];
        assert!(c.validate().is_ok());
        c.discovery = vec!["srv:bad name".into()];
        assert!(c.validate().unwrap_err().to_string().contains("discovery[0]"));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = NodeConfig::from_toml(&format!("{BASE}\n[transport]\nkeepalvie = \"1s\"\n"), "t").unwrap_err();
        assert!(err.to_string().contains("keepalvie"), "{err}");
    }

    #[test]
    fn keepalive_must_be_a_third_of_idle() {
        let err = NodeConfig::from_toml(
            &format!("{BASE}\n[transport]\nkeepalive = \"11s\"\nidle_timeout = \"30s\"\n"),
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("transport.keepalive"), "{err}");
        assert!(NodeConfig::from_toml(&format!("{BASE}\n[transport]\nkeepalive = \"10s\"\n"), "t").is_ok());
    }

    #[test]
    fn bad_values_name_their_key() {
        for (extra, key) in [
            ("peers = [\"nohost\"]", "peers[0]"),
            ("discovery = [\"srv:ok.test\", \"dns:mesh.test\"]", "discovery[1]"),
            ("[dns]\nservers = [\"resolver.example\"]", "dns.servers[0]"),
            ("[dns]\nmin_refresh = \"10ms\"", "dns.min_refresh"),
            ("[services.web]\nbackend = \"127.0.0.1:0\"", "services.web.backend"),
            ("[services.Web]\nbackend = \"127.0.0.1:80\"", "services.Web"),
            ("[limits]\nhop_limit = 9", "limits.hop_limit"),
            ("[transport]\nidle_timeout = \"5x\"", "idle_timeout"),
            ("[transport]\nudp_buffer = 1000000000", "transport.udp_buffer"),
            ("[transport]\nmax_udp_payload = 8952", "transport.max_udp_payload"),
            ("[transport]\nmax_udp_payload = 1000", "transport.max_udp_payload"),
            ("[transport]\nmax_udp_payload = 70000", "max_udp_payload"),
            ("[gossip]\nload_interval = \"1ms\"", "gossip.load_interval"),
            (
                "[gossip]\nload_gossip_interval = \"100ms\"",
                "gossip.load_gossip_interval",
            ),
        ] {
            let text = if extra.starts_with('[') {
                format!("{BASE}\n{extra}\n")
            } else {
                format!("{extra}\n{BASE}")
            };
            let err = NodeConfig::from_toml(&text, "t").unwrap_err().to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
        let err = NodeConfig::from_toml(&BASE.replace("name = \"a\"", "name = \"A_1\""), "t").unwrap_err();
        assert!(err.to_string().contains("`name`"), "{err}");
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
        for d in [1, 999, 1000, 60_000, 3_600_000, 5_500] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}
