//! Scenario 5: routing when one of five backends is ten times slower. quicmesh routes across
//! five nodes (each with one backend) from an entry node, by strategy; HAProxy balances the
//! same five backends directly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quicmesh::config::ServiceConfig;
use quicmesh::routing::Strategy;
use quicmesh::{Client, ClientConfig, Node, NodeConfig, Role};

use crate::haproxy::{self, Haproxy};
use crate::latency::{measure, request, Target};
use crate::util::{Error, Pki};

const BACKENDS: usize = 5;
/// Service time of a healthy backend; the slow one takes ten times as long.
/// Long enough, and the concurrency low enough, that the shared 2 cores stay far from busy:
/// what is measured is the routing, not the CPU.
const FAST: Duration = Duration::from_millis(10);
const CONCURRENCY: usize = 10;
/// Load before each measured cell, so that every balancer meets the measured period warm.
const WARMUP: Duration = Duration::from_secs(1);

struct Row {
    name: String,
    skewed: bool,
    p50: f64,
    p99: f64,
    p999: f64,
    slow_share: f64,
}

/// Closed-loop load on `t` for `d`, counting which backend answered each request.
async fn load(t: Target<'_>, d: Duration, counts: &[AtomicU64; BACKENDS]) -> Result<crate::util::Latency, Error> {
    let body = Bytes::from(vec![7u8; 64]);
    measure(CONCURRENCY, d, || {
        let body = body.clone();
        async move {
            let reply = request(t, &body).await?;
            let i = *reply.first().ok_or("empty reply")? as usize;
            counts
                .get(i)
                .ok_or("bad backend index")?
                .fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    })
    .await
}

async fn one_cell(name: &str, t: Target<'_>, skewed: bool, d: Duration) -> Result<Row, Error> {
    load(t, WARMUP, &Default::default()).await?;
    let counts: [AtomicU64; BACKENDS] = Default::default();
    let l = load(t, d, &counts).await?;
    let total: u64 = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    Ok(Row {
        name: name.to_owned(),
        skewed,
        p50: l.p50,
        p99: l.p99,
        p999: l.p999,
        slow_share: counts[0].load(Ordering::Relaxed) as f64 / total.max(1) as f64,
    })
}

/// Starts the five backends and nodes, entry nodes per strategy and HAProxy per algorithm,
/// then measures each with and without the skew.
pub async fn run(pki: &Pki, haproxy_bin: Option<&str>, d: Duration) -> Result<(), Error> {
    let delays: Vec<Arc<AtomicU64>> = (0..BACKENDS)
        .map(|_| Arc::new(AtomicU64::new(FAST.as_micros() as u64)))
        .collect();
    let mut backends: Vec<SocketAddr> = Vec::new();
    let mut workers = Vec::new();
    for (i, delay) in delays.iter().enumerate() {
        let addr = crate::backends::delayed(i as u8, delay.clone()).await?;
        backends.push(addr);
        let name = format!("w{i}");
        let mut cfg = NodeConfig::new(&name, pki.tls(Role::Node, &name)?);
        cfg.listen = "127.0.0.1:0".parse()?;
        cfg.services.insert("work".into(), ServiceConfig::tcp(addr.to_string()));
        workers.push(Node::builder(cfg).start().await?);
    }
    let strategies = [Strategy::P2c, Strategy::LeastLoaded, Strategy::RoundRobin];
    let mut entries = Vec::new();
    let mut clients = Vec::new();
    for s in strategies {
        let name = format!("entry-{s}").replace('_', "-");
        let mut cfg = NodeConfig::new(&name, pki.tls(Role::Node, &name)?);
        cfg.listen = "127.0.0.1:0".parse()?;
        cfg.peers = workers.iter().map(|w| w.local_addr().to_string()).collect();
        cfg.routing.strategy = s;
        let e = Node::builder(cfg).start().await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while e.service_map().get("work").map_or(0, Vec::len) < BACKENDS {
            if Instant::now() > deadline {
                return Err(format!("{name} did not learn all {BACKENDS} workers").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = Client::connect(ClientConfig::new(
            pki.tls(Role::Client, "skew")?,
            vec![e.local_addr().to_string()],
        ))
        .await?;
        entries.push(e);
        clients.push((format!("quicmesh {s}"), client));
    }
    let algorithms = ["random(2)", "leastconn", "roundrobin"];
    let mut ha = None;
    let mut fronts = Vec::new();
    if let Some(bin) = haproxy_bin {
        let mut body = String::new();
        let servers: Vec<String> = backends.iter().map(|b| format!("{b}")).collect();
        for (i, alg) in algorithms.iter().enumerate() {
            let f = haproxy::front()?;
            haproxy::listen(&mut body, &format!("skew{i}"), f, "", alg, &servers);
            fronts.push((format!("HAProxy {alg}"), f));
        }
        ha = Some(Haproxy::start(bin, &body, fronts[0].1, pki.dir.path(), "skew").await?);
    }
    let mut rows = Vec::new();
    for skewed in [false, true] {
        let slow = if skewed { FAST * 10 } else { FAST };
        delays[0].store(slow.as_micros() as u64, Ordering::Relaxed);
        for (name, c) in &clients {
            rows.push(one_cell(name, Target::Mesh(c, "work"), skewed, d).await?);
        }
        for (name, f) in &fronts {
            rows.push(one_cell(name, Target::Tcp(*f), skewed, d).await?);
        }
    }
    println!(
        "### Routing under skew: {BACKENDS} backends taking {} ms, one of them {} ms when skewed; {CONCURRENCY} concurrent 64 B requests, {d:?} per cell after {WARMUP:?} of the same load\n",
        FAST.as_millis(),
        (FAST * 10).as_millis()
    );
    println!("| path | slow backend | p50 µs | p99 µs | p99.9 µs | share to the slow backend | p99 × same path without skew |\n|---|---|---|---|---|---|---|");
    for r in &rows {
        let calm = rows
            .iter()
            .find(|x| x.name == r.name && !x.skewed)
            .map_or(f64::NAN, |x| x.p99);
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.1} % | {:.2} |",
            r.name,
            if r.skewed { "10× slower" } else { "none" },
            r.p50,
            r.p99,
            r.p999,
            r.slow_share * 100.0,
            r.p99 / calm
        );
    }
    println!();
    for (_, c) in clients {
        c.close().await;
    }
    if let Some(h) = ha {
        h.stop().await;
    }
    for n in entries.into_iter().chain(workers) {
        n.shutdown().await;
    }
    Ok(())
}
