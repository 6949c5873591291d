//! A mesh larger than `limits.max_peer_connections`: forty real nodes on loopback with a cap
//! of 8 keep a bounded overlay, every node reaches a service three nodes offer, and routing
//! goes around a crashed node and a draining one.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{eventually, eventually_async, Pki};
use quicmesh::gossip::Status;
use quicmesh::{request_handler, Client, ClientConfig, Node, RequestContext, Role};

const N: usize = 40;
const CAP: usize = 8;
const SERVERS: [&str; 3] = ["n37", "n38", "n39"];

/// Answers with the name of the node that served the call.
fn whoami() -> impl quicmesh::Handler {
    request_handler(64, |_req: Bytes, ctx: RequestContext| async move {
        Ok(Bytes::from(ctx.node))
    })
}

fn links(n: &Node) -> usize {
    n.peers().iter().filter(|p| p.connected).count()
}

fn sees(n: &Node, member: &str, want: impl Fn(Status) -> bool) -> bool {
    n.status()
        .members
        .iter()
        .any(|m| m.member.name == member && want(m.member.status))
}

/// Calls `who` through each client (one per node, entering at that node) and checks who
/// served each call. A failed call is tried again (a node may still be dialling a server);
/// a call served by a node not `allowed` fails the test at once.
async fn call_all(clients: &[(String, Client)], allowed: &[&str]) {
    for (entry, c) in clients {
        let served = eventually_async(
            Duration::from_secs(20),
            &format!("a call entering at {entry}"),
            || async { c.call("who", "?").await.map_err(|e| e.to_string()) },
        )
        .await;
        let who = String::from_utf8_lossy(&served).into_owned();
        assert!(
            allowed.contains(&who.as_str()),
            "entering at {entry}: served by {who}, not one of {allowed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_nodes_keep_a_bounded_overlay_and_route_around_a_crash_and_a_drain() {
    common::init_logs();
    let pki = Pki::new();
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..N {
        let name = format!("n{i:02}");
        let mut cfg = pki.node_config(&name);
        cfg.limits.max_peer_connections = CAP;
        // Every node joins through the first one, which cannot keep them all.
        cfg.peers = nodes
            .first()
            .map(|n| vec![n.local_addr().to_string()])
            .unwrap_or_default();
        let mut b = Node::builder(cfg);
        if SERVERS.contains(&name.as_str()) {
            b = b.handler("who", whoami());
        }
        nodes.push(b.start().await.unwrap());
    }
    let low = CAP / 2;
    eventually(
        Duration::from_secs(90),
        "every node knows all 40 alive and holds 4..=8 links",
        || {
            nodes.iter().all(|n| {
                let alive = n
                    .status()
                    .members
                    .iter()
                    .filter(|m| m.member.status == Status::Alive)
                    .count();
                alive == N && (low..=CAP).contains(&links(n))
            })
        },
    )
    .await;
    let counts: Vec<usize> = nodes.iter().map(links).collect();
    eprintln!("links per node: {counts:?}");
    assert!(
        nodes[0].stats().peer_links_trimmed > 0,
        "the seed let go of the links past its cap"
    );

    // Every node reaches the service, whether or not a server is among its links.
    let mut clients = Vec::new();
    for n in &nodes[..N - SERVERS.len()] {
        let cfg = ClientConfig::new(pki.tls(Role::Client, "web"), vec![n.local_addr().to_string()]);
        clients.push((n.name().to_owned(), Client::connect(cfg).await.unwrap()));
    }
    call_all(&clients, &SERVERS).await;
    // A caller keeps its link to a server it uses and closes an overlay link instead; only
    // the servers hold more than the cap (one link per caller).
    eventually(Duration::from_secs(20), "callers back within the cap", || {
        nodes[..N - SERVERS.len()].iter().all(|n| links(n) <= CAP)
    })
    .await;

    // A crashed server: the others hold it dead, and calls go around it.
    let crashed = nodes.pop().unwrap();
    assert_eq!(crashed.name(), "n39");
    drop(crashed);
    eventually(Duration::from_secs(60), "every node holds n39 dead", || {
        nodes.iter().all(|n| !sees(n, "n39", |s| !s.is_gone()))
    })
    .await;
    call_all(&clients, &["n37", "n38"]).await;

    // A draining server gets no new calls.
    nodes[38].set_draining(true);
    eventually(Duration::from_secs(30), "every node sees n38 draining", || {
        nodes
            .iter()
            .all(|n| n.name() == "n38" || sees(n, "n38", |s| s == Status::Draining))
    })
    .await;
    call_all(&clients, &["n37"]).await;

    // Links that came up in the last seconds (replacing those to n39) may run past the cap
    // for `grace` before the surplus closes.
    eventually(
        Duration::from_secs(20),
        "callers back within the cap after the crash",
        || nodes[..N - SERVERS.len()].iter().all(|n| links(n) <= CAP),
    )
    .await;
    eprintln!(
        "links per node at the end: {:?}",
        nodes.iter().map(links).collect::<Vec<_>>()
    );
    for n in nodes {
        n.shutdown().await;
    }
}
