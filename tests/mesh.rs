//! Multi-node meshes on loopback with real certificates.
#![allow(clippy::disallowed_methods)] // tests and the CLI may read the clock; see clippy.toml

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{eventually, mesh, within, Pki};
use quicmesh::{CallError, ClientConfig, Node, RejectCode, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_a_large_payload_and_many_concurrent_calls() {
    let pki = Pki::new();
    let nodes = mesh(&pki, &["a", "b", "c"], &[&[], &[], &["echo"]]).await;
    let client = pki.client("web", &nodes[0]).await;

    // > 10 MiB through one relay hop, every byte checked.
    let big: Vec<u8> = (0..12 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let reply = within(
        LIMIT,
        "large call",
        client.request("echo", big.clone(), &Default::default()),
    )
    .await
    .unwrap();
    assert_eq!(reply.served_by, "c");
    assert!(reply.body == big, "large payload came back altered");
    // Path MTU discovery climbed to the default `transport.max_udp_payload` on loopback and
    // kept it through the bulk transfer: a GSO batch too large for UDP would have been
    // dropped and taken for a black hole, back to 1200.
    let mtu = |n: &Node| n.peers().into_iter().find(|p| p.name == "c").and_then(|p| p.mtu);
    eventually(LIMIT, "path MTU discovered", || {
        mtu(&nodes[0]).is_some_and(|m| m >= 6000)
    })
    .await;
    let reply = within(LIMIT, "second large call", client.call("echo", big.clone()))
        .await
        .unwrap();
    assert!(reply == big, "large payload came back altered");
    let after = mtu(&nodes[0]).unwrap_or(0);
    assert!(after >= 6000, "path MTU fell to {after} during a bulk transfer");

    // Many concurrent calls on one connection, each on its own stream.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let client = client.clone();
        tasks.spawn(async move {
            let body = Bytes::from(format!("request {i} ").repeat(1 + (i as usize % 50)));
            let got = client.call("echo", body.clone()).await.unwrap();
            assert_eq!(got, body, "call {i}");
        });
    }
    within(LIMIT, "concurrent calls", async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
    .await;
    let a = nodes[0].stats();
    assert_eq!(a.relayed, 202);
    assert_eq!(nodes[2].stats().served_local, 202);
}

#[tokio::test]
async fn unknown_service_is_rejected_with_its_code() {
    let pki = Pki::new();
    let nodes = mesh(&pki, &["a", "b"], &[&["echo"], &[]]).await;
    let client = pki.client("web", &nodes[1]).await;
    let err = client.call("nope", "x").await.unwrap_err();
    assert_eq!(err.reject_code(), Some(RejectCode::UnknownService), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    // The node keeps serving.
    assert_eq!(&client.call("echo", "ok").await.unwrap()[..], b"ok");
}

#[tokio::test]
async fn tcp_backend_is_spliced_with_half_close() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                buf.make_ascii_uppercase();
                s.write_all(&buf).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    let pki = Pki::new();
    let a = Node::builder(pki.node_config("a")).start().await.unwrap();
    let mut cfg = pki.node_config("b");
    cfg.peers = vec![a.local_addr().to_string()];
    cfg.services.insert(
        "upper".into(),
        quicmesh::config::ServiceConfig::tcp(backend_addr.to_string()),
    );
    let b = Node::builder(cfg).start().await.unwrap();
    eventually(LIMIT, "a sees upper", || a.service_map().contains_key("upper")).await;
    let client = pki.client("web", &a).await;
    let reply = within(
        LIMIT,
        "upper",
        client.request("upper", "hello mesh", &Default::default()),
    )
    .await
    .unwrap();
    assert_eq!(&reply.body[..], b"HELLO MESH");
    assert_eq!(reply.served_by, "b");
    drop(b);
}

#[tokio::test]
async fn tcp_backend_down_gives_unavailable_not_a_hang() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let pki = Pki::new();
    let mut cfg = pki.node_config("a");
    cfg.services
        .insert("db".into(), quicmesh::config::ServiceConfig::tcp(dead.to_string()));
    let a = Node::builder(cfg).start().await.unwrap();
    let mut cfg = pki.node_config("b");
    cfg.peers = vec![a.local_addr().to_string()];
    let b = Node::builder(cfg).start().await.unwrap();
    eventually(LIMIT, "b sees db", || b.service_map().contains_key("db")).await;
    for entry in [&a, &b] {
        let client = pki.client("web", entry).await;
        let err = within(LIMIT, "call to dead backend", client.call("db", "x"))
            .await
            .unwrap_err();
        assert_eq!(err.reject_code(), Some(RejectCode::Unavailable), "{err}");
        assert!(
            err.to_string().contains(&dead.to_string()),
            "reason names the backend: {err}"
        );
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    // Same trust domain name, different CA: only the signature tells them apart.
    let rogue = Pki::new();
    let a = Node::builder(pki.node_config("a"))
        .handler("echo", quicmesh::Echo)
        .start()
        .await
        .unwrap();

    let cfg = ClientConfig::new(rogue.tls(Role::Client, "web"), vec![a.local_addr().to_string()]);
    let err = quicmesh::Client::connect(cfg).await.unwrap_err();
    assert!(matches!(err, quicmesh::ClientError::NoEntryReachable(_)), "{err}");

    // A node from the other CA dials us and never gets in.
    let mut cfg = rogue.node_config("b");
    cfg.peers = vec![a.local_addr().to_string()];
    let b = Node::builder(cfg).start().await.unwrap();
    eventually(LIMIT, "a counts failed handshakes", || {
        a.stats().handshake_failures >= 2
    })
    .await;
    assert!(a.peers().is_empty(), "rogue node joined: {:?}", a.peers());
    assert!(b.peers().is_empty());

    // And the real mesh still works.
    let client = pki.client("web", &a).await;
    assert_eq!(&client.call("echo", "fine").await.unwrap()[..], b"fine");
}

#[tokio::test]
async fn a_node_refuses_to_start_with_a_client_certificate_or_wrong_name() {
    let pki = Pki::new();
    let mut cfg = pki.node_config("a");
    cfg.tls = pki.tls(Role::Client, "a");
    let err = Node::builder(cfg).start().await.err().unwrap();
    assert!(err.to_string().contains("client"), "{err}");

    let mut cfg = pki.node_config("a");
    cfg.name = "b".into();
    let err = Node::builder(cfg).start().await.err().unwrap();
    assert!(matches!(err, quicmesh::NodeError::NameMismatch { .. }), "{err}");
}

#[tokio::test]
async fn a_stopped_peer_is_reconnected_when_it_comes_back() {
    let pki = Pki::new();
    let a = Node::builder(pki.node_config("a"))
        .handler("echo", quicmesh::Echo)
        .start()
        .await
        .unwrap();
    let addr = a.local_addr();
    let mut cfg = pki.node_config("b");
    cfg.peers = vec![addr.to_string()];
    let b = Node::builder(cfg).start().await.unwrap();
    let connected = |b: &Node| b.peers().iter().any(|p| p.name == "a" && p.connected);
    eventually(LIMIT, "b connects to a", || connected(&b)).await;

    a.shutdown().await;
    drop(a);
    eventually(LIMIT, "b notices a is gone", || !connected(&b)).await;
    let client = pki.client("web", &b).await;
    let err = client.call("echo", "x").await.unwrap_err();
    assert_eq!(err.reject_code(), Some(RejectCode::Unavailable), "{err}");

    let mut cfg = pki.node_config("a");
    cfg.listen = addr;
    let a = Node::builder(cfg)
        .handler("echo", quicmesh::Echo)
        .start()
        .await
        .unwrap();
    eventually(LIMIT, "b reconnects to a", || {
        connected(&b) && b.service_map().contains_key("echo")
    })
    .await;
    assert_eq!(&client.call("echo", "back").await.unwrap()[..], b"back");
    drop(a);
}

#[tokio::test]
async fn simultaneous_dials_leave_one_connection_both_sides_agree_on() {
    let pki = Pki::new();
    // Reserve two ports, then start both nodes dialling each other.
    let (pa, pb) = {
        let x = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let y = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        (x.local_addr().unwrap(), y.local_addr().unwrap())
    };
    let mut ca = pki.node_config("a");
    ca.listen = pa;
    ca.peers = vec![pb.to_string()];
    let mut cb = pki.node_config("b");
    cb.listen = pb;
    cb.peers = vec![pa.to_string()];
    let (a, b) = tokio::join!(Node::builder(ca).start(), Node::builder(cb).start());
    let (a, b) = (a.unwrap(), b.unwrap());
    let one = |n: &Node| {
        let p = n.peers();
        p.len() == 1 && p[0].connected
    };
    eventually(LIMIT, "both connected", || one(&a) && one(&b)).await;
    // Let any duplicate close, then both sides must name the same dialler.
    eventually(LIMIT, "one connection, agreed", || {
        one(&a)
            && one(&b)
            && a.peers()[0].dialed_by_me != b.peers()[0].dialed_by_me
            && a.stats().connections == 1
            && b.stats().connections == 1
    })
    .await;
}

#[tokio::test]
async fn client_stream_api_streams_both_ways() {
    let pki = Pki::new();
    let nodes = mesh(&pki, &["a", "b"], &[&[], &["echo"]]).await;
    let client = pki.client("web", &nodes[0]).await;
    let mut s = client.open("echo").await.unwrap();
    assert_eq!(s.served_by(), "b");
    for i in 0..20 {
        let msg = format!("line {i}\n");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        AsyncReadExt::read_exact(&mut s, &mut buf).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    s.finish().unwrap();
    let rest = s.read_to_end(1024).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn deadline_is_enforced_across_the_hop() {
    let pki = Pki::new();
    let a = Node::builder(pki.node_config("a")).start().await.unwrap();
    let mut cfg = pki.node_config("b");
    cfg.peers = vec![a.local_addr().to_string()];
    let slow = quicmesh::request_handler(1024, |req: Bytes, _| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(req)
    });
    let _b = Node::builder(cfg).handler("slow", slow).start().await.unwrap();
    eventually(LIMIT, "a sees slow", || a.service_map().contains_key("slow")).await;
    let client = pki.client("web", &a).await;
    let opts = quicmesh::CallOptions {
        timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let err = within(LIMIT, "deadline call", client.request("slow", "x", &opts))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Timeout(_) | CallError::Stream(_)), "{err}");
}
