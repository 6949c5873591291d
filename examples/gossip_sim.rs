//! Prints what the gossip defaults give, measured in the deterministic simulator.
//!
//! ## Usage
//! ```text
//! cargo run --release --example gossip_sim            # N = 10, 100, 1000
//! cargo run --release --example gossip_sim -- 10 50   # chosen sizes
//! ```
//! Columns: rounds for a new fact to reach every node (p50 and max over trials) next to the
//! epidemic-model rounds ln((N+1)·10⁴)/fanout; bytes each node sends per round; and the time
//! from a crash until every node holds the crashed node Dead (p50/p99). Then the same at 10%
//! message loss.

use std::time::Duration;

use quicmesh::sim::{Sim, SimConfig};
use quicmesh::Table;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

struct Row {
    n: usize,
    loss: f64,
    rounds_p50: f64,
    rounds_max: f64,
    model: f64,
    bytes_per_round: f64,
    detect_p50: f64,
    detect_p99: f64,
}

fn measure(n: usize, loss: f64, trials: usize) -> Row {
    let mut rounds = Vec::new();
    let mut detect = Vec::new();
    let mut bytes = Vec::new();
    for t in 0..trials {
        let mut cfg = SimConfig::new(n, 1000 + t as u64);
        cfg.loss = loss;
        cfg.count_bytes = true;
        let interval = cfg.gossip.interval;
        let mut sim = Sim::new(cfg);
        sim.run_until_true(Duration::from_secs(120), interval, |s| s.converged())
            .expect("initial convergence");
        // A new fact at one node: rounds until every node has it.
        let src = (t * 7919) % n;
        sim.node_mut(src).expect("live").set_services(vec![format!("fact-{t}")]);
        let version = sim.node(src).expect("live").me().version;
        let took = sim
            .run_until_true(Duration::from_secs(60), interval / 20, |s| {
                s.all_see(src, |m| m.is_some_and(|m| m.version >= version))
            })
            .expect("fact converges");
        rounds.push(took.as_secs_f64() / interval.as_secs_f64());
        // Steady-state bandwidth over the next 10 rounds.
        let mark: Vec<u64> = sim.bytes_sent.clone();
        sim.run_for(interval * 10);
        let per_node: f64 = sim
            .bytes_sent
            .iter()
            .zip(&mark)
            .map(|(a, b)| (a - b) as f64)
            .sum::<f64>()
            / n as f64;
        bytes.push(per_node / 10.0);
        // Crash a node: time until all others hold it Dead.
        let victim = (src + 1) % n;
        sim.kill(victim);
        let took = sim
            .run_until_true(Duration::from_secs(120), interval / 4, |s| {
                s.all_see(victim, |m| m.is_none_or(|m| m.status.is_gone()))
            })
            .expect("death detected");
        detect.push(took.as_secs_f64());
    }
    let fanout = quicmesh::gossip::GossipConfig::default().fanout as f64;
    Row {
        n,
        loss,
        rounds_p50: percentile(&mut rounds.clone(), 0.5),
        rounds_max: percentile(&mut rounds, 1.0),
        model: ((n as f64 + 1.0) * 1e4).ln() / fanout,
        bytes_per_round: percentile(&mut bytes, 0.5),
        detect_p50: percentile(&mut detect.clone(), 0.5),
        detect_p99: percentile(&mut detect, 0.99),
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10, 100, 1000] } else { sizes };
    let d = quicmesh::gossip::GossipConfig::default();
    println!(
        "gossip defaults: interval {:?}, fanout {}, phi {}, suspicion {:?}..{:?} (k = {})\n",
        d.interval, d.fanout, d.phi_threshold, d.suspicion_min, d.suspicion_max, d.confirmations
    );
    let mut t = Table::new([
        "N",
        "loss",
        "rounds p50",
        "rounds max",
        "model",
        "max/model",
        "bytes/node/round",
        "detect p50",
        "detect p99",
    ]);
    for loss in [0.0, 0.10] {
        for &n in &sizes {
            let trials = if n >= 1000 {
                3
            } else if n >= 100 {
                10
            } else {
                30
            };
            eprintln!("measuring N = {n}, loss = {loss} ...");
            let r = measure(n, loss, trials);
            t.row([
                r.n.to_string(),
                format!("{:.0}%", r.loss * 100.0),
                format!("{:.1}", r.rounds_p50),
                format!("{:.1}", r.rounds_max),
                format!("{:.1}", r.model),
                format!("{:.2}", r.rounds_max / r.model),
                format!("{:.0}", r.bytes_per_round),
                format!("{:.2} s", r.detect_p50),
                format!("{:.2} s", r.detect_p99),
            ]);
        }
    }
    print!("{}", t.render());
}
