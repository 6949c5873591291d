//! `/v1/services` on the admin listener: services registered, renewed and deregistered at run
//! time, each with a lease (see [`super::registry`]), and the task that expires leases.
//!
//! Every change rebuilds the local service set (the configuration's and in-process services,
//! plus the registrations) and announces the new service list by gossip at once. Streams
//! already running keep the set they started with, so a service removed mid-stream finishes
//! its streams; new ones go to nodes that still offer it.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::registry::{Change, Registration, RegistryError};
use super::services::Local;
use super::state::State;
use super::sync::lock;
use crate::config::{parse_allow, parse_duration, validate_host_port};

/// Largest request body the API reads.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// The body of `PUT /v1/services/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    /// `host:port` of the TCP backend.
    backend: String,
    /// The lease, e.g. `"10s"`.
    ttl: String,
    /// Identities allowed to call it; default the whole trust domain.
    #[serde(default)]
    allow: Vec<String>,
    /// An active health check, as `services.NAME.check` in the config.
    #[serde(default)]
    check: Option<crate::health::CheckConfig>,
    /// Idle backend connections kept open (a warm pool), as `services.NAME.preconnect`.
    #[serde(default)]
    preconnect: u32,
    /// How long a warm connection may idle, e.g. `"20s"`.
    #[serde(default)]
    preconnect_idle: Option<String>,
}

/// One row of `GET /v1/services`.
#[derive(Debug, Serialize)]
pub(crate) struct ServiceRow {
    name: String,
    /// `config`, `handler` (in-process) or `api`.
    source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allow: Vec<String>,
    /// The lease, for `api` services.
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    /// Time left on the lease, for `api` services.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in: Option<String>,
    /// `passing` or `critical`, for services with a health check.
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<crate::health::Health>,
    /// Why the last check failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_check_error: Option<String>,
    /// The warm pool, for services with `preconnect`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<PoolRow>,
}

/// A service's warm pool in `GET /v1/services`.
#[derive(Debug, Serialize)]
pub(crate) struct PoolRow {
    /// Connections wanted.
    preconnect: usize,
    /// Open and idle now.
    idle: usize,
    /// Streams that took a warm connection.
    hits: u64,
    /// Streams that found the pool empty.
    misses: u64,
    /// Failed connects of the pool.
    connect_failures: u64,
}

/// An answer: HTTP status and a JSON body.
pub(crate) type Answer = (u16, serde_json::Value);

fn error(status: u16, message: impl std::fmt::Display) -> Answer {
    (status, serde_json::json!({ "error": message.to_string() }))
}

/// A duration as the config files write it (`"1.5s"`, `"250ms"`), to the millisecond.
fn millis(d: Duration) -> String {
    format!(
        "{:?}",
        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    )
}

/// Handles a request under `/v1/services`; `rest` is the path after it.
pub(crate) fn handle(shared: &State, method: &hyper::Method, rest: &str, body: &[u8]) -> Answer {
    use hyper::Method;
    let parts: Vec<&str> = rest
        .trim_start_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    match (method, parts.as_slice()) {
        (&Method::GET, []) => (200, serde_json::json!(list(shared))),
        (&Method::PUT, [name]) => register(shared, name, body),
        (&Method::PUT, [name, "renew"]) => renew(shared, name),
        (&Method::DELETE, [name]) => deregister(shared, name),
        (_, [] | [_] | [_, "renew"]) => error(
            405,
            "use GET /v1/services, PUT /v1/services/NAME, PUT /v1/services/NAME/renew or DELETE /v1/services/NAME",
        ),
        _ => error(404, format!("no such resource /v1/services/{}", parts.join("/"))),
    }
}

fn list(shared: &State) -> Vec<ServiceRow> {
    let now = shared.ctx.now();
    let registry = lock(&shared.registry);
    let mut rows: Vec<ServiceRow> = shared
        .services
        .base()
        .local
        .iter()
        .map(|(name, local)| ServiceRow {
            name: name.clone(),
            source: match local {
                Local::Tcp(_) => "config",
                Local::Handler(_) | Local::Status => "handler",
            },
            backend: match local {
                Local::Tcp(b) => Some(b.clone()),
                _ => None,
            },
            allow: shared
                .services
                .base()
                .allow
                .get(name)
                .map(|ids| ids.iter().map(|i| i.uri()).collect())
                .unwrap_or_default(),
            ttl: None,
            expires_in: None,
            health: None,
            last_check_error: None,
            pool: None,
        })
        .collect();
    rows.extend(registry.entries().iter().map(|(name, r)| ServiceRow {
        name: name.clone(),
        source: "api",
        backend: Some(r.backend.clone()),
        allow: r.allow.clone(),
        ttl: Some(millis(r.ttl)),
        expires_in: Some(millis(r.expires.saturating_sub(now))),
        health: None,
        last_check_error: None,
        pool: None,
    }));
    for (name, _, health, _, _, error) in shared.health.rows() {
        if let Some(row) = rows.iter_mut().find(|r| r.name == name) {
            row.health = Some(health);
            row.last_check_error = error;
        }
    }
    for (name, _, cfg, idle, stats) in shared.pools.rows() {
        if let Some(row) = rows.iter_mut().find(|r| r.name == name) {
            row.pool = Some(PoolRow {
                preconnect: cfg.size,
                idle,
                hits: stats.hits,
                misses: stats.misses,
                connect_failures: stats.failed,
            });
        }
    }
    rows
}

fn register(shared: &State, name: &str, body: &[u8]) -> Answer {
    if let Err(e) = crate::identity::validate_name(name) {
        return error(400, format!("service name {name:?}: {e}"));
    }
    if name == crate::protocol::STATUS_SERVICE {
        return error(
            400,
            format!("service name {name:?} is reserved for the built-in status service"),
        );
    }
    // The path says which key is at fault (`preconnect: invalid value...`), not only where.
    let req: RegisterRequest = match serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body)) {
        Ok(r) => r,
        Err(e) => {
            let at = match e.path().to_string() {
                p if p == "." => "body".to_owned(),
                p => p,
            };
            return error(
                400,
                format!("{at}: {}; expected JSON {{\"backend\": \"host:port\", \"ttl\": \"10s\", \"allow\": [\"spiffe://...\"]}}", e.inner()),
            );
        }
    };
    if let Err(e) = validate_host_port("backend", &req.backend) {
        let why = match e {
            crate::ConfigError::Invalid { reason, .. } => reason,
            other => other.to_string(),
        };
        return error(400, format!("backend: {why}"));
    }
    let ttl = match parse_duration(&req.ttl) {
        Ok(t) => t,
        Err(e) => return error(400, format!("ttl: {e}")),
    };
    match parse_allow("allow", &req.allow) {
        Ok(ids) => {
            if let Some(id) = ids
                .iter()
                .find(|id| id.trust_domain != shared.ctx.identity.trust_domain)
            {
                return error(
                    400,
                    format!(
                        "allow: {id} is outside this node's trust domain {:?}",
                        shared.ctx.identity.trust_domain
                    ),
                );
            }
        }
        Err(e) => return error(400, e),
    }
    if let Some(c) = &req.check {
        if let Err(e) = c.validate("check") {
            return error(400, e);
        }
    }
    let idle = match req.preconnect_idle.as_deref().map(parse_duration) {
        None => crate::warm::DEFAULT_IDLE,
        Some(Ok(d)) => d,
        Some(Err(e)) => return error(400, format!("preconnect_idle: {e}")),
    };
    if let Err((key, why)) = crate::warm::PoolConfig::validate(req.preconnect, idle) {
        return error(400, format!("{key}: {why}"));
    }
    let pool = (req.preconnect > 0).then_some(crate::warm::PoolConfig {
        size: req.preconnect as usize,
        idle,
    });
    // Under the registry lock (then the base's, the order a reload takes them in), so a
    // reload cannot configure the name between the check and the registration.
    let mut registry = lock(&shared.registry);
    let is_static = shared.services.base().local.contains_key(name);
    let now = shared.ctx.now();
    let backend = req.backend.clone();
    let asked = super::registry::Request {
        backend: req.backend,
        allow: req.allow,
        check: req.check,
        pool,
        ttl,
    };
    let change = registry.register(name, asked, is_static, now);
    drop(registry);
    match change {
        Ok(change) => {
            if change != Change::Renewed {
                super::rebuild::apply(shared);
                info!(service = %name, %backend, ?ttl, ?change, "service registered");
            }
            let label = match change {
                Change::Added => "added",
                Change::Updated => "updated",
                Change::Renewed => "renewed",
            };
            (
                200,
                serde_json::json!({ "service": name, "change": label, "expires_in": millis(ttl) }),
            )
        }
        Err(e @ RegistryError::Static(_)) => error(409, e),
        Err(e) => error(400, e),
    }
}

fn renew(shared: &State, name: &str) -> Answer {
    let now = shared.ctx.now();
    let renewed = lock(&shared.registry).renew(name, now);
    match renewed {
        Ok(expires) => (
            200,
            serde_json::json!({ "service": name, "expires_in": millis(expires.saturating_sub(now)) }),
        ),
        Err(e) => error(404, e),
    }
}

fn deregister(shared: &State, name: &str) -> Answer {
    let removed = lock(&shared.registry).deregister(name);
    match removed {
        Ok(Registration { backend, .. }) => {
            super::rebuild::apply(shared);
            info!(service = %name, %backend, "service deregistered");
            (200, serde_json::json!({ "service": name, "change": "removed" }))
        }
        Err(e) => error(404, e),
    }
}

/// Expires leases until shutdown: sleeps until the next lease runs out or the registry changes.
pub(crate) async fn expire_leases(shared: Arc<State>) {
    let mut shutdown = shared.ctx.on_shutdown();
    loop {
        let next = lock(&shared.registry).next_expiry();
        let wait = next.map_or(Duration::from_secs(3600), |t| t.saturating_sub(shared.ctx.now()));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.registry_changed.notified() => continue,
            _ = shutdown.changed() => return,
        }
        let gone = lock(&shared.registry).expire(shared.ctx.now());
        if !gone.is_empty() {
            for name in &gone {
                info!(service = %name, "service lease expired (not renewed within its ttl); no longer served here");
            }
            super::rebuild::apply(shared.as_ref());
        }
    }
}
