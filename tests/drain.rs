//! Graceful drain: streams in flight finish, new ones go elsewhere, and a rolling restart of
//! real node processes under steady load fails no call.
#![allow(clippy::disallowed_methods)] // tests may read the clock; see clippy.toml

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, Pki};
use quicmesh::{request_handler, Client, ClientConfig, Node, RejectCode, Role};

/// A service that takes `ms` milliseconds per request (a slow backend, not a wait for state).
fn slow(ms: u64) -> impl quicmesh::Handler {
    request_handler(1024, move |req: Bytes, _ctx| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(req)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_streams_in_flight_and_sends_new_ones_elsewhere() {
    common::init_logs();
    let pki = Pki::new();
    let a = Node::builder(pki.node_config("a"))
        .handler("slow", slow(400))
        .start()
        .await
        .unwrap();
    let mut cfg = pki.node_config("b");
    cfg.peers = vec![a.local_addr().to_string()];
    let b = Node::builder(cfg).handler("slow", slow(400)).start().await.unwrap();
    eventually(Duration::from_secs(10), "a and b see each other's service", || {
        common::sees_all(&[&a, &b], &["slow"])
    })
    .await;
    let entries = vec![a.local_addr().to_string(), b.local_addr().to_string()];
    let client = Client::connect(ClientConfig::new(pki.tls(Role::Client, "web"), entries))
        .await
        .unwrap();
    assert_eq!(client.entry_addr().await, Some(a.local_addr()));

    let mut calls = Vec::new();
    for i in 0..6 {
        let c = client.clone();
        calls.push(tokio::spawn(async move { c.call("slow", format!("call {i}")).await }));
    }
    eventually(Duration::from_secs(5), "six calls in flight at a", || {
        a.in_flight() == 6
    })
    .await;
    let a = Arc::new(a);
    let draining = {
        let a = a.clone();
        tokio::spawn(async move { a.drain(Duration::from_secs(10)).await })
    };
    eventually(Duration::from_secs(5), "a rejects new streams", || {
        b.status()
            .members
            .iter()
            .any(|m| m.member.name == "a" && m.member.status == quicmesh::gossip::Status::Draining)
    })
    .await;
    // A new call while a drains: the client is told, moves to b, and b serves it.
    let reply = client.request("slow", "new", &Default::default()).await.unwrap();
    assert_eq!(reply.served_by, "b");
    assert!(a.stats().rejected.get(&RejectCode::Draining).copied().unwrap_or(0) >= 1);
    // Every call that was in flight when the drain began completes intact.
    for (i, c) in calls.into_iter().enumerate() {
        let reply = c.await.unwrap();
        assert_eq!(
            reply.as_deref().map_err(ToString::to_string),
            Ok(format!("call {i}").as_bytes()),
            "call {i}"
        );
    }
    assert_eq!(draining.await.unwrap(), 0, "nothing abandoned");
    // a is gone: Left at b.
    eventually(Duration::from_secs(5), "a left", || {
        b.status()
            .members
            .iter()
            .any(|m| m.member.name == "a" && m.member.status == quicmesh::gossip::Status::Left)
    })
    .await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_grace_bounds_the_wait() {
    common::init_logs();
    let pki = Pki::new();
    let a = Node::builder(pki.node_config("a"))
        .handler("stuck", slow(60_000))
        .start()
        .await
        .unwrap();
    let client = pki.client("web", &a).await;
    let call = {
        let c = client.clone();
        tokio::spawn(async move { c.call("stuck", "x").await })
    };
    eventually(Duration::from_secs(5), "one call in flight", || a.in_flight() == 1).await;
    let left = common::within(
        Duration::from_secs(5),
        "drain with a 300ms grace",
        a.drain(Duration::from_millis(300)),
    )
    .await;
    assert_eq!(left, 1);
    // The abandoned call fails; it does not hang.
    assert!(common::within(Duration::from_secs(5), "the abandoned call ends", call)
        .await
        .unwrap()
        .is_err());
}

fn spawn_node(config: &std::path::Path, log: &std::path::Path) -> tokio::process::Child {
    let log = std::fs::File::create(log).unwrap();
    tokio::process::Command::new(common::bin())
        .args(["node", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", std::env::var("NODE_LOG").unwrap_or_else(|_| "info".into()))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_node_processes_fails_no_call() {
    common::init_logs();
    let pki = Pki::new();
    let backend = common::tcp_backend(|req| req).await;
    let names = ["n1", "n2", "n3"];
    let ports: Vec<u16> = names.iter().map(|_| common::free_udp_port()).collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut configs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let tls = pki.tls(Role::Node, name);
        let peers: Vec<String> = addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| format!("{a:?}"))
            .collect();
        let text = format!(
            "name = \"{name}\"\nlisten = \"{}\"\npeers = [{}]\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n[services.echo]\nbackend = \"{backend}\"\n[reconnect]\ninitial = \"20ms\"\nmax = \"200ms\"\n[drain]\ngrace = \"10s\"\n[admin]\nlisten = \"off\"\n",
            addrs[i],
            peers.join(", "),
            tls.ca,
            tls.cert,
            tls.key,
        );
        let path = pki.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        configs.push(path);
    }
    let logs: Vec<_> = names.iter().map(|n| pki.path().join(format!("{n}.log"))).collect();
    let mut procs: Vec<_> = configs.iter().zip(&logs).map(|(c, l)| spawn_node(c, l)).collect();

    let cfg = ClientConfig::new(pki.tls(Role::Client, "load"), addrs.clone());
    let status_of = |addr: String| {
        let mut cfg = cfg.clone();
        cfg.entries = vec![addr];
        async move {
            let c = Client::connect(cfg).await.ok()?;
            let report = c.status().await;
            c.close().await;
            report.ok()
        }
    };
    let joined = |r: &quicmesh::protocol::StatusReport| {
        r.members.len() == 3
            && r.members
                .iter()
                .all(|m| m.connected && m.member.status == quicmesh::gossip::Status::Alive)
    };
    for a in &addrs {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !status_of(a.clone()).await.is_some_and(|r| joined(&r)) {
            assert!(std::time::Instant::now() < deadline, "{a} did not join");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Steady load: 4 workers calling back to back through one client.
    let client = Client::connect(cfg.clone()).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (client, stop, ok, failures) = (client.clone(), stop.clone(), ok.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = format!("worker {w} call {i}");
                match client.call("echo", body.clone()).await {
                    Ok(reply) if reply == body.as_bytes() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(reply) => failures.lock().unwrap().push(format!("wrong reply {reply:?}")),
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
                i += 1;
            }
        }));
    }

    for (i, name) in names.iter().enumerate() {
        let before = ok.load(Ordering::Relaxed);
        let pid = procs[i].id().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = common::within(Duration::from_secs(20), "node exits after SIGTERM", procs[i].wait())
            .await
            .unwrap();
        assert!(status.success(), "{name} exited with {status}");
        procs[i] = spawn_node(&configs[i], &logs[i]);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !status_of(addrs[i].clone()).await.is_some_and(|r| joined(&r)) {
            assert!(std::time::Instant::now() < deadline, "{name} did not rejoin");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let during = ok.load(Ordering::Relaxed) - before;
        println!("restarted {name}: {during} calls succeeded meanwhile");
        assert!(
            during > 0,
            "no call succeeded while {name} restarted; failures so far: {:?}",
            failures.lock().unwrap()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let total = ok.load(Ordering::Relaxed);
    if !failures.is_empty() {
        if let Ok(dir) = std::env::var("KEEP_NODE_LOGS") {
            for l in &logs {
                let _ = std::fs::copy(l, std::path::Path::new(&dir).join(l.file_name().unwrap()));
            }
        }
        for l in &logs {
            let text = std::fs::read_to_string(l).unwrap_or_default();
            for line in text.lines().filter(|l| {
                ["ended early", "failed", "reset", "abort", "drain", "WARN", "ERROR"]
                    .iter()
                    .any(|k| l.contains(k))
            }) {
                println!("{}: {line}", l.display());
            }
        }
    }
    println!("rolling restart: {total} calls ok, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {} calls failed: {:?}",
        failures.len(),
        total + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    for p in &mut procs {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &p.id().unwrap().to_string()])
            .status();
        let _ = p.wait().await;
    }
}
