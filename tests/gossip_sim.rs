//! The gossip state machine under the deterministic simulator: convergence against the
//! epidemic model, failure detection, partitions, loss, slow nodes, restarts.

use std::time::Duration;

use quicmesh::gossip::Status;
use quicmesh::sim::{Sim, SimConfig};

fn model_rounds(n: usize, fanout: usize) -> f64 {
    ((n as f64 + 1.0) * 1e4).ln() / fanout as f64
}

/// Rounds for a new fact at one node to reach all nodes, after the mesh has converged.
fn fact_rounds(sim: &mut Sim, src: usize) -> f64 {
    let interval = Duration::from_millis(200);
    sim.run_until_true(Duration::from_secs(120), interval, |s| s.converged())
        .expect("mesh converges");
    sim.node_mut(src).unwrap().set_services(vec!["new-fact".into()]);
    let version = sim.node(src).unwrap().me().version;
    let took = sim
        .run_until_true(Duration::from_secs(60), interval / 20, |s| {
            s.all_see(src, |m| m.is_some_and(|m| m.version >= version))
        })
        .expect("fact spreads");
    took.as_secs_f64() / interval.as_secs_f64()
}

#[test]
fn a_new_fact_reaches_everyone_within_the_epidemic_bound() {
    for (n, trials) in [(10, 10), (100, 4), (1000, 1)] {
        for loss in [0.0, 0.10] {
            let bound = if loss > 0.0 { 2.0 } else { 1.5 } * model_rounds(n, 3);
            for t in 0..trials {
                let mut cfg = SimConfig::new(n, 7 + t);
                cfg.loss = loss;
                let mut sim = Sim::new(cfg);
                let r = fact_rounds(&mut sim, (t as usize * 13) % n);
                assert!(r <= bound, "N={n} loss={loss}: {r:.2} rounds > bound {bound:.2}");
            }
        }
    }
}

#[test]
fn a_crashed_node_is_dead_everywhere_within_a_bounded_time() {
    for seed in 0..5 {
        let mut sim = Sim::new(SimConfig::new(10, seed));
        sim.run_until_true(Duration::from_secs(30), Duration::from_millis(200), |s| s.converged())
            .unwrap();
        sim.kill(3);
        let took = sim
            .run_until_true(Duration::from_secs(60), Duration::from_millis(50), |s| {
                s.all_see(3, |m| m.is_none_or(|m| m.status == Status::Dead))
            })
            .expect("death detected");
        // memberlist's defaults take about 5-7 s at this size.
        assert!(took < Duration::from_secs(5), "seed {seed}: {took:?}");
        assert!(sim.false_deaths().is_empty());
    }
}

#[test]
fn no_false_deaths_at_ten_percent_loss_with_jitter_for_a_thousand_rounds() {
    let mut cfg = SimConfig::new(30, 42);
    cfg.loss = 0.10;
    cfg.delay = Duration::from_millis(5);
    cfg.jitter = Duration::from_millis(40);
    let mut sim = Sim::new(cfg);
    sim.run_until_true(Duration::from_secs(30), Duration::from_millis(200), |s| s.converged())
        .unwrap();
    for round in 0..1000 {
        sim.run_for(Duration::from_millis(200));
        let f = sim.false_deaths();
        assert!(f.is_empty(), "round {round}: (observer, victim) {f:?}");
    }
}

#[test]
fn a_slow_node_does_not_get_healthy_nodes_declared_dead() {
    let mut sim = Sim::new(SimConfig::new(20, 5));
    sim.run_until_true(Duration::from_secs(30), Duration::from_millis(200), |s| s.converged())
        .unwrap();
    // Node 4 loses half of everything it receives (overloaded, or a bad NIC).
    sim.set_receive_loss(4, 0.5);
    for round in 0..500 {
        sim.run_for(Duration::from_millis(200));
        let f = sim.false_deaths();
        assert!(f.is_empty(), "round {round}: (observer, victim) {f:?}");
    }
}

#[test]
fn a_partition_heals_back_to_one_view() {
    let mut sim = Sim::new(SimConfig::new(20, 9));
    sim.run_until_true(Duration::from_secs(30), Duration::from_millis(200), |s| s.converged())
        .unwrap();
    sim.partition(|i| u32::from(i >= 10));
    // Long enough for each side to declare the other Dead, short of forgetting it.
    sim.run_for(Duration::from_secs(20));
    assert!(!sim.false_deaths().is_empty(), "each side should hold the other Dead");
    sim.heal();
    let took = sim.run_until_true(Duration::from_secs(60), Duration::from_millis(200), |s| s.converged());
    assert!(took.is_some(), "partition did not heal");
}

#[test]
fn a_restarted_node_comes_back_with_a_higher_incarnation() {
    let mut sim = Sim::new(SimConfig::new(10, 11));
    sim.run_until_true(Duration::from_secs(30), Duration::from_millis(200), |s| s.converged())
        .unwrap();
    let old = sim.node(5).unwrap().me().incarnation;
    sim.kill(5);
    sim.run_until_true(Duration::from_secs(60), Duration::from_millis(100), |s| {
        s.all_see(5, |m| m.is_none_or(|m| m.status == Status::Dead))
    })
    .unwrap();
    sim.restart(5);
    sim.run_until_true(Duration::from_secs(30), Duration::from_millis(100), |s| {
        s.all_see(5, |m| {
            m.is_some_and(|m| m.status == Status::Alive && m.incarnation > old)
        })
    })
    .expect("restarted node is Alive everywhere with a higher incarnation");
}

#[test]
fn dead_records_are_forgotten_after_the_ttl_and_stay_forgotten() {
    let mut cfg = SimConfig::new(10, 3);
    cfg.gossip.dead_ttl = Duration::from_secs(10);
    let mut sim = Sim::new(cfg);
    sim.run_until_true(Duration::from_secs(30), Duration::from_millis(200), |s| s.converged())
        .unwrap();
    sim.kill(2);
    sim.run_until_true(Duration::from_secs(60), Duration::from_millis(100), |s| {
        s.all_see(2, |m| m.is_none())
    })
    .expect("forgotten everywhere");
    // Tombstones keep stale copies from resurrecting it.
    sim.run_for(Duration::from_secs(20));
    assert!(sim.all_see(2, |m| m.is_none()));
}

#[test]
fn draining_and_leaving_spread() {
    let mut sim = Sim::new(SimConfig::new(10, 4));
    sim.run_until_true(Duration::from_secs(30), Duration::from_millis(200), |s| s.converged())
        .unwrap();
    sim.node_mut(1).unwrap().set_draining(true);
    sim.run_until_true(Duration::from_secs(10), Duration::from_millis(50), |s| {
        s.all_see(1, |m| m.is_some_and(|m| m.status == Status::Draining))
    })
    .expect("draining spreads");
    sim.node_mut(1).unwrap().leave();
    sim.run_until_true(Duration::from_secs(10), Duration::from_millis(50), |s| {
        s.all_see(1, |m| m.is_some_and(|m| m.status == Status::Left))
    })
    .expect("left spreads");
}

/// The links a settled overlay of `n` nodes keeps with a cap of `cap`.
fn overlay_links(n: usize, cap: usize, seed: u64) -> Vec<Vec<usize>> {
    use quicmesh::overlay::sim::{OverlaySim, OverlaySimConfig};
    let mut o = OverlaySim::new(OverlaySimConfig::new(n, cap, seed));
    o.run_until(500, |s| s.settled()).expect("the overlay settles");
    o.adjacency()
}

/// A new fact at `src` reaches all `n` nodes within Serf's own round count (digests go to 3
/// links a round), checked every `check`.
fn fact_within_serf(sim: &mut Sim, src: usize, n: usize, check: Duration) {
    sim.node_mut(src).unwrap().set_services(vec!["new-fact".into()]);
    let took = sim
        .run_until_true(Duration::from_secs(30), check, |s| {
            s.all_see(src, |m| m.is_some_and(|m| m.services == ["new-fact"]))
        })
        .expect("the fact spreads");
    let serf = ((n as f64 + 1.0) * 1e4).ln() / (3.0 / 2.0);
    let rounds = took.as_secs_f64() / 0.2;
    assert!(rounds <= serf, "{rounds:.1} rounds > Serf's {serf:.1}");
}

#[test]
fn over_a_bounded_overlay_with_changing_load_gossip_converges_and_detects_at_ten_percent_loss() {
    let (n, cap) = (300, 32);
    let mut cfg = SimConfig::new(n, 21);
    cfg.loss = 0.10;
    cfg.load = true;
    cfg.count_bytes = true;
    cfg.links = Some(overlay_links(n, cap, 21));
    assert!(cfg.links.iter().flatten().all(|l| l.len() <= cap));
    let mut sim = Sim::new(cfg);
    sim.run_until_true(Duration::from_secs(60), Duration::from_millis(200), |s| s.converged())
        .expect("every node knows every other Alive");
    fact_within_serf(&mut sim, 5, n, Duration::from_millis(10));
    // Every record changes every load interval, and still no live member is held Dead.
    for _ in 0..40 {
        sim.run_for(Duration::from_secs(1));
        assert_eq!(sim.false_deaths(), Vec::new());
    }
    // The control-message cap (1 MiB) is far off.
    assert!(sim.max_message < 64 * 1024, "largest message {} B", sim.max_message);
    sim.kill(7);
    sim.run_until_true(Duration::from_secs(15), Duration::from_millis(100), |s| {
        s.all_see(7, |m| m.is_none_or(|m| m.status.is_gone()))
    })
    .expect("a silent crash is Dead everywhere within 15 s");
}

/// Over a cap-32 overlay at 10% loss with load changing every round: the bytes each node sends
/// per round stay flat from 100 to 1,000 nodes (they grew tenfold while every round carried a
/// digest of every member), no message comes near the control-message cap, and at 1,000 nodes
/// a fact still reaches everyone within Serf's round count and a silent crash is Dead
/// everywhere, with no live member held Dead meanwhile.
#[test]
fn at_a_thousand_nodes_gossip_bytes_stay_flat_facts_spread_and_crashes_are_found() {
    let run = |n: usize| {
        let mut cfg = SimConfig::new(n, 31);
        cfg.loss = 0.10;
        cfg.load = true;
        cfg.count_bytes = true;
        cfg.links = Some(overlay_links(n, 32, 31));
        let mut sim = Sim::new(cfg);
        sim.run_until_true(Duration::from_secs(60), Duration::from_secs(1), |s| s.converged())
            .expect("every node knows every other Alive");
        let mark = sim.bytes_sent.clone();
        sim.run_for(Duration::from_secs(4));
        let per_node: Vec<f64> = sim
            .bytes_sent
            .iter()
            .zip(&mark)
            .map(|(a, b)| (a - b) as f64 / 20.0)
            .collect();
        let mean = per_node.iter().sum::<f64>() / n as f64;
        let max = per_node.iter().copied().fold(0.0, f64::max);
        (sim, mean, max)
    };
    let (_, mean_100, max_100) = run(100);
    let (mut sim, mean_1000, max_1000) = run(1000);
    assert!(
        mean_1000 <= 2.0 * mean_100 && max_1000 <= 2.0 * max_100,
        "bytes per node per round: mean {mean_100:.0} -> {mean_1000:.0}, max {max_100:.0} -> {max_1000:.0}"
    );
    assert!(sim.max_message <= 64 * 1024, "largest message {} B", sim.max_message);

    fact_within_serf(&mut sim, 5, 1000, Duration::from_millis(20));

    sim.kill(7);
    sim.run_until_true(Duration::from_secs(30), Duration::from_millis(500), |s| {
        assert_eq!(s.false_deaths(), Vec::new(), "a live member held Dead");
        s.all_see(7, |m| m.is_none_or(|m| m.status.is_gone()))
    })
    .expect("a silent crash is Dead everywhere within 30 s");
}

/// A warm start (what `gossip_sim` uses from 5,000 nodes) is a settled mesh: every node holds
/// every record from the first instant, its first rounds find nothing to repair (no cut
/// replies: every message is small), and facts and crashes spread as after a cold start.
#[test]
fn a_warm_start_is_a_settled_mesh_from_the_first_round() {
    let n = 2000;
    let mut cfg = SimConfig::new(n, 41);
    cfg.loss = 0.10;
    cfg.load = true;
    cfg.count_bytes = true;
    cfg.warm = true;
    cfg.links = Some(overlay_links(n, 32, 41));
    let mut sim = Sim::new(cfg);
    assert!(sim.converged(), "every node knows every other Alive at once");
    sim.run_for(Duration::from_secs(2));
    assert!(sim.converged());
    // One differing bucket's digest at 2,000 members is ~31 entries; a cold start's cut
    // replies are ~9 KiB.
    assert!(sim.max_message < 4 * 1024, "largest message {} B", sim.max_message);
    fact_within_serf(&mut sim, 9, n, Duration::from_millis(20));
    sim.kill(11);
    sim.run_until_true(Duration::from_secs(30), Duration::from_millis(500), |s| {
        assert_eq!(s.false_deaths(), Vec::new(), "a live member held Dead");
        s.all_see(11, |m| m.is_none_or(|m| m.status.is_gone()))
    })
    .expect("a silent crash is Dead everywhere within 30 s");
}
