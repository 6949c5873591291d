//! The exchanges of a gossip round: openers, replies, and how two views are compared.
//!
//! Between nodes of this build a round is `Sums` → `Buckets` → `SynAck` → `Ack`: the opener
//! sends a sum per bucket of members (and the latest changes, piggybacked), the peer answers
//! with its digest entries of the buckets whose sums differ, and from there it is scuttlebutt
//! over those buckets only: the opener sends the records the peer is behind on and asks for
//! those it is behind on, and the peer completes. With an older node (no `GOSSIP_SUMS` in its
//! hello) a round is the full-digest `Syn` → `SynAck` → `Ack` of before.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::names::Id;
use super::state::{add_suspectors, At, Entry, Gossip};
use super::sums::{bucket_of, BUCKETS};
use super::{DigestEntry, GossipMsg, Member, Status};

/// Adds the confirmations of the same suspicion that `d` carries to `e`; whether any was new.
fn confirm(e: &mut Entry, d: &DigestEntry) -> bool {
    let same_suspicion = d.key.incarnation == e.member.incarnation
        && d.key.rank == Status::Suspect.rank()
        && e.member.status == Status::Suspect;
    same_suspicion && add_suspectors(&mut e.member, &d.suspectors)
}

/// The heartbeat an older node is shown for `e`: a member held up has its heartbeat advanced
/// by the rounds since it was last heard of (see [`Gossip::legacy_syn`]).
fn shown_heartbeat(e: &Entry, now: Duration, interval: Duration) -> u64 {
    let mut heartbeat = e.member.heartbeat;
    if e.member.status.rank() == 0 {
        let rounds = now.saturating_sub(e.heartbeat_at.get()).as_secs_f64() / interval.as_secs_f64();
        heartbeat = heartbeat.saturating_add(rounds as u64);
    }
    heartbeat
}

fn entry_of(m: &Member, heartbeat: u64) -> DigestEntry {
    DigestEntry {
        name: m.name.clone(),
        key: m.key(),
        heartbeat,
        suspectors: m.suspectors.clone(),
    }
}

impl Gossip {
    /// The full digest, in name order, for an older node. It judges members by heartbeats
    /// seen at second hand, which this build no longer spreads: a member held up is shown
    /// with its heartbeat advanced by the rounds since it was last heard of, so that the
    /// older node does not suspect members only because this node stopped relaying beats.
    fn digest(&self, now: Duration) -> Vec<DigestEntry> {
        let interval = self.cfg.interval;
        let mut v: Vec<DigestEntry> = self
            .members
            .values()
            .map(|e| entry_of(&e.member, shown_heartbeat(e, now, interval)))
            .collect();
        v.push(entry_of(&self.own, self.own.heartbeat));
        v.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// A full-digest round opener, for an older node.
    pub fn legacy_syn(&mut self, now: Duration) -> GossipMsg {
        self.sent_since_tick += 1;
        GossipMsg::Syn {
            digest: std::sync::Arc::new(self.digest(now)),
        }
    }

    /// A round opener: this node's heartbeat, its sums and the latest news.
    pub fn opener(&mut self) -> GossipMsg {
        self.round_opener(true)
    }

    /// A round opener without sums (news and heartbeat only): the other targets of a round
    /// than the one anti-entropy runs with. Answered with nothing.
    pub(super) fn news_only(&mut self) -> GossipMsg {
        self.round_opener(false)
    }

    fn round_opener(&mut self, with_sums: bool) -> GossipMsg {
        self.sent_since_tick += 1;
        GossipMsg::Sums {
            heartbeat: self.own.heartbeat,
            sums: if with_sums { self.sums.encode() } else { Vec::new() },
            news: self.take_news(),
        }
    }

    /// Handles a message from `from`; returns the replies (all addressed to `from`). Any
    /// message from a peer is also evidence that it is up ([`Gossip::heard`]).
    pub fn handle(&mut self, from: &str, msg: GossipMsg, now: Duration) -> Vec<(String, GossipMsg)> {
        self.heard_since_tick += 1;
        self.heard(from, now);
        let reply = |m: GossipMsg| vec![(from.to_owned(), m)];
        match msg {
            GossipMsg::Syn { digest } => {
                let (delta, want) = self.reconcile_all(from, &digest, now);
                reply(GossipMsg::SynAck { want, delta })
            }
            GossipMsg::Sums { heartbeat, sums, news } => {
                if let Some(e) = self.members.get_mut(from) {
                    if heartbeat > e.member.heartbeat {
                        Arc::make_mut(&mut e.member).heartbeat = heartbeat;
                        e.heartbeat_at = At::new(now);
                    }
                }
                for m in news.into_iter().take(self.cfg.max_delta) {
                    self.merge(m, now);
                }
                // No sums (news only), or sums of the wrong length: nothing to compare.
                match self.buckets_for(from, &sums) {
                    Some(buckets) => {
                        let digest = self.bucket_digest(&buckets);
                        let buckets = buckets.into_iter().map(|b| b as u16).collect();
                        reply(GossipMsg::Buckets { buckets, digest })
                    }
                    None => Vec::new(),
                }
            }
            GossipMsg::Buckets { buckets, digest } => {
                let (delta, want) = self.reconcile_buckets(from, &buckets, &digest);
                if delta.is_empty() && want.is_empty() {
                    Vec::new()
                } else {
                    reply(GossipMsg::SynAck { want, delta })
                }
            }
            GossipMsg::SynAck { want, delta } => {
                for m in delta {
                    self.merge(m, now);
                }
                let mut back: Vec<Arc<Member>> = want
                    .iter()
                    .take(self.cfg.max_delta)
                    .filter_map(|n| self.record(n))
                    .collect();
                back.dedup_by(|a, b| a.name == b.name);
                if back.is_empty() {
                    Vec::new()
                } else {
                    reply(GossipMsg::Ack { delta: back })
                }
            }
            GossipMsg::Ack { delta } => {
                for m in delta {
                    self.merge(m, now);
                }
                Vec::new()
            }
        }
    }

    /// The buckets whose sums differ from `theirs`, taken in turn from where the last reply
    /// to `peer` stopped, until they hold `max_delta` members (at least one bucket). None if
    /// they all agree, or `theirs` is malformed (then the round simply ends).
    fn buckets_for(&mut self, peer: &str, theirs: &[u8]) -> Option<Vec<usize>> {
        let differ = self.sums.differing(theirs)?;
        if differ.is_empty() {
            return None;
        }
        let cursor = self.cursors.get(peer).map_or(0, |c| c.bucket);
        let start = differ.partition_point(|b| *b < cursor);
        let mut picked = Vec::new();
        let mut members = 0;
        for &b in differ[start..].iter().chain(&differ[..start]) {
            if !picked.is_empty() && members + self.sums.len(b) > self.cfg.max_delta {
                break;
            }
            members += self.sums.len(b);
            picked.push(b);
        }
        if let Some(&last) = picked.last() {
            self.cursors.entry(peer.to_owned()).or_default().bucket = (last + 1) % BUCKETS;
        }
        picked.sort_unstable();
        Some(picked)
    }

    /// This node's digest entries of `buckets`, in name order.
    fn bucket_digest(&self, buckets: &[usize]) -> Vec<DigestEntry> {
        let mut v: Vec<DigestEntry> = buckets
            .iter()
            .flat_map(|&b| self.sums.ids(b))
            .filter_map(|id| self.member_by_id(id))
            .map(|m| entry_of(m, m.heartbeat))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Compares `digest` (the peer's entries of `buckets`) with our records of the same
    /// buckets: returns ours that it lacks or has older, and the names it knows better.
    fn reconcile_buckets(
        &mut self,
        to: &str,
        buckets: &[u16],
        digest: &[DigestEntry],
    ) -> (Vec<Arc<Member>>, Vec<String>) {
        let scope: BTreeSet<usize> = buckets
            .iter()
            .map(|&b| usize::from(b))
            .filter(|&b| b < BUCKETS)
            .collect();
        let mut theirs: BTreeMap<&str, &DigestEntry> = digest
            .iter()
            .filter(|d| scope.contains(&bucket_of(&d.name)))
            .map(|d| (d.name.as_str(), d))
            .collect();
        let ids: Vec<Id> = scope.iter().flat_map(|&b| self.sums.ids(b)).collect();
        let (mut out, mut want, mut changed) = (Vec::new(), Vec::new(), Vec::new());
        for id in ids {
            let Some(m) = self.member_by_id(id) else { continue };
            let d = theirs.remove(m.name.as_str());
            if let (Some(d), Some(e)) = (d, self.members.get_id_mut(id)) {
                if confirm(e, d) {
                    changed.push(e.member.name.clone());
                }
            }
            let Some(m) = self.member_by_id(id) else { continue };
            match d {
                None => out.extend(self.record_by_id(id)),
                Some(d) if m.key() > d.key => out.extend(self.record_by_id(id)),
                Some(d) if d.key > m.key() => want.push(m.name.clone()),
                Some(_) => {}
            }
        }
        for (name, d) in theirs {
            let gone_for_good = self
                .tombstones
                .get(name)
                .is_some_and(|(inc, _)| d.key.incarnation <= *inc);
            if !gone_for_good {
                want.push(name.to_owned());
            }
        }
        for name in changed {
            self.touched(&name);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        want.sort();
        self.cut(to, &mut out, &mut want);
        (out, want)
    }

    /// Cuts a reply to `to` to `max_delta` records and names, in turn (see [`take_in_turn`]):
    /// `to`'s own record first (so it can refute a suspicion), then ours, then the rest.
    fn cut(&mut self, to: &str, out: &mut Vec<Arc<Member>>, want: &mut Vec<String>) {
        let max = self.cfg.max_delta;
        let cursors = self.cursors.entry(to.to_owned()).or_default();
        take_in_turn(want, max, &mut cursors.want, |n| n.as_str(), |_| 0);
        let me = self.me.as_str();
        take_in_turn(
            out,
            max,
            &mut cursors.delta,
            |m| m.name.as_str(),
            |m| {
                if m.name == to {
                    0
                } else if m.name == me {
                    1
                } else {
                    2
                }
            },
        );
    }

    /// An older node's round: applies the heartbeats and confirmations in its full `digest`;
    /// returns our records that it lacks or has older, and the names of the members it knows
    /// better than we do.
    ///
    /// Both sides are in name order, so this is one merge-join pass: O(N) with no lookups,
    /// which is what keeps a 1,000-node round cheap.
    fn reconcile_all(&mut self, to: &str, digest: &[DigestEntry], now: Duration) -> (Vec<Arc<Member>>, Vec<String>) {
        let interval = self.cfg.interval;
        let sorted_copy;
        let digest = if digest.windows(2).all(|w| w[0].name < w[1].name) {
            digest
        } else {
            // Not from a quicmesh node (or duplicated names): sort and dedup a copy.
            let mut c = digest.to_vec();
            c.sort_by(|a, b| a.name.cmp(&b.name));
            c.dedup_by(|a, b| a.name == b.name);
            sorted_copy = c;
            &sorted_copy
        };
        // Borrow the fields separately: members mutably, the rest shared.
        let (own, members, tombstones) = (&self.own, &mut self.members, &self.tombstones);
        let gone_for_good = |d: &DigestEntry| {
            tombstones
                .get(&d.name)
                .is_some_and(|(inc, _)| d.key.incarnation <= *inc)
        };
        let mut out = Vec::new();
        let mut want = Vec::new();
        let mut changed = Vec::new();
        let mut theirs = digest.iter().peekable();
        // One compare per step: everything of theirs before `name` is something we lack.
        let mut skip_to = |name: &str, want: &mut Vec<String>| -> Option<&DigestEntry> {
            while let Some(d) = theirs.peek() {
                match d.name.as_str().cmp(name) {
                    std::cmp::Ordering::Less => {
                        if !gone_for_good(d) {
                            want.push(d.name.clone());
                        }
                        theirs.next();
                    }
                    std::cmp::Ordering::Equal => return theirs.next(),
                    std::cmp::Ordering::Greater => return None,
                }
            }
            None
        };
        let compare =
            |m: &Arc<Member>, d: Option<&DigestEntry>, out: &mut Vec<Arc<Member>>, want: &mut Vec<String>| match d {
                None => out.push(m.clone()),
                Some(d) if m.key() > d.key => out.push(m.clone()),
                Some(d) if d.key > m.key() => want.push(d.name.clone()),
                Some(_) => {}
            };
        let own = Arc::new(own.clone());
        // The entries are held by id: walk them in name order, as the digest is.
        let mut order: Vec<(String, Id)> = members.iter().map(|(id, e)| (e.member.name.clone(), id)).collect();
        order.sort_unstable();
        let mut own_done = false;
        for (name, id) in order {
            let Some(e) = members.get_id_mut(id) else { continue };
            if !own_done && own.name < name {
                let d = skip_to(&own.name, &mut want);
                compare(&own, d, &mut out, &mut want);
                own_done = true;
            }
            let d = skip_to(&name, &mut want);
            if let Some(d) = d {
                // An older node's digest carries heartbeats it heard of at second hand, or
                // the advancing ones this node showed it (`digest`): no evidence for φ, which
                // reads links only. Taken when past what this node would show, so that the
                // heartbeats it shows older nodes keep advancing and do not run away.
                if d.key.incarnation == e.member.incarnation && d.heartbeat > shown_heartbeat(e, now, interval) {
                    Arc::make_mut(&mut e.member).heartbeat = d.heartbeat;
                    e.heartbeat_at = At::new(now);
                }
                if confirm(e, d) {
                    changed.push(name.clone());
                }
            }
            compare(&e.member, d, &mut out, &mut want);
        }
        if !own_done {
            let d = skip_to(&own.name, &mut want);
            compare(&own, d, &mut out, &mut want);
        }
        for d in theirs {
            if !gone_for_good(d) {
                want.push(d.name.clone());
            }
        }
        for name in changed {
            self.touched(&name);
        }
        self.cut(to, &mut out, &mut want);
        (out, want)
    }
}

/// Cuts `v` (in name order) to `max` items: by `rank` first (lower first), and among the
/// items of the highest rank the names after `cursor`, wrapping around to the start; moves
/// `cursor` to the last such name taken. A cut in plain name order would send the same
/// leading records every round, and the members late in the alphabet would go stale for as
/// long as more than `max` records change between rounds (every node's load changes every
/// load interval).
fn take_in_turn<T>(
    v: &mut Vec<T>,
    max: usize,
    cursor: &mut String,
    name: impl Fn(&T) -> &str,
    rank: impl Fn(&T) -> u8,
) {
    if v.len() <= max {
        return;
    }
    let Some(rest) = v.iter().map(&rank).max() else { return };
    // Stable: name order is kept within each group.
    v.sort_by_key(|t| (rank(t), rank(t) == rest && name(t) <= cursor.as_str()));
    v.truncate(max);
    if let Some(last) = v.iter().rev().find(|t| rank(t) == rest) {
        *cursor = name(last).to_owned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::state::tests::node;
    use crate::gossip::{GossipConfig, RecordKey};
    use std::sync::Arc;

    fn entry(name: &str, incarnation: u64, version: u64) -> DigestEntry {
        DigestEntry {
            name: name.into(),
            key: RecordKey {
                incarnation,
                rank: 0,
                version,
                suspectors: 0,
            },
            heartbeat: 0,
            suspectors: Vec::new(),
        }
    }

    #[test]
    fn an_unsorted_or_duplicated_digest_is_handled_like_a_sorted_one() {
        let mut a = node("b");
        let digest = vec![entry("z", 1, 1), entry("a", 1, 1), entry("z", 1, 1)];
        let replies = a.handle(
            "z",
            GossipMsg::Syn {
                digest: Arc::new(digest),
            },
            Duration::ZERO,
        );
        let [(to, GossipMsg::SynAck { want, delta })] = replies.as_slice() else {
            panic!("{replies:?}")
        };
        assert_eq!(to, "z");
        assert_eq!(want, &vec!["a".to_string(), "z".to_string()]);
        assert_eq!(delta.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn replies_cut_to_max_delta_take_every_record_in_turn() {
        let mut a = node("a");
        let members: Vec<Member> = (0..600)
            .map(|i| Member::new(&format!("m{i:03}"), "127.0.0.1:1", 1, Vec::new()))
            .collect();
        a.handle(
            "x",
            GossipMsg::Ack {
                delta: members.into_iter().map(Arc::new).collect(),
            },
            Duration::ZERO,
        );
        // b knows none of them: every reply is cut to max_delta (256).
        let digest = Arc::new(vec![entry("b", 1, 1)]);
        let mut seen = std::collections::BTreeSet::new();
        for round in 0..3 {
            let replies = a.handle("b", GossipMsg::Syn { digest: digest.clone() }, Duration::ZERO);
            let [(_, GossipMsg::SynAck { delta, .. })] = replies.as_slice() else {
                panic!("{replies:?}")
            };
            assert_eq!(delta.len(), 256);
            assert_eq!(delta[0].name, "a", "the replier's own record leads every reply");
            seen.extend(delta.iter().map(|m| m.name.clone()));
            if round == 0 {
                assert_eq!(delta[255].name, "m254");
            }
        }
        assert_eq!(seen.len(), 601, "three cut replies cover all 600 members and a itself");
        // Another peer's replies start from the beginning: each peer has its own turn.
        let replies = a.handle("c", GossipMsg::Syn { digest: digest.clone() }, Duration::ZERO);
        let [(_, GossipMsg::SynAck { delta, .. })] = replies.as_slice() else {
            panic!("{replies:?}")
        };
        assert_eq!((delta[0].name.as_str(), delta[1].name.as_str()), ("a", "m000"));

        // The names a replier asks for are taken in turn too.
        let mut b = node("b");
        let digest: Vec<DigestEntry> = (0..600).map(|i| entry(&format!("m{i:03}"), 1, 1)).collect();
        let digest = Arc::new(digest);
        let mut wanted = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let replies = b.handle("a", GossipMsg::Syn { digest: digest.clone() }, Duration::ZERO);
            let [(_, GossipMsg::SynAck { want, .. })] = replies.as_slice() else {
                panic!("{replies:?}")
            };
            wanted.extend(want.iter().cloned());
        }
        assert_eq!(wanted.len(), 600);
    }

    #[test]
    fn a_reply_cut_to_one_record_carries_the_receivers_own() {
        let cfg = GossipConfig {
            max_delta: 1,
            ..Default::default()
        };
        // Named before the receiver, so name order alone would put its own record first.
        let mut z = Gossip::new(cfg, Member::new("a", "127.0.0.1:1", 1, Vec::new()), Duration::ZERO);
        // It holds b Suspect; b's digest lacks it and holds b itself at an older key.
        let mut suspect = Member::new("b", "127.0.0.1:2", 1, Vec::new());
        suspect.status = Status::Suspect;
        suspect.suspectors = vec!["x".into()];
        z.handle(
            "x",
            GossipMsg::Ack {
                delta: vec![suspect.into()],
            },
            Duration::ZERO,
        );
        let replies = z.handle(
            "b",
            GossipMsg::Syn {
                digest: Arc::new(vec![entry("b", 1, 1)]),
            },
            Duration::ZERO,
        );
        let [(_, GossipMsg::SynAck { delta, .. })] = replies.as_slice() else {
            panic!("{replies:?}")
        };
        let names: Vec<&str> = delta.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["b"], "b must hear the suspicion to refute it");
    }

    /// Delivers `msg` from `from` to `to` and every reply back and forth until none is left;
    /// returns the messages that went, in order.
    fn exchange(from: &mut Gossip, to: &mut Gossip, msg: GossipMsg, now: Duration) -> Vec<GossipMsg> {
        let mut sent = vec![msg.clone()];
        let mut next = vec![msg];
        let mut towards_to = true;
        while !next.is_empty() {
            let mut replies = Vec::new();
            for m in next {
                let (src, dst) = if towards_to {
                    (&*from, &mut *to)
                } else {
                    (&*to, &mut *from)
                };
                let name = src.name().to_owned();
                replies.extend(dst.handle(&name, m, now).into_iter().map(|(_, r)| r));
            }
            sent.extend(replies.iter().cloned());
            next = replies;
            towards_to = !towards_to;
        }
        sent
    }

    #[test]
    fn two_views_converge_through_sums_and_buckets_in_bounded_messages() {
        let now = Duration::from_secs(1);
        let mut a = node("a");
        let members: Vec<Member> = (0..600)
            .map(|i| Member::new(&format!("m{i:03}"), "127.0.0.1:1", 1, Vec::new()))
            .collect();
        a.handle(
            "x",
            GossipMsg::Ack {
                delta: members.into_iter().map(Arc::new).collect(),
            },
            now,
        );
        let mut b = node("b");
        let mut rounds = 0;
        while a.sums.differing(&b.sums.encode()) != Some(vec![]) {
            rounds += 1;
            assert!(rounds < 20, "no convergence");
            let opener = a.opener();
            for m in exchange(&mut a, &mut b, opener, now) {
                match &m {
                    GossipMsg::Sums { sums, news, .. } => {
                        assert_eq!(sums.len(), BUCKETS * 4);
                        assert!(news.len() <= a.config().max_news);
                    }
                    GossipMsg::Buckets { buckets, digest } => {
                        assert!(
                            buckets.len() == 1 || digest.len() <= a.config().max_delta,
                            "{}",
                            digest.len()
                        );
                    }
                    GossipMsg::SynAck { want, delta } => {
                        assert!(want.len() <= 256 && delta.len() <= 256);
                    }
                    GossipMsg::Ack { delta } => assert!(delta.len() <= 256),
                    GossipMsg::Syn { .. } => panic!("no full digest between nodes of this build"),
                }
            }
        }
        assert_eq!(b.members().count(), 602, "b knows a, itself and the 600");
        assert!(rounds <= 4, "{rounds} rounds for 600 records at 256 a reply");
        // Agreed views: an opener gets no reply.
        let opener = b.opener();
        assert_eq!(exchange(&mut b, &mut a, opener, now).len(), 1);
    }

    #[test]
    fn news_rides_on_openers_a_bounded_number_of_times_and_malformed_sums_end_the_round() {
        let now = Duration::from_secs(1);
        let mut a = node("a");
        let mut b = node("b");
        a.handle(
            "b",
            GossipMsg::Ack {
                delta: vec![b.me().clone().into()],
            },
            now,
        );
        b.handle(
            "a",
            GossipMsg::Ack {
                delta: vec![a.me().clone().into()],
            },
            now,
        );
        while !a.news.take(64).is_empty() {}
        a.set_services(vec!["web".into()]);
        let mut carried = 0;
        for _ in 0..50 {
            if let GossipMsg::Sums { news, .. } = a.opener() {
                carried += news.iter().filter(|m| m.name == "a").count();
            }
        }
        assert_eq!(carried as u32, super::super::news::transmissions(4, 2));
        // A peer's opener with sums of the wrong length: its news is taken, nothing is answered.
        let mut news = a.me().clone();
        news.version += 1;
        news.services = vec!["api".into()];
        let replies = b.handle(
            "a",
            GossipMsg::Sums {
                heartbeat: 1,
                sums: vec![0; 7],
                news: vec![news.into()],
            },
            now,
        );
        assert!(replies.is_empty());
        assert_eq!(b.member("a").map(|m| m.services.clone()), Some(vec!["api".to_string()]));
        // Bucket numbers out of range are ignored.
        let replies = b.handle(
            "a",
            GossipMsg::Buckets {
                buckets: vec![u16::MAX],
                digest: vec![entry("zz", 1, 1)],
            },
            now,
        );
        assert!(replies.is_empty(), "{replies:?}");
    }

    #[test]
    fn an_older_node_is_shown_heartbeats_that_advance_for_members_held_up() {
        let s = Duration::from_secs;
        let mut a = node("a");
        let mut up = Member::new("c", "127.0.0.1:3", 1, Vec::new());
        up.heartbeat = 5;
        let mut dead = Member::new("d", "127.0.0.1:4", 1, Vec::new());
        dead.status = Status::Dead;
        dead.heartbeat = 5;
        a.handle(
            "x",
            GossipMsg::Ack {
                delta: vec![up.into(), dead.into()],
            },
            s(1),
        );
        let beats = |g: &mut Gossip, at| match g.legacy_syn(at) {
            GossipMsg::Syn { digest } => digest.iter().map(|d| (d.name.clone(), d.heartbeat)).collect::<Vec<_>>(),
            _ => unreachable!(),
        };
        let at_3 = beats(&mut a, s(3));
        assert_eq!(at_3, [("a".into(), 0), ("c".into(), 15), ("d".into(), 5)]);
        assert!(beats(&mut a, s(4))[1].1 > 15, "advances with time");
    }
}
