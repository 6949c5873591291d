//! 10,000 garbage streams and 1,000 failed handshakes against one node while a client keeps
//! calling it: every good call succeeds and the process's memory stays flat. In a test binary
//! of its own, so the resident size measured is this test's alone.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use quicmesh::{IssueOptions, MeshCa, RejectCode, Role, TlsMaterial};

/// Sends `n` garbage streams over `conns` connections, 20 at a time; each must be refused.
async fn garbage(pki: &Pki, node: std::net::SocketAddr, n: usize, conns: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    let per_conn = n / conns;
    for c in 0..conns {
        let conn = Arc::new(raw_conn(pki, Role::Client, "fuzzer", node).await);
        for w in 0..2 {
            let conn = conn.clone();
            tasks.spawn(async move {
                for i in 0..per_conn / 2 {
                    let len = (c * 7 + w * 3 + i) % 40 + 5;
                    // A plausible length prefix and version, then bytes that are not a header.
                    let mut bytes = (len as u32).to_be_bytes().to_vec();
                    bytes.push(1);
                    bytes.extend((1..len).map(|j| (j * 131 + i) as u8 | 0x80));
                    let r = send_raw(&conn, &bytes).await;
                    assert_eq!(code(&r), Some(RejectCode::BadHeader), "{r:?}");
                }
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// Makes `n` handshakes with a certificate from another CA, 20 at a time.
async fn failed_handshakes(stranger: &TlsMaterial, node: std::net::SocketAddr, n: usize) {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(stranger.client_config().unwrap()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (ep, next, to) = (ep.clone(), next.clone(), node);
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                // TLS 1.3: our side may finish before the node refuses; wait for the close.
                if let Ok(conn) = ep.connect(to, "quicmesh").unwrap().await {
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    ep.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_garbage_streams_and_a_thousand_failed_handshakes_leave_memory_flat() {
    init_logs();
    let pki = Pki::new();
    // The node runs as its own process, so its resident size is the node's alone.
    let backend = tcp_backend(|req| req).await;
    let port = free_udp_port();
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let tls = pki.tls(Role::Node, "a");
    let text = format!(
        "name = \"a\"\nlisten = \"127.0.0.1:{port}\"\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n[services.echo]\nbackend = \"{backend}\"\n[admin]\nlisten = \"{admin}\"\n",
        tls.ca, tls.cert, tls.key
    );
    let config = pki.path().join("a.toml");
    std::fs::write(&config, text).unwrap();
    let mut child = tokio::process::Command::new(bin())
        .args(["node", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cfg = quicmesh::ClientConfig::new(pki.tls(Role::Client, "web"), vec![addr.to_string()]);
    cfg.transport.connect_timeout = Duration::from_secs(1);
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = quicmesh::Client::connect(cfg.clone()).await {
            client = Some(c);
            break;
        }
    }
    let client = client.expect("node process did not start");

    let stranger_ca = MeshCa::generate(TD, 2).unwrap();
    let issued = stranger_ca.issue(&IssueOptions::new(Role::Client, "stranger")).unwrap();
    let stranger = TlsMaterial::from_pem(pki.ca.cert_pem(), &issued.cert_pem, &issued.key_pem, Role::Client).unwrap();

    // A good client calls throughout; none of its calls may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let good = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = format!("call {n}");
                let reply = client.call("echo", body.clone()).await.unwrap();
                assert_eq!(reply, body.as_bytes());
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };

    // Warm up: the allocator's arenas, quinn's buffers and tokio's workers reach their
    // working size (the first 1,000 handshakes take the node from ~23 to ~33 MiB; later
    // rounds of 1,000 stay within ±2.5 MiB of that, which is what "flat" means here).
    garbage(&pki, addr, 1_000, 10).await;
    failed_handshakes(&stranger, addr, 1_000).await;
    let before = rss_of(pid);
    garbage(&pki, addr, 10_000, 10).await;
    let mid = rss_of(pid);
    failed_handshakes(&stranger, addr, 1_000).await;
    let after = rss_of(pid);
    stop.store(true, Ordering::Relaxed);
    let good_calls = good.await.unwrap();

    let (_, metrics) = http(admin.as_str(), "GET", "/metrics").await;
    let metric = |series: &str| sample(&metrics, series).unwrap_or(0.0) as u64;
    let refused = metric("quicmesh_streams_rejected_total{code=\"BadHeader\"}");
    let failed = metric("quicmesh_handshake_failures_by_reason_total{reason=\"unknown_ca\"}");
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "node rss: {:.1} MiB after warm-up, {:.1} MiB after 10,000 garbage streams, {:.1} MiB after 1,000 failed handshakes; {refused} streams refused, {failed} handshakes failed; {good_calls} good calls, none failed",
        mib(before),
        mib(mid),
        mib(after)
    );
    assert_eq!(refused, 11_000);
    assert_eq!(failed, 2_000);
    assert!(good_calls > 0);
    // Flat: 10,000 streams leaking 1 KiB each, or 1,000 handshakes leaking 8 KiB each,
    // would fail this.
    let growth = after as i64 - before as i64;
    assert!(growth < 8 << 20, "node memory grew by {growth} bytes");
    client.close().await;
    let _ = child.kill().await;
}
