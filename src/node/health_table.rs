//! The health of the services with checks: a state part, written by the check driver
//! (checks.rs) and read by every rebuild of the service set, `/v1/services` and
//! `/metrics`. Owns its lock; takes nothing else of the node's state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::sync::{lock, Desired};
use crate::health::{CheckConfig, Checker, Health};

/// What should be checked: service → (backend, check).
pub(crate) type Wanted = BTreeMap<String, (String, CheckConfig)>;

/// The health of every checked service.
pub(crate) struct HealthTable {
    entries: Mutex<BTreeMap<String, Entry>>,
    /// What should be checked, set by every rebuild of the service set.
    wanted: Desired<Wanted>,
}

/// One checked service.
pub(crate) struct Entry {
    pub backend: String,
    pub check: CheckConfig,
    pub checker: Checker,
    /// How long the last check took, and why it failed if it did.
    pub last: Option<(Duration, Option<String>)>,
}

impl HealthTable {
    pub fn new() -> Self {
        HealthTable {
            entries: Mutex::new(BTreeMap::new()),
            wanted: Desired::new(),
        }
    }

    /// Services of `wanted` whose backend is critical now. An entry for another backend or
    /// check (about to be replaced by a fresh, passing one) does not count.
    pub fn critical(&self, wanted: &Wanted) -> BTreeSet<String> {
        lock(&self.entries)
            .iter()
            .filter(|(n, e)| {
                e.checker.health() == Health::Critical
                    && wanted.get(*n).is_some_and(|(b, c)| *b == e.backend && *c == e.check)
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// (service, backend, health, transitions, last check took, last error) for each.
    #[allow(clippy::type_complexity)]
    pub fn rows(&self) -> Vec<(String, String, Health, u64, Option<Duration>, Option<String>)> {
        lock(&self.entries)
            .iter()
            .map(|(n, e)| {
                (
                    n.clone(),
                    e.backend.clone(),
                    e.checker.health(),
                    e.checker.transitions,
                    e.last.as_ref().map(|l| l.0),
                    e.last.as_ref().and_then(|l| l.1.clone()),
                )
            })
            .collect()
    }

    /// The entries, for the check driver.
    pub fn entries(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        lock(&self.entries)
    }

    /// What should be checked, set by every rebuild of the service set.
    pub fn wanted(&self) -> &Desired<Wanted> {
        &self.wanted
    }
}
