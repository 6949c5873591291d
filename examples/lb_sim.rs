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
}
