//! Services registered at run time through the admin API, each with a lease: a registration
//! that is not renewed within its TTL expires, as an etcd key with a lease does. Pure: time is
//! passed in; the admin API and the expiry task drive it.
//!
//! Registrations live in memory only. A node that restarts has none: keeping them alive is
//! the registering instance's job (it renews, and registers again when told the name is
//! unknown), so a crashed instance can never leave a stale registration behind.

#![deny(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::Duration;

/// The longest lease: a registration must prove it is alive at least this often.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// One registered service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// `host:port` of the TCP backend.
    pub backend: String,
    /// Identities allowed to call it (SPIFFE URIs); empty: the whole trust domain.
    pub allow: Vec<String>,
    /// The lease length.
    pub ttl: Duration,
    /// Its health check, if any.
    pub check: Option<crate::health::CheckConfig>,
    /// Its warm pool, if any.
    pub pool: Option<crate::warm::PoolConfig>,
    /// When the lease runs out, on the node's clock.
    pub expires: Duration,
}

/// What a registration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `host:port` of the TCP backend.
    pub backend: String,
    /// Identities allowed to call it (SPIFFE URIs); empty: the whole trust domain.
    pub allow: Vec<String>,
    /// Its health check, if any.
    pub check: Option<crate::health::CheckConfig>,
    /// Its warm pool, if any.
    pub pool: Option<crate::warm::PoolConfig>,
    /// The lease length.
    pub ttl: Duration,
}

/// Why a registry call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The TTL is zero or longer than [`MAX_TTL`].
    #[error("ttl {0:?} is out of range: give between 1ms and 24h, e.g. \"10s\"")]
    Ttl(Duration),
    /// The name is served from the configuration (or in-process) and cannot be registered.
    #[error("service {0:?} is served from this node's configuration; change it there (and reload)")]
    Static(String),
    /// No such registration (never made, deregistered, or its lease expired).
    #[error("service {0:?} is not registered here (never registered, deregistered, or its lease expired): register it again")]
    Unknown(String),
}

/// What a call changed, for the log and for gossip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new service.
    Added,
    /// An existing registration got a new backend, allow-list, check, pool or TTL.
    Updated,
    /// Only the lease was extended.
    Renewed,
}

/// The run-time registrations of one node.
#[derive(Debug, Default)]
pub struct Registry {
    entries: BTreeMap<String, Registration>,
}

impl Registry {
    /// Registers `name` (or updates its registration) with a lease of `ttl` from `now`.
    /// `is_static` says whether the name is served from the configuration.
    pub fn register(
        &mut self,
        name: &str,
        req: Request,
        is_static: bool,
        now: Duration,
    ) -> Result<Change, RegistryError> {
        let Request {
            backend,
            allow,
            check,
            pool,
            ttl,
        } = req;
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(RegistryError::Ttl(ttl));
        }
        if is_static {
            return Err(RegistryError::Static(name.to_owned()));
        }
        let new = Registration {
            backend,
            allow,
            check,
            pool,
            ttl,
            expires: now + ttl,
        };
        let change = match self.entries.get(name) {
            None => Change::Added,
            Some(old)
                if old.backend == new.backend
                    && old.allow == new.allow
                    && old.check == new.check
                    && old.pool == new.pool
                    && old.ttl == new.ttl =>
            {
                Change::Renewed
            }
            Some(_) => Change::Updated,
        };
        self.entries.insert(name.to_owned(), new);
        Ok(change)
    }

    /// Extends `name`'s lease by its TTL from `now`.
    pub fn renew(&mut self, name: &str, now: Duration) -> Result<Duration, RegistryError> {
        let e = self
            .entries
            .get_mut(name)
            .ok_or_else(|| RegistryError::Unknown(name.to_owned()))?;
        e.expires = now + e.ttl;
        Ok(e.expires)
    }

    /// Removes `name`.
    pub fn deregister(&mut self, name: &str) -> Result<Registration, RegistryError> {
        self.entries
            .remove(name)
            .ok_or_else(|| RegistryError::Unknown(name.to_owned()))
    }

    /// Removes every registration whose lease ran out by `now`; returns their names.
    pub fn expire(&mut self, now: Duration) -> Vec<String> {
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &gone {
            self.entries.remove(n);
        }
        gone
    }

    /// When the next lease runs out, if any.
    pub fn next_expiry(&self) -> Option<Duration> {
        self.entries.values().map(|r| r.expires).min()
    }

    /// Every registration.
    pub fn entries(&self) -> &BTreeMap<String, Registration> {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn req(backend: &str, ttl: Duration) -> Request {
        Request {
            backend: backend.into(),
            allow: Vec::new(),
            check: None,
            pool: None,
            ttl,
        }
    }

    #[test]
    fn a_lease_not_renewed_expires_and_a_renewed_one_does_not() {
        let mut r = Registry::default();
        assert_eq!(r.register("a", req("h:1", 2 * S), false, S), Ok(Change::Added));
        assert_eq!(r.register("b", req("h:2", 2 * S), false, S), Ok(Change::Added));
        assert_eq!(r.next_expiry(), Some(3 * S));
        assert_eq!(r.renew("a", 2 * S), Ok(4 * S));
        assert!(r.expire(3 * S - Duration::from_millis(1)).is_empty());
        assert_eq!(r.expire(3 * S), vec!["b".to_owned()]);
        assert_eq!(r.renew("b", 3 * S), Err(RegistryError::Unknown("b".into())));
        assert_eq!(r.expire(4 * S), vec!["a".to_owned()]);
        assert_eq!(r.next_expiry(), None);
    }

    #[test]
    fn registering_again_updates_or_renews() {
        let mut r = Registry::default();
        r.register("a", req("h:1", 2 * S), false, Duration::ZERO).unwrap();
        assert_eq!(r.register("a", req("h:1", 2 * S), false, S), Ok(Change::Renewed));
        assert_eq!(r.entries()["a"].expires, 3 * S);
        assert_eq!(r.register("a", req("h:9", 2 * S), false, S), Ok(Change::Updated));
        assert_eq!(r.entries()["a"].backend, "h:9");
        assert_eq!(r.deregister("a").map(|e| e.backend), Ok("h:9".into()));
        assert!(r.deregister("a").is_err());
    }

    #[test]
    fn bad_ttls_and_static_names_are_refused() {
        let mut r = Registry::default();
        assert_eq!(
            r.register("a", req("h:1", Duration::ZERO), false, S),
            Err(RegistryError::Ttl(Duration::ZERO))
        );
        assert!(r.register("a", req("h:1", MAX_TTL + S), false, S).is_err());
        assert_eq!(
            r.register("web", req("h:1", S), true, S),
            Err(RegistryError::Static("web".into()))
        );
        assert!(r.entries().is_empty());
    }
}
