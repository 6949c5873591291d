//! Deterministic subsetting on real nodes: a service on more servers than
//! `routing.subset_size` is routed by each node over its own subset of them, the subsets are
//! balanced over the servers, a subset widens while streams pile up and narrows after, and a
//! node with no server of a service linked sends the stream through a linked node (a second
//! relay hop).
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, eventually_async, Pki};
use quicmesh::gossip::Status;
use quicmesh::routing::subset::cap;
use quicmesh::{request_handler, Node, RequestContext};

/// Answers with the name of the node that served the call.
fn whoami() -> impl quicmesh::Handler {
    request_handler(64, |_req: Bytes, ctx: RequestContext| async move {
        Ok(Bytes::from(ctx.node))
    })
}

fn alive(n: &Node) -> usize {
    n.status()
        .members
        .iter()
        .filter(|m| m.member.status == Status::Alive)
        .count()
}

fn linked(n: &Node, peer: &str) -> bool {
    n.peers().iter().any(|p| p.name == peer && p.connected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_routes_a_service_over_its_own_balanced_subset_of_its_servers() {
    common::init_logs();
    const N: usize = 14;
    const SUBSET: usize = 3;
    let servers: Vec<String> = (6..N).map(|i| format!("n{i:02}")).collect();
    let pki = Pki::new();
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..N {
        let name = format!("n{i:02}");
        let mut cfg = pki.node_config(&name);
        cfg.routing.subset_size = SUBSET;
        cfg.peers = nodes
            .first()
            .map(|n| vec![n.local_addr().to_string()])
            .unwrap_or_default();
        let mut b = Node::builder(cfg);
        if servers.contains(&name) {
            b = b.handler("who", whoami());
        }
        nodes.push(b.start().await.unwrap());
    }
    eventually(Duration::from_secs(60), "a full mesh of 14, all alive", || {
        nodes
            .iter()
            .all(|n| alive(n) == N && n.peers().iter().filter(|p| p.connected).count() == N - 1)
    })
    .await;
    // Every node's subset: SUBSET servers (a server counts itself besides its subset).
    let subset_of = |n: &Node| -> Vec<String> {
        let mut s = n.service_map().remove("who").unwrap_or_default();
        s.retain(|x| x != n.name());
        s
    };
    eventually(Duration::from_secs(20), "every node routes over its subset", || {
        nodes.iter().all(|n| {
            let s = subset_of(n);
            s.len() == SUBSET || (servers.iter().any(|x| x == n.name()) && s.len() == SUBSET - 1)
        })
    })
    .await;
    let mut callers_of: BTreeMap<String, usize> = BTreeMap::new();
    for n in &nodes {
        for s in subset_of(n) {
            *callers_of.entry(s).or_default() += 1;
        }
    }
    eprintln!("callers per server: {callers_of:?}");
    let most = cap(N, servers.len(), SUBSET);
    assert!(
        callers_of.values().all(|c| *c <= most),
        "no server in more than {most} subsets: {callers_of:?}"
    );
    assert_eq!(callers_of.len(), servers.len(), "every server in some subset");
    // Calls entering at a node that serves nothing go only to its subset.
    for n in &nodes[..6] {
        let mine: BTreeSet<String> = subset_of(n).into_iter().collect();
        let client = pki.client("web", n).await;
        let mut seen = BTreeSet::new();
        for _ in 0..30 {
            let who = client.call("who", "?").await.expect("a call");
            seen.insert(String::from_utf8_lossy(&who).into_owned());
        }
        assert!(
            seen.is_subset(&mine),
            "{}: served by {seen:?}, subset {mine:?}",
            n.name()
        );
        assert!(
            seen.len() >= 2,
            "{}: the balancer spreads over the subset: {seen:?}",
            n.name()
        );
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_no_server_linked_relays_through_a_linked_node() {
    common::init_logs();
    let pki = Pki::new();
    // b relays; c serves, but advertises an address nobody can reach, so only the link it
    // dials itself (to b) comes up; a joins through b and can never link c.
    let b = Node::builder(pki.node_config("b-relay")).start().await.unwrap();
    let mut cfg = pki.node_config("c-server");
    cfg.advertise = Some("127.0.0.1:9".into());
    cfg.peers = vec![b.local_addr().to_string()];
    let c = Node::builder(cfg).handler("who", whoami()).start().await.unwrap();
    let mut cfg = pki.node_config("a-entry");
    cfg.peers = vec![b.local_addr().to_string()];
    cfg.transport.connect_timeout = Duration::from_millis(500);
    let a = Node::builder(cfg).start().await.unwrap();
    eventually(Duration::from_secs(30), "all three alive everywhere", || {
        [&a, &b, &c].iter().all(|n| alive(n) == 3)
    })
    .await;
    assert!(linked(&b, "c-server") && linked(&a, "b-relay"));
    let client = pki.client("web", &a).await;
    let who = eventually_async(Duration::from_secs(20), "a call entering at a-entry", || async {
        client.call("who", "?").await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(&who[..], b"c-server");
    assert!(!linked(&a, "c-server"), "a has no link to c: the call went a → b → c");
    assert!(a.stats().relayed >= 1 && b.stats().relayed >= 1);
    // With one hop allowed, the same call has nowhere to go.
    let mut cfg = pki.node_config("d-entry");
    cfg.peers = vec![b.local_addr().to_string()];
    cfg.limits.hop_limit = 1;
    let d = Node::builder(cfg).start().await.unwrap();
    eventually(Duration::from_secs(30), "d sees c alive", || alive(&d) == 4).await;
    let client = pki.client("web", &d).await;
    let e = client.call("who", "?").await.expect_err("no second hop");
    assert!(e.to_string().contains("who"), "{e}");
    for n in [a, b, c, d] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subset_widens_while_streams_pile_up_and_narrows_when_they_pass() {
    common::init_logs();
    const SUBSET: usize = 2;
    let pki = Pki::new();
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..8 {
        let mut cfg = pki.node_config(&format!("w{i}"));
        cfg.routing.subset_size = SUBSET;
        cfg.peers = nodes
            .first()
            .map(|n| vec![n.local_addr().to_string()])
            .unwrap_or_default();
        let mut b = Node::builder(cfg);
        if i > 0 {
            // Each call takes a while, so that concurrent calls pile up on the servers.
            b = b.handler(
                "slow",
                request_handler(64, |_req: Bytes, ctx: RequestContext| async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(Bytes::from(ctx.node))
                }),
            );
        }
        nodes.push(b.start().await.unwrap());
    }
    let width = |n: &Node| n.service_map().get("slow").map_or(0, Vec::len);
    eventually(Duration::from_secs(60), "a full mesh of 8, w0 routing over 2", || {
        nodes.iter().all(|n| alive(n) == 8) && width(&nodes[0]) == SUBSET
    })
    .await;
    let client = std::sync::Arc::new(pki.client("web", &nodes[0]).await);
    // 40 calls at once: 20 per server of the subset, far above the 2 that widen it.
    let served = eventually_async(Duration::from_secs(30), "w0's subset widens", || {
        let client = client.clone();
        async move {
            let calls = (0..40).map(|_| {
                let c = client.clone();
                async move { c.call("slow", "?").await }
            });
            let mut seen = BTreeSet::new();
            for r in futures_util::future::join_all(calls).await {
                seen.insert(String::from_utf8_lossy(&r.map_err(|e| e.to_string())?).into_owned());
            }
            if seen.len() > SUBSET {
                Ok(seen)
            } else {
                Err(format!("served by {seen:?}"))
            }
        }
    })
    .await;
    eprintln!("under load w0 routed to {served:?}");
    assert!(width(&nodes[0]) > SUBSET);
    // One call at a time: well under the band, so it narrows back, a server per second.
    eventually_async(Duration::from_secs(30), "w0's subset narrows back to 2", || {
        let client = client.clone();
        let w = width(&nodes[0]);
        async move {
            client.call("slow", "?").await.map_err(|e| e.to_string())?;
            if w == SUBSET {
                Ok(())
            } else {
                Err(format!("{w} servers"))
            }
        }
    })
    .await;
    for n in nodes {
        n.shutdown().await;
    }
}
