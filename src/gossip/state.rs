//! The gossip state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use rand::seq::{IteratorRandom, SliceRandom};
use rand::Rng;

use super::names::{Id, Names, Slots};
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

/// A point in the node's time, in microseconds, in 8 bytes with room for `None` in an
/// `Option` (the node holds several per member, for every member).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct At(NonZeroU64);

impl At {
    pub(super) fn new(d: Duration) -> Self {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1);
        At(NonZeroU64::MIN.saturating_add(us))
    }

    pub(super) fn get(self) -> Duration {
        Duration::from_micros(self.0.get() - 1)
    }
}

/// One member as this node holds it: 80 bytes besides the record, which is shared with the
/// messages it came in and, in the simulator, with the other nodes that hold the same copy.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Changed in place only through [`Arc::make_mut`] (copy on write).
    pub(super) member: Arc<Member>,
    /// Fed by what the member sends over this node's own link to it (gossip, pings), and
    /// by heartbeats in an older node's digests.
    pub(super) detector: PhiDetector,
    /// The record's hash in the sums.
    pub(super) hash: u32,
    /// When `member.heartbeat` last advanced (for the heartbeats an older node is shown).
    pub(super) heartbeat_at: At,
    /// When the owner last renewed its record (a new version or incarnation reached us), or
    /// this node last heard from it directly: its lease runs from here.
    pub(super) renewed_at: At,
    /// When this node first saw the current suspicion.
    pub(super) suspect_since: Option<At>,
    /// When this node first saw the member Dead or Left (recorded once).
    pub(super) gone_since: Option<At>,
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
    pub(super) own_id: Id,
    /// Every other member, by id.
    pub(super) members: Slots<Entry>,
    /// Forgotten members: incarnation at death, and when to forget the tombstone too.
    pub(super) tombstones: BTreeMap<String, (u64, Duration)>,
    /// The sums of every record, this node's own included (hashing to `own_hash`).
    pub(super) sums: Sums,
    pub(super) own_hash: u32,
    pub(super) own_shape: u64,
    /// Bumped whenever a member joins or changes status or services: see [`Gossip::roster`].
    pub(super) roster: u64,
    /// Records that changed here lately, to piggyback on round openers.
    pub(super) news: News,
    /// Members whose link to this node was lost (judged on that evidence until it comes back).
    pub(super) down: BTreeSet<String>,
    /// Dead and Left records by when this node saw them go, oldest first (entries whose
    /// member came back or went again later are skipped when they come up).
    pub(super) gone: BTreeSet<(At, String)>,
    /// Renewals by time, oldest first, as `gone` (stale entries are skipped): a queue, as
    /// time only moves forward (16 bytes each; one or two per member are queued).
    pub(super) renewals: VecDeque<(At, Id)>,
    /// Members whose lease ran out here with nobody linked to them heard from: judged silent.
    pub(super) lapsed: BTreeSet<String>,
    /// This node's record version and when it last changed (it renews when it has not for a
    /// third of the lease).
    pub(super) own_renewed: (u64, Duration),
    pub(super) local_health: u32,
    pub(super) sent_since_tick: u32,
    pub(super) heard_since_tick: u32,
    /// When the load was last published (None: never, so the first value goes out at once).
    pub(super) load_published: Option<Duration>,
    pub(super) pending_load: Option<Load>,
    pub(super) load_every: Duration,
    pub(super) events: Vec<GossipEvent>,
    /// Per peer, where the last of its replies that had to be cut to `max_delta` stopped (see
    /// exchange.rs): each peer is behind on records of its own.
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

/// Adds those of `from` that `member`'s suspectors lack (as [`add_suspector`]), copying the
/// shared record only if one is added; whether any was.
pub(super) fn add_suspectors(member: &mut Arc<Member>, from: &[String]) -> bool {
    let has = &member.suspectors;
    if has.len() >= MAX_SUSPECTORS || from.iter().all(|s| has.contains(s)) {
        return false;
    }
    let m = Arc::make_mut(member);
    let mut added = false;
    for s in from {
        added |= add_suspector(&mut m.suspectors, s);
    }
    added
}

pub(super) fn stretch(d: Duration, factor: u32) -> Duration {
    d.saturating_mul(factor.saturating_add(1))
}

impl Gossip {
    /// A node's gossip state, starting with only its own record. `me.incarnation` should grow
    /// across restarts (the node uses its start time in milliseconds).
    pub fn new(cfg: GossipConfig, me: Member, now: Duration) -> Self {
        Self::with_names(cfg, me, now, Names::default())
    }

    /// [`Gossip::new`] with member ids from `names`, a table shared with other nodes of the
    /// same process (the simulator's thousands of nodes share one, and so each name once).
    pub fn with_names(cfg: GossipConfig, me: Member, now: Duration, names: Names) -> Self {
        // Held for as long as the process runs: a node's own name is never forgotten.
        let own_id = names.acquire(&me.name);
        let load_every = cfg.load_gossip_interval;
        let own_version = me.version;
        let own_hash = record_hash(&me);
        let own_shape = shape(&me);
        let mut sums = Sums::default();
        sums.insert(&me.name, own_id, own_hash);
        Gossip {
            cfg,
            me: me.name.clone(),
            own: me,
            own_id,
            members: Slots::new(names),
            tombstones: BTreeMap::new(),
            sums,
            own_hash,
            own_shape,
            roster: 0,
            news: News::default(),
            down: BTreeSet::new(),
            gone: BTreeSet::new(),
            renewals: VecDeque::new(),
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

    pub(super) fn own_mut(&mut self) -> &mut Member {
        &mut self.own
    }

    /// A member's record (this node's own included).
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.member_by_id(self.members.names().id(name)?)
    }

    /// A member's record as sent in a message (this node's own is copied).
    pub(super) fn record(&self, name: &str) -> Option<Arc<Member>> {
        self.record_by_id(self.members.names().id(name)?)
    }

    /// The record of the member with id `id` (this node's own included).
    pub(super) fn member_by_id(&self, id: Id) -> Option<&Member> {
        if id == self.own_id {
            return Some(&self.own);
        }
        self.members.get_id(id).map(|e| &*e.member)
    }

    /// [`Gossip::record`] by id.
    pub(super) fn record_by_id(&self, id: Id) -> Option<Arc<Member>> {
        if id == self.own_id {
            return Some(Arc::new(self.own.clone()));
        }
        self.members.get_id(id).map(|e| e.member.clone())
    }

    /// All known members: this node first, then the others in the order this node first
    /// heard of them (not name order).
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        std::iter::once(&self.own).chain(self.members.values().map(|e| &*e.member))
    }

    /// How many members are known, this node included.
    pub fn member_count(&self) -> usize {
        self.members.len() + 1
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
        let id = if name == self.me {
            let h = record_hash(&self.own);
            self.sums.change(name, self.own_hash, h);
            self.own_hash = h;
            let sh = shape(&self.own);
            if sh != self.own_shape {
                self.own_shape = sh;
                self.roster += 1;
            }
            self.own_id
        } else {
            let Some(id) = self.members.names().id(name) else {
                return;
            };
            let Some(e) = self.members.get_id_mut(id) else { return };
            let h = record_hash(&e.member);
            self.sums.change(name, e.hash, h);
            e.hash = h;
            let sh = shape(&e.member);
            if sh != e.shape {
                e.shape = sh;
                self.roster += 1;
            }
            id
        };
        self.news.add(id, times);
    }

    /// The records to piggyback on one round opener (each counts as one transmission).
    pub(super) fn take_news(&mut self) -> Vec<Arc<Member>> {
        let ids = self.news.take(self.cfg.max_news);
        ids.into_iter().filter_map(|id| self.record_by_id(id)).collect()
    }

    /// `peer` sent something over this node's own link to it (a gossip message, a ping or a
    /// pong): evidence that it is up, for failure detection.
    pub fn heard(&mut self, peer: &str, now: Duration) {
        self.heard_since_tick += 1;
        if let Some(e) = self.members.get_mut(peer) {
            e.detector.heartbeat(now);
            e.renewed_at = At::new(now);
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
    pub(super) fn lease(&self) -> Duration {
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
            let m = Arc::make_mut(&mut e.member);
            m.status = Status::Suspect;
            m.suspectors = vec![me];
            e.suspect_since = Some(At::new(now));
            self.events.push(GossipEvent::StatusChanged {
                name: peer.to_owned(),
                from,
                to: Status::Suspect,
            });
            self.touched(peer);
        }
    }

    /// One round over a full mesh: every member is taken to be linked (see
    /// [`Gossip::tick_among`]).
    pub fn tick<R: Rng + ?Sized>(&mut self, now: Duration, rng: &mut R) -> Vec<(String, GossipMsg)> {
        let mut all: Vec<String> = self.members.values().map(|e| e.member.name.clone()).collect();
        all.sort_unstable();
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
        a.handle(
            "b",
            GossipMsg::Ack {
                delta: vec![b.clone().into()],
            },
            ms(0),
        );
        let r1 = a.roster();
        assert_ne!(r0, r1, "a join");
        b.version += 1;
        b.load.inflight = 40;
        a.handle(
            "b",
            GossipMsg::Ack {
                delta: vec![b.clone().into()],
            },
            ms(1),
        );
        assert_eq!(a.roster(), r1, "load alone");
        b.version += 1;
        b.status = Status::Suspect;
        a.handle(
            "b",
            GossipMsg::Ack {
                delta: vec![b.clone().into()],
            },
            ms(2),
        );
        assert_eq!(a.roster(), r1, "a suspect still takes work");
        b.incarnation += 1;
        b.status = Status::Alive;
        b.services.push("db".into());
        a.handle(
            "b",
            GossipMsg::Ack {
                delta: vec![b.clone().into()],
            },
            ms(3),
        );
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
        a.handle(
            "b",
            GossipMsg::Ack {
                delta: vec![rumour.into()],
            },
            Duration::ZERO,
        );
        assert_eq!(a.me().incarnation, 2);
        assert_eq!(a.me().status, Status::Alive);
        assert!(a.take_events().contains(&GossipEvent::Refuted { incarnation: 2 }));
    }

    #[test]
    fn a_stale_death_from_a_healed_partition_is_a_suspicion_where_the_member_is_heard() {
        let ms = Duration::from_millis;
        let mut a = node("a");
        let b = Member::new("b", "127.0.0.1:2", 7, Vec::new());
        a.handle(
            "b",
            GossipMsg::Ack {
                delta: vec![b.clone().into()],
            },
            ms(0),
        );
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
                delta: vec![verdict.clone().into()],
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
        a.handle(
            "b",
            GossipMsg::Ack {
                delta: vec![refuted.into()],
            },
            ms(4_100),
        );
        assert_eq!(a.member("b").map(|m| m.status), Some(Status::Alive));

        // Where b has gone silent, the same verdict is a death.
        let mut quiet = node("a");
        quiet.handle(
            "b",
            GossipMsg::Ack {
                delta: vec![b.clone().into()],
            },
            ms(0),
        );
        quiet.heard("b", ms(200));
        quiet.handle(
            "d",
            GossipMsg::Ack {
                delta: vec![verdict.into()],
            },
            ms(60_000),
        );
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
                delta: vec![b.into(), c.clone().into(), d.into(), e.into()],
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
                a.handle(
                    "d",
                    GossipMsg::Ack {
                        delta: vec![c.clone().into()],
                    },
                    now,
                );
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
    fn a_forgotten_member_lets_go_of_its_id() {
        use rand::SeedableRng;
        let mut a = node("a");
        let mut b = Member::new("b", "127.0.0.1:2", 1, Vec::new());
        b.status = Status::Left;
        a.handle("c", GossipMsg::Ack { delta: vec![b.into()] }, Duration::ZERO);
        assert!(a.members.names().id("b").is_some());
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let later = a.cfg.dead_ttl + Duration::from_secs(1);
        a.tick(later, &mut rng);
        assert!(a.member("b").is_none(), "forgotten after dead_ttl");
        assert_eq!(a.members.names().id("b"), None, "and its id is free");
        assert_eq!(a.members.names().id("a"), Some(a.own_id), "a node's own id is kept");
        // Back with a higher incarnation: in again, under whichever id is free.
        let back = Member::new("b", "127.0.0.1:2", 2, Vec::new());
        a.handle(
            "c",
            GossipMsg::Ack {
                delta: vec![back.into()],
            },
            later,
        );
        assert_eq!(a.member("b").map(|m| m.status), Some(Status::Alive));
    }

    #[test]
    fn an_entry_stays_within_80_bytes() {
        // A node holds one per member, and the simulator 10⁸ at 10,000 nodes (docs/gossip.md).
        assert!(
            std::mem::size_of::<Option<Entry>>() <= 80,
            "{}",
            std::mem::size_of::<Option<Entry>>()
        );
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
