//! The admin HTTP endpoint on a live mesh: metrics that move with calls and rejections, the
//! JSON status, and readiness that waits for the node to join.
#![allow(clippy::disallowed_methods)] // tests may read the clock; see clippy.toml

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{eventually, eventually_async, http, sample, Pki};
use quicmesh::{Echo, Node};

fn admin_on(cfg: &mut quicmesh::NodeConfig) {
    cfg.admin.listen = "127.0.0.1:0".into();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_calls_and_rejections() {
    common::init_logs();
    let pki = Pki::new();
    let mut cfg = pki.node_config("a");
    admin_on(&mut cfg);
    let a = Node::builder(cfg).handler("echo", Echo).start().await.unwrap();
    let mut cfg = pki.node_config("b");
    cfg.peers = vec![a.local_addr().to_string()];
    let b = Node::builder(cfg).handler("echo", Echo).start().await.unwrap();
    assert_eq!(b.admin_addr(), None, "NodeConfig::new leaves admin off");
    let admin = a.admin_addr().unwrap();
    eventually(Duration::from_secs(10), "mesh", || {
        common::sees_all(&[&a, &b], &["echo"])
    })
    .await;

    let (code, before) = http(admin, "GET", "/metrics").await;
    assert_eq!(code, 200);
    let accepted_before = sample(&before, "quicmesh_streams_accepted_total").unwrap();
    let client = pki.client("web", &a).await;
    for _ in 0..10 {
        client.call("echo", "x").await.unwrap();
    }
    assert!(client.call("nope", "x").await.is_err());

    let (_, after) = http(admin, "GET", "/metrics").await;
    println!("{after}");
    assert_eq!(
        sample(&after, "quicmesh_streams_accepted_total").unwrap() - accepted_before,
        11.0
    );
    assert_eq!(
        sample(&after, "quicmesh_streams_rejected_total{code=\"UnknownService\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, "quicmesh_streams_rejected_total{code=\"Draining\"}"),
        Some(0.0)
    );
    let served = sample(&after, "quicmesh_streams_served_local_total").unwrap();
    let relayed = sample(&after, "quicmesh_streams_relayed_total").unwrap();
    assert_eq!(served + relayed, 10.0, "every echo was served here or relayed to b");
    assert_eq!(sample(&after, "quicmesh_peer_up{peer=\"b\"}"), Some(1.0));
    assert!(sample(&after, "quicmesh_peer_rtt_seconds{peer=\"b\"}").is_some_and(|s| s > 0.0 && s < 1.0));
    assert_eq!(sample(&after, "quicmesh_members{status=\"Alive\"}"), Some(2.0));
    assert_eq!(sample(&after, "quicmesh_draining"), Some(0.0));
    let to_a = sample(&after, "quicmesh_routing_decisions_total{service=\"echo\",node=\"a\"}").unwrap_or(0.0);
    let to_b = sample(&after, "quicmesh_routing_decisions_total{service=\"echo\",node=\"b\"}").unwrap_or(0.0);
    assert_eq!(to_a + to_b, 10.0, "one routing decision per echo call");
    assert_eq!(to_b, relayed);
    // The relayed echoes went through a's splice: 1 byte each way per call.
    assert_eq!(sample(&after, "quicmesh_bytes_to_callers_total"), Some(relayed));
    let expiry = sample(&after, "quicmesh_cert_not_after_timestamp_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now + 300.0 * 86_400.0, "the test certificates last a year");
    // Gossip ran and its bytes were counted both ways.
    assert!(sample(&after, "quicmesh_gossip_rounds_total").is_some_and(|n| n >= 1.0));
    assert!(sample(&after, "quicmesh_gossip_sent_bytes_total").is_some_and(|n| n > 0.0));
    assert!(sample(&after, "quicmesh_gossip_received_bytes_total").is_some_and(|n| n > 0.0));
    for reason in ["cert_expired", "unknown_ca", "timeout"] {
        let series = format!("quicmesh_handshake_failures_by_reason_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&after, &series), Some(0.0), "{series}");
    }
    assert_eq!(sample(&after, "quicmesh_connection_migrations_total"), Some(0.0));
    assert!(after.ends_with("# EOF\n"));

    let (code, json) = http(admin, "GET", "/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["node"], "a");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(2));
    assert_eq!(http(admin, "GET", "/healthz").await, (200, "ok\n".into()));
    assert_eq!(http(admin, "GET", "/nope").await.0, 404);
    assert_eq!(http(admin, "POST", "/metrics").await.0, 405);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_node_to_join() {
    common::init_logs();
    let pki = Pki::new();
    let port = common::free_udp_port();
    let a_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cfg = pki.node_config("b");
    cfg.peers = vec![a_addr.to_string()];
    admin_on(&mut cfg);
    let b = Node::builder(cfg).start().await.unwrap();
    let admin = b.admin_addr().unwrap();
    let (code, body) = http(admin, "GET", "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("not ready: no peer reachable"), "{body}");
    assert_eq!(http(admin, "GET", "/healthz").await.0, 200, "alive while not ready");

    let mut cfg = pki.node_config("a");
    cfg.listen = a_addr;
    let a = Node::builder(cfg).start().await.unwrap();
    eventually_async(Duration::from_secs(10), "b becomes ready", || async {
        match http(admin, "GET", "/readyz").await {
            (200, _) => Ok(()),
            (code, body) => Err(format!("{code} {}", body.trim_end())),
        }
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_taken_admin_port_is_a_clear_start_error() {
    let pki = Pki::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = pki.node_config("a");
    cfg.admin.listen = taken.local_addr().unwrap().to_string();
    let e = Node::builder(cfg).start().await.err().unwrap().to_string();
    assert!(
        e.contains("admin.listen") && e.contains(&taken.local_addr().unwrap().to_string()),
        "{e}"
    );
    let mut cfg = pki.node_config("a");
    cfg.admin.listen = "localhost".into();
    let e = Node::builder(cfg).start().await.err().unwrap().to_string();
    assert!(e.contains("admin.listen"), "{e}");
}
