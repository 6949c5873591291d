//! The nemesis's plan: which faults strike when, drawn from a seed. Pure (the rng is the
//! seed's), so `--seed S` replays the same plan, and the rules that keep the mesh able to
//! recover are unit-tested.

#![deny(clippy::disallowed_methods)]

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The mesh the plan is for.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Node processes; nodes `0..seeds` are every node's configured peers.
    pub nodes: usize,
    /// The first `seeds` nodes keep their port when they restart (the others' peer lists
    /// name them); at most `seeds - 1` of them are down at once.
    pub seeds: usize,
    /// Clients calling the mesh.
    pub clients: usize,
    /// How long faults are injected; every fault has ended by then.
    pub duration: Duration,
    /// Mean time between the starts of two faults.
    pub mean_gap: Duration,
}

impl Shape {
    /// The default soak: 12 nodes (3 seeds), 2 clients, a fault every 1.5 s on average.
    pub fn new(duration: Duration) -> Self {
        Shape {
            nodes: 12,
            seeds: 3,
            clients: 2,
            duration,
            mean_gap: Duration::from_millis(1500),
        }
    }

    /// Nodes that may be down (killed or drained) at the same time: a quarter of the mesh.
    pub fn max_down(&self) -> usize {
        (self.nodes / 4).max(1)
    }
}

/// One kind of fault and what it strikes.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// SIGKILL at the start; the node restarts at the end, on a new port if `new_port`.
    Kill {
        /// The node.
        node: usize,
        /// Restart on another port (and so another advertised address).
        new_port: bool,
    },
    /// SIGTERM at the start (the node drains and exits); it restarts at the end.
    Drain {
        /// The node.
        node: usize,
    },
    /// The nodes in `side` cannot reach the others (both ways) until the end.
    Partition {
        /// One side of the cut; the rest of the mesh is the other.
        side: Vec<usize>,
    },
    /// The link between `a` and `b` loses `loss` of its datagrams and delays each by `delay`
    /// (± a quarter), both ways, until the end.
    Impair {
        /// One end.
        a: usize,
        /// The other end.
        b: usize,
        /// Fraction lost, 0.05–0.30.
        loss: f64,
        /// One-way delay.
        delay: Duration,
    },
    /// The client moves to a new UDP socket (its connection migrates). Instant.
    Rebind {
        /// The client.
        client: usize,
    },
    /// The node's certificate and key are re-issued and replaced on disk. Instant.
    RotateCert {
        /// The node.
        node: usize,
    },
    /// A burst of streams with garbage headers at the node. Instant.
    Garbage {
        /// The node.
        node: usize,
        /// Streams in the burst.
        streams: u32,
    },
    /// The node's backend stops (its connections reset) and comes back at the end.
    BackendDown {
        /// The node whose backend stops.
        node: usize,
    },
    /// The registration the node holds with a lease stops being renewed, so it lapses; it is
    /// registered again at the end.
    LeaseLapse {
        /// The node.
        node: usize,
    },
}

impl FaultKind {
    /// The kind's name in reports.
    pub fn label(&self) -> &'static str {
        match self {
            FaultKind::Kill { new_port: false, .. } => "kill+restart",
            FaultKind::Kill { new_port: true, .. } => "kill+restart on a new port",
            FaultKind::Drain { .. } => "drain (SIGTERM)+restart",
            FaultKind::Partition { .. } => "partition",
            FaultKind::Impair { .. } => "loss+delay on a link",
            FaultKind::Rebind { .. } => "client rebind",
            FaultKind::RotateCert { .. } => "certificate rotation",
            FaultKind::Garbage { .. } => "garbage stream burst",
            FaultKind::BackendDown { .. } => "backend down+up",
            FaultKind::LeaseLapse { .. } => "lease lapse+re-register",
        }
    }

    /// The node whose process stops, if the fault stops one.
    pub fn downs(&self) -> Option<usize> {
        match *self {
            FaultKind::Kill { node, .. } | FaultKind::Drain { node } => Some(node),
            _ => None,
        }
    }

    /// Whether the fault may fail calls at all. Certificate rotation, garbage from a stranger
    /// and a lapsed lease of another service must not fail a single call.
    pub fn may_fail_calls(&self) -> bool {
        !matches!(
            self,
            FaultKind::RotateCert { .. } | FaultKind::Garbage { .. } | FaultKind::LeaseLapse { .. }
        )
    }
}

/// A fault and its window, as offsets from the start of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// When it strikes.
    pub at: Duration,
    /// When it is undone (equal to `at` for an instant fault).
    pub until: Duration,
    /// What it does.
    pub kind: FaultKind,
}

/// The seed's plan for `shape`, ordered by start.
///
/// Rules, so the mesh can always recover: at most [`Shape::max_down`] nodes down at once and
/// never all seeds; one process fault per node at a time; one partition at a time, its
/// smaller side at most a third of the mesh; seeds restart on their own port.
pub fn plan(seed: u64, shape: &Shape) -> Vec<Fault> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out: Vec<Fault> = Vec::new();
    let mean_ms = shape.mean_gap.as_millis().max(1) as f64;
    let end = shape.duration;
    let mut t = Duration::from_millis(200);
    while t < end {
        // Exponential gaps: faults cluster and overlap as they do in production.
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        let gap = Duration::from_millis((-u.ln() * mean_ms) as u64);
        t += gap;
        if t >= end {
            break;
        }
        let hold = Duration::from_millis(rng.random_range(2_000..=8_000));
        let until = (t + hold).min(end);
        let active: Vec<&Fault> = out.iter().filter(|f| f.at <= t && t < f.until).collect();
        if let Some(kind) = draw(&mut rng, shape, &active) {
            let instant = matches!(
                kind,
                FaultKind::Rebind { .. } | FaultKind::RotateCert { .. } | FaultKind::Garbage { .. }
            );
            out.push(Fault {
                at: t,
                until: if instant { t } else { until },
                kind,
            });
        }
    }
    out
}

/// Draws one fault that keeps the rules given the faults active now; `None` if the drawn
/// kind has no legal target at this moment (the slot passes).
fn draw(rng: &mut SmallRng, shape: &Shape, active: &[&Fault]) -> Option<FaultKind> {
    let n = shape.nodes;
    let busy = |node: usize| {
        active.iter().any(|f| {
            f.kind.downs() == Some(node)
                || matches!(f.kind, FaultKind::BackendDown { node: b } | FaultKind::LeaseLapse { node: b } if b == node)
        })
    };
    let down: Vec<usize> = active.iter().filter_map(|f| f.kind.downs()).collect();
    let seeds_down = down.iter().filter(|&&d| d < shape.seeds).count();
    // Weights: process faults and link faults dominate, the instant ones are cheap.
    let roll = rng.random_range(0..100u32);
    let free = |rng: &mut SmallRng, pred: &dyn Fn(usize) -> bool| {
        let choices: Vec<usize> = (0..n).filter(|&i| pred(i)).collect();
        (!choices.is_empty()).then(|| choices[rng.random_range(0..choices.len())])
    };
    match roll {
        0..=27 => {
            if down.len() >= shape.max_down() {
                return None;
            }
            let node = free(rng, &|i| !busy(i) && (i >= shape.seeds || seeds_down + 1 < shape.seeds))?;
            if roll <= 17 {
                let new_port = node >= shape.seeds && rng.random_bool(0.5);
                Some(FaultKind::Kill { node, new_port })
            } else {
                Some(FaultKind::Drain { node })
            }
        }
        28..=37 => {
            if active.iter().any(|f| matches!(f.kind, FaultKind::Partition { .. })) {
                return None;
            }
            let size = rng.random_range(1..=(n / 3).max(1));
            let mut nodes: Vec<usize> = (0..n).collect();
            let mut side = Vec::with_capacity(size);
            for _ in 0..size {
                side.push(nodes.swap_remove(rng.random_range(0..nodes.len())));
            }
            side.sort_unstable();
            Some(FaultKind::Partition { side })
        }
        38..=57 => {
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            let loss = f64::from(rng.random_range(5..=30u32)) / 100.0;
            let delay = Duration::from_millis(rng.random_range(5..=60));
            Some(FaultKind::Impair {
                a: a.min(b),
                b: a.max(b),
                loss,
                delay,
            })
        }
        58..=67 => Some(FaultKind::Rebind {
            client: rng.random_range(0..shape.clients.max(1)),
        }),
        68..=75 => Some(FaultKind::RotateCert {
            node: rng.random_range(0..n),
        }),
        76..=83 => Some(FaultKind::Garbage {
            node: rng.random_range(0..n),
            streams: rng.random_range(50..=300),
        }),
        84..=91 => free(rng, &|i| !busy(i)).map(|node| FaultKind::BackendDown { node }),
        _ => free(rng, &|i| !busy(i)).map(|node| FaultKind::LeaseLapse { node }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape::new(Duration::from_secs(600))
    }

    #[test]
    fn a_seed_replays_the_same_plan_and_another_seed_does_not() {
        assert_eq!(plan(7, &shape()), plan(7, &shape()));
        assert_ne!(plan(7, &shape()), plan(8, &shape()));
    }

    #[test]
    fn every_kind_strikes_in_a_long_plan_and_every_fault_ends_in_time() {
        let s = shape();
        let p = plan(1, &s);
        let labels: std::collections::BTreeSet<&str> = p.iter().map(|f| f.kind.label()).collect();
        assert_eq!(labels.len(), 10, "{labels:?}");
        assert!(p.len() > 300, "{} faults in 10 minutes", p.len());
        assert!(p.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(p.iter().all(|f| f.at <= f.until && f.until <= s.duration));
    }

    #[test]
    fn the_rules_hold_at_every_moment_of_many_plans() {
        let s = shape();
        for seed in 0..50 {
            let p = plan(seed, &s);
            let mut overlapping_max = 0;
            for f in &p {
                let active: Vec<&Fault> = p.iter().filter(|g| g.at <= f.at && f.at < g.until).collect();
                let down: Vec<usize> = active.iter().filter_map(|g| g.kind.downs()).collect();
                assert!(down.len() <= s.max_down(), "seed {seed}: {down:?} down at {:?}", f.at);
                assert!(
                    down.iter().filter(|&&d| d < s.seeds).count() < s.seeds,
                    "seed {seed}: all seeds down"
                );
                let mut uniq = down.clone();
                uniq.sort_unstable();
                uniq.dedup();
                assert_eq!(uniq.len(), down.len(), "seed {seed}: a node faulted twice at once");
                let parts = active
                    .iter()
                    .filter(|g| matches!(g.kind, FaultKind::Partition { .. }))
                    .count();
                assert!(parts <= 1, "seed {seed}: two partitions at once");
                overlapping_max = overlapping_max.max(active.len());
                match &f.kind {
                    FaultKind::Kill { node, new_port: true } => assert!(*node >= s.seeds, "a seed moved port"),
                    FaultKind::Partition { side } => assert!(!side.is_empty() && side.len() <= s.nodes / 3),
                    FaultKind::Impair { a, b, loss, .. } => assert!(a < b && (0.05..=0.30).contains(loss)),
                    _ => {}
                }
            }
            assert!(
                overlapping_max >= 3,
                "seed {seed}: faults never overlap ({overlapping_max})"
            );
        }
    }
}
