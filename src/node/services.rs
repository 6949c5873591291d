//! The services this node serves itself and who may call each. The set is swapped whole
//! behind a lock, so a stream reads one consistent set and the set can change while the node
//! runs.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::error::NodeError;
use crate::config::{ConfigError, NodeConfig};
use crate::identity::Identity;
use crate::service::Handler;

/// How a local service is served.
#[derive(Clone)]
pub(crate) enum Local {
    /// Spliced to a TCP backend at `host:port`.
    Tcp(String),
    /// Handled in-process.
    Handler(Arc<dyn Handler>),
    /// The built-in status service.
    Status,
}

/// One version of the local service set.
#[derive(Clone, Default)]
pub(crate) struct ServiceSet {
    /// The services served here, by name.
    pub local: BTreeMap<String, Local>,
    /// Who may call each service (`services.NAME.allow`); a service not listed is open to
    /// every identity of the trust domain.
    pub allow: BTreeMap<String, Vec<Identity>>,
    /// The health check of each TCP service that has one.
    pub checks: BTreeMap<String, crate::health::CheckConfig>,
    /// The warm pool of each TCP service that asks for one (`preconnect`).
    pub pools: BTreeMap<String, crate::warm::PoolConfig>,
}

impl ServiceSet {
    /// The set a node starts with: the TCP backends of `config.services`, the in-process
    /// `handlers`, and the allow-lists of both (`extra_allow` from the builder).
    pub fn build(
        config: &NodeConfig,
        handlers: Vec<(String, Arc<dyn Handler>)>,
        extra_allow: Vec<(String, Vec<String>)>,
        me: &Identity,
    ) -> Result<Self, NodeError> {
        let mut local = BTreeMap::new();
        for (name, svc) in &config.services {
            local.insert(name.clone(), Local::Tcp(svc.backend.clone()));
        }
        for (name, h) in handlers {
            crate::identity::validate_name(&name)?;
            if local.insert(name.clone(), Local::Handler(h)).is_some() {
                return Err(NodeError::DuplicateService(name));
            }
        }
        let allow = allow_lists(config, extra_allow, &local, me)?;
        Ok(ServiceSet {
            local,
            allow,
            checks: config_checks(config),
            pools: config_pools(config),
        })
    }

    /// This set with the configuration's TCP services replaced by those of `config`; the
    /// in-process handlers and their allow-lists stay.
    pub fn with_config_services(&self, config: &NodeConfig, me: &Identity) -> Result<Self, NodeError> {
        let mut local: BTreeMap<String, Local> = self
            .local
            .iter()
            .filter(|(_, l)| !matches!(l, Local::Tcp(_)))
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect();
        let mut allow: BTreeMap<String, Vec<Identity>> = self
            .allow
            .iter()
            .filter(|(n, _)| local.contains_key(*n))
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect();
        for (name, svc) in &config.services {
            if local.insert(name.clone(), Local::Tcp(svc.backend.clone())).is_some() {
                return Err(NodeError::DuplicateService(name.clone()));
            }
        }
        allow.extend(allow_lists(config, Vec::new(), &local, me)?);
        Ok(ServiceSet {
            local,
            allow,
            checks: config_checks(config),
            pools: config_pools(config),
        })
    }

    /// Whether `caller` may call `service`.
    pub fn allows(&self, service: &str, caller: &Identity) -> bool {
        self.allow.get(service).is_none_or(|ids| ids.contains(caller))
    }
}

/// The node's current service set, and the set it started with (its configuration's and
/// in-process services), which run-time registrations are laid over.
pub(crate) struct LocalServices {
    base: RwLock<Arc<ServiceSet>>,
    current: RwLock<Arc<ServiceSet>>,
}

impl LocalServices {
    pub fn new(set: ServiceSet) -> Self {
        let set = Arc::new(set);
        LocalServices {
            base: RwLock::new(set.clone()),
            current: RwLock::new(set),
        }
    }

    /// The configuration's and in-process services (as last loaded), without registrations.
    pub fn base(&self) -> Arc<ServiceSet> {
        self.base.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the base set (a configuration reload); the caller then rebuilds the current one.
    pub fn replace_base(&self, set: ServiceSet) {
        *self.base.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// Puts `set` in force for new streams; running streams keep the version they read.
    pub fn replace(&self, set: ServiceSet) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// The set in force now; holding it keeps that version alive, not the lock.
    pub fn current(&self) -> Arc<ServiceSet> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Names of the services served here.
    pub fn names(&self) -> Vec<String> {
        self.current().local.keys().cloned().collect()
    }
}

fn config_pools(config: &NodeConfig) -> BTreeMap<String, crate::warm::PoolConfig> {
    config
        .services
        .iter()
        .filter_map(|(n, s)| s.pool().map(|p| (n.clone(), p)))
        .collect()
}

fn config_checks(config: &NodeConfig) -> BTreeMap<String, crate::health::CheckConfig> {
    config
        .services
        .iter()
        .filter_map(|(n, s)| s.check.clone().map(|c| (n.clone(), c)))
        .collect()
}

/// Gathers the allow-lists of the configuration and the builder, checking each names a
/// service served here and identities of this trust domain.
fn allow_lists(
    config: &NodeConfig,
    extra: Vec<(String, Vec<String>)>,
    local: &BTreeMap<String, Local>,
    me: &Identity,
) -> Result<BTreeMap<String, Vec<Identity>>, ConfigError> {
    let invalid = |key: String, reason: String| ConfigError::Invalid { key, reason };
    let mut out: BTreeMap<String, Vec<Identity>> = BTreeMap::new();
    let from_config = config.services.iter().map(|(n, s)| (n.clone(), s.allow.clone()));
    for (service, list) in from_config.chain(extra) {
        let key = format!("services.{service}.allow");
        if !local.contains_key(&service) {
            return Err(invalid(key, "this node does not serve that service".into()));
        }
        for id in crate::config::parse_allow(&key, &list)? {
            if id.trust_domain != me.trust_domain {
                return Err(invalid(
                    key,
                    format!("{id} is outside this node's trust domain {:?}", me.trust_domain),
                ));
            }
            out.entry(service.clone()).or_default().push(id);
        }
    }
    out.retain(|_, v| !v.is_empty());
    Ok(out)
}
