//! The gossip state machine.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::seq::{IteratorRandom, SliceRandom};
use rand::Rng;

use super::news::{transmissions, News};
use super::sums::{record_hash, Sums};
use super::{GossipConfig, GossipMsg, Load, Member, PhiDetector, Status};

/// Something that changed in the membership, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipEvent {
    /// A member was seen for the first time (or came back with a new incarnation).
    Joined {
        /// Its name.
        name: String,
        /// Its incarnation.
        incarnation: u64,
    },
    /// A member's status changed.
    StatusChanged {
        /// Its name.
        name: String,
        /// Old status.
        from: Status,
        /// New status.
        to: Status,
    },
    /// This node refuted a suspicion about itself.
    Refuted {
        /// The new incarnation.
        incarnation: u64,
    },
    /// A Dead or Left record was dropped after `dead_ttl`.
    Forgotten {
        /// Its name.
        name: String,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) member: Member,
    /// Fed by what the member sends over this node's own link to it (gossip, pings), and
    /// by heartbeats in an older node's digests.
    pub(super) detector: PhiDetector,
    /// The record's hash in the sums.
    pub(super) hash: u32,
    /// When `member.heartbeat` last advanced (for the heartbeats an older node is shown).
    pub(super) heartbeat_at: Duration,
    /// When the owner last renewed its record (a new version or incarnation reached us), or
    /// this node last heard from it directly: its lease runs from here.
    pub(super) renewed_at: Duration,
    /// When this node first saw the current suspicion.
    pub(super) suspect_since: Option<Duration>,
    /// When this node first saw the member Dead or Left (recorded once).
    pub(super) gone_since: Option<Duration>,
    /// This node's own connection to the member is down (direct evidence, like silence).
    pub(super) link_down: bool,
    /// [`shape`] of the record as last seen.
    pub(super) shape: u64,
}

/// What of a record routing's subsets depend on: whether it takes work or is gone (not a
/// suspicion: a suspect still takes work), and its services.
fn shape(m: &Member) -> u64 {
    let class = if m.status.is_gone() {
        2
    } else if m.status.takes_work() {
        0
    } else {
        1
    };
    let mut h = crate::routing::fnv1a(&[class]);
    for s in &m.services {
        h = h.rotate_left(5) ^ crate::routing::fnv1a(s.as_bytes());
    }
    h
}

/// One node's view of the mesh. See the module docs of [`crate::gossip`].
#[derive(Debug, Clone)]
pub struct Gossip {
    pub(super) cfg: GossipConfig,
    pub(super) me: String,
    pub(super) own: Member,
    /// Every other member.
    pub(super) members: BTreeMap<String, Entry>,
    /// Forgotten members: incarnation at death, and when to forget the tombstone too.
    pub(super) tombstones: BTreeMap<String, (u64, Duration)>,
    /// The sums of every record, this node's own included (hashing to `own_hash`).
    pub(super) sums: Sums,
    own_hash: u32,
    own_shape: u64,
    /// Bumped whenever a member joins or changes status or services: see [`Gossip::roster`].
    roster: u64,
    /// Records that changed here lately, to piggyback on round openers.
    pub(super) news: News,
    /// Members whose link to this node was lost (judged on that evidence until it comes back).
    down: BTreeSet<String>,
    /// Dead and Left records by when this node saw them go, oldest first (entries whose
    /// member came back or went again later are skipped when they come up).
    gone: BTreeSet<(Duration, String)>,
    /// Renewals by time, oldest first, as `gone` (stale entries are skipped).
    renewals: BTreeSet<(Duration, String)>,
    /// Members whose lease ran out here with nobody linked to them heard from: judged silent.
    lapsed: BTreeSet<String>,
    /// This node's record version and when it last changed (it renews when it has not for a
    /// third of the lease).
    own_renewed: (u64, Duration),
    pub(super) local_health: u32,
    pub(super) sent_since_tick: u32,
    pub(super) heard_since_tick: u32,
    /// When the load was last published (None: never, so the first value goes out at once).
    load_published: Option<Duration>,
    pending_load: Option<Load>,
    load_every: Duration,
    events: Vec<GossipEvent>,
    /// Per peer, where the last of its replies that had to be cut to `max_delta` stopped (see
    /// [`super::exchange`]): each peer is behind on records of its own.
    pub(super) cursors: BTreeMap<String, Cursors>,
}

/// See [`Gossip::cursors`].
#[derive(Debug, Clone, Default)]
pub(super) struct Cursors {
    /// The last record name sent.
    pub(super) delta: String,
    /// The last name asked for.
    pub(super) want: String,
    /// The bucket after the last one compared.
    pub(super) bucket: usize,
}

/// Most suspectors a record carries: enough to reach `confirmations`, bounded against a
/// flood of confirmations.
const MAX_SUSPECTORS: usize = 16;

/// Adds `s` to a suspicion's suspectors unless it is there or the list is full; whether it
/// was added.
pub(super) fn add_suspector(suspectors: &mut Vec<String>, s: &str) -> bool {
    if suspectors.len() >= MAX_SUSPECTORS || suspectors.iter().any(|x| x == s) {
        return false;
    }
    suspectors.push(s.to_owned());
    true
}

fn stretch(d: Duration, factor: u32) -> Duration {
    d.saturating_mul(factor.saturating_add(1))
}

impl Gossip {
    /// A node's gossip state, starting with only its own record. `me.incarnation` should grow
    /// across restarts (the node uses its start time in milliseconds).
    pub fn new(cfg: GossipConfig, me: Member, now: Duration) -> Self {
        let load_every = cfg.load_gossip_interval;
        let own_version = me.version;
        let own_hash = record_hash(&me);
        let own_shape = shape(&me);
        let mut sums = Sums::default();
        sums.insert(&me.name, own_hash);
        Gossip {
            cfg,
            me: me.name.clone(),
            own: me,
            members: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            sums,
            own_hash,
            own_shape,
            roster: 0,
            news: News::default(),
            down: BTreeSet::new(),
            gone: BTreeSet::new(),
            renewals: BTreeSet::new(),
            lapsed: BTreeSet::new(),
            own_renewed: (own_version, now),
            local_health: 0,
            sent_since_tick: 0,
            heard_since_tick: 0,
            load_published: None,
            pending_load: None,
            load_every,
            events: Vec::new(),
            cursors: BTreeMap::new(),
        }
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.me
    }

    /// The configuration.
    pub fn config(&self) -> &GossipConfig {
        &self.cfg
    }

    /// This node's own record.
    pub fn me(&self) -> &Member {
        &self.own
    }

    fn own_mut(&mut self) -> &mut Member {
        &mut self.own
    }

    /// A member's record (this node's own included).
    pub fn member(&self, name: &str) -> Option<&Member> {
        if name == self.me {
            return Some(&self.own);
        }
        self.members.get(name).map(|e| &e.member)
    }

    /// All known members, this node included.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        std::iter::once(&self.own).chain(self.members.values().map(|e| &e.member))
    }

    /// φ of a member at `now` (how long it has been silent, in units of its usual silence).
    pub fn phi(&self, name: &str, now: Duration) -> Option<f64> {
        self.members.get(name).map(|e| e.detector.phi(now))
    }

    /// Lifeguard's local-health multiplier: 0 when this node hears its peers normally.
    pub fn local_health(&self) -> u32 {
        self.local_health
    }

    /// A number that changes whenever a member joins or any record's status or services
    /// change (not its load or heartbeat): what routing's subsets are computed from, so they
    /// are recomputed only then.
    pub fn roster(&self) -> u64 {
        self.roster
    }

    /// Takes the events since the last call.
    pub fn take_events(&mut self) -> Vec<GossipEvent> {
        std::mem::take(&mut self.events)
    }

    fn bump(&mut self) {
        let m = self.own_mut();
        m.version += 1;
        let me = self.me.clone();
        self.touched(&me);
    }

    /// `name`'s record changed here: update its hash in the sums and queue it as news.
    pub(super) fn touched(&mut self, name: &str) {
        let times = transmissions(self.cfg.retransmit_mult, self.members.len() + 1);
        if name == self.me {
            let h = record_hash(&self.own);
            self.sums.change(name, self.own_hash, h);
            self.own_hash = h;
            let sh = shape(&self.own);
            if sh != self.own_shape {
                self.own_shape = sh;
                self.roster += 1;
            }
        } else if let Some(e) = self.members.get_mut(name) {
            let h = record_hash(&e.member);
            self.sums.change(name, e.hash, h);
            e.hash = h;
            let sh = shape(&e.member);
            if sh != e.shape {
                e.shape = sh;
                self.roster += 1;
            }
        } else {
            return;
        }
        self.news.add(name, times);
    }

    /// The records to piggyback on one round opener (each counts as one transmission).
    pub(super) fn take_news(&mut self) -> Vec<Member> {
        let names = self.news.take(self.cfg.max_news);
        names.iter().filter_map(|n| self.member(n).cloned()).collect()
    }

    /// `peer` sent something over this node's own link to it (a gossip message, a ping or a
    /// pong): evidence that it is up, for failure detection.
    pub fn heard(&mut self, peer: &str, now: Duration) {
        self.heard_since_tick += 1;
        if let Some(e) = self.members.get_mut(peer) {
            e.detector.heartbeat(now);
            e.renewed_at = now;
        }
    }

    /// Replaces the services this node announces.
    pub fn set_services(&mut self, services: Vec<String>) {
        if self.me().services != services {
            self.own_mut().services = services;
            self.bump();
        }
    }

    /// Sets the least time between two publications of this node's load in its record
    /// (`load_gossip_interval` at first).
    pub fn publish_load_every(&mut self, every: Duration) {
        self.load_every = every;
    }

    /// Publishes this node's load in its record, at most once per `load_gossip_interval`
    /// (later values wait for the next tick). Routing reads load pushed over links instead.
    pub fn set_load(&mut self, load: Load, now: Duration) {
        if !load.differs_from(&self.me().load) {
            self.pending_load = None;
            return;
        }
        // Past a few hundred members the record's load would be most of what gossip carries
        // (every record changing every load_gossip_interval): the fleet's record changes for
        // load are held to about four per round. An older linked node routes on records, so
        // a shorter interval asked for it stands.
        let every = if self.load_every < self.cfg.load_gossip_interval {
            self.load_every
        } else {
            self.scaled(self.load_every)
        };
        if self.load_published.is_none_or(|t| now.saturating_sub(t) >= every) {
            self.own_mut().load = load;
            self.load_published = Some(now);
            self.pending_load = None;
            self.bump();
        } else {
            self.pending_load = Some(load);
        }
    }

    /// `base`, or N/4 gossip rounds past 4·base/interval members: for what every member
    /// republishes in its record periodically, so that the fleet's record changes stay about
    /// four a round for each such thing, whatever N.
    fn scaled(&self, base: Duration) -> Duration {
        let members = u32::try_from(self.members.len() + 1).unwrap_or(u32::MAX);
        base.max(self.cfg.interval.saturating_mul(members / 4))
    }

    /// How long a member's record stands without renewal before a node that has no link to
    /// it takes it for silent: `gossip.lease`, scaled as the renewals are (three renewals).
    fn lease(&self) -> Duration {
        self.scaled(self.cfg.lease / 3).saturating_mul(3)
    }

    /// Marks this node Draining (no new work) or Alive again.
    pub fn set_draining(&mut self, draining: bool) {
        let want = if draining { Status::Draining } else { Status::Alive };
        if self.me().status != want && self.me().status != Status::Left {
            self.own_mut().status = want;
            self.bump();
        }
    }

    /// Marks this node Left: a graceful goodbye that others keep for `dead_ttl`.
    pub fn leave(&mut self) {
        if self.me().status != Status::Left {
            self.own_mut().status = Status::Left;
            self.bump();
        }
    }

    /// A peer connection came up (the caller opens a round with it at once, with
    /// [`Gossip::opener`] or, to an older node, [`Gossip::legacy_syn`]). Its failure detector
    /// starts afresh: the link is the evidence from now on, and silence from before the link
    /// (when nothing was expected of it) counts for nothing.
    pub fn connected(&mut self, peer: &str, now: Duration) {
        let floor = self.cfg.interval;
        if let Some(e) = self.members.get_mut(peer) {
            e.link_down = false;
            e.detector = PhiDetector::new(now, floor);
        }
    }

    /// A peer connection went down: direct evidence, so suspect it now (if it is not already).
    /// It becomes Dead only through the usual suspicion timeout, giving it time to refute
    /// through other members if only this link failed.
    pub fn disconnected(&mut self, peer: &str, now: Duration) {
        let me = self.me.clone();
        let Some(e) = self.members.get_mut(peer) else { return };
        e.link_down = true;
        self.down.insert(peer.to_owned());
        if e.member.status.rank() == 0 {
            let from = e.member.status;
            e.member.status = Status::Suspect;
            e.member.suspectors = vec![me];
            e.suspect_since = Some(now);
            self.events.push(GossipEvent::StatusChanged {
                name: peer.to_owned(),
                from,
                to: Status::Suspect,
            });
            self.touched(peer);
        }
    }

    /// Takes `incoming` if it is newer than what this node holds (or refutes it, if it is
    /// about this node).
    pub(super) fn merge(&mut self, incoming: Member, now: Duration) {
        let name = incoming.name.clone();
        if self.merge_record(incoming, now) {
            self.touched(&name);
        }
    }

    /// [`Gossip::merge`]; whether the record held changed.
    fn merge_record(&mut self, incoming: Member, now: Duration) -> bool {
        if incoming.name == self.me {
            self.about_me(incoming);
            return false;
        }
        if let Some((inc, _)) = self.tombstones.get(&incoming.name) {
            if incoming.incarnation <= *inc {
                return false;
            }
            self.tombstones.remove(&incoming.name);
        }
        let floor = self.cfg.interval;
        let mut incoming = incoming;
        let name = incoming.name.clone();
        let Some(e) = self.members.get_mut(&name) else {
            self.events.push(GossipEvent::Joined {
                name: incoming.name.clone(),
                incarnation: incoming.incarnation,
            });
            let status = incoming.status;
            if status.is_gone() {
                self.gone.insert((now, name.clone()));
            }
            self.renewals.insert((now, name.clone()));
            self.members.insert(
                incoming.name.clone(),
                Entry {
                    detector: PhiDetector::new(now, floor),
                    hash: 0,
                    heartbeat_at: now,
                    renewed_at: now,
                    suspect_since: (status == Status::Suspect).then_some(now),
                    gone_since: status.is_gone().then_some(now),
                    link_down: false,
                    // Not a shape: the caller's `touched` sees a change and bumps the roster.
                    shape: 0,
                    member: incoming,
                },
            );
            // In with a hash of 0; the caller's `touched` puts the real one in.
            self.sums.insert(&name, 0);
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
                ours.status = Status::Suspect;
                ours.suspectors.clear();
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
            let mut added = false;
            if e.member.status == Status::Suspect {
                for s in &incoming.suspectors {
                    added |= add_suspector(&mut e.member.suspectors, s);
                }
            }
            return added;
        }
        let old_status = e.member.status;
        // The owner's own change (not an observer's opinion) renews its lease.
        if (incoming.incarnation, incoming.version) > (e.member.incarnation, e.member.version) {
            e.renewed_at = now;
            self.renewals.insert((now, name.clone()));
        }
        let heartbeat = if incoming.incarnation == e.member.incarnation {
            if incoming.heartbeat > e.member.heartbeat {
                e.heartbeat_at = now;
            }
            e.member.heartbeat.max(incoming.heartbeat)
        } else {
            e.heartbeat_at = now;
            // A restart: start observing afresh.
            e.detector = PhiDetector::new(now, floor);
            self.events.push(GossipEvent::Joined {
                name: incoming.name.clone(),
                incarnation: incoming.incarnation,
            });
            incoming.heartbeat
        };
        let mut m = incoming;
        m.heartbeat = heartbeat;
        if m.status == Status::Suspect && old_status == Status::Suspect && m.incarnation == e.member.incarnation {
            for s in std::mem::take(&mut e.member.suspectors) {
                add_suspector(&mut m.suspectors, &s);
            }
        }
        match m.status {
            Status::Suspect => {
                e.suspect_since.get_or_insert(now);
                e.gone_since = None;
            }
            Status::Dead | Status::Left => {
                if e.gone_since.is_none() {
                    e.gone_since = Some(now);
                    self.gone.insert((now, name.clone()));
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
        true
    }

    /// Someone says something about us: refute a suspicion or death with a higher incarnation.
    fn about_me(&mut self, incoming: Member) {
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

    /// One round over a full mesh: every member is taken to be linked (see
    /// [`Gossip::tick_among`]).
    pub fn tick<R: Rng + ?Sized>(&mut self, now: Duration, rng: &mut R) -> Vec<(String, GossipMsg)> {
        let all: Vec<String> = self.members.keys().cloned().collect();
        self.tick_among(now, rng, &all)
    }

    /// One round: heartbeat, failure detection, garbage collection, and the openers to send,
    /// to `fanout` of the members in `linked` (those this node has a link to, sorted). Only
    /// linked members are judged by φ, on what they send over the link: a member is watched
    /// by the few that link to it, and suspicions spread as news. Nothing here walks every
    /// member, so a round costs the same at ten members as at ten thousand.
    pub fn tick_among<R: Rng + ?Sized>(
        &mut self,
        now: Duration,
        rng: &mut R,
        linked: &[String],
    ) -> Vec<(String, GossipMsg)> {
        // Lifeguard local health: a node that sent but heard nothing back doubts itself first.
        if self.sent_since_tick > 0 && self.heard_since_tick == 0 {
            self.local_health = (self.local_health + 1).min(self.cfg.max_local_health);
        } else if self.heard_since_tick > 0 {
            self.local_health = self.local_health.saturating_sub(1);
        }
        self.sent_since_tick = 0;
        self.heard_since_tick = 0;

        if let Some(load) = self.pending_load.take() {
            self.set_load(load, now);
        }
        self.own_mut().heartbeat += 1;
        if self.own.version != self.own_renewed.0 {
            self.own_renewed = (self.own.version, now);
        } else if now.saturating_sub(self.own_renewed.1) >= self.scaled(self.cfg.lease / 3) {
            // Renew the lease: members with no link to us read silence from its running out.
            self.bump();
            self.own_renewed = (self.own.version, now);
        }
        self.expire_leases(now);
        self.detect(now, linked);
        self.collect(now);

        let is = |n: &String, gone: bool| self.members.get(n).is_some_and(|e| e.member.status.is_gone() == gone);
        let mut targets: Vec<String> = linked
            .iter()
            .filter(|n| is(n, false))
            .choose_multiple(rng, self.cfg.fanout)
            .into_iter()
            .cloned()
            .collect();
        // The sample's order is not random, and the first target gets the anti-entropy round.
        targets.shuffle(rng);
        // Now and then talk to a linked member we think is gone, so that a healed partition
        // merges.
        let gone = linked.iter().filter(|n| is(n, true)).count();
        if gone > 0 && rng.random_range(0..(gone + targets.len() + 1)) < gone {
            if let Some(n) = linked.iter().filter(|n| is(n, true)).choose(rng) {
                targets.push(n.clone());
            }
        }
        let probe = gone > 0 && targets.last().is_some_and(|n| is(n, true));
        // Anti-entropy with one of them (its cost is the sums, 256 B), and with a member held
        // gone (which is what tells a healed partition's far side); news to all.
        let last = targets.len().saturating_sub(1);
        let mut out = Vec::with_capacity(targets.len());
        for (i, t) in targets.into_iter().enumerate() {
            let msg = if i == 0 || (probe && i == last) {
                self.opener()
            } else {
                self.news_only()
            };
            out.push((t, msg));
        }
        out
    }

    /// φ-accrual on the linked members, and the suspicions this node holds on direct evidence
    /// (a lost link).
    fn detect(&mut self, now: Duration, linked: &[String]) {
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
                    e.member.status = Status::Suspect;
                    e.member.suspectors = vec![me.clone()];
                    e.suspect_since = Some(now);
                    self.events.push(GossipEvent::StatusChanged {
                        name: name.clone(),
                        from,
                        to: Status::Suspect,
                    });
                    changed.push(name.clone());
                }
                Status::Suspect if silent => {
                    // Our own observation confirms the suspicion.
                    if add_suspector(&mut e.member.suspectors, me) {
                        changed.push(name.clone());
                    }
                    let timeout = suspicion_timeout(cfg, health, e.member.suspectors.len());
                    let since = *e.suspect_since.get_or_insert(now);
                    if now.saturating_sub(since) >= timeout {
                        e.member.status = Status::Dead;
                        e.member.suspectors.clear();
                        e.gone_since = Some(now);
                        self.gone.insert((now, name.clone()));
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
    fn expire_leases(&mut self, now: Duration) {
        let lease = self.lease();
        let members = &self.members;
        self.lapsed.retain(|n| {
            members
                .get(n)
                .is_some_and(|e| !e.member.status.is_gone() && now.saturating_sub(e.renewed_at) >= lease)
        });
        while let Some((at, name)) = self.renewals.first().cloned() {
            if now.saturating_sub(at) < lease {
                break;
            }
            self.renewals.pop_first();
            let Some(e) = self.members.get(&name) else { continue };
            if e.member.status.is_gone() {
                continue;
            }
            if e.renewed_at > at {
                // Heard from directly since (which records no renewal of its own).
                self.renewals.insert((e.renewed_at, name));
                continue;
            }
            self.lapsed.insert(name);
        }
    }

    /// Drops the Dead and Left records older than `dead_ttl` (in the order they went, so that
    /// no round walks every member).
    fn collect(&mut self, now: Duration) {
        let ttl = self.cfg.dead_ttl;
        while let Some((since, name)) = self.gone.first().cloned() {
            if now.saturating_sub(since) < ttl {
                break;
            }
            self.gone.pop_first();
            // Stale if the member came back, or went again later.
            let Some(e) = self.members.get(&name) else { continue };
            if e.gone_since != Some(since) {
                continue;
            }
            let (inc, hash) = (e.member.incarnation, e.hash);
            self.members.remove(&name);
            self.sums.remove(&name, hash);
            self.news.remove(&name);
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A fresh node with default settings (shared with the other files' tests).
    pub(in crate::gossip) fn node(name: &str) -> Gossip {
        Gossip::new(
            GossipConfig::default(),
            Member::new(name, "127.0.0.1:1", 1, Vec::new()),
            Duration::ZERO,
        )
    }

    #[test]
    fn the_roster_changes_with_joins_services_and_drain_but_not_with_load_or_suspicion() {
        let ms = Duration::from_millis;
        let mut a = node("a");
        let r0 = a.roster();
        let mut b = Member::new("b", "127.0.0.1:2", 7, vec!["api".into()]);
        a.handle("b", GossipMsg::Ack { delta: vec![b.clone()] }, ms(0));
        let r1 = a.roster();
        assert_ne!(r0, r1, "a join");
        b.version += 1;
        b.load.inflight = 40;
        a.handle("b", GossipMsg::Ack { delta: vec![b.clone()] }, ms(1));
        assert_eq!(a.roster(), r1, "load alone");
        b.version += 1;
        b.status = Status::Suspect;
        a.handle("b", GossipMsg::Ack { delta: vec![b.clone()] }, ms(2));
        assert_eq!(a.roster(), r1, "a suspect still takes work");
        b.incarnation += 1;
        b.status = Status::Alive;
        b.services.push("db".into());
        a.handle("b", GossipMsg::Ack { delta: vec![b.clone()] }, ms(3));
        let r2 = a.roster();
        assert_ne!(r2, r1, "services");
        a.set_draining(true);
        assert_ne!(a.roster(), r2, "this node draining");
    }

    #[test]
    fn a_suspected_node_refutes_with_a_higher_incarnation() {
        let mut a = node("a");
        let mut rumour = a.me().clone();
        rumour.status = Status::Suspect;
        rumour.suspectors = vec!["b".into()];
        a.handle("b", GossipMsg::Ack { delta: vec![rumour] }, Duration::ZERO);
        assert_eq!(a.me().incarnation, 2);
        assert_eq!(a.me().status, Status::Alive);
        assert!(a.take_events().contains(&GossipEvent::Refuted { incarnation: 2 }));
    }

    #[test]
    fn a_stale_death_from_a_healed_partition_is_a_suspicion_where_the_member_is_heard() {
        let ms = Duration::from_millis;
        let mut a = node("a");
        let b = Member::new("b", "127.0.0.1:2", 7, Vec::new());
        a.handle("b", GossipMsg::Ack { delta: vec![b.clone()] }, ms(0));
        // a hears from b over its link every round.
        for round in 1..=20u64 {
            a.heard("b", ms(200 * round));
        }
        a.take_events();
        // The far side declared b dead; its record has since picked up b's live heartbeat.
        let mut verdict = b.clone();
        verdict.status = Status::Dead;
        verdict.heartbeat = 20;
        verdict.services = vec!["stale".into()];
        a.handle(
            "d",
            GossipMsg::Ack {
                delta: vec![verdict.clone()],
            },
            ms(4_050),
        );
        assert_eq!(a.member("b").map(|m| m.status), Some(Status::Suspect));
        assert!(
            a.member("b").is_some_and(|m| m.services.is_empty()),
            "the far side's stale copy was taken"
        );
        // b refutes; its Alive record at a higher incarnation wins.
        let mut refuted = b.clone();
        refuted.incarnation = 8;
        a.handle("b", GossipMsg::Ack { delta: vec![refuted] }, ms(4_100));
        assert_eq!(a.member("b").map(|m| m.status), Some(Status::Alive));

        // Where b has gone silent, the same verdict is a death.
        let mut quiet = node("a");
        quiet.handle("b", GossipMsg::Ack { delta: vec![b.clone()] }, ms(0));
        quiet.heard("b", ms(200));
        quiet.handle("d", GossipMsg::Ack { delta: vec![verdict] }, ms(60_000));
        assert_eq!(quiet.member("b").map(|m| m.status), Some(Status::Dead));
    }

    #[test]
    fn load_is_published_at_a_bounded_rate() {
        let mut a = node("a");
        let v0 = a.me().version;
        let load = |n| Load {
            inflight: n,
            ..Default::default()
        };
        a.set_load(load(1), Duration::from_secs(1));
        a.set_load(load(2), Duration::from_millis(1100));
        a.set_load(load(3), Duration::from_millis(1200));
        assert_eq!(a.me().version, v0 + 1, "one publication per load_gossip_interval");
        assert_eq!(a.me().load.inflight, 1);
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        a.tick(Duration::from_millis(10_900), &mut rng);
        assert_eq!(a.me().load.inflight, 1, "not before load_gossip_interval (10 s)");
        a.tick(Duration::from_millis(11_000), &mut rng);
        assert_eq!(
            a.me().load.inflight,
            3,
            "the latest pending value goes out at the next tick"
        );
    }

    #[test]
    fn only_linked_members_are_judged_on_the_link_and_the_others_by_their_leases() {
        let ms = Duration::from_millis;
        let mut a = node("a");
        let b = Member::new("b", "127.0.0.1:2", 1, Vec::new());
        let mut c = Member::new("c", "127.0.0.1:3", 1, Vec::new());
        let d = Member::new("d", "127.0.0.1:4", 1, Vec::new());
        let e = Member::new("e", "127.0.0.1:5", 1, Vec::new());
        a.handle(
            "x",
            GossipMsg::Ack {
                delta: vec![b, c.clone(), d, e],
            },
            ms(0),
        );
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        let linked = vec!["b".to_string(), "d".to_string()];
        for round in 1..=175u64 {
            let now = ms(200 * round);
            if round <= 100 {
                a.heard("b", now);
            }
            // d is heard throughout: this node is not the one cut off.
            a.heard("d", now);
            // c, never linked, renews its record every 10 s (a third of the lease), as a live
            // member does; e stops renewing.
            if round % 50 == 0 {
                c.version += 1;
                a.handle("d", GossipMsg::Ack { delta: vec![c.clone()] }, now);
            }
            a.tick_among(now, &mut rng, &linked);
            if round == 140 {
                assert_eq!(a.member("e").map(|m| m.status), Some(Status::Alive), "within its lease");
            }
        }
        assert_eq!(
            a.member("c").map(|m| m.status),
            Some(Status::Alive),
            "renewed, not linked"
        );
        assert_eq!(
            a.member("b").map(|m| m.status),
            Some(Status::Dead),
            "b went silent on its link for 15 s"
        );
        assert_eq!(
            a.member("e").map(|m| m.status),
            Some(Status::Suspect),
            "e's lease (30 s) ran out at 30 s, and one suspector waits 6 s"
        );
        // c links up long after anything was heard of it on a link: no suspicion for that.
        a.connected("c", ms(35_200));
        a.heard("d", ms(35_400));
        a.tick_among(
            ms(35_400),
            &mut rng,
            &["b".to_string(), "c".to_string(), "d".to_string()],
        );
        assert_eq!(a.member("c").map(|m| m.status), Some(Status::Alive));
    }

    #[test]
    fn a_node_renews_its_record_every_third_of_the_lease() {
        let mut a = node("a");
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        let v0 = a.me().version;
        for round in 1..=250u64 {
            a.tick(Duration::from_millis(200 * round), &mut rng);
        }
        assert_eq!(a.me().version, v0 + 5, "50 s: renewed at 10, 20, 30, 40 and 50 s");
    }
}
