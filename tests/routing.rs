//! Routing on a real mesh: P2C moves traffic away from a slow node, and a refusing node's
//! requests are retried elsewhere.
#![allow(clippy::disallowed_methods)] // tests may read the clock; see clippy.toml

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, within, Pki};
use quicmesh::routing::Strategy;
use quicmesh::{Echo, Node};

const LIMIT: Duration = Duration::from_secs(30);

async fn node_with(
    pki: &Pki,
    name: &str,
    seed: Option<&Node>,
    strategy: Strategy,
    slow: Option<Arc<AtomicBool>>,
) -> Node {
    let mut cfg = pki.node_config(name);
    cfg.peers = seed.map(|s| vec![s.local_addr().to_string()]).unwrap_or_default();
    cfg.routing.strategy = strategy;
    let b = Node::builder(cfg);
    match slow {
        None => b.start().await.unwrap(),
        Some(flag) => b
            .handler(
                "work",
                quicmesh::request_handler(1024, move |req: Bytes, _| {
                    let slow = flag.load(Ordering::Relaxed);
                    async move {
                        tokio::time::sleep(Duration::from_millis(if slow { 50 } else { 2 })).await;
                        Ok(req)
                    }
                }),
            )
            .start()
            .await
            .unwrap(),
    }
}

async fn shares(client: &quicmesh::Client, calls: usize) -> std::collections::BTreeMap<String, usize> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut out = std::collections::BTreeMap::new();
    let mut record = |r: Result<String, tokio::task::JoinError>| *out.entry(r.unwrap()).or_insert(0) += 1;
    for i in 0..calls {
        let c = client.clone();
        tasks.spawn(async move {
            c.request("work", format!("{i}"), &Default::default())
                .await
                .unwrap()
                .served_by
        });
        // A steady load of at most 8 calls in flight.
        while tasks.len() >= 8 {
            if let Some(r) = tasks.join_next().await {
                record(r);
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        record(r);
    }
    assert_eq!(out.values().sum::<usize>(), calls);
    out
}

/// A slowness switch for a `work` handler (50 ms instead of 2 ms while set).
fn flag(slow: bool) -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(slow))
}

/// An entry node routing with `strategy`, and nodes `b` and `c` serving `work` (slow while
/// their flag is set); returns once the entry sees both.
async fn three(pki: &Pki, strategy: Strategy, b_slow: Arc<AtomicBool>, c_slow: Arc<AtomicBool>) -> (Node, Node, Node) {
    let entry = node_with(pki, "entry", None, strategy, None).await;
    let b = node_with(pki, "b", Some(&entry), Strategy::P2c, Some(b_slow)).await;
    let c = node_with(pki, "c", Some(&entry), Strategy::P2c, Some(c_slow)).await;
    eventually(LIMIT, "entry sees work on b and c", || {
        entry.service_map().get("work").is_some_and(|v| v.len() == 2)
    })
    .await;
    (entry, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_sends_most_requests_away_from_a_slow_node() {
    common::init_logs();
    let pki = Pki::new();
    let slow_flag = flag(false);
    let (entry, _b, _c) = three(&pki, Strategy::P2c, flag(false), slow_flag.clone()).await;
    let client = pki.client("web", &entry).await;
    slow_flag.store(true, Ordering::Relaxed);
    let got = within(LIMIT, "calls", shares(&client, 400)).await;
    let to_c = got.get("c").copied().unwrap_or(0);
    eprintln!("p2c with c 25x slower: {got:?}");
    assert!(to_c * 4 < 400, "c (slow) got {to_c} of 400: {got:?}");
    // The status report shows the split.
    let routes = entry.status().routes;
    assert!(routes.iter().any(|(s, by)| s == "work" && by.len() == 2), "{routes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_splits_evenly_for_comparison() {
    let pki = Pki::new();
    let (entry, _b, _c) = three(&pki, Strategy::RoundRobin, flag(false), flag(true)).await;
    let client = pki.client("web", &entry).await;
    let got = within(LIMIT, "calls", shares(&client, 200)).await;
    let to_c = got.get("c").copied().unwrap_or(0);
    assert!((80..=120).contains(&to_c), "round robin ignores speed: {got:?}");
}

#[tokio::test]
async fn a_refusing_node_is_retried_elsewhere_and_ejected() {
    let pki = Pki::new();
    let entry = node_with(&pki, "entry", None, Strategy::RoundRobin, None).await;
    // b serves `work` from a TCP backend that is down: every stream there is refused (Unavailable).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = pki.node_config("b");
    cfg.peers = vec![entry.local_addr().to_string()];
    cfg.services
        .insert("work".into(), quicmesh::config::ServiceConfig::tcp(dead.to_string()));
    let b = Node::builder(cfg).start().await.unwrap();
    let c = node_with(
        &pki,
        "c",
        Some(&entry),
        Strategy::P2c,
        Some(Arc::new(AtomicBool::new(false))),
    )
    .await;
    eventually(LIMIT, "entry sees work on b and c", || {
        entry.service_map().get("work").is_some_and(|v| v.len() == 2)
    })
    .await;
    let client = pki.client("web", &entry).await;
    for i in 0..40 {
        let r = client.request("work", "x", &Default::default()).await;
        let r = r.unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(r.served_by, "c");
    }
    // b refused a few times, then was ejected: it saw far fewer than half of the 40.
    let refused = b.stats().rejected.values().sum::<u64>();
    assert!(refused <= 10, "b refused {refused} streams");
    drop((b, c, Echo));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_load_fails_only_its_in_flight_calls_and_nothing_hangs() {
    let pki = Pki::new();
    let (entry, _b, c) = three(&pki, Strategy::RoundRobin, flag(true), flag(true)).await;
    let client = pki.client("web", &entry).await;
    // 16 calls in flight (50 ms each), half of them on c; kill c under them.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let cl = client.clone();
        tasks.spawn(async move { cl.request("work", format!("{i}"), &Default::default()).await });
    }
    // Once the entry has relayed all 16, each is running on b or c (counted, not
    // `in_flight() == 16`, which would race the first call to end).
    eventually(LIMIT, "the entry relayed all 16 calls", || entry.stats().relayed >= 16).await;
    drop(c);
    let mut failed = 0;
    within(LIMIT, "in-flight calls end", async {
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Ok(reply) => assert!(reply.served_by == "b" || reply.served_by == "c"),
                Err(e) => {
                    // Only a stream already running on c may fail, and it says so.
                    assert!(matches!(e, quicmesh::CallError::Stream(_)), "{e}");
                    failed += 1;
                }
            }
        }
    })
    .await;
    eprintln!("{failed} of 16 in-flight calls failed when c was killed");
    assert!(failed <= 8, "{failed} calls failed");
    // Every call that starts after the kill lands on b.
    for i in 0..40 {
        let r = within(
            LIMIT,
            "call after the kill",
            client.request("work", "x", &Default::default()),
        )
        .await;
        assert_eq!(r.unwrap_or_else(|e| panic!("call {i}: {e}")).served_by, "b");
    }
}

#[tokio::test]
async fn a_client_that_routes_for_itself_skips_the_relay_hop() {
    let pki = Pki::new();
    let (entry, b, c) = three(&pki, Strategy::P2c, flag(false), flag(false)).await;
    let mut cfg = quicmesh::ClientConfig::new(
        pki.tls(quicmesh::Role::Client, "web"),
        vec![entry.local_addr().to_string()],
    );
    cfg.routing.direct = true;
    let client = quicmesh::Client::connect(cfg).await.unwrap();
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let r = client.request("work", "x", &Default::default()).await.unwrap();
        *served.entry(r.served_by).or_insert(0) += 1;
    }
    assert_eq!(entry.stats().relayed, 0, "the entry node relayed nothing");
    assert_eq!(b.stats().served_local + c.stats().served_local, 40, "{served:?}");
    assert_eq!(served.len(), 2, "both nodes served: {served:?}");
}

/// A server's load reaches the node routing to it over their link every
/// `gossip.load_interval`, not in its gossip record: with the record's load held back for an
/// hour, the entry still sees b's streams in flight come and go within a few pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_load_reaches_the_entry_over_its_link_not_through_gossip() {
    common::init_logs();
    let pki = Pki::new();
    let entry = node_with(&pki, "entry", None, Strategy::P2c, None).await;
    let (release, held) = tokio::sync::watch::channel(false);
    let mut cfg = pki.node_config("b");
    cfg.peers = vec![entry.local_addr().to_string()];
    cfg.gossip.load_interval = Duration::from_millis(50);
    cfg.gossip.load_gossip_interval = Duration::from_secs(3600);
    let b = Node::builder(cfg)
        .handler(
            "hold",
            quicmesh::request_handler(1024, move |req: Bytes, _| {
                let mut held = held.clone();
                async move {
                    let _ = held.wait_for(|go| *go).await;
                    Ok(req)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    eventually(LIMIT, "entry sees hold on b", || {
        entry.service_map().get("hold").is_some_and(|v| v == &["b".to_string()])
    })
    .await;
    let b_inflight = |n: &Node| {
        n.status()
            .members
            .iter()
            .find(|m| m.member.name == "b")
            .map(|m| m.member.load.inflight)
    };
    let client = pki.client("web", &entry).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..3 {
        let c = client.clone();
        calls.spawn(async move { c.request("hold", format!("{i}"), &Default::default()).await });
    }
    eventually(LIMIT, "entry sees b's 3 streams in flight", || {
        b_inflight(&entry) == Some(3)
    })
    .await;
    release.send_replace(true);
    while let Some(r) = calls.join_next().await {
        assert_eq!(r.unwrap().unwrap().served_by, "b");
    }
    eventually(LIMIT, "entry sees b idle again", || b_inflight(&entry) == Some(0)).await;
    client.close().await;
    entry.shutdown().await;
    b.shutdown().await;
}
