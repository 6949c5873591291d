//! The overlay state machine: the dials in flight and the members to leave alone for a while.
//! The links themselves are the node's (its connection table); each tick is told them afresh,
//! so the two can never disagree.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;

use super::{Action, Link, OverlayConfig};

/// One node's overlay. See the module docs of [`crate::overlay`].
#[derive(Debug, Clone)]
pub struct Overlay<P> {
    cfg: OverlayConfig,
    /// Dials asked for and not yet reported, with when they were asked for.
    dialing: BTreeMap<P, Duration>,
    /// Members whose last dial failed, and until when they are not drawn.
    avoid: BTreeMap<P, Duration>,
    /// The dials in `dialing` that go to members gossip holds gone (see [`Overlay::tick`]).
    probes: BTreeSet<P>,
    /// Whether the last tick found a mesh small enough to keep whole.
    full_mesh: bool,
}

impl<P: Ord + Clone> Overlay<P> {
    /// An overlay with no dials in flight.
    pub fn new(cfg: OverlayConfig) -> Self {
        Overlay {
            cfg,
            dialing: BTreeMap::new(),
            avoid: BTreeMap::new(),
            probes: BTreeSet::new(),
            full_mesh: true,
        }
    }

    /// The settings.
    pub fn config(&self) -> &OverlayConfig {
        &self.cfg
    }

    /// Whether the last tick kept a full mesh (no more live members than the cap).
    pub fn is_full_mesh(&self) -> bool {
        self.full_mesh
    }

    /// Whether a dial to `peer` should go on: in a full mesh every live member is wanted; past
    /// the cap only the dials this overlay asked for and has not heard the end of.
    pub fn wants_dial(&self, peer: &P) -> bool {
        self.full_mesh || self.dialing.contains_key(peer)
    }

    /// Whether the dial to `peer` is a probe of a member gossip holds gone: the node dials it
    /// although gossip lists it Dead or Left.
    pub fn is_probe(&self, peer: &P) -> bool {
        self.probes.contains(peer)
    }

    /// Number of dials asked for and not yet reported.
    pub fn dials_in_flight(&self) -> usize {
        self.dialing.len()
    }

    /// A dial asked for by [`Action::Dial`] ended: with a link (`connected`), or not, in which
    /// case the member is not drawn again for `avoid_for`.
    pub fn dial_ended(&mut self, peer: &P, connected: bool, now: Duration) {
        self.dialing.remove(peer);
        self.probes.remove(peer);
        if connected {
            self.avoid.remove(peer);
        } else {
            self.avoid.insert(peer.clone(), now + self.cfg.avoid_for);
        }
    }

    /// The node stopped a dial without a result (the member left, or shutdown): forgets it
    /// without avoiding the member.
    pub fn dial_dropped(&mut self, peer: &P) {
        self.dialing.remove(peer);
        self.probes.remove(peer);
    }

    /// One round: given this node's `links`, the `members` it believes alive (this node may
    /// be among them) and those it holds `gone` (Dead or Left, not yet forgotten), the dials
    /// to start and the links to close.
    ///
    /// Past the cap, a node with room for a link also dials a gone member now and then, with
    /// probability gone / (alive + gone + 1) a round: after a
    /// partition heals, nothing else would ever link the two sides, since each holds the other
    /// Dead and draws only live members. The probe's gossip exchange lets the far side refute.
    pub fn tick<R: Rng + ?Sized>(
        &mut self,
        now: Duration,
        me: &P,
        links: &[Link<P>],
        members: &[P],
        gone: &[P],
        rng: &mut R,
    ) -> Vec<Action<P>> {
        let cfg = &self.cfg;
        self.dialing
            .retain(|_, asked| now.saturating_sub(*asked) < cfg.dial_timeout);
        self.avoid.retain(|_, until| *until > now);
        let linked: BTreeSet<&P> = links.iter().map(|l| &l.peer).collect();
        self.dialing.retain(|p, _| !linked.contains(p));
        let dialing = &self.dialing;
        self.probes.retain(|p| dialing.contains_key(p));
        let others = members.len() - usize::from(members.contains(me));
        self.full_mesh = others <= cfg.max_links;
        let mut out = Vec::new();
        if self.full_mesh {
            // Every member is wanted; the lower name dials, so two members dial each other once.
            for m in members {
                if me < m && !linked.contains(m) && !self.dialing.contains_key(m) {
                    self.dialing.insert(m.clone(), now);
                    out.push(Action::Dial(m.clone()));
                }
            }
            return out;
        }
        let have = linked.len() + self.dialing.len();
        let need = cfg.low().saturating_sub(have);
        // Rejection sampling: a handful of draws from the whole membership instead of a pass
        // over it, so a round costs the same at ten thousand members as at a hundred.
        let mut draws = need * 8 + 16;
        let mut started = 0;
        while started < need && draws > 0 {
            draws -= 1;
            let m = &members[rng.random_range(0..members.len())];
            if m == me || linked.contains(m) || self.dialing.contains_key(m) || self.avoid.contains_key(m) {
                continue;
            }
            self.dialing.insert(m.clone(), now);
            out.push(Action::Dial(m.clone()));
            started += 1;
        }
        let room = linked.len() + self.dialing.len() < cfg.max_links;
        if room && !gone.is_empty() && rng.random_range(0..members.len() + gone.len() + 1) < gone.len() {
            let m = &gone[rng.random_range(0..gone.len())];
            if m != me && !linked.contains(m) && !self.dialing.contains_key(m) && !self.avoid.contains_key(m) {
                self.dialing.insert(m.clone(), now);
                self.probes.insert(m.clone());
                out.push(Action::Dial(m.clone()));
            }
        }
        if links.len() > cfg.max_links {
            let mut spare: Vec<&Link<P>> = links
                .iter()
                .filter(|l| !l.keep && now.saturating_sub(l.since) >= cfg.grace)
                .collect();
            let surplus = (links.len() - cfg.max_links).min(spare.len());
            let (closing, _) = spare.partial_shuffle(rng, surplus);
            out.extend(closing.iter().map(|l| Action::Close(l.peer.clone())));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const S: Duration = Duration::from_secs(1);

    fn link(peer: u32, since: Duration) -> Link<u32> {
        Link {
            peer,
            since,
            keep: false,
        }
    }

    fn dials(actions: &[Action<u32>]) -> Vec<u32> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Dial(p) => Some(*p),
                Action::Close(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_small_mesh_is_a_full_mesh_dialled_by_the_lower_name() {
        let mut o = Overlay::new(OverlayConfig::new(4));
        let mut rng = StdRng::seed_from_u64(1);
        let members = [0, 1, 2, 3, 4];
        let out = o.tick(S, &2, &[link(0, S)], &members, &[], &mut rng);
        assert_eq!(out, vec![Action::Dial(3), Action::Dial(4)]);
        assert!(o.is_full_mesh() && o.wants_dial(&1));
        // Asked once: the node's dialler keeps at it while the member lives.
        assert!(o.tick(S * 2, &2, &[link(0, S)], &members, &[], &mut rng).is_empty());
    }

    #[test]
    fn past_the_cap_a_node_dials_up_to_half_and_closes_down_to_the_cap() {
        let cfg = OverlayConfig::new(8);
        let mut o = Overlay::new(cfg.clone());
        let mut rng = StdRng::seed_from_u64(2);
        let members: Vec<u32> = (0..100).collect();
        let out = o.tick(S, &7, &[], &members, &[], &mut rng);
        let d = dials(&out);
        assert_eq!(d.len(), cfg.low());
        assert!(!d.contains(&7), "never dials itself");
        let other = (0..100).find(|p| !d.contains(p) && *p != 7).unwrap_or(0);
        assert!(!o.wants_dial(&other), "past the cap only the drawn members are wanted");
        assert!(o.wants_dial(&d[0]));
        // Dials in flight count: no more until they end.
        assert!(o.tick(S * 2, &7, &[], &members, &[], &mut rng).is_empty());
        for p in &d[..2] {
            o.dial_ended(p, false, S * 2);
        }
        let again = dials(&o.tick(S * 3, &7, &[], &members, &[], &mut rng));
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|p| !d[..2].contains(p)), "a failed member is avoided");

        // Twelve links, four of them new and one kept: closes four of the seven spare old ones.
        let mut links: Vec<Link<u32>> = (20..28).map(|p| link(p, Duration::ZERO)).collect();
        links.extend((30..34).map(|p| link(p, S * 10)));
        links[0].keep = true;
        let mut o = Overlay::new(cfg);
        let out = o.tick(S * 11, &7, &links, &members, &[], &mut rng);
        let closed: Vec<u32> = out
            .iter()
            .filter_map(|a| match a {
                Action::Close(p) => Some(*p),
                Action::Dial(_) => None,
            })
            .collect();
        assert_eq!(closed.len(), 4, "{out:?}");
        assert!(closed.iter().all(|p| (21..28).contains(p)), "{closed:?}");
    }

    #[test]
    fn past_the_cap_a_node_with_room_probes_gone_members_now_and_then() {
        let mut o = Overlay::new(OverlayConfig::new(8));
        let mut rng = StdRng::seed_from_u64(4);
        let members: Vec<u32> = (0..50).collect();
        let gone: Vec<u32> = (50..100).collect();
        let links: Vec<Link<u32>> = (1..7).map(|p| link(p, Duration::ZERO)).collect();
        let mut probed = Vec::new();
        // Rounds of 100 ms: the dials stay in flight (the dial timeout is 10 s).
        let round = Duration::from_millis(100);
        for r in 1..=40u32 {
            let out = o.tick(round * r, &0, &links, &members, &gone, &mut rng);
            probed.extend(dials(&out).into_iter().filter(|p| gone.contains(p)));
        }
        // Half the membership gone: a probe about every other round, while there is room.
        assert!(!probed.is_empty(), "a healed partition needs a probe");
        assert!(probed.len() <= 2, "no more than the room: {probed:?}");
        let p = probed[0];
        assert!(o.is_probe(&p) && o.wants_dial(&p));
        o.dial_ended(&p, false, round * 41);
        assert!(!o.is_probe(&p) && !o.wants_dial(&p));
        // No room: no probe. Nothing gone: no probe. A small mesh: no probe.
        let full: Vec<Link<u32>> = (1..9).map(|p| link(p, Duration::ZERO)).collect();
        let mut o = Overlay::new(OverlayConfig::new(8));
        for round in 1..=40u32 {
            let out = o.tick(S * round, &0, &full, &members, &gone, &mut rng);
            assert!(dials(&out).iter().all(|p| !gone.contains(p)));
        }
        let mut o = Overlay::new(OverlayConfig::new(8));
        let small: Vec<u32> = (0..5).collect();
        for round in 1..=40u32 {
            let out = o.tick(S * round, &0, &[], &small, &gone, &mut rng);
            assert!(dials(&out).iter().all(|p| !gone.contains(p)));
        }
    }

    #[test]
    fn a_dial_never_reported_is_forgotten_after_the_timeout() {
        let cfg = OverlayConfig::new(2);
        let mut o = Overlay::new(cfg.clone());
        let mut rng = StdRng::seed_from_u64(3);
        let members: Vec<u32> = (0..10).collect();
        assert_eq!(dials(&o.tick(S, &0, &[], &members, &[], &mut rng)).len(), 1);
        assert_eq!(o.dials_in_flight(), 1);
        assert!(o
            .tick(S + cfg.dial_timeout / 2, &0, &[], &members, &[], &mut rng)
            .is_empty());
        assert_eq!(
            dials(&o.tick(S + cfg.dial_timeout, &0, &[], &members, &[], &mut rng)).len(),
            1
        );
    }
}
