//! A deterministic simulator for the gossip state machine: virtual time, a seeded rng, message
//! loss, delay and jitter, partitions, slow receivers, kills and restarts. No sockets, no
//! sleeps: a thousand nodes run in one thread, and the same seed gives the same run.

#![deny(clippy::disallowed_methods)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::gossip::{Gossip, GossipConfig, GossipMsg, Member, Names, Status};

/// Simulation settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of nodes, named `n0`, `n1`, ...
    pub nodes: usize,
    /// Gossip settings of every node.
    pub gossip: GossipConfig,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra uniform random delay, 0 to this.
    pub jitter: Duration,
    /// Rng seed.
    pub seed: u64,
    /// Count the encoded size of every message in [`Sim::bytes_sent`] (costs an encode each).
    pub count_bytes: bool,
    /// The peer links of each node (sorted), as a bounded overlay would keep them: a round's
    /// digests go only to linked members, as the node's do. `None`: a full mesh.
    pub links: Option<Vec<Vec<usize>>>,
    /// Every node has a new load each round (its in-flight count changes), as a node under
    /// traffic does: it pushes it to each linked peer every `load_interval` (counted in
    /// [`Sim::bytes_sent`] as the node's `ControlMsg::Load`; not delivered, nothing here
    /// reads it), and its record changes every `load_gossip_interval`.
    pub load: bool,
    /// How often each node pings each of its links (`transport.ping_interval`); the ping and
    /// its pong are what failure detection reads, with the gossip a link carries.
    pub ping_interval: Duration,
    /// Every node starts holding every other's first record, as if a peer had sent them all
    /// in one gossip reply: a settled mesh rather than all N nodes joining at the same instant
    /// (which at 10,000 nodes is most of a run's time, and not what the run measures).
    pub warm: bool,
}

impl SimConfig {
    /// `nodes` nodes with default gossip, 1 ms delay, 1 ms jitter, no loss.
    pub fn new(nodes: usize, seed: u64) -> Self {
        SimConfig {
            nodes,
            gossip: GossipConfig::default(),
            loss: 0.0,
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(1),
            seed,
            count_bytes: false,
            links: None,
            load: false,
            ping_interval: Duration::from_secs(1),
            warm: false,
        }
    }
}

#[derive(Debug)]
enum Kind {
    Tick(usize),
    Ping(usize),
    Deliver { to: usize, from: usize, msg: GossipMsg },
}

#[derive(Debug)]
struct Event {
    at: Duration,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The simulated mesh.
pub struct Sim {
    cfg: SimConfig,
    now: Duration,
    seq: u64,
    rng: StdRng,
    nodes: Vec<Option<Gossip>>,
    incarnations: Vec<u64>,
    group: Vec<u32>,
    recv_loss: Vec<f64>,
    queue: BinaryHeap<Reverse<Event>>,
    /// Bytes each node has sent (postcard-encoded gossip messages, and load pushes with
    /// `load`), if `count_bytes`.
    pub bytes_sent: Vec<u64>,
    /// When each node last pushed its load.
    load_pushed: Vec<Option<Duration>>,
    /// Messages sent in total.
    pub messages: u64,
    /// The largest encoded message sent, bytes, if `count_bytes`.
    pub max_message: u64,
    names: Vec<String>,
    /// The member ids every node's gossip state shares (each name is held once).
    ids: Names,
    /// Each node's links by name, sorted as strings (as the node's control table keeps them).
    link_names: Option<Vec<Vec<String>>>,
}

/// The name of node `i`.
pub fn name(i: usize) -> String {
    format!("n{i}")
}

fn index(name: &str) -> Option<usize> {
    name.strip_prefix('n')?.parse().ok()
}

impl Sim {
    /// Starts `cfg.nodes` nodes; each knows only `n0` and opens a round with it at once (with
    /// `cfg.links`, with each of its links).
    pub fn new(cfg: SimConfig) -> Self {
        let n = cfg.nodes;
        let mut sim = Sim {
            rng: StdRng::seed_from_u64(cfg.seed),
            now: Duration::ZERO,
            seq: 0,
            nodes: (0..n).map(|_| None).collect(),
            incarnations: vec![1; n],
            group: vec![0; n],
            recv_loss: vec![0.0; n],
            queue: BinaryHeap::new(),
            bytes_sent: vec![0; n],
            load_pushed: vec![None; n],
            messages: 0,
            max_message: 0,
            names: (0..n).map(name).collect(),
            ids: Names::default(),
            link_names: cfg.links.as_ref().map(|links| {
                links
                    .iter()
                    .map(|l| {
                        let mut v: Vec<String> = l.iter().map(|&j| name(j)).collect();
                        v.sort();
                        v
                    })
                    .collect()
            }),
            cfg,
        };
        // Warm nodes open their first rounds at their first tick, with the records in: an
        // opener sent now would carry the sums of a node that knows only itself.
        let open = !sim.cfg.warm;
        for i in 0..n {
            sim.start(i, open);
        }
        if sim.cfg.warm {
            sim.warm_up();
        }
        sim
    }

    /// See [`SimConfig::warm`]. The records are shared between the nodes, not copied.
    fn warm_up(&mut self) {
        // Each node has published its first load already (the first goes out at once, and
        // then every N/4 rounds): otherwise every record would change in the first round.
        if self.cfg.load {
            for i in 0..self.nodes.len() {
                let load = Self::load_from(&mut self.rng);
                if let Some(g) = self.nodes[i].as_mut() {
                    g.set_load(load, self.now);
                }
            }
        }
        let records: Vec<std::sync::Arc<Member>> = self
            .nodes
            .iter()
            .flatten()
            .map(|g| std::sync::Arc::new(g.me().clone()))
            .collect();
        let now = self.now;
        for (i, g) in self.nodes.iter_mut().enumerate() {
            let Some(g) = g else { continue };
            // From a linked member (or the seed), as the node's first gossip exchange is.
            let from = match &self.link_names {
                Some(links) => links[i].first().cloned(),
                None => (self.names.len() > 1).then(|| name(usize::from(i == 0))),
            };
            let Some(from) = from else { continue };
            // Its replies would only repeat what the sender holds.
            drop(g.handle(&from, GossipMsg::Ack { delta: records.clone() }, now));
            drop(g.take_events());
        }
    }

    fn start(&mut self, i: usize, open: bool) {
        let me = Member::new(&name(i), &format!("10.0.0.{i}:7400"), self.incarnations[i], Vec::new());
        let mut g = Gossip::with_names(self.cfg.gossip.clone(), me, self.now, self.ids.clone());
        // A node's links come up at start, and each opens a round, as a new connection does
        // on a node. Without links (a full mesh) the only one is to the seed.
        let first: Vec<usize> = match &self.cfg.links {
            Some(links) => links[i].clone(),
            None if i != 0 => vec![0],
            None => Vec::new(),
        };
        for j in first {
            g.connected(&name(j), self.now);
            if open {
                let opener = g.opener();
                self.send(i, j, opener);
            }
        }
        self.nodes[i] = Some(g);
        // Stagger rounds: nodes do not tick in lockstep.
        let offset = self.rng.random_range(Duration::ZERO..self.cfg.gossip.interval);
        self.push(self.now + offset, Kind::Tick(i));
        let offset = self.rng.random_range(Duration::ZERO..self.cfg.ping_interval);
        self.push(self.now + offset, Kind::Ping(i));
    }

    /// Whether a message to `to` is lost (loss, slow receiver, or partition from `from`).
    fn lost(&mut self, from: usize, to: usize) -> bool {
        if self.group[from] != self.group[to] || self.nodes[to].is_none() {
            return true;
        }
        let loss = 1.0 - (1.0 - self.cfg.loss) * (1.0 - self.recv_loss[to]);
        loss > 0.0 && self.rng.random_bool(loss.min(1.0))
    }

    /// Node `i` pings each of its links, and each that hears it answers.
    fn ping(&mut self, i: usize) {
        let Some(g) = self.nodes[i].as_ref() else { return };
        let peers: Vec<usize> = match &self.cfg.links {
            Some(links) => links[i].clone(),
            None => g.members().filter_map(|m| index(&m.name)).filter(|&j| j != i).collect(),
        };
        let me = name(i);
        for j in peers {
            if self.lost(i, j) {
                continue;
            }
            if let Some(peer) = self.nodes[j].as_mut() {
                peer.heard(&me, self.now);
            }
            if !self.lost(j, i) {
                let peer = name(j);
                if let Some(g) = self.nodes[i].as_mut() {
                    g.heard(&peer, self.now);
                }
            }
        }
        self.push(self.now + self.cfg.ping_interval, Kind::Ping(i));
    }

    fn push(&mut self, at: Duration, kind: Kind) {
        self.seq += 1;
        self.queue.push(Reverse(Event {
            at,
            seq: self.seq,
            kind,
        }));
    }

    fn send(&mut self, from: usize, to: usize, msg: GossipMsg) {
        self.messages += 1;
        if self.cfg.count_bytes {
            let size = postcard::to_allocvec(&msg).map(|v| v.len() as u64).unwrap_or(0);
            self.bytes_sent[from] += size;
            self.max_message = self.max_message.max(size);
        }
        if self.lost(from, to) {
            return;
        }
        let jitter = if self.cfg.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.rng.random_range(Duration::ZERO..self.cfg.jitter)
        };
        let at = self.now + self.cfg.delay + jitter;
        self.push(at, Kind::Deliver { to, from, msg });
    }

    /// A node's load under traffic (see [`SimConfig::load`]).
    fn load_from(rng: &mut StdRng) -> crate::gossip::Load {
        crate::gossip::Load {
            inflight: rng.random_range(0..64),
            capacity: 1,
            latency_us: rng.random_range(100..2_000),
            ..Default::default()
        }
    }

    /// Virtual time now.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Node `i`, unless it is killed.
    pub fn node(&self, i: usize) -> Option<&Gossip> {
        self.nodes.get(i).and_then(Option::as_ref)
    }

    /// Node `i`, mutably (to inject facts).
    pub fn node_mut(&mut self, i: usize) -> Option<&mut Gossip> {
        self.nodes.get_mut(i).and_then(Option::as_mut)
    }

    /// Indices of nodes that are running.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].is_some()).collect()
    }

    /// Stops node `i` abruptly (a crash: no goodbye).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    /// Restarts node `i` with a higher incarnation; it knows only `n0` again.
    pub fn restart(&mut self, i: usize) {
        self.incarnations[i] += 1000;
        self.start(i, true);
    }

    /// Splits the mesh: node `i` can talk only to nodes with the same group number.
    pub fn partition(&mut self, group: impl Fn(usize) -> u32) {
        for i in 0..self.group.len() {
            self.group[i] = group(i);
        }
    }

    /// Heals any partition.
    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
    }

    /// Node `i` loses this fraction of the messages it receives (a slow or overloaded node).
    pub fn set_receive_loss(&mut self, i: usize, p: f64) {
        self.recv_loss[i] = p;
    }

    /// Processes one event; false when nothing is left.
    pub fn step(&mut self) -> bool {
        let Some(Reverse(ev)) = self.queue.pop() else {
            return false;
        };
        self.now = ev.at;
        match ev.kind {
            Kind::Tick(i) => {
                let Some(g) = self.nodes[i].as_mut() else { return true };
                if self.cfg.load {
                    let load = Self::load_from(&mut self.rng);
                    let due =
                        self.load_pushed[i].is_none_or(|t| self.now.saturating_sub(t) >= self.cfg.gossip.load_interval);
                    if due && self.cfg.count_bytes {
                        self.load_pushed[i] = Some(self.now);
                        let links = match &self.cfg.links {
                            Some(links) => links[i].len(),
                            None => g.members().filter(|m| !m.status.is_gone()).count().saturating_sub(1),
                        } as u64;
                        let msg = crate::protocol::ControlMsg::Load(load.clone());
                        let size = postcard::to_allocvec(&msg).map(|v| v.len() as u64).unwrap_or(0);
                        self.bytes_sent[i] += size * links;
                        self.max_message = self.max_message.max(size);
                    }
                    g.set_load(load, self.now);
                }
                let mut out = match &self.link_names {
                    None => g.tick(self.now, &mut self.rng),
                    Some(links) => g.tick_among(self.now, &mut self.rng, &links[i]),
                };
                // A node that knows nobody yet keeps knocking on its seed, as the node's
                // dialler keeps redialling its configured peers.
                if i != 0 && g.member_count() == 1 {
                    out.push(("n0".to_owned(), g.opener()));
                }
                // Nothing here reads the events; the node logs them each round.
                drop(g.take_events());
                let next = self.now + self.cfg.gossip.interval;
                self.push(next, Kind::Tick(i));
                for (to, msg) in out {
                    if let Some(j) = index(&to) {
                        self.send(i, j, msg);
                    }
                }
            }
            Kind::Ping(i) => self.ping(i),
            Kind::Deliver { to, from, msg } => {
                let Some(g) = self.nodes[to].as_mut() else { return true };
                let out = g.handle(&name(from), msg, self.now);
                for (_, msg) in out {
                    self.send(to, from, msg);
                }
            }
        }
        true
    }

    /// Runs until virtual time `t`.
    pub fn run_until(&mut self, t: Duration) {
        while self.queue.peek().is_some_and(|Reverse(e)| e.at <= t) {
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Runs until `pred` holds (checked every `check` of virtual time) or `limit` passes;
    /// returns the time it took.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        check: Duration,
        mut pred: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        loop {
            if pred(self) {
                return Some(self.now - start);
            }
            if self.now - start >= limit {
                return None;
            }
            self.run_for(check);
        }
    }

    /// Whether every running node knows every other running node as Alive.
    pub fn converged(&self) -> bool {
        let live = self.live();
        // Counting first is O(N) and fails while anyone still lacks members; the full check
        // below is O(N²) lookups, 10⁸ at 10,000 nodes.
        let knows_enough = |i: usize| self.nodes[i].as_ref().is_some_and(|g| g.member_count() >= live.len());
        if !live.iter().all(|&i| knows_enough(i)) {
            return false;
        }
        live.iter().all(|&i| {
            let g = self.nodes[i].as_ref();
            live.iter().all(|&j| {
                let own = self.nodes[j].as_ref().map(|n| n.me().incarnation);
                g.and_then(|g| g.member(&self.names[j]))
                    .is_some_and(|m| m.status == Status::Alive && Some(m.incarnation) == own)
            })
        })
    }

    /// Whether every running node sees member `j` with `pred`.
    pub fn all_see(&self, j: usize, pred: impl Fn(Option<&Member>) -> bool) -> bool {
        self.live()
            .iter()
            .filter(|&&i| i != j)
            .all(|&i| self.nodes[i].as_ref().is_some_and(|g| pred(g.member(&self.names[j]))))
    }

    /// Pairs `(i, j)` of running nodes where `i` holds running `j` as Dead now (false positives).
    pub fn false_deaths(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        // One pass over each node's records (no lookups by name): 10⁸ of them at 10,000 nodes.
        for (i, g) in self.nodes.iter().enumerate() {
            let Some(g) = g else { continue };
            for m in g.members().filter(|m| m.status == Status::Dead) {
                if let Some(j) = index(&m.name).filter(|&j| self.nodes.get(j).is_some_and(Option::is_some)) {
                    out.push((i, j));
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Number of running nodes that hold running node `j` as Suspect now.
    pub fn suspecting(&self, j: usize) -> usize {
        self.live()
            .iter()
            .filter(|&&i| {
                self.nodes[i]
                    .as_ref()
                    .and_then(|g| g.member(&name(j)))
                    .is_some_and(|m| m.status == Status::Suspect)
            })
            .count()
    }
}
