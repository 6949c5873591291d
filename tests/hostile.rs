//! Bad input on real connections: the node refuses it with a precise code and keeps serving.
#![allow(clippy::disallowed_methods)] // tests and the CLI may read the clock; see clippy.toml

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{code, mesh, raw_conn, send_raw, within, Pki};
use quicmesh::protocol::{
    encode_frame, read_frame, Response, ServiceRequest, StreamHeader, StreamKind, PROTOCOL_VERSION,
};
use quicmesh::{Node, RejectCode, Role};

const LIMIT: Duration = Duration::from_secs(30);

fn service_header(service: &str, hops: u8, origin: Option<String>) -> Vec<u8> {
    encode_frame(&StreamHeader {
        version: PROTOCOL_VERSION,
        kind: StreamKind::Service(ServiceRequest {
            service: service.into(),
            key: None,
            hops,
            deadline_ms: None,
            origin,
        }),
    })
    .unwrap()
}

#[tokio::test]
async fn a_client_cannot_act_as_a_node() {
    let pki = Pki::new();
    let nodes = mesh(&pki, &["a", "b"], &[&[], &["echo"]]).await;
    let conn = raw_conn(&pki, Role::Client, "mallory", nodes[0].local_addr()).await;

    let r = send_raw(&conn, &encode_frame(&StreamHeader::control()).unwrap()).await;
    assert_eq!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
    let r = send_raw(&conn, &service_header("echo", 1, None)).await;
    assert_eq!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
    let r = send_raw(
        &conn,
        &service_header("echo", 0, Some("spiffe://test.quicmesh/client/admin".into())),
    )
    .await;
    assert_eq!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
    // A correct request on the same connection still works.
    let r = send_raw(&conn, &service_header("echo", 0, None)).await;
    assert_eq!(r, Response::Accept { node: "b".into() });
}

#[tokio::test]
async fn the_hop_limit_stops_a_second_relay() {
    let pki = Pki::new();
    let nodes = mesh(&pki, &["a", "b"], &[&[], &["echo"]]).await;
    // A node identity may relay; a stream that took one hop may take a second (the default
    // limits.hop_limit is 2), but one that took two is not relayed again.
    let conn = raw_conn(&pki, Role::Node, "relay", nodes[0].local_addr()).await;
    let r = send_raw(
        &conn,
        &service_header("echo", 1, Some("spiffe://test.quicmesh/client/web".into())),
    )
    .await;
    assert_eq!(r, Response::Accept { node: "b".into() });
    let r = send_raw(
        &conn,
        &service_header("echo", 2, Some("spiffe://test.quicmesh/client/web".into())),
    )
    .await;
    assert_eq!(code(&r), Some(RejectCode::HopLimit), "{r:?}");
    // A relayed stream for a service served right there is served there, even at the limit.
    let conn = raw_conn(&pki, Role::Node, "relay", nodes[1].local_addr()).await;
    let r = send_raw(
        &conn,
        &service_header("echo", 2, Some("spiffe://test.quicmesh/client/web".into())),
    )
    .await;
    assert_eq!(r, Response::Accept { node: "b".into() });
    // An origin outside the trust domain is refused.
    let r = send_raw(
        &conn,
        &service_header("echo", 1, Some("spiffe://other.domain/client/web".into())),
    )
    .await;
    assert_eq!(code(&r), Some(RejectCode::Unauthorized), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_bad_headers_then_good_calls() {
    let pki = Pki::new();
    let nodes = mesh(&pki, &["a", "b"], &[&[], &["echo"]]).await;
    let conn = Arc::new(raw_conn(&pki, Role::Client, "fuzzer", nodes[0].local_addr()).await);
    let mut wrong_version = service_header("echo", 0, None);
    wrong_version[4] = 7;
    let cases: Vec<(Vec<u8>, RejectCode)> = vec![
        // Garbage that is a valid length prefix followed by nonsense.
        ([&[0, 0, 0, 6][..], &[1, 9, 9, 9, 9, 9]].concat(), RejectCode::BadHeader),
        // A length prefix over the cap.
        (
            [&(1u32 << 20).to_be_bytes()[..], &[1, 2, 3]].concat(),
            RejectCode::BadHeader,
        ),
        // Another protocol version.
        (wrong_version, RejectCode::UnsupportedVersion),
        // A header cut short.
        (service_header("echo", 0, None)[..7].to_vec(), RejectCode::BadHeader),
        // Three bytes: not even a length prefix.
        (vec![0, 0, 1], RejectCode::BadHeader),
    ];
    let cases = Arc::new(cases);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..20usize {
        let conn = conn.clone();
        let cases = cases.clone();
        tasks.spawn(async move {
            for i in 0..50usize {
                let (bytes, want) = &cases[(worker + i) % cases.len()];
                let r = send_raw(&conn, bytes).await;
                assert_eq!(code(&r), Some(*want), "case {} gave {r:?}", (worker + i) % cases.len());
            }
        });
    }
    within(LIMIT, "1000 bad streams", async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
    .await;
    let rejected: u64 = nodes[0].stats().rejected.values().sum();
    assert_eq!(rejected, 1000);
    let client = pki.client("web", &nodes[0]).await;
    for _ in 0..10 {
        assert_eq!(&client.call("echo", "still here").await.unwrap()[..], b"still here");
    }
}

#[tokio::test]
async fn a_stream_that_never_sends_its_header_is_closed_at_the_header_timeout() {
    let pki = Pki::new();
    let mut cfg = pki.node_config("a");
    cfg.transport.header_timeout = Duration::from_millis(200);
    let a = Node::builder(cfg)
        .handler("echo", quicmesh::Echo)
        .start()
        .await
        .unwrap();
    let conn = raw_conn(&pki, Role::Client, "slowloris", a.local_addr()).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // Two bytes of a length prefix, then silence.
    send.write_all(&[0, 0]).await.unwrap();
    let r: Response = within(LIMIT, "header timeout", read_frame(&mut recv, 1024))
        .await
        .unwrap();
    match r {
        Response::Reject { code, reason } => {
            assert_eq!(code, RejectCode::BadHeader);
            assert!(reason.contains("no stream header within"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

fn header_with_deadline(service: &str, deadline_ms: u32) -> Vec<u8> {
    encode_frame(&StreamHeader {
        version: PROTOCOL_VERSION,
        kind: StreamKind::Service(ServiceRequest {
            service: service.into(),
            key: None,
            hops: 0,
            deadline_ms: Some(deadline_ms),
            origin: None,
        }),
    })
    .unwrap()
}

#[tokio::test]
async fn a_deadline_that_passes_on_a_locally_served_stream_is_answered_as_such() {
    let pki = Pki::new();
    let slow = quicmesh::request_handler(1024, |req: bytes::Bytes, _| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(req)
    });
    let node = Node::builder(pki.node_config("a"))
        .handler("echo", quicmesh::Echo)
        .handler("slow", slow)
        .start()
        .await
        .unwrap();
    let conn = raw_conn(&pki, Role::Client, "web", node.local_addr()).await;

    // Already passed on arrival: refused before anything runs.
    let r = send_raw(&conn, &header_with_deadline("echo", 0)).await;
    assert_eq!(code(&r), Some(RejectCode::DeadlineExceeded), "{r:?}");
    assert_eq!(node.stats().rejected.get(&RejectCode::DeadlineExceeded), Some(&1));

    // Passes while the handler works: accepted, then reset with DEADLINE_EXCEEDED (not the
    // generic abort code), and counted.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&header_with_deadline("slow", 50)).await.unwrap();
    send.write_all(b"x").await.unwrap();
    let _ = send.finish();
    let r: Response = read_frame(&mut recv, 64 * 1024).await.unwrap();
    assert!(matches!(r, Response::Accept { .. }), "{r:?}");
    let end = within(LIMIT, "the reply ends", recv.read_to_end(1024)).await;
    match end {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(c))) => {
            assert_eq!(c, quicmesh::protocol::codes::DEADLINE_EXCEEDED)
        }
        other => panic!("expected a reset with DEADLINE_EXCEEDED, got {other:?}"),
    }
    let admin_metric = node.stats();
    assert_eq!(admin_metric.deadlines_exceeded, 1);

    // A client with a timeout reports it as the call's timeout.
    let client = pki.client("web", &node).await;
    let opts = quicmesh::CallOptions {
        timeout: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let err = within(LIMIT, "call", client.request("slow", "x", &opts))
        .await
        .unwrap_err();
    assert!(matches!(err, quicmesh::CallError::Timeout(_)), "{err}");
    node.shutdown().await;
}

/// A raw connection as node `name` to `node`, with a control stream opened and accepted by
/// node "a"; returns the stream and what followed the `Accept` in its frame (the hello).
async fn control_stream(
    pki: &Pki,
    name: &str,
    node: &Node,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream, Vec<u8>) {
    let conn = raw_conn(pki, Role::Node, name, node.local_addr()).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode_frame(&StreamHeader::control()).unwrap())
        .await
        .unwrap();
    let accept = quicmesh::protocol::read_frame_bytes(&mut recv, 64 * 1024)
        .await
        .unwrap();
    let (r, rest) = postcard::take_from_bytes::<Response>(&accept).unwrap();
    assert_eq!(r, Response::Accept { node: "a".into() });
    let rest = rest.to_vec();
    (conn, send, recv, rest)
}

/// `conn` closes with PROTOCOL, and node "a" still serves echo to a new client.
async fn closed_for_protocol_and_still_serving(pki: &Pki, conn: &quinn::Connection, node: &Node) {
    let closed = within(LIMIT, "the close", conn.closed()).await;
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quicmesh::protocol::codes::PROTOCOL),
        "{closed}"
    );
    let conn = raw_conn(pki, Role::Client, "web", node.local_addr()).await;
    let r = send_raw(&conn, &service_header("echo", 0, None)).await;
    assert_eq!(r, Response::Accept { node: "a".into() });
}

#[tokio::test]
async fn a_control_message_of_a_newer_kind_is_skipped_and_garbage_closes_the_connection() {
    use quicmesh::protocol::{read_frame_bytes, ControlMsg, MAX_CONTROL_MESSAGE};
    let pki = Pki::new();
    let nodes = mesh(&pki, &["a"], &[&["echo"]]).await;
    let frame = |body: &[u8]| {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };
    // Reads control messages until a Pong with `nonce` (the node also sends gossip and pings).
    async fn pong(recv: &mut quinn::RecvStream, nonce: u64) -> Result<(), String> {
        loop {
            let body = read_frame_bytes(recv, MAX_CONTROL_MESSAGE)
                .await
                .map_err(|e| e.to_string())?;
            if let Ok(ControlMsg::Pong { nonce: n }) = postcard::from_bytes::<ControlMsg>(&body) {
                if n == nonce {
                    return Ok(());
                }
            }
        }
    }
    let (conn, mut send, mut recv, _) = control_stream(&pki, "newer", &nodes[0]).await;
    // A kind this build does not know (index 9), and a gossip message of an unknown kind,
    // then a ping: the node skips the first two and answers the ping on the same stream.
    send.write_all(&frame(&[9, 1, 2, 3])).await.unwrap();
    send.write_all(&frame(&[0, 7, 1])).await.unwrap();
    send.write_all(&encode_frame(&ControlMsg::Ping { nonce: 77 }).unwrap())
        .await
        .unwrap();
    within(LIMIT, "the pong after the newer messages", pong(&mut recv, 77))
        .await
        .unwrap();
    assert!(conn.close_reason().is_none());
    // A known kind that does not decode is a protocol violation: the connection closes.
    send.write_all(&frame(&[1, 0x80])).await.unwrap();
    let err = within(LIMIT, "the close after garbage", pong(&mut recv, 78)).await;
    assert!(err.is_err(), "{err:?}");
    closed_for_protocol_and_still_serving(&pki, &conn, &nodes[0]).await;
}

/// The control stream's `Accept` says the node takes pushed load; a peer that pushes its own
/// gets the node's back on the same stream at once, and a push that does not decode closes
/// the connection like any other garbage of a known kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_pushes_its_load_gets_the_nodes_back() {
    use quicmesh::gossip::Load;
    use quicmesh::protocol::{features, read_frame_bytes, ControlMsg, Hello, MAX_CONTROL_MESSAGE};
    let pki = Pki::new();
    let nodes = mesh(&pki, &["a"], &[&["echo"]]).await;
    let (conn, mut send, mut recv, rest) = control_stream(&pki, "pusher", &nodes[0]).await;
    let hello = Hello::decode(&rest).expect("a hello after the accept");
    assert!(hello.takes(features::LOAD_PUSH), "{hello:?}");
    let ours = Load {
        inflight: 5,
        capacity: 1,
        ..Load::default()
    };
    send.write_all(&encode_frame(&ControlMsg::Load(ours)).unwrap())
        .await
        .unwrap();
    let theirs = within(LIMIT, "the node's load back", async {
        loop {
            let body = read_frame_bytes(&mut recv, MAX_CONTROL_MESSAGE).await.unwrap();
            if let Ok(ControlMsg::Load(l)) = postcard::from_bytes::<ControlMsg>(&body) {
                return l;
            }
        }
    })
    .await;
    assert_eq!(theirs.inflight, 0, "an idle node: {theirs:?}");
    // A Load that does not decode (its kind, then a cut-off varint) is garbage.
    let mut bad = 4u32.to_be_bytes().to_vec();
    bad.extend_from_slice(&[3, 0x80, 0x80, 0x80]);
    send.write_all(&bad).await.unwrap();
    closed_for_protocol_and_still_serving(&pki, &conn, &nodes[0]).await;
}

/// A peer that opens with a full digest (an older node) gets full-digest rounds; one that
/// opens with sums (this build) gets the differing buckets back, and sums rounds after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_peer_gets_full_digest_rounds_and_a_newer_one_gets_sums() {
    use quicmesh::gossip::{DigestEntry, GossipMsg, Member, BUCKETS};
    use quicmesh::protocol::{features, read_frame_bytes, ControlMsg, Hello, MAX_CONTROL_MESSAGE};
    use std::sync::Arc;
    let pki = Pki::new();
    let nodes = mesh(&pki, &["a"], &[&["echo"]]).await;
    // The next gossip message the node sends on this stream that `pick` keeps.
    async fn next<T>(recv: &mut quinn::RecvStream, pick: impl Fn(GossipMsg) -> Option<T>) -> T {
        loop {
            let body = read_frame_bytes(recv, MAX_CONTROL_MESSAGE).await.unwrap();
            if let Ok(ControlMsg::Gossip(g)) = postcard::from_bytes::<ControlMsg>(&body) {
                if let Some(t) = pick(g) {
                    return t;
                }
            }
        }
    }
    let send_gossip = |msg: GossipMsg| encode_frame(&ControlMsg::Gossip(msg)).unwrap();

    let (_old_conn, mut send, mut recv, rest) = control_stream(&pki, "old", &nodes[0]).await;
    assert!(Hello::decode(&rest).is_some_and(|h| h.takes(features::GOSSIP_SUMS)));
    let me = Member::new("old", "127.0.0.1:9", 1, Vec::new());
    let digest = vec![DigestEntry {
        name: me.name.clone(),
        key: me.key(),
        heartbeat: 1,
        suspectors: Vec::new(),
    }];
    send.write_all(&send_gossip(GossipMsg::Syn {
        digest: Arc::new(digest),
    }))
    .await
    .unwrap();
    let want = within(LIMIT, "the reply to a full digest", async {
        next(&mut recv, |g| match g {
            GossipMsg::SynAck { want, delta } if delta.iter().any(|m| m.name == "a") => Some(want),
            GossipMsg::Sums { .. } | GossipMsg::Buckets { .. } => panic!("a round an older node cannot read"),
            _ => None,
        })
        .await
    })
    .await;
    assert_eq!(want, ["old"]);
    send.write_all(&send_gossip(GossipMsg::Ack {
        delta: vec![me.clone().into()],
    }))
    .await
    .unwrap();
    // The node's own rounds to this peer are full digests, naming it and this peer.
    let names = within(LIMIT, "a full-digest round from the node", async {
        next(&mut recv, |g| match g {
            GossipMsg::Syn { digest } => Some(digest.iter().map(|d| d.name.clone()).collect::<Vec<_>>()),
            GossipMsg::Sums { .. } | GossipMsg::Buckets { .. } => panic!("a round an older node cannot read"),
            _ => None,
        })
        .await
    })
    .await;
    assert!(names.contains(&"a".to_string()), "{names:?}");

    let (_new_conn, mut send, mut recv, _) = control_stream(&pki, "new", &nodes[0]).await;
    let me = Member::new("new", "127.0.0.1:10", 1, Vec::new());
    send.write_all(&send_gossip(GossipMsg::Sums {
        heartbeat: 1,
        sums: vec![0; BUCKETS * 4],
        news: vec![me.into()],
    }))
    .await
    .unwrap();
    let digest = within(LIMIT, "the buckets that differ", async {
        next(&mut recv, |g| match g {
            GossipMsg::Buckets { digest, .. } => Some(digest),
            GossipMsg::Syn { .. } => panic!("a full digest to a peer that opened with sums"),
            _ => None,
        })
        .await
    })
    .await;
    assert!(
        digest.iter().any(|d| d.name == "a") && digest.iter().any(|d| d.name == "new"),
        "{digest:?}"
    );
    let sums = within(LIMIT, "a sums round from the node", async {
        next(&mut recv, |g| match g {
            // A round's other targets get news only (no sums).
            GossipMsg::Sums { sums, .. } if !sums.is_empty() => Some(sums),
            GossipMsg::Syn { .. } => panic!("a full digest to a peer that opened with sums"),
            _ => None,
        })
        .await
    })
    .await;
    assert_eq!(sums.len(), BUCKETS * 4);
}
