//! The load-balancing simulation's table: p50/p99 response time and the share of traffic sent
//! to slow servers, per strategy, for fresh and stale load information.
//!
//! ## Usage
//! ```text
//! cargo run --release --example lb_sim
//! ```
//! Times are in units of a fast server's mean service time; one server in each set is 10×
//! slower; 10 routers share Poisson arrivals at the given utilisation.

use quicmesh::lbsim::{simulate, LbConfig, Policy};
use quicmesh::routing::Strategy;
use quicmesh::Table;

fn main() {
    let policies = [
        Policy::Oracle,
        Policy::Mesh(Strategy::P2c),
        Policy::Mesh(Strategy::LeastLoaded),
        Policy::Mesh(Strategy::Weighted),
        Policy::Mesh(Strategy::Random),
        Policy::Mesh(Strategy::RoundRobin),
    ];
    let mut t = Table::new(["servers", "util", "staleness", "policy", "p50", "p99", "to slow"]);
    for (servers, util) in [(5, 0.7), (5, 0.9), (20, 0.8), (100, 0.8)] {
        for staleness in [0.0, 1.0, 10.0, 50.0] {
            for p in policies {
                if staleness > 0.0
                    && matches!(
                        p,
                        Policy::Oracle | Policy::Mesh(Strategy::RoundRobin | Strategy::Weighted)
                    )
                {
                    continue; // these do not use load information
                }
                let mut cfg = LbConfig::new(servers, 7);
                cfg.utilisation = util;
                cfg.staleness = staleness;
                let r = simulate(&cfg, p);
                t.row([
                    servers.to_string(),
                    format!("{:.0}%", util * 100.0),
                    format!("{staleness}"),
                    p.to_string(),
                    format!("{:.2}", r.p50),
                    format!("{:.2}", r.p99),
                    format!("{:.1}%", r.slow_share * 100.0),
                ]);
            }
        }
    }
    print!("{}", t.render());
    subsets();
}

/// P2C over each router's deterministic subset of 12 against P2C over every server: 100
/// servers, 50 routers at 80% load, some servers 10× slower.
fn subsets() {
    println!();
    let mut t = Table::new(["slow servers", "staleness", "full-set p99", "subset p99", "ratio"]);
    for slow in [1, 10] {
        for staleness in [0.0, 1.0, 10.0] {
            let mut p99 = [Vec::new(), Vec::new()];
            for seed in 1..=5 {
                let mut cfg = LbConfig::new(100, seed);
                cfg.routers = 50;
                cfg.slow = slow;
                cfg.staleness = staleness;
                cfg.requests = 60_000;
                p99[0].push(simulate(&cfg, Policy::Mesh(Strategy::P2c)).p99);
                cfg.subset = Some(12);
                p99[1].push(simulate(&cfg, Policy::Mesh(Strategy::P2c)).p99);
            }
            let med = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (f, s) = (med(&mut p99[0]), med(&mut p99[1]));
            t.row([
                slow.to_string(),
                format!("{staleness}"),
                format!("{f:.2}"),
                format!("{s:.2}"),
                format!("{:.2}", s / f),
            ]);
        }
    }
    print!("{}", t.render());
}
