//! A discrete-event load-balancing simulation: several routers dispatch Poisson arrivals to
//! FIFO servers, some of them 10× slower, using load information that is as stale as gossip
//! makes it. Deterministic for a seed; no clock, no sockets.
//!
//! Each router sees: the servers' queue lengths as last published (a snapshot every
//! `staleness` time units, like the gossiped load table), its own in-flight requests to each
//! server (exact), and a peak-EWMA of the response times of its own completed requests. The
//! oracle is join-the-shortest-queue with perfect, instant knowledge of every queue.

#![deny(clippy::disallowed_methods)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::routing::{Balancer, Candidate, PeakEwma, Strategy};

/// What dispatches requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// One of the mesh's balancers.
    Mesh(Strategy),
    /// Join the shortest queue, knowing every queue exactly and instantly.
    Oracle,
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Policy::Mesh(s) => write!(f, "{s}"),
            Policy::Oracle => f.write_str("oracle (JSQ)"),
        }
    }
}

/// Simulation settings. Times are in units of a fast server's mean service time.
#[derive(Debug, Clone)]
pub struct LbConfig {
    /// Servers.
    pub servers: usize,
    /// How many of them are slow (the first ones).
    pub slow: usize,
    /// Mean service time of a slow server (fast ones take 1).
    pub slow_factor: f64,
    /// Offered load as a fraction of total capacity.
    pub utilisation: f64,
    /// Routers sharing the traffic (each with its own local view).
    pub routers: usize,
    /// Age of the published queue lengths (0: always fresh).
    pub staleness: f64,
    /// Requests to simulate (the first 10% warm up and are not measured).
    pub requests: usize,
    /// Rng seed.
    pub seed: u64,
    /// Each router routes over a deterministic subset of this many servers
    /// ([`crate::routing::subset`]) instead of all of them.
    pub subset: Option<usize>,
}

impl LbConfig {
    /// `servers` servers, one 10× slow, 80% load, 10 routers, fresh information.
    pub fn new(servers: usize, seed: u64) -> Self {
        LbConfig {
            servers,
            slow: 1,
            slow_factor: 10.0,
            utilisation: 0.8,
            routers: 10,
            staleness: 0.0,
            requests: 50_000,
            seed,
            subset: None,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LbResult {
    /// Median response time (wait + service).
    pub p50: f64,
    /// 99th percentile response time.
    pub p99: f64,
    /// Fraction of requests sent to slow servers.
    pub slow_share: f64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A request arrives at a router.
    Arrive(usize),
    /// A server finishes its head-of-line request.
    Done(usize),
    /// Queue lengths are published.
    Publish,
}

fn exp<R: Rng>(rng: &mut R, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

fn secs(t: f64) -> Duration {
    Duration::from_secs_f64(t.max(0.0))
}

/// Runs one simulation.
pub fn simulate(cfg: &LbConfig, policy: Policy) -> LbResult {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let n = cfg.servers;
    let mean: Vec<f64> = (0..n)
        .map(|i| if i < cfg.slow { cfg.slow_factor } else { 1.0 })
        .collect();
    let capacity: f64 = mean.iter().map(|m| 1.0 / m).sum();
    let rate = cfg.utilisation * capacity / cfg.routers as f64;
    // (arrival time, router, seq) per server, FIFO.
    let mut queues: Vec<VecDeque<(f64, usize, usize)>> = vec![VecDeque::new(); n];
    let mut published: Vec<u32> = vec![0; n];
    let mut local: Vec<Vec<u32>> = vec![vec![0; n]; cfg.routers];
    let tau = Duration::from_secs(10);
    let mut ewma: Vec<Vec<PeakEwma>> = vec![vec![PeakEwma::new(1.0, tau, Duration::ZERO); n]; cfg.routers];
    let mut balancers: Vec<Balancer> = (0..cfg.routers)
        .map(|_| match policy {
            Policy::Mesh(s) => Balancer::new(s, 0.25),
            Policy::Oracle => Balancer::new(Strategy::Random, 0.25),
        })
        .collect();
    let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    let reach: Vec<Vec<usize>> = match cfg.subset {
        None => vec![(0..n).collect(); cfg.routers],
        Some(size) => {
            let id = |s: String| crate::routing::fnv1a(s.as_bytes());
            let routers: Vec<u64> = (0..cfg.routers).map(|r| id(format!("r{r}"))).collect();
            let servers: Vec<u64> = names.iter().map(|s| id(s.clone())).collect();
            crate::routing::subset::assign(&routers, &servers, size)
        }
    };
    let mut events: BinaryHeap<Reverse<(u64, u64, Ev)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let to_key = |t: f64| (t * 1e9) as u64;
    let mut push = |events: &mut BinaryHeap<Reverse<(u64, u64, Ev)>>, t: f64, e: Ev| {
        seq += 1;
        events.push(Reverse((to_key(t), seq, e)));
    };
    for r in 0..cfg.routers {
        let t = exp(&mut rng, 1.0 / rate);
        push(&mut events, t, Ev::Arrive(r));
    }
    if cfg.staleness > 0.0 {
        push(&mut events, cfg.staleness, Ev::Publish);
    }
    let mut sent = 0usize;
    let mut to_slow = 0usize;
    let warmup = cfg.requests / 10;
    let mut times: Vec<f64> = Vec::with_capacity(cfg.requests);
    while let Some(Reverse((tk, _, ev))) = events.pop() {
        let now = tk as f64 / 1e9;
        match ev {
            Ev::Publish => {
                for (p, q) in published.iter_mut().zip(&queues) {
                    *p = q.len() as u32;
                }
                if sent < cfg.requests {
                    push(&mut events, now + cfg.staleness, Ev::Publish);
                }
            }
            Ev::Arrive(r) => {
                if sent >= cfg.requests {
                    continue;
                }
                let fresh = cfg.staleness <= 0.0;
                let target = match policy {
                    Policy::Oracle => {
                        let best = queues.iter().map(VecDeque::len).min().unwrap_or(0);
                        let ties: Vec<usize> = (0..n).filter(|i| queues[*i].len() == best).collect();
                        ties[rng.random_range(0..ties.len())]
                    }
                    Policy::Mesh(strategy) => {
                        let cands: Vec<Candidate> = reach[r]
                            .iter()
                            .map(|&i| Candidate {
                                name: names[i].clone(),
                                weight: if strategy == Strategy::Weighted {
                                    1.0 / mean[i]
                                } else {
                                    1.0
                                },
                                gossiped_inflight: if fresh { queues[i].len() as u32 } else { published[i] },
                                local_inflight: local[r][i],
                                latency: ewma[r][i].get(),
                            })
                            .collect();
                        let k = balancers[r].pick(&cands, None, &mut rng).unwrap_or(0);
                        reach[r].get(k).copied().unwrap_or(0)
                    }
                };
                if sent >= warmup && target < cfg.slow {
                    to_slow += 1;
                }
                queues[target].push_back((now, r, sent));
                local[r][target] += 1;
                if queues[target].len() == 1 {
                    let t = now + exp(&mut rng, mean[target]);
                    push(&mut events, t, Ev::Done(target));
                }
                sent += 1;
                let next = now + exp(&mut rng, 1.0 / rate);
                push(&mut events, next, Ev::Arrive(r));
            }
            Ev::Done(i) => {
                if let Some((arrived, r, id)) = queues[i].pop_front() {
                    let response = now - arrived;
                    local[r][i] = local[r][i].saturating_sub(1);
                    ewma[r][i].observe(response, secs(now));
                    if id >= warmup {
                        times.push(response);
                    }
                }
                if !queues[i].is_empty() {
                    let t = now + exp(&mut rng, mean[i]);
                    push(&mut events, t, Ev::Done(i));
                }
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let measured = cfg.requests.saturating_sub(warmup).max(1);
    LbResult {
        p50: pct(0.5),
        p99: pct(0.99),
        slow_share: to_slow as f64 / measured as f64,
    }
}
