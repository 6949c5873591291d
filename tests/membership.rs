//! Gossip membership on a real mesh: five nodes on loopback with default gossip settings.
#![allow(clippy::disallowed_methods)] // tests may read the clock; see clippy.toml

mod common;

use std::time::Duration;

use common::{eventually, Pki};
use quicmesh::gossip::Status;
use quicmesh::{Echo, Node};

const LIMIT: Duration = Duration::from_secs(20);

fn status_of(n: &Node, member: &str) -> Option<(Status, u64)> {
    n.status()
        .members
        .iter()
        .find(|m| m.member.name == member)
        .map(|m| (m.member.status, m.member.incarnation))
}

async fn start(pki: &Pki, name: &str, seed: Option<&Node>, listen: Option<std::net::SocketAddr>) -> Node {
    let mut cfg = pki.node_config(name);
    if let Some(l) = listen {
        cfg.listen = l;
    }
    cfg.peers = seed.map(|s| vec![s.local_addr().to_string()]).unwrap_or_default();
    Node::builder(cfg).handler("echo", Echo).start().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_find_each_other_notice_a_crash_and_a_return() {
    common::init_logs();
    let pki = Pki::new();
    // Every node knows only n0; gossip does the rest, including the full mesh of connections.
    let n0 = start(&pki, "n0", None, None).await;
    let mut nodes = vec![n0];
    for i in 1..5 {
        let n = start(&pki, &format!("n{i}"), Some(&nodes[0]), None).await;
        nodes.push(n);
    }
    eventually(LIMIT, "everyone Alive everywhere, fully connected", || {
        nodes.iter().all(|n| {
            let s = n.status();
            s.members.len() == 5
                && s.members
                    .iter()
                    .all(|m| m.member.status == Status::Alive && m.connected)
        })
    })
    .await;
    // The load table carries each member's published capacity and ping RTTs appear.
    eventually(LIMIT, "ping RTTs measured", || {
        nodes[0].status().members.iter().filter(|m| m.rtt_us.is_some()).count() == 4
    })
    .await;
    assert!(nodes[0].status().members.iter().all(|m| m.member.load.capacity == 1));

    // Crash n3: no goodbye, the connections just close.
    let victim = nodes.remove(3);
    let addr = victim.local_addr();
    let (_, old_inc) = status_of(&nodes[0], "n3").unwrap();
    drop(victim);
    let t0 = std::time::Instant::now();
    eventually(LIMIT, "n3 Dead everywhere", || {
        nodes
            .iter()
            .all(|n| matches!(status_of(n, "n3"), Some((Status::Dead, _)) | None))
    })
    .await;
    let detected = t0.elapsed();
    eprintln!("crash detected everywhere after {detected:?}");

    // It comes back at the same address: Alive everywhere with a higher incarnation.
    let back = start(&pki, "n3", Some(&nodes[0]), Some(addr)).await;
    eventually(LIMIT, "n3 Alive again everywhere with a higher incarnation", || {
        nodes
            .iter()
            .all(|n| matches!(status_of(n, "n3"), Some((Status::Alive, inc)) if inc > old_inc))
    })
    .await;

    // A graceful stop is seen as Left.
    back.shutdown().await;
    eventually(LIMIT, "n3 Left everywhere", || {
        nodes
            .iter()
            .all(|n| matches!(status_of(n, "n3"), Some((Status::Left | Status::Dead, _)) | None))
    })
    .await;
}

#[tokio::test]
async fn a_draining_node_gets_no_new_streams() {
    let pki = Pki::new();
    let a = Node::builder(pki.node_config("a")).start().await.unwrap();
    let b = start(&pki, "b", Some(&a), None).await;
    let c = start(&pki, "c", Some(&a), None).await;
    eventually(LIMIT, "a sees echo on b and c", || {
        a.service_map().get("echo").is_some_and(|v| v.len() == 2)
    })
    .await;
    c.set_draining(true);
    eventually(LIMIT, "a sees c Draining", || {
        matches!(status_of(&a, "c"), Some((Status::Draining, _)))
    })
    .await;
    let client = pki.client("web", &a).await;
    for _ in 0..50 {
        let r = client.request("echo", "x", &Default::default()).await.unwrap();
        assert_eq!(r.served_by, "b");
    }
    c.set_draining(false);
    eventually(LIMIT, "a sees c Alive", || {
        matches!(status_of(&a, "c"), Some((Status::Alive, _)))
    })
    .await;
    let mut served_by_c = 0;
    for _ in 0..50 {
        if client
            .request("echo", "x", &Default::default())
            .await
            .unwrap()
            .served_by
            == "c"
        {
            served_by_c += 1;
        }
    }
    assert!(served_by_c > 0, "c takes work again");
    drop((b, c));
}

#[tokio::test]
async fn status_is_served_to_clients_and_printed_by_the_cli() {
    let pki = Pki::new();
    let a = Node::builder(pki.node_config("a")).start().await.unwrap();
    let b = start(&pki, "b", Some(&a), None).await;
    eventually(LIMIT, "a sees b", || {
        matches!(status_of(&a, "b"), Some((Status::Alive, _)))
    })
    .await;
    let tls = pki.tls(quicmesh::Role::Client, "ops");
    let out = tokio::process::Command::new(common::bin())
        .args(["status", "--entry", &a.local_addr().to_string()])
        .args(["--ca", tls.ca.to_str().unwrap(), "--cert", tls.cert.to_str().unwrap()])
        .args(["--cert-key", tls.key.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("node a"), "{text}");
    let row_b = text.lines().find(|l| l.starts_with("b ")).unwrap_or_default();
    assert!(
        row_b.contains("Alive") && row_b.contains("echo") && row_b.contains("up"),
        "{text}"
    );
    drop(b);
}

/// Issue 20, item 12: two nodes that dial each other at the same moment resolve the duplicate
/// without either suspecting the other. The side that accepts the winning connection could
/// see the losing one closed by the peer before the winner registered, and took that for a
/// lost peer: a healthy mesh then suspected a node, and the node refuted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_resolve_without_a_suspicion() {
    common::init_logs();
    let pki = Pki::new();
    for round in 0..12 {
        let ports = [common::free_udp_port(), common::free_udp_port()];
        let cfg = |i: usize| {
            let mut c = pki.node_config(&format!("r{round}n{i}"));
            c.listen = format!("127.0.0.1:{}", ports[i]).parse().unwrap();
            c.peers = vec![format!("127.0.0.1:{}", ports[1 - i])];
            c
        };
        let (a, b) = tokio::join!(Node::builder(cfg(0)).start(), Node::builder(cfg(1)).start());
        let (a, b) = (a.unwrap(), b.unwrap());
        // Settled: one connection each way, and each has the other's record (it arrives by
        // gossip just after the connection registers); then that record must say Alive.
        eventually(LIMIT, "one connection between the two, and each other's record", || {
            [(&a, &b), (&b, &a)].iter().all(|(n, other)| {
                n.stats().connections == 1
                    && n.peers().iter().filter(|p| p.connected).count() == 1
                    && status_of(n, other.name()).is_some()
            })
        })
        .await;
        for (n, other) in [(&a, &b), (&b, &a)] {
            let s = n.stats();
            assert_eq!(
                s.peer_losses,
                0,
                "round {round}: {} took a duplicate for a loss: {s:?}",
                n.name()
            );
            assert_eq!(
                status_of(n, other.name()).map(|(s, _)| s),
                Some(Status::Alive),
                "round {round}"
            );
        }
        b.shutdown().await;
        a.shutdown().await;
    }
}

/// Issue 20, item 13: shutdown waits for its peers to take the Left record (their pong to a
/// ping sent after it), not a fixed time; it does not wait for a handshake in progress with a
/// peer that is down, and the node's port is free the moment it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_acknowledged_and_frees_the_port_at_once() {
    common::init_logs();
    let pki = Pki::new();
    let a = start(&pki, "a", None, None).await;
    // b also dials a seed that never answers: a handshake is in progress when it stops.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut cfg = pki.node_config("b");
    cfg.peers = vec![a.local_addr().to_string(), silent.local_addr().unwrap().to_string()];
    let b = Node::builder(cfg).start().await.unwrap();
    eventually(LIMIT, "a and b see each other", || {
        status_of(&a, "b").is_some_and(|(s, _)| s == Status::Alive) && status_of(&b, "a").is_some()
    })
    .await;
    let addr = b.local_addr();
    let t0 = std::time::Instant::now();
    // Far above what it takes (a round trip and a few ms), far below the 2 s cap the old
    // shutdown waited out here (the dial in progress drains for about 3 s).
    common::within(Duration::from_millis(1500), "shutdown", b.shutdown()).await;
    let took = t0.elapsed();
    // Acknowledged: a has b as Left already, with no polling.
    assert_eq!(status_of(&a, "b").map(|(s, _)| s), Some(Status::Left));
    assert_eq!(a.stats().peer_losses, 0);
    // The port is free now (a draining handshake used to hold it for about 3 s).
    std::net::UdpSocket::bind(addr).expect("the stopped node's port is still bound");
    println!("shutdown with a peer up and a dial in progress took {took:?}");
    a.shutdown().await;
}
