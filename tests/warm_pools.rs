//! Warm backend pools (`services.NAME.preconnect`) against real TCP backends, and streams in
//! flight on a service that goes away.
#![allow(clippy::disallowed_methods)] // the shared test helpers read the clock; see clippy.toml

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quicmesh::config::ServiceConfig;
use quicmesh::{Node, RejectCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

const LIMIT: Duration = Duration::from_secs(20);

/// What a [`Backend`] has seen.
#[derive(Default)]
struct Seen {
    /// Connections accepted so far; each is numbered in order.
    accepted: usize,
    /// Connections that ended without a request (the pool closed them).
    closed_idle: usize,
}

/// A TCP backend that numbers its connections and answers each request with the number of
/// the connection it came on (`conn-N`), so a test can tell which were opened in advance.
struct Backend {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Seen>>,
    /// Idle connections numbered below this are dropped unread, as a server timing out idle
    /// clients does.
    drop_below: tokio::sync::watch::Sender<usize>,
}

impl Backend {
    async fn start() -> Backend {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let drop_below = tokio::sync::watch::channel(0usize).0;
        let (s2, d2) = (seen.clone(), drop_below.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let id = {
                    let mut g = s2.lock().unwrap();
                    g.accepted += 1;
                    g.accepted - 1
                };
                let (seen, mut dropping) = (s2.clone(), d2.subscribe());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        tokio::select! {
                            n = s.read(&mut chunk) => match n {
                                Ok(0) | Err(_) => break,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            },
                            // Sees a value set before this task first ran, too.
                            _ = dropping.wait_for(|below| id < *below), if buf.is_empty() => return,
                        }
                    }
                    if buf.is_empty() {
                        seen.lock().unwrap().closed_idle += 1;
                    } else {
                        let _ = s.write_all(format!("conn-{id}").as_bytes()).await;
                    }
                });
            }
        });
        Backend { addr, seen, drop_below }
    }

    fn accepted(&self) -> usize {
        self.seen.lock().unwrap().accepted
    }

    fn closed_idle(&self) -> usize {
        self.seen.lock().unwrap().closed_idle
    }

    /// Waits until the backend has accepted `n` connections (a connect completes before the
    /// backend's accept has run).
    async fn accepted_is(&self, n: usize) {
        common::eventually(LIMIT, &format!("{n} connections accepted"), || self.accepted() == n).await;
    }
}

/// The `pool` object of `service` in the node's `GET /v1/services`.
async fn pool_of(admin: std::net::SocketAddr, service: &str) -> serde_json::Value {
    let (code, body) = common::http(admin, "GET", "/v1/services").await;
    assert_eq!(code, 200, "{body}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    rows.into_iter()
        .find(|r| r["name"] == service)
        .map(|r| r["pool"].clone())
        .unwrap_or(serde_json::Value::Null)
}

async fn idle_is(admin: std::net::SocketAddr, service: &str, n: u64) {
    common::eventually_async(LIMIT, &format!("{n} idle warm connections for {service}"), || async {
        let p = pool_of(admin, service).await;
        if p["idle"] == n {
            Ok(())
        } else {
            Err(p.to_string())
        }
    })
    .await;
}

/// Node `a` with an admin listener and, if given, service `web` on `(backend, preconnect)`.
fn with_admin(pki: &common::Pki, web: Option<(String, u32)>) -> quicmesh::NodeConfig {
    let mut cfg = pki.node_config("a");
    cfg.admin.listen = "127.0.0.1:0".into();
    if let Some((backend, preconnect)) = web {
        let svc = ServiceConfig {
            preconnect,
            ..ServiceConfig::tcp(backend)
        };
        cfg.services.insert("web".into(), svc);
    }
    cfg
}

fn conn_id(reply: &[u8]) -> usize {
    let text = String::from_utf8_lossy(reply);
    text.strip_prefix("conn-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("reply {text:?}"))
}

/// A service with `preconnect = 3` is served on connections opened before its streams, each
/// used once; the pool refills, replaces connections the backend closed, and counts it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_streams_take_connections_opened_before_them_and_each_only_once() {
    let pki = common::Pki::new();
    let backend = Backend::start().await;
    let cfg = with_admin(&pki, Some((backend.addr.to_string(), 3)));
    let file = Arc::new(Mutex::new(cfg.clone()));
    let source = file.clone();
    let node = Node::builder(cfg)
        .reload_from(move || Ok(source.lock().unwrap().clone()))
        .start()
        .await
        .unwrap();
    let admin = node.admin_addr().unwrap();
    idle_is(admin, "web", 3).await;
    backend.accepted_is(3).await;

    let client = pki.client("c", &node).await;
    let mut used = std::collections::BTreeSet::new();
    for i in 0..6 {
        // The pool full again, every connection in it accepted: 3 at first, one more per call.
        idle_is(admin, "web", 3).await;
        backend.accepted_is(3 + i).await;
        let reply = client.call("web", "hi").await.unwrap();
        let id = conn_id(&reply);
        assert!(
            id < 3 + i,
            "call {i} was served on connection {id}, opened after it began"
        );
        assert!(used.insert(id), "connection {id} served two streams");
    }
    idle_is(admin, "web", 3).await;
    backend.accepted_is(9).await;
    assert_eq!(backend.accepted(), 9, "the pool opens what it keeps, no more");
    let p = pool_of(admin, "web").await;
    assert_eq!((p["hits"].as_u64(), p["misses"].as_u64()), (Some(6), Some(0)), "{p}");
    assert_eq!(p["preconnect"], 3, "{p}");
    let (_, m) = common::http(admin, "GET", "/metrics").await;
    assert_eq!(
        common::sample(&m, "quicmesh_pool_takes_total{service=\"web\",result=\"hit\"}"),
        Some(6.0),
        "{m}"
    );
    assert_eq!(common::sample(&m, "quicmesh_pool_size{service=\"web\"}"), Some(3.0));

    // The backend drops its idle connections (a server-side idle timeout): the pool notices,
    // opens fresh ones, and the next call is served on one of those.
    backend.drop_below.send_replace(9);
    backend.accepted_is(12).await;
    idle_is(admin, "web", 3).await;
    let id = conn_id(&client.call("web", "again").await.unwrap());
    assert!(id >= 9, "served on connection {id}, which the backend had dropped");
    let (_, m) = common::http(admin, "GET", "/metrics").await;
    let dead = common::sample(&m, "quicmesh_pool_closed_total{service=\"web\",reason=\"dead\"}");
    assert!(dead.is_some_and(|d| d >= 3.0), "{m}");

    // A reload that shrinks the pool reports the service changed and closes the excess; one
    // that removes the service closes the rest.
    idle_is(admin, "web", 3).await;
    let closed = backend.closed_idle();
    if let Some(s) = file.lock().unwrap().services.get_mut("web") {
        s.preconnect = 1;
    }
    let r = node.reload().unwrap();
    assert_eq!(r.changed, vec!["web".to_owned()], "{r:?}");
    idle_is(admin, "web", 1).await;
    common::eventually(LIMIT, "the excess closed", || backend.closed_idle() >= closed + 2).await;
    file.lock().unwrap().services.clear();
    let r = node.reload().unwrap();
    assert_eq!(r.removed, vec!["web".to_owned()], "{r:?}");
    common::eventually(LIMIT, "the last idle connection closed", || {
        backend.closed_idle() >= closed + 3
    })
    .await;
    assert_eq!(pool_of(admin, "web").await, serde_json::Value::Null);
    client.close().await;
    node.shutdown().await;
}

/// A registered service's pool: idle connections are replaced after `preconnect_idle`, and
/// deregistering closes them; bad values are refused with the key named, for the API and
/// for the config file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_pool_replaces_idle_connections_and_closes_them_when_deregistered() {
    let pki = common::Pki::new();
    let backend = Backend::start().await;
    let node = Node::builder(with_admin(&pki, None)).start().await.unwrap();
    let admin = node.admin_addr().unwrap();

    for (body, names) in [
        (
            r#"{"backend": "B", "ttl": "1h", "preconnect": 5000}"#,
            "preconnect: 5000 is too many",
        ),
        (
            r#"{"backend": "B", "ttl": "1h", "preconnect": 2, "preconnect_idle": "1ms"}"#,
            "preconnect_idle: 1ms is too short",
        ),
        (
            r#"{"backend": "B", "ttl": "1h", "preconnect": 2, "preconnect_idle": "soon"}"#,
            "preconnect_idle:",
        ),
        (
            r#"{"backend": "B", "ttl": "1h", "preconnect": -1}"#,
            "preconnect: invalid value: integer `-1`",
        ),
    ] {
        let body = body.replace('B', &backend.addr.to_string());
        let (code, answer) = common::http_with_body(admin, "PUT", "/v1/services/api-web", &body).await;
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer.contains(names), "{body}: {answer}");
    }
    assert_eq!(backend.accepted(), 0, "a refused registration opens nothing");

    let body = format!(
        r#"{{"backend": "{}", "ttl": "1h", "preconnect": 2, "preconnect_idle": "300ms"}}"#,
        backend.addr
    );
    let (code, answer) = common::http_with_body(admin, "PUT", "/v1/services/api-web", &body).await;
    assert_eq!(code, 200, "{answer}");
    common::eventually(LIMIT, "idle connections replaced after preconnect_idle", || {
        backend.closed_idle() >= 2 && backend.accepted() >= 4
    })
    .await;
    idle_is(admin, "api-web", 2).await;
    let client = pki.client("c", &node).await;
    assert!(client.call("api-web", "x").await.unwrap().starts_with(b"conn-"));

    let (code, answer) = common::http(admin, "DELETE", "/v1/services/api-web").await;
    assert_eq!(code, 200, "{answer}");
    common::eventually(LIMIT, "every idle connection closed after deregistering", || {
        let s = backend.seen.lock().unwrap();
        // Every accepted connection but the one that served the call ended idle.
        s.closed_idle == s.accepted - 1
    })
    .await;
    assert_eq!(pool_of(admin, "api-web").await, serde_json::Value::Null);

    let bad = |extra: &str| {
        let text = format!(
            "name = \"n1\"\n[tls]\nca = \"ca.crt\"\ncert = \"n1.crt\"\nkey = \"n1.key\"\n[services.web]\nbackend = \"127.0.0.1:80\"\n{extra}\n"
        );
        quicmesh::NodeConfig::from_toml(&text, "node.toml")
            .unwrap_err()
            .to_string()
    };
    let e = bad("preconnect = 5000");
    assert!(
        e.contains("services.web.preconnect") && e.contains("at most 1024"),
        "{e}"
    );
    let e = bad("preconnect = 2\npreconnect_idle = \"10ms\"");
    assert!(
        e.contains("services.web.preconnect_idle") && e.contains("at least 100ms"),
        "{e}"
    );
    client.close().await;
    node.shutdown().await;
}

/// A pool whose backend is down counts failed connects and keeps serving streams the old way
/// (they connect themselves and are refused with `Unavailable`); once the backend is up the
/// pool fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_backend_is_down_backs_off_and_fills_once_it_is_up() {
    let pki = common::Pki::new();
    let port = common::free_tcp_port();
    let node = Node::builder(with_admin(&pki, Some((format!("127.0.0.1:{port}"), 2))))
        .start()
        .await
        .unwrap();
    let admin = node.admin_addr().unwrap();
    common::eventually_async(LIMIT, "a failed connect counted", || async {
        let p = pool_of(admin, "web").await;
        if p["connect_failures"].as_u64().is_some_and(|n| n >= 1) {
            Ok(())
        } else {
            Err(p.to_string())
        }
    })
    .await;
    let client = pki.client("c", &node).await;
    let e = client.call("web", "x").await.unwrap_err();
    assert_eq!(e.reject_code(), Some(RejectCode::Unavailable), "{e}");

    let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).await.is_ok() && !buf.is_empty() {
                    let _ = s.write_all(b"up").await;
                }
            });
        }
    });
    idle_is(admin, "web", 2).await;
    assert_eq!(&client.call("web", "x").await.unwrap()[..], b"up");
    client.close().await;
    node.shutdown().await;
}

/// A stream in flight on a service that is deregistered finishes with its whole reply; new
/// streams are refused with `UnknownService`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_flight_on_a_removed_service_finishes() {
    let pki = common::Pki::new();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (got, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (g2, r2) = (got.clone(), release.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (g, r) = (g2.clone(), r2.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).await.is_ok() {
                    g.notify_one();
                    r.notified().await;
                    let _ = s.write_all(&buf.repeat(1000)).await;
                }
            });
        }
    });
    let node = Node::builder(with_admin(&pki, None)).start().await.unwrap();
    let admin = node.admin_addr().unwrap();
    let body = format!(r#"{{"backend": "{addr}", "ttl": "1h"}}"#);
    let (code, answer) = common::http_with_body(admin, "PUT", "/v1/services/slow", &body).await;
    assert_eq!(code, 200, "{answer}");
    let client = pki.client("c", &node).await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call("slow", "0123456789").await }
    });
    common::within(LIMIT, "the backend has the request", got.notified()).await;
    let (code, answer) = common::http(admin, "DELETE", "/v1/services/slow").await;
    assert_eq!(code, 200, "{answer}");
    let e = client.call("slow", "x").await.unwrap_err();
    assert_eq!(e.reject_code(), Some(RejectCode::UnknownService), "{e}");
    release.notify_one();
    let reply = common::within(LIMIT, "the call in flight", call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.len(), 10_000, "the whole reply of the removed service's stream");
    client.close().await;
    node.shutdown().await;
}
