//! docs/protocol.md's test vectors, checked against the encoder and decoder the nodes use, so
//! the spec other languages implement cannot drift from the code. The Python client checks
//! the same block (clients/python/tests/test_wire.py).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;

use quicmesh::protocol::{
    decode_header, encode_frame, Response, ServiceRequest, StreamHeader, StreamKind, PROTOCOL_VERSION,
};
use quicmesh::RejectCode;

/// docs/protocol.md's text.
fn spec() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md"))
        .expect("docs/protocol.md is readable")
}

/// The `vectors` block of docs/protocol.md: name → frame bytes.
fn vectors() -> BTreeMap<String, Vec<u8>> {
    let doc = spec();
    let block = doc
        .split("```vectors\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/protocol.md has a ```vectors block");
    let mut out = BTreeMap::new();
    for line in block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, hex) = line.split_once(' ').expect("a vector line is `name hex...`");
        let hex: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(hex.len().is_multiple_of(2), "vector {name}: odd number of hex digits");
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or_else(|e| panic!("vector {name}: {e}")))
            .collect();
        assert!(
            out.insert(name.to_owned(), bytes).is_none(),
            "vector {name} appears twice"
        );
    }
    out
}

fn service(name: &str, key: Option<&[u8]>, hops: u8, deadline_ms: Option<u32>, origin: Option<&str>) -> StreamHeader {
    StreamHeader {
        version: PROTOCOL_VERSION,
        kind: StreamKind::Service(ServiceRequest {
            service: name.to_owned(),
            key: key.map(<[u8]>::to_vec),
            hops,
            deadline_ms,
            origin: origin.map(str::to_owned),
        }),
    }
}

fn headers() -> Vec<(&'static str, StreamHeader)> {
    vec![
        ("header-echo", StreamHeader::service("echo")),
        (
            "header-key-deadline",
            service("kv", Some(b"user-42"), 0, Some(1500), None),
        ),
        (
            "header-status",
            StreamHeader::service(quicmesh::protocol::STATUS_SERVICE),
        ),
        (
            "header-relayed",
            service("db", None, 1, Some(100_000), Some("spiffe://mesh.local/client/web")),
        ),
        ("header-control", StreamHeader::control()),
    ]
}

fn responses() -> Vec<(&'static str, Response)> {
    vec![
        ("accept-node-a", Response::Accept { node: "a".into() }),
        (
            "reject-unknown-service",
            Response::Reject {
                code: RejectCode::UnknownService,
                reason: "no node offers service \"x\"".into(),
            },
        ),
        (
            "reject-draining",
            Response::Reject {
                code: RejectCode::Draining,
                reason: "node a is draining".into(),
            },
        ),
    ]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Each value encodes to exactly its vector's frame, and the frame's body decodes back to it.
fn check_frames<T: serde::Serialize + PartialEq + std::fmt::Debug>(items: Vec<(&str, T)>, decode: impl Fn(&[u8]) -> T) {
    let v = vectors();
    for (name, value) in items {
        let want = v
            .get(name)
            .unwrap_or_else(|| panic!("docs/protocol.md lacks vector {name}"));
        assert_eq!(
            hex(&encode_frame(&value).expect("encodes")),
            hex(want),
            "vector {name}: the encoder writes other bytes than the spec"
        );
        assert_eq!(decode(&want[4..]), value, "vector {name}");
        let len = u32::from_be_bytes([want[0], want[1], want[2], want[3]]) as usize;
        assert_eq!(
            len,
            want.len() - 4,
            "vector {name}: the length prefix is not the body's length"
        );
    }
}

#[test]
fn every_header_vector_is_what_the_encoder_writes_and_decodes_back() {
    check_frames(headers(), |body| decode_header(body).expect("decodes"));
}

#[test]
fn every_response_vector_is_what_the_encoder_writes_and_decodes_back() {
    check_frames(responses(), |body| {
        postcard::from_bytes::<Response>(body).expect("decodes")
    });
}

#[test]
fn the_status_report_vector_is_what_a_node_sends() {
    use quicmesh::gossip::{Load, Member, Status};
    use quicmesh::protocol::{MemberStatus, StatusReport};
    let mut member = Member::new("a", "127.0.0.1:7400", 300, vec!["echo".into()]);
    member.status = Status::Draining;
    member.load = Load {
        inflight: 2,
        capacity: 1,
        cpu_permille: 250,
        mem_permille: 500,
        latency_us: 1500,
        per_service: vec![("echo".into(), 2)],
    };
    member.version = 7;
    member.heartbeat = 130;
    let report = StatusReport {
        node: "a".into(),
        version: "1.2.3".into(),
        members: vec![MemberStatus {
            member,
            connected: true,
            rtt_us: Some(80),
        }],
        routes: vec![("echo".into(), vec![("a".into(), 0.5)])],
        unreachable: Vec::new(),
        identity_clashes: Vec::new(),
    };
    let v = vectors();
    let want = &v["status-report-body"];
    assert_eq!(hex(&postcard::to_allocvec(&report).expect("encodes")), hex(want));
    assert_eq!(StatusReport::from_postcard(want).expect("decodes"), report);
}

#[test]
fn trailing_bytes_in_a_header_are_ignored_as_the_spec_says() {
    let v = vectors();
    let with = &v["header-echo-with-trailer"];
    assert_eq!(
        decode_header(&with[4..]).expect("decodes"),
        StreamHeader::service("echo")
    );
    assert!(with[4..].starts_with(&v["header-echo"][4..]));
}

#[test]
fn the_spec_lists_every_vector_the_tests_check_and_no_other() {
    let mut named: Vec<&str> = headers().into_iter().map(|(n, _)| n).collect();
    named.extend(responses().into_iter().map(|(n, _)| n));
    named.push("header-echo-with-trailer");
    named.push("status-report-body");
    named.sort_unstable();
    let v = vectors();
    let listed: Vec<&str> = v.keys().map(String::as_str).collect();
    assert_eq!(listed, named);
}

#[test]
fn the_reject_code_table_matches_the_enum() {
    let doc = spec();
    for code in RejectCode::ALL {
        let row = format!("| {} | `{code}` |", code.index());
        assert!(
            doc.contains(&row),
            "docs/protocol.md's RejectCode table lacks the row {row:?}"
        );
        let bytes = postcard::to_allocvec(&code).expect("encodes");
        assert_eq!(bytes, vec![code.index() as u8], "{code} is one varint byte, its index");
    }
}

#[test]
fn the_reset_and_close_code_tables_match_the_constants() {
    use quicmesh::protocol::codes;
    let doc = spec();
    for (code, name) in [
        (codes::SHUTDOWN, "SHUTDOWN"),
        (codes::DUPLICATE, "DUPLICATE"),
        (codes::FORBIDDEN, "FORBIDDEN"),
        (codes::STREAM_ABORTED, "STREAM_ABORTED"),
        (codes::PROTOCOL, "PROTOCOL"),
        (codes::DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
        (codes::IDENTITY_CLASH, "IDENTITY_CLASH"),
        (codes::ABANDONED, "ABANDONED"),
        (codes::TRIMMED, "TRIMMED"),
    ] {
        let row = format!("| {} | `{name}` |", code.into_inner());
        assert!(doc.contains(&row), "docs/protocol.md lacks the code row {row:?}");
    }
    assert!(
        doc.contains(&format!("`{}`", String::from_utf8_lossy(quicmesh::ALPN))),
        "the ALPN is named"
    );
}

#[test]
fn a_control_message_of_a_kind_a_newer_node_added_is_told_from_garbage() {
    use quicmesh::gossip::GossipMsg;
    use quicmesh::protocol::{is_newer_control_kind, ControlMsg};
    let known = [
        postcard::to_allocvec(&ControlMsg::Gossip(GossipMsg::Buckets {
            buckets: vec![],
            digest: vec![],
        }))
        .unwrap(),
        postcard::to_allocvec(&ControlMsg::Ping { nonce: 1 }).unwrap(),
        postcard::to_allocvec(&ControlMsg::Pong { nonce: 1 }).unwrap(),
        postcard::to_allocvec(&ControlMsg::Load(quicmesh::gossip::Load::default())).unwrap(),
    ];
    for body in &known {
        // A known kind cut short is garbage, not a newer kind.
        assert!(!is_newer_control_kind(&body[..1]), "{body:?}");
        assert!(!is_newer_control_kind(body), "{body:?}");
    }
    // The last known kinds are Load (3) and, inside Gossip, Buckets (4).
    assert_eq!((known[3][0], known[0][1]), (3, 4));
    assert!(is_newer_control_kind(&[4]));
    assert!(is_newer_control_kind(&[0x80, 0x01, 0xff]), "kind 128, as a varint");
    assert!(is_newer_control_kind(&[0, 5, 0xff]));
    assert!(!is_newer_control_kind(&[]));
    assert!(!is_newer_control_kind(&[0x80]), "an unfinished varint");
}

#[test]
fn a_hello_says_what_a_node_takes_and_one_from_an_older_node_reads_as_nothing_extra() {
    use quicmesh::protocol::{features, Hello};
    let ours = Hello::new(7);
    assert!(ours.takes(features::LOAD_PUSH));
    let bytes = postcard::to_allocvec(&ours).unwrap();
    assert_eq!(Hello::decode(&bytes), Some(ours));
    // An older node reads its boot id and ignores the features after it.
    assert_eq!(postcard::take_from_bytes::<u64>(&bytes).unwrap().0, 7);
    // An older node's hello is its boot id alone.
    let old = Hello::decode(&postcard::to_allocvec(&7u64).unwrap()).unwrap();
    assert_eq!((old.boot, old.takes(features::LOAD_PUSH)), (7, false));
    assert_eq!(Hello::decode(&[]), None);
}
