//! Prints what the gossip defaults give, measured in the deterministic simulator
//! ([`quicmesh::sim`]), with digests sent only over the links of the bounded overlay (as the
//! node does past `limits.max_peer_connections`) and every node's load changing every round.
//!
//! ## Usage
//! ```text
//! cargo run --release --features testkit --example gossip_sim                    # N = 10, 100, 1000
//! cargo run --release --features testkit --example gossip_sim -- --nodes 1000 --json
//! cargo run --release --features testkit --example gossip_sim -- --nodes 200 --cap 8 --no-load
//! ```
//! Options: `--nodes N` (repeatable), `--cap K` (the overlay cap, default the config default),
//! `--no-load` (load records never change), `--trials T`, `--rounds R` (rounds of the
//! false-death watch, default 1000), `--json` (one JSON object per size and loss), `--warm`
//! / `--cold` (start every node holding every member's record, or knowing only its links;
//! warm by default from 5,000 nodes, where a cold start of every node at once is most of the
//! run).
//!
//! Measured per size, at 0% and 10% message loss: rounds for a new fact to reach every node
//! (p50 and max over trials) next to Serf's own round count ln((N+1)·10⁴)/(fanout/2); bytes each
//! node sends per round (mean over nodes, and the busiest node); the largest message; links per
//! node; the time from a silent crash until every node holds the crashed node Dead (p50/p99);
//! the live members held Dead anywhere during `--rounds` rounds; and the process's resident
//! memory with the simulation in it (10,000 nodes hold 10⁸ node-member entries).

use std::time::Duration;

use quicmesh::overlay::sim::{OverlaySim, OverlaySimConfig};
use quicmesh::sim::{Sim, SimConfig};
use quicmesh::Table;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

struct Opts {
    sizes: Vec<usize>,
    cap: usize,
    load: bool,
    trials: Option<usize>,
    rounds: u64,
    json: bool,
    warm: Option<bool>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        sizes: Vec::new(),
        cap: quicmesh::config::Limits::default().max_peer_connections,
        load: true,
        trials: None,
        rounds: 1000,
        json: false,
        warm: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| -> Result<u64, String> {
            let v = args.next().ok_or(format!("{flag} needs a number"))?;
            v.parse().map_err(|_| format!("{flag}: `{v}` is not a whole number"))
        };
        match a.as_str() {
            "--nodes" => o.sizes.push(value("--nodes")? as usize),
            "--cap" => o.cap = value("--cap")? as usize,
            "--trials" => o.trials = Some(value("--trials")? as usize),
            "--rounds" => o.rounds = value("--rounds")?,
            "--no-load" => o.load = false,
            "--json" => o.json = true,
            "--warm" => o.warm = Some(true),
            "--cold" => o.warm = Some(false),
            other => {
                return Err(format!(
                    "unknown argument `{other}` (see the usage in examples/gossip_sim.rs)"
                ))
            }
        }
    }
    if o.sizes.is_empty() {
        o.sizes = vec![10, 100, 1000];
    }
    if o.sizes.iter().any(|&n| n < 3) {
        return Err("--nodes must be at least 3".into());
    }
    if o.cap < 4 {
        return Err("--cap must be at least 4 (as limits.max_peer_connections)".into());
    }
    Ok(o)
}

/// This process's resident memory now, MiB (Linux; None elsewhere).
fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

struct Row {
    nodes: usize,
    loss: f64,
    trials: usize,
    rounds_p50: f64,
    rounds_max: f64,
    serf: f64,
    bytes_mean: f64,
    bytes_max: f64,
    max_message: u64,
    links_max: usize,
    detect_p50: f64,
    detect_p99: f64,
    false_deaths: usize,
    rss_mib: f64,
}

/// The links a settled overlay keeps at `n` nodes (None below the cap: a full mesh).
fn overlay(n: usize, cap: usize, seed: u64) -> Option<Vec<Vec<usize>>> {
    if n - 1 <= cap {
        return None;
    }
    let mut o = OverlaySim::new(OverlaySimConfig::new(n, cap, seed));
    o.run_until(500, |s| s.settled()).expect("the overlay settles");
    o.run(20);
    Some(o.adjacency())
}

// Reads the wall clock only to tell the person running it how long each part took.
#[allow(clippy::disallowed_methods)]
fn measure(n: usize, loss: f64, trials: usize, o: &Opts) -> Row {
    let mut rounds = Vec::new();
    let mut detect = Vec::new();
    let (mut bytes_mean, mut bytes_max) = (Vec::new(), Vec::new());
    let (mut max_message, mut links_max, mut false_deaths) = (0, 0, 0);
    let mut rss = 0.0f64;
    for t in 0..trials {
        let seed = 1000 + t as u64;
        let mut cfg = SimConfig::new(n, seed);
        cfg.loss = loss;
        cfg.count_bytes = true;
        cfg.load = o.load;
        cfg.links = overlay(n, o.cap, seed);
        cfg.warm = o.warm.unwrap_or(n >= 5000);
        links_max = links_max.max(
            cfg.links
                .as_ref()
                .map_or(n - 1, |l| l.iter().map(Vec::len).max().unwrap_or(0)),
        );
        let interval = cfg.gossip.interval;
        let wall = std::time::Instant::now();
        let mut sim = Sim::new(cfg);
        let took = sim
            .run_until_true(Duration::from_secs(120), interval, |s| s.converged())
            .expect("initial convergence");
        eprintln!(
            "  trial {t}: every node knows every other after {:.1} s of simulated time ({:.0} s here)",
            took.as_secs_f64(),
            wall.elapsed().as_secs_f64()
        );
        // A new fact at one node: rounds until every node has it.
        let src = (t * 7919) % n;
        sim.node_mut(src).expect("live").set_services(vec![format!("fact-{t}")]);
        let fact = format!("fact-{t}");
        let took = sim
            .run_until_true(Duration::from_secs(60), interval / 20, |s| {
                s.all_see(src, |m| m.is_some_and(|m| m.services.contains(&fact)))
            })
            .expect("fact converges");
        rounds.push(took.as_secs_f64() / interval.as_secs_f64());
        // Steady-state bandwidth over the next 10 rounds; the largest message since the start.
        let mark: Vec<u64> = sim.bytes_sent.clone();
        sim.run_for(interval * 10);
        let per_node: Vec<f64> = sim
            .bytes_sent
            .iter()
            .zip(&mark)
            .map(|(a, b)| (a - b) as f64 / 10.0)
            .collect();
        // The whole process, with this trial's simulation in it (the overlay's is dropped).
        rss = rss.max(rss_mib().unwrap_or(f64::NAN));
        bytes_mean.push(per_node.iter().sum::<f64>() / n as f64);
        bytes_max.push(per_node.iter().copied().fold(0.0, f64::max));
        max_message = max_message.max(sim.max_message);
        // Live members held Dead anywhere, checked every 5 rounds (only in the first trial:
        // the watch is the slow part at 1,000 nodes).
        if t == 0 {
            for _ in 0..o.rounds / 5 {
                sim.run_for(interval * 5);
                false_deaths = false_deaths.max(sim.false_deaths().len());
            }
        }
        // Crash a node: time until all others hold it Dead.
        let victim = (src + 1) % n;
        sim.kill(victim);
        let took = sim
            .run_until_true(Duration::from_secs(120), interval / 4, |s| {
                s.all_see(victim, |m| m.is_none_or(|m| m.status.is_gone()))
            })
            .expect("death detected");
        detect.push(took.as_secs_f64());
        eprintln!("  trial {t}: done in {:.0} s", wall.elapsed().as_secs_f64());
    }
    let fanout = quicmesh::gossip::GossipConfig::default().fanout as f64;
    Row {
        nodes: n,
        loss,
        trials,
        rounds_p50: percentile(&mut rounds.clone(), 0.5),
        rounds_max: percentile(&mut rounds, 1.0),
        serf: ((n as f64 + 1.0) * 1e4).ln() / (fanout / 2.0),
        bytes_mean: percentile(&mut bytes_mean, 0.5),
        bytes_max: percentile(&mut bytes_max, 1.0),
        max_message,
        links_max,
        detect_p50: percentile(&mut detect.clone(), 0.5),
        detect_p99: percentile(&mut detect, 0.99),
        false_deaths,
        rss_mib: rss,
    }
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("gossip_sim: {e}");
            std::process::exit(2);
        }
    };
    let d = quicmesh::gossip::GossipConfig::default();
    if !o.json {
        println!(
            "gossip defaults: interval {:?}, fanout {}, phi {}, suspicion {:?}..{:?} (k = {}); overlay cap {}; load {}\n",
            d.interval,
            d.fanout,
            d.phi_threshold,
            d.suspicion_min,
            d.suspicion_max,
            d.confirmations,
            o.cap,
            if o.load { "changing every round" } else { "fixed" }
        );
    }
    let mut t = Table::new([
        "N",
        "loss",
        "links max",
        "rounds p50",
        "rounds max",
        "Serf",
        "bytes/node/round mean",
        "max",
        "largest msg",
        "detect p50",
        "detect p99",
        "false deaths",
        "RSS MiB",
    ]);
    for loss in [0.0, 0.10] {
        for &n in &o.sizes {
            let trials = o.trials.unwrap_or(match n {
                5000.. => 1,
                1000.. => 3,
                100.. => 10,
                _ => 30,
            });
            eprintln!("measuring N = {n}, loss = {loss} ...");
            let r = measure(n, loss, trials.max(1), &o);
            if o.json {
                let obj = serde_json::json!({
                    "nodes": r.nodes,
                    "loss": r.loss,
                    "trials": r.trials,
                    "cap": o.cap,
                    "load": o.load,
                    "bytes_per_node_round_mean": r.bytes_mean.round(),
                    "bytes_per_node_round_max": r.bytes_max.round(),
                    "max_message_bytes": r.max_message,
                    "connections_per_node_max": r.links_max,
                    "rounds_to_converge": r.rounds_max,
                    "rounds_to_converge_p50": r.rounds_p50,
                    "serf_rounds": r.serf,
                    "detection_p50_s": r.detect_p50,
                    "detection_p99_s": r.detect_p99,
                    "false_deaths": r.false_deaths,
                    "false_death_rounds": o.rounds,
                    "warm_start": o.warm.unwrap_or(n >= 5000),
                    "rss_mib": r.rss_mib.round(),
                });
                println!("{obj}");
            } else {
                t.row([
                    r.nodes.to_string(),
                    format!("{:.0}%", r.loss * 100.0),
                    r.links_max.to_string(),
                    format!("{:.1}", r.rounds_p50),
                    format!("{:.1}", r.rounds_max),
                    format!("{:.1}", r.serf),
                    format!("{:.0}", r.bytes_mean),
                    format!("{:.0}", r.bytes_max),
                    r.max_message.to_string(),
                    format!("{:.2} s", r.detect_p50),
                    format!("{:.2} s", r.detect_p99),
                    r.false_deaths.to_string(),
                    format!("{:.0}", r.rss_mib),
                ]);
            }
        }
    }
    if !o.json {
        print!("{}", t.render());
    }
}
