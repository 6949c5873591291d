//! The real-mesh version of the load-balancing table: the same load through an entry node
//! to three nodes serving `work`, one of them 10× slower, with p2c and with round_robin.
//!
//! ## Usage
//! ```text
//! cargo run --release --example route_mesh
//! ```
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quicmesh::routing::Strategy;
use quicmesh::{Client, ClientConfig, IssueOptions, MeshCa, Node, NodeConfig, Role, Table, TlsPaths};

const CALLS: usize = 2000;
const IN_FLIGHT: usize = 16;

fn tls(dir: &std::path::Path, ca: &MeshCa, role: Role, name: &str) -> TlsPaths {
    let files = ca
        .issue(&IssueOptions::new(role, name))
        .and_then(|c| c.write(dir, role, name, true))
        .expect("issue certificate");
    TlsPaths::new(dir.join("ca.crt"), files.cert, files.key)
}

async fn run(strategy: Strategy) -> (Duration, Duration, f64, Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = MeshCa::generate("bench.quicmesh", 1).expect("CA");
    ca.write(dir.path(), true).expect("write CA");
    let mut cfg = NodeConfig::new("entry", tls(dir.path(), &ca, Role::Node, "entry"));
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.routing.strategy = strategy;
    let entry = Node::builder(cfg).start().await.expect("entry");
    let mut servers = Vec::new();
    for (name, ms) in [("fast1", 2u64), ("fast2", 2), ("slow", 20)] {
        let mut cfg = NodeConfig::new(name, tls(dir.path(), &ca, Role::Node, name));
        cfg.listen = "127.0.0.1:0".parse().expect("addr");
        cfg.peers = vec![entry.local_addr().to_string()];
        let h = quicmesh::request_handler(1024, move |req: Bytes, _| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(req)
        });
        servers.push(Node::builder(cfg).handler("work", h).start().await.expect("server"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while entry.service_map().get("work").is_none_or(|v| v.len() < 3) {
        assert!(Instant::now() < deadline, "mesh did not form");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = Client::connect(ClientConfig::new(
        tls(dir.path(), &ca, Role::Client, "bench"),
        vec![entry.local_addr().to_string()],
    ))
    .await
    .expect("client");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut lat = Vec::with_capacity(CALLS);
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    let mut record = |r: Result<(Duration, String), tokio::task::JoinError>| {
        let (d, s) = r.expect("task");
        lat.push(d);
        *by.entry(s).or_default() += 1;
    };
    for i in 0..CALLS {
        let c = client.clone();
        tasks.spawn(async move {
            let t0 = Instant::now();
            let r = c
                .request("work", format!("{i}"), &Default::default())
                .await
                .expect("call");
            (t0.elapsed(), r.served_by)
        });
        while tasks.len() >= IN_FLIGHT {
            if let Some(r) = tasks.join_next().await {
                record(r);
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        record(r);
    }
    let total = started.elapsed();
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    let slow = by.get("slow").copied().unwrap_or(0) as f64 / CALLS as f64;
    (p(0.5), p(0.99), slow, total)
}

#[tokio::main]
async fn main() {
    let mut t = Table::new(["strategy", "p50", "p99", "to slow node", "wall time"]);
    for s in [
        Strategy::P2c,
        Strategy::RoundRobin,
        Strategy::LeastLoaded,
        Strategy::Random,
    ] {
        let (p50, p99, slow, total) = run(s).await;
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        t.row([
            s.to_string(),
            ms(p50),
            ms(p99),
            format!("{:.1}%", slow * 100.0),
            ms(total),
        ]);
    }
    println!("{CALLS} calls, {IN_FLIGHT} in flight, entry node -> fast1 (2 ms), fast2 (2 ms), slow (20 ms)\n");
    print!("{}", t.render());
}
