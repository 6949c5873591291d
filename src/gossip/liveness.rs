//! Judging members: φ on the linked ones, suspicions on a lost link, leases for the rest,
//! Lifeguard's suspicion timeouts, and forgetting the dead after `dead_ttl`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::state::{add_suspectors, stretch, At, Gossip, GossipEvent};
use super::{GossipConfig, Status};

impl Gossip {
    /// φ-accrual on the linked members, and the suspicions this node holds on direct evidence
    /// (a lost link).
    pub(super) fn detect(&mut self, now: Duration, linked: &[String]) {
        let threshold = self.cfg.phi_threshold * f64::from(self.local_health + 1);
        let mut changed = Vec::new();
        self.down.retain(|n| self.members.get(n).is_some_and(|e| e.link_down));
        let judged: BTreeSet<&String> = linked
            .iter()
            .chain(self.down.iter())
            .chain(self.lapsed.iter())
            .collect();
        let (cfg, health, me) = (&self.cfg, self.local_health, &self.me);
        for name in judged {
            let Some(e) = self.members.get_mut(name) else { continue };
            let linked_here = linked.binary_search(name).is_ok();
            let phi_silent = (!e.link_down && linked_here && e.detector.phi(now) > threshold)
                || (!linked_here && self.lapsed.contains(name));
            // A lost connection confirms a suspicion but never starts one on its own: after a
            // refutation only silence (φ) does.
            let silent = phi_silent || (e.link_down && e.member.status == Status::Suspect);
            match e.member.status {
                from @ (Status::Alive | Status::Draining) if phi_silent => {
                    let m = Arc::make_mut(&mut e.member);
                    m.status = Status::Suspect;
                    m.suspectors = vec![me.clone()];
                    e.suspect_since = Some(At::new(now));
                    self.events.push(GossipEvent::StatusChanged {
                        name: name.clone(),
                        from,
                        to: Status::Suspect,
                    });
                    changed.push(name.clone());
                }
                Status::Suspect if silent => {
                    // Our own observation confirms the suspicion.
                    if add_suspectors(&mut e.member, std::slice::from_ref(me)) {
                        changed.push(name.clone());
                    }
                    let timeout = suspicion_timeout(cfg, health, e.member.suspectors.len());
                    let since = e.suspect_since.get_or_insert(At::new(now)).get();
                    if now.saturating_sub(since) >= timeout {
                        let m = Arc::make_mut(&mut e.member);
                        m.status = Status::Dead;
                        m.suspectors.clear();
                        e.gone_since = Some(At::new(now));
                        self.gone.insert((At::new(now), name.clone()));
                        self.events.push(GossipEvent::StatusChanged {
                            name: name.clone(),
                            from: Status::Suspect,
                            to: Status::Dead,
                        });
                        changed.push(name.clone());
                    }
                }
                _ => {}
            }
        }
        for name in changed {
            self.touched(&name);
        }
    }

    /// Moves the members whose lease ran out (no renewal reached us, nothing heard from them
    /// directly) to `lapsed`, and back out those renewed since.
    pub(super) fn expire_leases(&mut self, now: Duration) {
        let lease = self.lease();
        let members = &self.members;
        self.lapsed.retain(|n| {
            members
                .get(n)
                .is_some_and(|e| !e.member.status.is_gone() && now.saturating_sub(e.renewed_at.get()) >= lease)
        });
        while let Some(&(at, id)) = self.renewals.front() {
            if now.saturating_sub(at.get()) < lease {
                break;
            }
            self.renewals.pop_front();
            let Some(e) = self.members.get_id(id) else { continue };
            if e.member.status.is_gone() {
                continue;
            }
            if e.renewed_at > at {
                // Heard from directly since (which records no renewal of its own).
                let renewed = e.renewed_at;
                self.queue_renewal(renewed, id);
                continue;
            }
            self.lapsed.insert(e.member.name.clone());
        }
    }

    /// Drops the Dead and Left records older than `dead_ttl` (in the order they went, so that
    /// no round walks every member).
    pub(super) fn collect(&mut self, now: Duration) {
        let ttl = self.cfg.dead_ttl;
        while let Some((since, name)) = self.gone.first().cloned() {
            if now.saturating_sub(since.get()) < ttl {
                break;
            }
            self.gone.pop_first();
            // Stale if the member came back, or went again later.
            let Some(e) = self.members.get(&name) else { continue };
            if e.gone_since != Some(since) {
                continue;
            }
            let (inc, hash) = (e.member.incarnation, e.hash);
            // The id before the entry goes: with it the id may be freed, and reused.
            if let Some(id) = self.members.names().id(&name) {
                self.sums.remove(&name, id, hash);
                self.news.remove(id);
            }
            self.members.remove(&name);
            // Remember the death long enough for every stale copy of the record to die out.
            self.tombstones.insert(name.clone(), (inc, now + ttl.saturating_mul(4)));
            self.events.push(GossipEvent::Forgotten { name });
        }
        if self.tombstones.first_key_value().is_some() {
            self.tombstones.retain(|_, (_, until)| *until > now);
        }
        let members = &self.members;
        self.cursors.retain(|peer, _| members.contains_key(peer));
    }
}

/// Lifeguard's suspicion timeout (Dadgar et al. 2018, §4.2): `suspicion_max` with a single
/// suspector, falling logarithmically to `suspicion_min` at `confirmations` independent ones,
/// and stretched by this node's local-health multiplier.
fn suspicion_timeout(cfg: &GossipConfig, local_health: u32, suspectors: usize) -> Duration {
    let (min, max) = (cfg.suspicion_min.as_secs_f64(), cfg.suspicion_max.as_secs_f64());
    let k = cfg.confirmations as f64;
    let c = (suspectors.max(1) - 1) as f64;
    let frac = if k <= 1.0 {
        1.0
    } else {
        ((c + 1.0).ln() / k.ln()).min(1.0)
    };
    let t = (max - (max - min) * frac).max(min);
    stretch(Duration::from_secs_f64(t), local_health)
}
