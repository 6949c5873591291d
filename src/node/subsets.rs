//! Which servers of each service this node routes to: its deterministic subset of them
//! ([`crate::routing::subset`]: at least `routing.subset_size`, all when fewer, balanced over
//! the mesh's callers), widened while this node's streams to them pile up. A subset is
//! recomputed only when the gossip roster changes (a member joins or goes, or changes status
//! or services), not per stream.
//!
//! Owns its lock and nothing else; the inputs are read from the gossip table by the caller
//! ([`SubsetInputs::of`]), so the two locks are never held together.

#![deny(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::sync::lock;
use crate::gossip::Gossip;
use crate::routing::fnv1a;
use crate::routing::subset::{subset_of, widen, Aperture};

/// What a subset is computed from, as read from the gossip table at one roster.
pub(crate) struct SubsetInputs {
    roster: u64,
    /// Every member that is not gone, this node included, as ids.
    callers: Vec<u64>,
    /// The members that offer the service and take work, this node included.
    servers: Vec<(u64, String)>,
    /// Whether another member offers it but takes no work now (draining, dead, left).
    idle: bool,
}

impl SubsetInputs {
    /// Reads the callers and the servers of `service` from `gossip`.
    pub fn of(gossip: &Gossip, service: &str) -> Self {
        let me = gossip.me();
        let mut callers = vec![fnv1a(me.name.as_bytes())];
        let mut servers = Vec::new();
        let mut idle = false;
        for m in std::iter::once(me).chain(gossip.members()) {
            let offers = m.services.iter().any(|s| s == service);
            if m.name != me.name && offers && !m.status.takes_work() {
                idle = true;
            }
            if m.status.is_gone() {
                continue;
            }
            let id = fnv1a(m.name.as_bytes());
            if m.name != me.name {
                callers.push(id);
            }
            if m.status.takes_work() && offers {
                servers.push((id, m.name.clone()));
            }
        }
        SubsetInputs {
            roster: gossip.roster(),
            callers,
            servers,
            idle,
        }
    }
}

/// The servers of a service this node routes to.
#[derive(Clone)]
pub(crate) struct Subset {
    /// By name, best first, without this node.
    pub servers: Arc<[String]>,
    /// Whether another member offers the service but takes no work now.
    pub idle_elsewhere: bool,
}

struct Cached {
    roster: u64,
    idle: bool,
    size: usize,
    me: u64,
    ids: Vec<u64>,
    names: Vec<String>,
    base: Vec<usize>,
    aperture: Aperture,
    /// The subset widened by the aperture, by name, without this node.
    current: Arc<[String]>,
}

impl Cached {
    fn subset(&self) -> Subset {
        Subset {
            servers: self.current.clone(),
            idle_elsewhere: self.idle,
        }
    }

    fn refresh(&mut self, me: &str) {
        let wide = widen(self.me, &self.ids, &self.base, self.aperture.extra());
        self.current = wide
            .into_iter()
            .filter_map(|i| self.names.get(i))
            .filter(|n| n.as_str() != me)
            .cloned()
            .collect();
    }
}

/// The subsets of the services this node routes.
pub(crate) struct Subsets {
    me: String,
    cache: Mutex<BTreeMap<String, Cached>>,
}

impl Subsets {
    /// No subsets yet, for the node named `me`.
    pub fn new(me: &str) -> Self {
        Subsets {
            me: me.to_owned(),
            cache: Mutex::new(BTreeMap::new()),
        }
    }

    /// The servers of `service` to route to (other than this node), if computed at `roster`
    /// with `size`.
    pub fn cached(&self, service: &str, roster: u64, size: usize) -> Option<Subset> {
        lock(&self.cache)
            .get(service)
            .filter(|c| c.roster == roster && c.size == size)
            .map(Cached::subset)
    }

    /// Computes (and keeps) the subset of `service` from `inputs`; `size` is
    /// `routing.subset_size`, or `usize::MAX` for every server. The aperture's widening
    /// carries over.
    pub fn compute(&self, service: &str, inputs: SubsetInputs, size: usize) -> Subset {
        let me = fnv1a(self.me.as_bytes());
        let ids: Vec<u64> = inputs.servers.iter().map(|(id, _)| *id).collect();
        let base = subset_of(me, &inputs.callers, &ids, size);
        let mut cache = lock(&self.cache);
        let aperture = cache.remove(service).map(|c| c.aperture).unwrap_or_default();
        let mut c = Cached {
            roster: inputs.roster,
            idle: inputs.idle,
            size,
            me,
            names: inputs.servers.into_iter().map(|(_, n)| n).collect(),
            ids,
            base,
            aperture,
            current: Arc::from(Vec::new()),
        };
        c.refresh(&self.me);
        let subset = c.subset();
        cache.insert(service.to_owned(), c);
        subset
    }

    /// This node has `inflight` streams open to the `servers` servers of `service` it routes
    /// to: widens or narrows the subset (see [`Aperture`]).
    pub fn observe(&self, service: &str, inflight: u64, servers: usize, now: Duration) {
        let mut cache = lock(&self.cache);
        let Some(c) = cache.get_mut(service) else { return };
        let before = c.aperture.extra();
        let max_extra = c.ids.len().saturating_sub(c.base.len());
        if c.aperture.update(inflight, servers, now, max_extra) != before {
            c.refresh(&self.me);
        }
    }
}
