//! `quicmesh node`'s flags, merged over the config file into one TOML table, so the flags
//! and the file go through the same checks and their errors name the same keys.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use quicmesh::{CaFiles, NodeConfig};

use crate::BoxError;

#[derive(Args, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct NodeArgs {
    #[command(subcommand)]
    pub action: Option<NodeAction>,
    /// TOML configuration file; flags override its keys.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Node name (`name`).
    #[arg(long)]
    name: Option<String>,
    /// UDP listen address (`listen`).
    #[arg(long)]
    listen: Option<String>,
    /// Admin HTTP address for /metrics, /status, /healthz, /readyz (`admin.listen`), or "off".
    /// Default 127.0.0.1:7480.
    #[arg(long)]
    admin: Option<String>,
    /// Address other nodes should dial to reach this one, host:port (`advertise`).
    #[arg(long)]
    advertise: Option<String>,
    /// Static peer host:port (`peers`, repeatable; replaces the file's list).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// SRV name to discover peers by, srv:NAME (`discovery`, repeatable; replaces the file's list).
    #[arg(long = "discovery")]
    discovery: Vec<String>,
    /// Name server for discovery, IP[:PORT] (`dns.servers`, repeatable; default: the system's).
    #[arg(long = "dns-server")]
    dns_servers: Vec<String>,
    /// CA certificate (`tls.ca`), or the directory holding ca.crt.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Node certificate (`tls.cert`).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Node private key (`tls.key`).
    #[arg(long)]
    cert_key: Option<PathBuf>,
    /// Service served from a local TCP backend, NAME=HOST:PORT (`services`, repeatable).
    #[arg(long = "service")]
    services: Vec<String>,
    /// Keepalive interval (`transport.keepalive`), e.g. 5s.
    #[arg(long)]
    keepalive: Option<String>,
    /// Idle timeout (`transport.idle_timeout`), e.g. 30s.
    #[arg(long)]
    idle_timeout: Option<String>,
    /// Header timeout (`transport.header_timeout`).
    #[arg(long)]
    header_timeout: Option<String>,
    /// Handshake timeout (`transport.connect_timeout`).
    #[arg(long)]
    connect_timeout: Option<String>,
    /// Concurrent service streams before Overloaded (`limits.max_inflight`).
    #[arg(long)]
    max_inflight: Option<i64>,
    /// How long streams in flight may finish after SIGTERM (`drain.grace`), e.g. 30s.
    #[arg(long)]
    drain_grace: Option<String>,
    /// Relay hop limit (`limits.hop_limit`).
    #[arg(long)]
    hop_limit: Option<i64>,
    /// Any configuration key, KEY=VALUE with KEY dotted as in the file (repeatable; applied
    /// after the other flags), e.g. --set gossip.fanout=4 --set tls.crl=certs/crl.pem.
    /// VALUE is read as TOML (a number, true/false, [a list]) and otherwise as a string.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the effective configuration (defaults filled in) and exit.
    #[arg(long)]
    pub print_config: bool,
}

fn set(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    let (last, parents) = match path.split_last() {
        Some(x) => x,
        None => return,
    };
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = match entry.as_table_mut() {
            Some(t) => t,
            None => return,
        };
    }
    t.insert(last.to_string(), value);
}

fn path_value(p: &std::path::Path) -> toml::Value {
    toml::Value::String(p.display().to_string())
}

pub(crate) fn node_config(a: &NodeArgs) -> Result<NodeConfig, BoxError> {
    let (mut table, origin) = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read config {}: {e}", p.display()))?;
            let t: toml::Table = toml::from_str(&text).map_err(|e| format!("config {}: {e}", p.display()))?;
            (t, format!("{} with flags", p.display()))
        }
        None => (toml::Table::new(), "flags".to_owned()),
    };
    use toml::Value::{Integer, String as S};
    if let Some(v) = &a.name {
        set(&mut table, &["name"], S(v.clone()));
    }
    if let Some(v) = &a.listen {
        set(&mut table, &["listen"], S(v.clone()));
    }
    if let Some(v) = &a.admin {
        set(&mut table, &["admin", "listen"], S(v.clone()));
    }
    if let Some(v) = &a.advertise {
        set(&mut table, &["advertise"], S(v.clone()));
    }
    if !a.peers.is_empty() {
        set(
            &mut table,
            &["peers"],
            toml::Value::Array(a.peers.iter().cloned().map(S).collect()),
        );
    }
    if !a.discovery.is_empty() {
        let list = a.discovery.iter().cloned().map(S).collect();
        set(&mut table, &["discovery"], toml::Value::Array(list));
    }
    if !a.dns_servers.is_empty() {
        let list = a.dns_servers.iter().cloned().map(S).collect();
        set(&mut table, &["dns", "servers"], toml::Value::Array(list));
    }
    if let Some(v) = &a.ca {
        set(&mut table, &["tls", "ca"], path_value(&CaFiles::cert_at(v)));
    }
    if let Some(v) = &a.cert {
        set(&mut table, &["tls", "cert"], path_value(v));
    }
    if let Some(v) = &a.cert_key {
        set(&mut table, &["tls", "key"], path_value(v));
    }
    for s in &a.services {
        let (name, backend) = s
            .split_once('=')
            .ok_or_else(|| format!("--service {s:?}: expected NAME=HOST:PORT"))?;
        set(&mut table, &["services", name, "backend"], S(backend.to_owned()));
    }
    for (key, v) in [
        ("keepalive", &a.keepalive),
        ("idle_timeout", &a.idle_timeout),
        ("header_timeout", &a.header_timeout),
        ("connect_timeout", &a.connect_timeout),
    ] {
        if let Some(v) = v {
            set(&mut table, &["transport", key], S(v.clone()));
        }
    }
    if let Some(v) = a.max_inflight {
        set(&mut table, &["limits", "max_inflight"], Integer(v));
    }
    if let Some(v) = &a.drain_grace {
        set(&mut table, &["drain", "grace"], S(v.clone()));
    }
    if let Some(v) = a.hop_limit {
        set(&mut table, &["limits", "hop_limit"], Integer(v));
    }
    for kv in &a.set {
        let (key, value) = parse_set(kv)?;
        let path: Vec<&str> = key.split('.').collect();
        set(&mut table, &path, value);
    }
    Ok(NodeConfig::from_table(table, &origin)?)
}

/// `quicmesh node ACTION`: talks to a running node.
#[derive(Subcommand, Clone)]
pub(crate) enum NodeAction {
    /// Make the node on this host re-read its config file (as SIGHUP does): services are
    /// added, changed and removed; a change to any other key is refused, naming it.
    Reload {
        #[command(flatten)]
        admin: crate::services_cmd::AdminArg,
    },
}

/// Splits `--set KEY=VALUE`; VALUE is TOML if it parses as a value, else a plain string
/// (so `--set dns.timeout=2s` needs no quotes).
fn parse_set(kv: &str) -> Result<(&str, toml::Value), BoxError> {
    let bad = || format!("--set {kv:?}: expected KEY=VALUE with KEY a config key, e.g. --set gossip.fanout=4");
    let (key, raw) = kv.split_once('=').ok_or_else(bad)?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|p| p.is_empty()) {
        return Err(bad().into());
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    Ok((key, value))
}

#[cfg(test)]
mod tests {
    use super::parse_set;

    #[test]
    fn set_values_are_toml_or_strings() {
        let v = |kv: &str| parse_set(kv).map(|(k, v)| (k.to_owned(), v.to_string()));
        assert_eq!(v("gossip.fanout=4").unwrap(), ("gossip.fanout".into(), "4".into()));
        assert_eq!(v("dns.timeout=2s").unwrap(), ("dns.timeout".into(), "\"2s\"".into()));
        assert_eq!(v("weight=2.5").unwrap().1, "2.5");
        assert_eq!(v("routing.dynamic_weights=true").unwrap().1, "true");
        assert_eq!(v("tls.crl=certs/crl.pem").unwrap().1, "\"certs/crl.pem\"");
        assert_eq!(v("peers=[\"a:1\", \"b:2\"]").unwrap().1, "[\"a:1\", \"b:2\"]");
        for bad in ["fanout", "=3", "gossip..fanout=3"] {
            assert!(v(bad).unwrap_err().to_string().contains("KEY=VALUE"), "{bad}");
        }
    }
}
