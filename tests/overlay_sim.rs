//! The overlay state machine under its simulator: bounded links at 1,000 and 10,000 nodes, a
//! connected overlay, gossip's spread over it against Serf's round count, repair after half
//! the nodes crash, and small meshes kept whole.
#![allow(clippy::disallowed_methods)]

use quicmesh::overlay::sim::{OverlaySim, OverlaySimConfig};

const CAP: usize = 32;

fn serf_rounds(n: usize) -> f64 {
    ((n as f64 + 1.0) * 1e4).ln() / 1.5
}

fn settled(n: usize, cap: usize, seed: u64) -> OverlaySim {
    let mut sim = OverlaySim::new(OverlaySimConfig::new(n, cap, seed));
    let took = sim.run_until(100, |s| s.settled() && s.connected());
    assert!(
        took.is_some(),
        "N={n} cap={cap} seed={seed}: not settled: {:?}",
        sim.degrees()
    );
    sim
}

#[test]
fn links_stay_between_half_the_cap_and_the_cap_at_a_thousand_and_ten_thousand_nodes() {
    for (n, seed) in [(1000, 1), (10_000, 2)] {
        let mut sim = settled(n, CAP, seed);
        for round in 0..200 {
            sim.step();
            let (min, _, max) = sim.degrees();
            assert!(
                (CAP / 2..=CAP).contains(&min) && max <= CAP,
                "N={n} round {round}: links min {min} max {max}"
            );
        }
        assert!(sim.connected(), "N={n}");
    }
}

#[test]
fn a_fact_spreads_over_the_overlay_within_serfs_round_count() {
    for (n, seed) in [(100, 3), (1000, 4), (10_000, 5)] {
        let mut sim = settled(n, CAP, seed);
        for loss in [0.0, 0.1] {
            let rounds = sim.spread_rounds(0, 3, loss, 100).expect("the fact spreads");
            assert!(
                rounds as f64 <= serf_rounds(n),
                "N={n} loss={loss}: {rounds} rounds > Serf's {:.1}",
                serf_rounds(n)
            );
        }
    }
}

#[test]
fn after_half_the_nodes_crash_the_survivors_are_one_overlay_and_repair() {
    for seed in 0..3 {
        let mut sim = settled(1000, CAP, 10 + seed);
        sim.run(20);
        for v in sim.live().into_iter().filter(|v| v % 2 == 0) {
            sim.crash(v);
        }
        assert!(sim.connected(), "seed {seed}: the survivors fell apart at once");
        // Dials to the dead fail until gossip declares them dead (detect_rounds); after that
        // every survivor is back to at least half the cap.
        let limit = OverlaySimConfig::new(0, CAP, 0).detect_rounds + 20;
        let took = sim.run_until(limit, |s| s.settled() && s.connected());
        assert!(
            took.is_some(),
            "seed {seed}: not repaired in {limit} rounds: {:?}",
            sim.degrees()
        );
    }
}

#[test]
fn a_join_changes_few_links_and_a_small_mesh_stays_whole() {
    let mut sim = settled(1000, CAP, 20);
    sim.run(20);
    let before = sim.link_changes;
    let total: usize = sim.live().iter().map(|&i| sim.links(i).len()).sum::<usize>() / 2;
    let new = sim.join();
    sim.run(30);
    let changed = sim.link_changes - before;
    assert!(
        sim.links(new).len() >= CAP / 2,
        "the new node has {} links",
        sim.links(new).len()
    );
    // Its own links plus one closed at each full node it dialled.
    assert!(changed <= 2 * CAP as u64, "one join changed {changed} of {total} links");

    // A mesh of at most the cap other nodes is a full mesh.
    for n in [2, 5, CAP + 1] {
        let sim = settled(n, CAP, 30);
        for i in sim.live() {
            assert_eq!(sim.links(i).len(), n - 1, "N={n}: node {i}");
        }
    }
}

#[test]
fn a_small_cap_keeps_forty_nodes_connected() {
    for seed in 0..5 {
        let mut sim = settled(40, 8, 40 + seed);
        sim.run(50);
        let (min, _, max) = sim.degrees();
        assert!(min >= 4 && max <= 8 && sim.connected(), "seed {seed}: {min}..{max}");
    }
}
