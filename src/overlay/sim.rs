//! A deterministic simulator for the overlay: ten thousand [`Overlay`]s in one thread, in
//! rounds of virtual time, with crashes and joins. Memory is O(N·k) (each node holds its
//! links; the membership is one shared list), so N = 10,000 runs in seconds.
//!
//! What it models, and what it leaves out:
//! - a dial to a live node links both ends one round later; a dial to a crashed node fails
//!   after `dial_fail_rounds` (the connect timeout);
//! - a crashed node's links drop at once at its peers (in a node, after
//!   `transport.idle_timeout`), but it stays in the membership every node draws from for
//!   `detect_rounds` (gossip's detection time), so dials to it keep failing until then;
//! - every node draws from the same membership (in a node, each from its own gossip table).

#![deny(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::{Action, Link, Overlay, OverlayConfig};

/// Simulation settings.
#[derive(Debug, Clone)]
pub struct OverlaySimConfig {
    /// Nodes at the start, numbered from 0.
    pub nodes: usize,
    /// Overlay settings of every node.
    pub overlay: OverlayConfig,
    /// Length of a round (a node's tick interval).
    pub interval: Duration,
    /// Rounds before a failed dial (to a crashed node) is reported.
    pub dial_fail_rounds: u64,
    /// Rounds a crashed node stays in the membership.
    pub detect_rounds: u64,
    /// Rng seed.
    pub seed: u64,
}

impl OverlaySimConfig {
    /// `nodes` nodes with a cap of `max_links`, 200 ms rounds, dials failing after 5 rounds
    /// and deaths known after 25 (5 s, about gossip's detection time).
    pub fn new(nodes: usize, max_links: usize, seed: u64) -> Self {
        OverlaySimConfig {
            nodes,
            overlay: OverlayConfig::new(max_links),
            interval: Duration::from_millis(200),
            dial_fail_rounds: 5,
            detect_rounds: 25,
            seed,
        }
    }
}

struct Dial {
    due: u64,
    from: u32,
    to: u32,
}

/// The simulated mesh.
pub struct OverlaySim {
    cfg: OverlaySimConfig,
    round: u64,
    rng: StdRng,
    overlays: Vec<Overlay<u32>>,
    links: Vec<Vec<Link<u32>>>,
    alive: Vec<bool>,
    crashed_at: Vec<Option<u64>>,
    /// The membership every node draws from.
    members: Vec<u32>,
    dials: VecDeque<Dial>,
    /// Links opened and closed since the start.
    pub link_changes: u64,
    /// Dials started since the start.
    pub dials_started: u64,
}

impl OverlaySim {
    /// Starts `cfg.nodes` nodes that know each other and have no links yet.
    pub fn new(cfg: OverlaySimConfig) -> Self {
        let n = cfg.nodes;
        OverlaySim {
            rng: StdRng::seed_from_u64(cfg.seed),
            round: 0,
            overlays: (0..n).map(|_| Overlay::new(cfg.overlay.clone())).collect(),
            links: vec![Vec::new(); n],
            alive: vec![true; n],
            crashed_at: vec![None; n],
            members: (0..n as u32).collect(),
            dials: VecDeque::new(),
            link_changes: 0,
            dials_started: 0,
            cfg,
        }
    }

    fn now(&self) -> Duration {
        self.cfg.interval * u32::try_from(self.round).unwrap_or(u32::MAX)
    }

    /// Rounds run so far.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Number of nodes ever started (live or crashed).
    pub fn len(&self) -> usize {
        self.alive.len()
    }

    /// Whether no node was ever started.
    pub fn is_empty(&self) -> bool {
        self.alive.is_empty()
    }

    /// Ids of the live nodes.
    pub fn live(&self) -> Vec<u32> {
        (0..self.alive.len() as u32)
            .filter(|&i| self.alive[i as usize])
            .collect()
    }

    /// Node `i`'s links.
    pub fn links(&self, i: u32) -> &[Link<u32>] {
        &self.links[i as usize]
    }

    fn linked(&self, a: u32, b: u32) -> bool {
        self.links[a as usize].iter().any(|l| l.peer == b)
    }

    fn connect(&mut self, a: u32, b: u32) {
        let since = self.now();
        for (x, y) in [(a, b), (b, a)] {
            self.links[x as usize].push(Link {
                peer: y,
                since,
                keep: false,
            });
        }
        self.link_changes += 1;
    }

    fn disconnect(&mut self, a: u32, b: u32) {
        let before = self.links[a as usize].len();
        self.links[a as usize].retain(|l| l.peer != b);
        self.links[b as usize].retain(|l| l.peer != a);
        if self.links[a as usize].len() != before {
            self.link_changes += 1;
        }
    }

    /// Crashes node `i`: its peers lose their links to it at once; the membership keeps it
    /// for `detect_rounds`.
    pub fn crash(&mut self, i: u32) {
        if !std::mem::replace(&mut self.alive[i as usize], false) {
            return;
        }
        self.crashed_at[i as usize] = Some(self.round);
        for l in std::mem::take(&mut self.links[i as usize]) {
            self.links[l.peer as usize].retain(|x| x.peer != i);
            self.link_changes += 1;
        }
    }

    /// Starts a new node (it knows the whole membership, as a node does once its seed's gossip
    /// reached it); returns its id.
    pub fn join(&mut self) -> u32 {
        let id = self.alive.len() as u32;
        self.overlays.push(Overlay::new(self.cfg.overlay.clone()));
        self.links.push(Vec::new());
        self.alive.push(true);
        self.crashed_at.push(None);
        self.members.push(id);
        id
    }

    /// Runs one round: due dials land, deaths past `detect_rounds` leave the membership, and
    /// every live node ticks, in a random order.
    pub fn step(&mut self) {
        self.round += 1;
        let now = self.now();
        while self.dials.front().is_some_and(|d| d.due <= self.round) {
            let Some(d) = self.dials.pop_front() else { break };
            if !self.alive[d.from as usize] {
                continue;
            }
            let ok = self.alive[d.to as usize];
            if ok && !self.linked(d.from, d.to) {
                self.connect(d.from, d.to);
            }
            self.overlays[d.from as usize].dial_ended(&d.to, ok, now);
        }
        let (round, detect, crashed_at) = (self.round, self.cfg.detect_rounds, &self.crashed_at);
        self.members
            .retain(|&m| crashed_at[m as usize].is_none_or(|at| round < at + detect));
        let mut order = self.live();
        order.shuffle(&mut self.rng);
        let mut later = Vec::new();
        for i in order {
            let actions =
                // No gone members: the simulator models crashes, not partitions, and a crashed
                // node is simply left out of the membership once detected.
                self.overlays[i as usize].tick(now, &i, &self.links[i as usize], &self.members, &[], &mut self.rng);
            for a in actions {
                match a {
                    Action::Dial(to) => {
                        self.dials_started += 1;
                        let rounds = if self.alive[to as usize] {
                            1
                        } else {
                            self.cfg.dial_fail_rounds
                        };
                        later.push(Dial {
                            due: self.round + rounds,
                            from: i,
                            to,
                        });
                    }
                    Action::Close(to) => self.disconnect(i, to),
                }
            }
        }
        later.sort_by_key(|d| d.due);
        // Keep the queue in due order: merge the new dials behind those already queued.
        let mut merged: Vec<Dial> = self.dials.drain(..).collect();
        merged.extend(later);
        merged.sort_by_key(|d| d.due);
        self.dials = merged.into();
    }

    /// Runs `rounds` rounds.
    pub fn run(&mut self, rounds: u64) {
        for _ in 0..rounds {
            self.step();
        }
    }

    /// Runs until `pred` holds or `limit` rounds pass; returns the rounds it took.
    pub fn run_until(&mut self, limit: u64, mut pred: impl FnMut(&OverlaySim) -> bool) -> Option<u64> {
        let start = self.round;
        loop {
            if pred(self) {
                return Some(self.round - start);
            }
            if self.round - start >= limit {
                return None;
            }
            self.step();
        }
    }

    /// Every node's links as sorted peer ids (for [`crate::sim::SimConfig::links`]).
    pub fn adjacency(&self) -> Vec<Vec<usize>> {
        self.links
            .iter()
            .map(|ls| {
                let mut v: Vec<usize> = ls.iter().map(|l| l.peer as usize).collect();
                v.sort_unstable();
                v
            })
            .collect()
    }

    /// Link counts of the live nodes: (min, mean, max).
    pub fn degrees(&self) -> (usize, f64, usize) {
        let live = self.live();
        let d: Vec<usize> = live.iter().map(|&i| self.links[i as usize].len()).collect();
        let min = d.iter().copied().min().unwrap_or(0);
        let max = d.iter().copied().max().unwrap_or(0);
        let mean = d.iter().sum::<usize>() as f64 / d.len().max(1) as f64;
        (min, mean, max)
    }

    /// Whether the live nodes' links make one connected graph.
    pub fn connected(&self) -> bool {
        let live = self.live();
        let Some(&first) = live.first() else { return true };
        let mut seen = vec![false; self.alive.len()];
        let mut stack = vec![first];
        seen[first as usize] = true;
        let mut reached = 1;
        while let Some(i) = stack.pop() {
            for l in &self.links[i as usize] {
                if !seen[l.peer as usize] {
                    seen[l.peer as usize] = true;
                    reached += 1;
                    stack.push(l.peer);
                }
            }
        }
        reached == live.len()
    }

    /// Whether every live node has at least `low` links and at most `max_links`.
    pub fn settled(&self) -> bool {
        let (min, _, max) = self.degrees();
        min >= self.cfg.overlay.low().min(self.live().len().saturating_sub(1)) && max <= self.cfg.overlay.max_links
    }

    /// Rounds for a fact at node `src` to reach every live node when, each round, every live
    /// node exchanges with `fanout` of its links drawn at random (push-pull anti-entropy, as
    /// gossip runs over the overlay), with each exchange lost with probability `loss`. Links
    /// stay as they are meanwhile. `None` if it has not spread after `limit` rounds.
    pub fn spread_rounds(&mut self, src: u32, fanout: usize, loss: f64, limit: u64) -> Option<u64> {
        let live = self.live();
        let mut knows = vec![false; self.alive.len()];
        knows[src as usize] = true;
        let mut count = 1;
        for round in 1..=limit {
            let before = knows.clone();
            for &i in &live {
                let links = &self.links[i as usize];
                for _ in 0..fanout.min(links.len()) {
                    let p = links[self.rng.random_range(0..links.len())].peer as usize;
                    if loss > 0.0 && self.rng.random_bool(loss) {
                        continue;
                    }
                    if before[i as usize] || before[p] {
                        for x in [i as usize, p] {
                            if !knows[x] {
                                knows[x] = true;
                                count += 1;
                            }
                        }
                    }
                }
            }
            if count == live.len() {
                return Some(round);
            }
        }
        None
    }
}
