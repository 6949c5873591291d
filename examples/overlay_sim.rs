//! Prints what the overlay gives at 100, 1,000 and 10,000 nodes, in the deterministic
//! simulator ([`quicmesh::overlay::sim`]).
//!
//! ## Usage
//! ```text
//! cargo run --release --features testkit --example overlay_sim                     # N = 100, 1000, 10000
//! cargo run --release --features testkit --example overlay_sim -- --nodes 500 --json
//! cargo run --release --features testkit --example overlay_sim -- --cap 8 --nodes 40
//! ```
//! For each size: rounds from no links to every node holding between half the cap and the cap;
//! links per node (min / mean / max); rounds for a fact to reach every node by push-pull
//! exchanges with 3 links a round (as gossip runs over the overlay), at 0% and 10% loss, next
//! to Serf's round count ln((N+1)·10⁴)/(3/2); whether the survivors are still one connected
//! overlay right after half the nodes crash at once, and rounds until they hold at least half
//! the cap again; and the links opened and closed across the whole mesh for one join.

use quicmesh::overlay::sim::{OverlaySim, OverlaySimConfig};
use quicmesh::Table;

struct Row {
    nodes: usize,
    cap: usize,
    settle_rounds: u64,
    degree: (usize, f64, usize),
    spread: u64,
    spread_lossy: u64,
    serf_rounds: f64,
    connected_after_crash: bool,
    repair_rounds: u64,
    join_link_changes: u64,
}

fn measure(nodes: usize, cap: usize, seed: u64) -> Row {
    let mut sim = OverlaySim::new(OverlaySimConfig::new(nodes, cap, seed));
    let settle_rounds = sim.run_until(500, |s| s.settled()).expect("the overlay settles");
    // Settled once may still be closing the surplus of the first rounds: let it calm down.
    sim.run(20);
    let degree = sim.degrees();
    let spread = sim.spread_rounds(0, 3, 0.0, 200).expect("a fact spreads");
    let spread_lossy = sim.spread_rounds(1, 3, 0.1, 200).expect("a fact spreads at 10% loss");
    let before = sim.link_changes;
    sim.join();
    sim.run(30);
    let join_link_changes = sim.link_changes - before;
    let mut victims = sim.live();
    victims.retain(|i| i % 2 == 0);
    for v in victims {
        sim.crash(v);
    }
    let connected_after_crash = sim.connected();
    let repair_rounds = sim
        .run_until(500, |s| s.settled() && s.connected())
        .expect("the survivors repair");
    Row {
        nodes,
        cap,
        settle_rounds,
        degree,
        spread,
        spread_lossy,
        serf_rounds: ((nodes as f64 + 1.0) * 1e4).ln() / 1.5,
        connected_after_crash,
        repair_rounds,
        join_link_changes,
    }
}

fn main() {
    let mut sizes = Vec::new();
    let mut cap = quicmesh::config::Limits::default().max_peer_connections;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => json = true,
            "--nodes" => sizes.push(
                args.next()
                    .and_then(|v| v.parse().ok())
                    .expect("--nodes takes a number"),
            ),
            "--cap" => cap = args.next().and_then(|v| v.parse().ok()).expect("--cap takes a number"),
            other => panic!("unknown argument {other:?}; use --nodes N, --cap K, --json"),
        }
    }
    if sizes.is_empty() {
        sizes = vec![100, 1000, 10_000];
    }
    let rows: Vec<Row> = sizes.iter().map(|&n| measure(n, cap, 7)).collect();
    if json {
        for r in &rows {
            println!(
                "{{\"nodes\":{},\"cap\":{},\"settle_rounds\":{},\"connections_per_node_min\":{},\"connections_per_node_mean\":{:.2},\"connections_per_node_max\":{},\"rounds_to_converge\":{},\"rounds_to_converge_10pct_loss\":{},\"serf_rounds\":{:.2},\"connected_after_half_crash\":{},\"repair_rounds\":{},\"join_link_changes\":{}}}",
                r.nodes, r.cap, r.settle_rounds, r.degree.0, r.degree.1, r.degree.2, r.spread, r.spread_lossy,
                r.serf_rounds, r.connected_after_crash, r.repair_rounds, r.join_link_changes
            );
        }
        return;
    }
    let mut t = Table::new([
        "nodes",
        "cap",
        "settle rounds",
        "links min/mean/max",
        "spread rounds (10% loss)",
        "Serf rounds",
        "connected after 50% crash",
        "repair rounds",
        "links changed by a join",
    ]);
    for r in &rows {
        t.row(vec![
            r.nodes.to_string(),
            r.cap.to_string(),
            r.settle_rounds.to_string(),
            format!("{}/{:.1}/{}", r.degree.0, r.degree.1, r.degree.2),
            format!("{} ({})", r.spread, r.spread_lossy),
            format!("{:.1}", r.serf_rounds),
            r.connected_after_crash.to_string(),
            r.repair_rounds.to_string(),
            r.join_link_changes.to_string(),
        ]);
    }
    print!("{}", t.render());
}
