//! Rebuilding the local service set after anything it is made of changed: the base set
//! (configuration and handlers, replaced by a reload), the run-time registrations, and the
//! health of checked backends. Sets what is checked and kept warm, and announces the node's
//! new service list by gossip at once.

use super::health_table::Wanted;
use super::services::{Local, ServiceSet};
use super::state::State;
use super::sync::lock;
use crate::config::parse_allow;

/// Rebuilds the local service set from the base set and the registrations, and announces
/// the new service list by gossip at once.
pub(crate) fn apply(shared: &State) {
    // One rebuild at a time, from reading the parts to announcing: two at once could put an
    // older result in force after a newer one. (No await inside; callers hold no lock.)
    let _one = lock(&shared.rebuilding);
    let mut set: ServiceSet = (*shared.services.base()).clone();
    for (name, r) in lock(&shared.registry).entries() {
        set.local.insert(name.clone(), Local::Tcp(r.backend.clone()));
        match &r.check {
            Some(c) => set.checks.insert(name.clone(), c.clone()),
            None => set.checks.remove(name),
        };
        match r.pool {
            Some(p) => set.pools.insert(name.clone(), p),
            None => set.pools.remove(name),
        };
        // Checked when registered.
        if let Ok(ids) = parse_allow("allow", &r.allow) {
            if !ids.is_empty() {
                set.allow.insert(name.clone(), ids);
            }
        }
    }
    // Checks follow the set; a service whose backend is critical is not offered (here or by
    // gossip) until it passes again.
    let wanted: Wanted = set
        .checks
        .iter()
        .filter_map(|(n, c)| match set.local.get(n) {
            Some(Local::Tcp(b)) => Some((n.clone(), (b.clone(), c.clone()))),
            _ => None,
        })
        .collect();
    for name in shared.health.critical(&wanted) {
        set.local.remove(&name);
    }
    shared.health.wanted().set(wanted);
    // Pools follow what is offered: a critical backend's warm connections are closed too.
    let pools: super::warm_pools::Wanted = set
        .pools
        .iter()
        .filter_map(|(n, p)| match set.local.get(n) {
            Some(Local::Tcp(b)) => Some((n.clone(), (b.clone(), *p))),
            _ => None,
        })
        .collect();
    shared.pools.wanted().set(pools);
    let names: Vec<String> = set.local.keys().cloned().collect();
    shared.services.replace(set);
    shared.announce(|g| g.set_services(names));
    shared.registry_changed.notify_one();
}
