//! Micro-benchmarks of the pure cores on every stream's or gossip round's path:
//! `cargo bench --bench micro`.
//!
//! - stream header encode/decode (every stream opens with one);
//! - the balancer's pick over 5 and 1,000 candidates (every routed stream);
//! - a gossip round at 1,000 members: merging 1,000 new records, and answering a digest of a
//!   converged view (the steady state, every node every interval).
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use quicmesh::gossip::{Gossip, GossipConfig, GossipMsg, Member};
use quicmesh::protocol::{decode_header, encode_frame, ServiceRequest, StreamHeader, StreamKind, PROTOCOL_VERSION};
use quicmesh::routing::{Balancer, Candidate, Strategy};
use rand::rngs::SmallRng;
use rand::SeedableRng;

fn header() -> StreamHeader {
    // A relayed request: the largest header a node parses.
    StreamHeader {
        version: PROTOCOL_VERSION,
        kind: StreamKind::Service(ServiceRequest {
            service: "payments-api".into(),
            key: Some(b"customer-4711".to_vec()),
            hops: 1,
            deadline_ms: Some(2500),
            origin: Some("spiffe://prod.example/client/checkout".into()),
        }),
    }
}

fn headers(c: &mut Criterion) {
    let h = header();
    c.bench_function("header encode", |b| b.iter(|| encode_frame(black_box(&h))));
    let frame = encode_frame(&h).expect("encodes");
    let body = &frame[4..];
    c.bench_function("header decode", |b| b.iter(|| decode_header(black_box(body))));
}

fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            name: format!("node-{i:04}"),
            weight: 1.0 + (i % 3) as f64,
            gossiped_inflight: (i * 7 % 13) as u32,
            local_inflight: (i % 5) as u32,
            latency: 0.001 * (1 + i % 11) as f64,
        })
        .collect()
}

fn balancer(c: &mut Criterion) {
    for n in [5usize, 1000] {
        let cands = candidates(n);
        for s in [
            Strategy::P2c,
            Strategy::RoundRobin,
            Strategy::LeastLoaded,
            Strategy::ConsistentHash,
        ] {
            let mut bal = Balancer::new(s, 0.25);
            let mut rng = SmallRng::seed_from_u64(7);
            c.bench_function(&format!("balancer pick {s}, {n} candidates"), |b| {
                b.iter(|| bal.pick(black_box(&cands), Some(b"customer-4711"), &mut rng))
            });
        }
    }
}

fn member(i: usize) -> Member {
    let mut m = Member::new(
        &format!("node-{i:04}"),
        &format!("10.0.{}.{}:7400", i / 250, i % 250),
        1,
        vec!["payments-api".into(), format!("svc-{}", i % 20)],
    );
    m.load.inflight = (i % 17) as u32;
    m
}

fn fresh(name: &str) -> Gossip {
    Gossip::new(
        GossipConfig::default(),
        Member::new(name, "10.9.9.9:7400", 1, Vec::new()),
        Duration::ZERO,
    )
}

fn gossip(c: &mut Criterion) {
    const N: usize = 1000;
    let delta: Vec<std::sync::Arc<Member>> = (0..N).map(|i| std::sync::Arc::new(member(i))).collect();
    let now = Duration::from_secs(1);
    c.bench_function("gossip merge of 1,000 new member records", |b| {
        b.iter_batched(
            || (fresh("me"), GossipMsg::Ack { delta: delta.clone() }),
            |(mut g, msg)| {
                g.handle("node-0000", msg, now);
                g
            },
            BatchSize::LargeInput,
        )
    });
    // Two nodes that already agree on 1,000 members: one round costs a digest comparison.
    let mut a = fresh("me");
    a.handle("node-0000", GossipMsg::Ack { delta: delta.clone() }, now);
    let mut peer = fresh("peer");
    peer.handle("node-0000", GossipMsg::Ack { delta: delta.clone() }, now);
    peer.handle(
        "me",
        GossipMsg::Ack {
            delta: vec![a.me().clone().into()],
        },
        now,
    );
    a.handle(
        "peer",
        GossipMsg::Ack {
            delta: vec![peer.me().clone().into()],
        },
        now,
    );
    assert_eq!(a.members().count(), N + 2, "merge took every record");
    let syn = match peer.legacy_syn(now) {
        GossipMsg::Syn { digest } => digest,
        _ => unreachable!("legacy_syn() opens a full-digest round"),
    };
    // The round between nodes of this build: one sum per bucket, compared in place.
    let opener = peer.opener();
    c.bench_function("gossip sums of a converged 1,000-member view", |b| {
        b.iter(|| a.handle("peer", opener.clone(), now))
    });
    c.bench_function("gossip digest of a converged 1,000-member view (older node)", |b| {
        b.iter(|| {
            a.handle(
                "peer",
                GossipMsg::Syn {
                    digest: Arc::clone(&syn),
                },
                now,
            )
        })
    });
}

criterion_group!(micro, headers, balancer, gossip);
criterion_main!(micro);
