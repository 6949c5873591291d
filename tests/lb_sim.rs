//! The load-balancing simulation: what P2C must achieve against the alternatives.

use quicmesh::lbsim::{simulate, LbConfig, LbResult, Policy};
use quicmesh::routing::Strategy;

fn run(servers: usize, util: f64, staleness: f64, p: Policy) -> LbResult {
    let mut cfg = LbConfig::new(servers, 11);
    cfg.utilisation = util;
    cfg.staleness = staleness;
    cfg.requests = 40_000;
    simulate(&cfg, p)
}

const P2C: Policy = Policy::Mesh(Strategy::P2c);

#[test]
fn p2c_beats_round_robin_and_random_by_far_with_a_slow_server() {
    for (n, util) in [(5, 0.7), (5, 0.9), (20, 0.8), (100, 0.8)] {
        let p2c = run(n, util, 0.0, P2C);
        let rr = run(n, util, 0.0, Policy::Mesh(Strategy::RoundRobin));
        // At N = 100 round-robin's overloaded slow server (1% of traffic at a tenth of the
        // speed) takes longer than this run to push its p99 up; its traffic share shows it.
        if n <= 20 {
            assert!(p2c.p99 <= 0.25 * rr.p99, "N={n}: p2c {p2c:?} rr {rr:?}");
        }
        assert!(p2c.slow_share < rr.slow_share / 4.0, "N={n}: p2c {p2c:?} rr {rr:?}");
    }
}

#[test]
fn p2c_is_close_to_the_oracle_on_few_servers() {
    for util in [0.7, 0.9] {
        let p2c = run(5, util, 0.0, P2C);
        let oracle = run(5, util, 0.0, Policy::Oracle);
        assert!(
            p2c.p99 <= 1.5 * oracle.p99,
            "util {util}: p2c {p2c:?} oracle {oracle:?}"
        );
    }
}

#[test]
fn stale_information_does_not_make_p2c_worse_than_random_but_makes_least_loaded_herd() {
    for n in [5, 20, 100] {
        let fresh = run(n, 0.8, 0.0, P2C);
        for staleness in [1.0, 10.0, 50.0] {
            let p2c = run(n, 0.8, staleness, P2C);
            let random = run(n, 0.8, staleness, Policy::Mesh(Strategy::Random));
            let least = run(n, 0.8, staleness, Policy::Mesh(Strategy::LeastLoaded));
            assert!(
                p2c.p99 <= random.p99,
                "N={n} stale {staleness}: p2c {p2c:?} random {random:?}"
            );
            if staleness >= 10.0 {
                // Every router sends to the same "emptiest" server until the next update.
                assert!(
                    least.p99 > 1.5 * p2c.p99,
                    "N={n} stale {staleness}: least {least:?} p2c {p2c:?}"
                );
            }
            if staleness <= 1.0 {
                assert!(
                    p2c.p99 <= 1.25 * fresh.p99,
                    "N={n} stale {staleness}: {p2c:?} vs fresh {fresh:?}"
                );
            }
        }
    }
}

/// 100 servers, `slow` of them 10× slower, 50 routers at 80% load: P2C over each router's
/// subset of 12 against P2C over all 100.
fn subset_vs_full(slow: usize, staleness: f64, seed: u64) -> (LbResult, LbResult) {
    let mut cfg = LbConfig::new(100, seed);
    cfg.routers = 50;
    cfg.slow = slow;
    cfg.staleness = staleness;
    cfg.requests = 60_000;
    let full = simulate(&cfg, P2C);
    cfg.subset = Some(12);
    (simulate(&cfg, P2C), full)
}

#[test]
fn p2c_over_subsets_of_12_keeps_the_tail_of_p2c_over_every_server() {
    for (slow, staleness) in [(1, 0.0), (10, 0.0), (10, 1.0)] {
        let (subset, full) = subset_vs_full(slow, staleness, 5);
        assert!(
            subset.p99 <= 1.25 * full.p99,
            "{slow} slow, staleness {staleness}: subsets {subset:?} full set {full:?}"
        );
    }
}
