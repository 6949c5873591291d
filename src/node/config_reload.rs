//! Reloading a node's configuration while it runs (SIGHUP, `quicmesh node reload`,
//! `POST /v1/reload`, [`crate::Node::reload`]). The services change; every other key is fixed
//! for the life of the process, and a change to one refuses the reload whole, naming the keys.
//! A reload that fails leaves the running configuration as it was.

use std::collections::BTreeSet;

use tracing::{error, info};

use super::error::NodeError;
use super::services::Local;
use super::state::State;
use super::sync::lock;
use crate::config::{ConfigError, NodeConfig};

/// Why a reload was refused. The running configuration is unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The node was not given a way to re-read its configuration (not started from a file).
    #[error("this node was not started from a config file: there is nothing to reload")]
    NoSource,
    /// The new configuration does not read or does not validate.
    #[error("{0}")]
    Read(String),
    /// The new configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Keys that cannot change while the node runs differ.
    #[error("cannot change while the node runs: {}; restart the node to change them (only services.* reload)", .0.join(", "))]
    Fixed(Vec<String>),
    /// The new services clash with ones the node serves otherwise.
    #[error("{0}")]
    Services(String),
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reloaded {
    /// Services added.
    pub added: Vec<String>,
    /// Services whose backend, allow-list, health check or warm pool changed.
    pub changed: Vec<String>,
    /// Services removed (their streams in flight finish).
    pub removed: Vec<String>,
}

/// Dotted paths of the keys whose values differ between `a` and `b`, outside `services`.
fn fixed_keys_changed(a: &toml::Table, b: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if path == "services" {
            continue;
        }
        match (a.get(k), b.get(k)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => fixed_keys_changed(x, y, &path, out),
            (x, y) if x != y => out.push(path),
            _ => {}
        }
    }
}

fn as_table(cfg: &NodeConfig) -> Result<toml::Table, ReloadError> {
    toml::Table::try_from(cfg).map_err(|e| ReloadError::Read(format!("cannot compare configurations: {e}")))
}

/// Applies `new`: checks it, replaces the configuration's services, and announces the change.
pub(crate) fn reload(shared: &State, new: &NodeConfig) -> Result<Reloaded, ReloadError> {
    new.validate()?;
    let mut fixed = Vec::new();
    fixed_keys_changed(&as_table(&shared.ctx.cfg)?, &as_table(new)?, "", &mut fixed);
    if !fixed.is_empty() {
        return Err(ReloadError::Fixed(fixed));
    }
    // The registry lock is held from this check until the new base is in force (then the
    // base's lock, always in that order, as a registration does): a name cannot be both
    // registered and configured.
    let registry = lock(&shared.registry);
    let old = shared.services.base();
    if let Some(name) = new.services.keys().find(|n| registry.entries().contains_key(*n)) {
        return Err(ReloadError::Services(format!(
            "services.{name}: a service of that name is registered at run time; deregister it first"
        )));
    }
    let base = old
        .with_config_services(new, &shared.ctx.identity)
        .map_err(|e| match e {
            NodeError::Config(c) => ReloadError::Config(c),
            NodeError::DuplicateService(n) => {
                ReloadError::Services(format!("services.{n}: an in-process handler already serves {n:?}"))
            }
            other => ReloadError::Services(other.to_string()),
        })?;
    /// Name, then everything whose change makes it "changed".
    type Row = (
        String,
        (
            String,
            Vec<String>,
            Option<crate::health::CheckConfig>,
            Option<crate::warm::PoolConfig>,
        ),
    );
    let tcp = |set: &super::services::ServiceSet| -> Vec<Row> {
        set.local
            .iter()
            .filter_map(|(n, l)| match l {
                Local::Tcp(b) => {
                    let allow = set
                        .allow
                        .get(n)
                        .map(|ids| ids.iter().map(|i| i.uri()).collect())
                        .unwrap_or_default();
                    let settings = (b.clone(), allow, set.checks.get(n).cloned(), set.pools.get(n).copied());
                    Some((n.clone(), settings))
                }
                _ => None,
            })
            .collect()
    };
    let (before, after) = (tcp(&old), tcp(&base));
    let mut report = Reloaded::default();
    for (n, now) in &after {
        match before.iter().find(|(m, _)| m == n) {
            None => report.added.push(n.clone()),
            Some((_, was)) if was != now => report.changed.push(n.clone()),
            Some(_) => {}
        }
    }
    for (n, ..) in &before {
        if !after.iter().any(|(m, ..)| m == n) {
            report.removed.push(n.clone());
        }
    }
    shared.services.replace_base(base);
    drop(registry);
    super::rebuild::apply(shared);
    Ok(report)
}

/// Re-reads the configuration through the node's source and applies it; logs the outcome.
pub(crate) fn reload_from_source(shared: &State) -> Result<Reloaded, ReloadError> {
    let result = match &shared.ctx.config_source {
        None => Err(ReloadError::NoSource),
        Some(source) => source().map_err(ReloadError::Read).and_then(|cfg| reload(shared, &cfg)),
    };
    match &result {
        Ok(r) => info!(added = ?r.added, changed = ?r.changed, removed = ?r.removed, "configuration reloaded"),
        Err(e) => error!("configuration reload refused; the running configuration stays: {e}"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_keys_are_named_and_services_ignored() {
        let a: toml::Table = toml::from_str(
            "name = \"a\"\nlisten = \"x\"\n[transport]\nkeepalive = \"5s\"\n[services.w]\nbackend = \"h:1\"\n",
        )
        .unwrap();
        let b: toml::Table = toml::from_str(
            "name = \"b\"\nlisten = \"x\"\n[transport]\nkeepalive = \"6s\"\n[services.v]\nbackend = \"h:2\"\n",
        )
        .unwrap();
        let mut out = Vec::new();
        fixed_keys_changed(&a, &b, "", &mut out);
        assert_eq!(out, ["name", "transport.keepalive"]);
    }
}
