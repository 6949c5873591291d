//! Merging a record that came in gossip into this node's view: precedence, suspicions and
//! their confirmations, restarts, and refuting what others say about this node.

use std::sync::Arc;
use std::time::Duration;

use super::names::Id;
use super::state::{add_suspectors, At, Entry, Gossip, GossipEvent};
use super::{Member, PhiDetector, Status};

impl Gossip {
    /// Takes `incoming` if it is newer than what this node holds (or refutes it, if it is
    /// about this node).
    pub(super) fn merge(&mut self, incoming: Arc<Member>, now: Duration) {
        let name = incoming.name.clone();
        if self.merge_record(incoming, now) {
            self.touched(&name);
        }
    }

    /// Queues a renewal at `at` (mostly now, so mostly at the back).
    pub(super) fn queue_renewal(&mut self, at: At, id: Id) {
        let i = self.renewals.partition_point(|&(t, _)| t <= at);
        self.renewals.insert(i, (at, id));
    }

    /// [`Gossip::merge`]; whether the record held changed.
    fn merge_record(&mut self, incoming: Arc<Member>, now: Duration) -> bool {
        if incoming.name == self.me {
            self.about_me(&incoming);
            return false;
        }
        if let Some((inc, _)) = self.tombstones.get(&incoming.name) {
            if incoming.incarnation <= *inc {
                return false;
            }
            self.tombstones.remove(&incoming.name);
        }
        let floor = self.cfg.interval;
        let at = At::new(now);
        let mut incoming = incoming;
        let name = incoming.name.clone();
        let id = self.members.names().id(&name);
        let Some((id, e)) = id.and_then(|id| Some((id, self.members.get_id_mut(id)?))) else {
            self.events.push(GossipEvent::Joined {
                name: incoming.name.clone(),
                incarnation: incoming.incarnation,
            });
            let status = incoming.status;
            if status.is_gone() {
                self.gone.insert((at, name.clone()));
            }
            let id = self.members.insert(
                &name,
                Entry {
                    detector: PhiDetector::new(now, floor),
                    hash: 0,
                    heartbeat_at: at,
                    renewed_at: at,
                    suspect_since: (status == Status::Suspect).then_some(at),
                    gone_since: status.is_gone().then_some(at),
                    link_down: false,
                    // Not a shape: the caller's `touched` sees a change and bumps the roster.
                    shape: 0,
                    member: incoming,
                },
            );
            self.queue_renewal(at, id);
            // In with a hash of 0; the caller's `touched` puts the real one in.
            self.sums.insert(&name, id, 0);
            return true;
        };
        // A Dead verdict at the incarnation we know, about a member whose heartbeat we saw
        // advance within the last few rounds (over a link not known to be down), comes from
        // members that lost sight of it (the far side of a healed partition): we have fresher
        // evidence that it lives. (The verdict's heartbeat proves nothing: a healed side's
        // Dead record picks up the live heartbeats of our digests.) A member that really
        // crashed was silent for a whole suspicion before anyone declared it dead, so this
        // never delays a real death. Taken as a suspicion, the member refutes it as any other
        // and stays routable meanwhile; adopted as a death, every node on our side stopped
        // routing to members it talks to (chaos soak, seed 2).
        // The suspicion is built on our own record, not the verdict's: that one is the far
        // side's copy, frozen (services, load) when it gave up on the member. A Draining
        // member is left alone: it takes no work either way.
        if incoming.status == Status::Dead
            && incoming.incarnation == e.member.incarnation
            && matches!(e.member.status, Status::Alive | Status::Suspect)
            && !e.link_down
            && now.saturating_sub(e.detector.last_heartbeat()) <= floor * 5
        {
            let mut ours = e.member.clone();
            if ours.status == Status::Alive {
                let m = Arc::make_mut(&mut ours);
                m.status = Status::Suspect;
                m.suspectors.clear();
            }
            incoming = ours;
        }
        let ours = e.member.key();
        let theirs = incoming.key();
        if theirs < ours {
            return false;
        }
        if theirs == ours {
            // Same suspicion seen by different members: merge the confirmations.
            if e.member.status == Status::Suspect {
                return add_suspectors(&mut e.member, &incoming.suspectors);
            }
            return false;
        }
        let old_status = e.member.status;
        // The owner's own change (not an observer's opinion) renews its lease.
        let renewed = (incoming.incarnation, incoming.version) > (e.member.incarnation, e.member.version);
        if renewed {
            e.renewed_at = at;
        }
        let heartbeat = if incoming.incarnation == e.member.incarnation {
            if incoming.heartbeat > e.member.heartbeat {
                e.heartbeat_at = at;
            }
            e.member.heartbeat.max(incoming.heartbeat)
        } else {
            e.heartbeat_at = at;
            // A restart: start observing afresh.
            e.detector = PhiDetector::new(now, floor);
            self.events.push(GossipEvent::Joined {
                name: incoming.name.clone(),
                incarnation: incoming.incarnation,
            });
            incoming.heartbeat
        };
        let mut m = incoming;
        if m.heartbeat != heartbeat {
            Arc::make_mut(&mut m).heartbeat = heartbeat;
        }
        if m.status == Status::Suspect && old_status == Status::Suspect && m.incarnation == e.member.incarnation {
            add_suspectors(&mut m, &e.member.suspectors);
        }
        match m.status {
            Status::Suspect => {
                e.suspect_since.get_or_insert(at);
                e.gone_since = None;
            }
            Status::Dead | Status::Left => {
                if e.gone_since.is_none() {
                    e.gone_since = Some(at);
                    self.gone.insert((at, name.clone()));
                }
            }
            Status::Alive | Status::Draining => {
                e.suspect_since = None;
                e.gone_since = None;
            }
        }
        if m.status != old_status {
            self.events.push(GossipEvent::StatusChanged {
                name: m.name.clone(),
                from: old_status,
                to: m.status,
            });
        }
        e.member = m;
        if renewed {
            self.queue_renewal(at, id);
        }
        true
    }

    /// Someone says something about us: refute a suspicion or death with a higher incarnation.
    fn about_me(&mut self, incoming: &Member) {
        let me = self.me().clone();
        let accused = matches!(incoming.status, Status::Suspect | Status::Dead);
        if accused && incoming.incarnation >= me.incarnation && me.status != Status::Left {
            let m = self.own_mut();
            m.incarnation = incoming.incarnation + 1;
            m.version += 1;
            let incarnation = m.incarnation;
            self.events.push(GossipEvent::Refuted { incarnation });
            let me = self.me.clone();
            self.touched(&me);
        }
    }
}
