//! The mesh on impaired links: real nodes whose peer traffic passes through the userspace
//! impairment proxy (`quicmesh::impair`), on loopback.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use quicmesh::gossip::Status;
use quicmesh::impair::{Direction, Impairment, UdpProxy};
use quicmesh::{CallOptions, Client, Echo, Node, NodeConfig};

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A node on a fixed port, reachable by its peers only through its own proxy (its
/// `advertise` address), so that every byte between nodes can be impaired.
struct Proxied {
    node: Node,
    proxy: UdpProxy,
}

/// `echo` is the handler serving service "echo" here, if any.
async fn proxied<H: quicmesh::Handler>(
    pki: &Pki,
    name: &str,
    peers: Vec<String>,
    echo: Option<H>,
    tweak: impl Fn(&mut NodeConfig),
) -> Proxied {
    let port = free_udp_port();
    let proxy = UdpProxy::start(loopback(0), loopback(port)).await.unwrap();
    let mut cfg = pki.node_config(name);
    cfg.listen = loopback(port);
    cfg.advertise = Some(proxy.local_addr().to_string());
    cfg.peers = peers;
    tweak(&mut cfg);
    let mut b = Node::builder(cfg);
    if let Some(h) = echo {
        b = b.handler("echo", h);
    }
    Proxied {
        node: b.start().await.unwrap(),
        proxy,
    }
}

fn any_dead(nodes: &[&Node]) -> Option<String> {
    nodes.iter().find_map(|n| {
        n.status()
            .members
            .iter()
            .find(|m| m.member.status == Status::Dead)
            .map(|m| format!("{} declared {} dead", n.name(), m.member.name))
    })
}

fn connected(n: &Node, peer: &str) -> bool {
    n.peers().iter().any(|p| p.name == peer && p.connected)
}

/// Timers that notice a cut link in about a second and redial within a few hundred
/// milliseconds, for the partition tests.
fn quick_timers(c: &mut NodeConfig) {
    c.transport.idle_timeout = Duration::from_millis(1500);
    c.transport.keepalive = Duration::from_millis(300);
    c.transport.connect_timeout = Duration::from_millis(500);
    c.reconnect.initial = Duration::from_millis(50);
    c.reconnect.max = Duration::from_millis(300);
}

/// Cuts (`on`) or restores the link between each pair: each side's proxy drops, or again
/// passes, the other side's datagrams.
fn cut_between<'a>(pairs: impl IntoIterator<Item = (&'a Proxied, &'a Proxied)>, on: bool) {
    for (x, y) in pairs {
        if on {
            x.proxy.set_for(y.node.local_addr(), Impairment::blackhole());
            y.proxy.set_for(x.node.local_addr(), Impairment::blackhole());
        } else {
            x.proxy.clear_for(y.node.local_addr());
            y.proxy.clear_for(x.node.local_addr());
        }
    }
}

/// Runs `calls` echo calls through `client`, `workers` at a time; every one must succeed
/// and echo its body. Meanwhile checks that no node declares another dead.
async fn calls_all_succeed(client: &Client, calls: usize, workers: usize, watch: &[&Node]) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    return;
                }
                let body: Vec<u8> = (0..(1024 + i * 97 % 15_000)).map(|j| (i + j) as u8).collect();
                let opts = CallOptions {
                    timeout: Some(Duration::from_secs(20)),
                    ..CallOptions::default()
                };
                let reply = client.request("echo", body.clone(), &opts).await;
                let reply = reply.unwrap_or_else(|e| panic!("call {i} failed: {e}"));
                assert_eq!(reply.body, body, "call {i} came back altered");
            }
        }));
    }
    let all = futures_join(tasks);
    tokio::pin!(all);
    loop {
        tokio::select! {
            _ = &mut all => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if let Some(dead) = any_dead(watch) {
                    panic!("false failure detection under impairment: {dead}");
                }
            }
        }
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_succeed_under_5_and_20_percent_loss_and_nobody_is_declared_dead() {
    init_logs();
    for loss in [0.05, 0.20] {
        let pki = Pki::new();
        let b = proxied(&pki, "b", vec![], Some(Echo), |_| {}).await;
        let a = proxied(&pki, "a", vec![b.proxy.local_addr().to_string()], None::<Echo>, |_| {}).await;
        eventually(Duration::from_secs(10), "a and b connected", || {
            connected(&a.node, "b") && sees_all(&[&a.node], &["echo"])
        })
        .await;
        for p in [&a.proxy, &b.proxy] {
            p.set_both(Impairment::loss(loss));
        }
        // The client enters at a; every call is relayed to b over the lossy link.
        let client = pki.client("web", &a.node).await;
        let started = Instant::now();
        calls_all_succeed(&client, 300, 8, &[&a.node, &b.node]).await;
        let lost = b.proxy.stats(Direction::Up).lost + b.proxy.stats(Direction::Down).lost;
        let delivered = b.proxy.stats(Direction::Up).delivered + b.proxy.stats(Direction::Down).delivered;
        let measured = lost as f64 / (lost + delivered) as f64;
        println!(
            "loss {loss}: 300 relayed calls in {:?}; proxy dropped {lost} of {} datagrams ({measured:.3})",
            started.elapsed(),
            lost + delivered
        );
        assert!((measured - loss).abs() < 0.05, "proxy loss {measured} far from {loss}");
        assert_eq!(a.node.stats().relayed, 300);
        client.close().await;
        a.node.shutdown().await;
        b.node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_peer_times_out_traffic_reroutes_and_it_reconnects_within_the_backoff_bound() {
    init_logs();
    let pki = Pki::new();
    let fast = |c: &mut NodeConfig| {
        c.transport.idle_timeout = Duration::from_millis(1500);
        c.transport.keepalive = Duration::from_millis(300);
        c.transport.header_timeout = Duration::from_millis(500);
        c.transport.connect_timeout = Duration::from_millis(500);
        c.reconnect.initial = Duration::from_millis(50);
        c.reconnect.max = Duration::from_millis(400);
    };
    let b = proxied(&pki, "b", vec![], Some(Echo), fast).await;
    let c = proxied(&pki, "c", vec![b.proxy.local_addr().to_string()], Some(Echo), fast).await;
    let a = proxied(
        &pki,
        "a",
        vec![b.proxy.local_addr().to_string(), c.proxy.local_addr().to_string()],
        None::<Echo>,
        fast,
    )
    .await;
    eventually(Duration::from_secs(10), "full mesh", || {
        connected(&a.node, "b") && connected(&a.node, "c") && connected(&b.node, "c")
    })
    .await;
    let client = pki.client("web", &a.node).await;
    let opts = CallOptions {
        timeout: Some(Duration::from_secs(5)),
        ..CallOptions::default()
    };

    // Cut b off from everyone.
    let reconnects_before = a.node.stats().peer_reconnects;
    b.proxy.blackhole(true);
    let cut = Instant::now();
    eventually(Duration::from_secs(5), "a notices b is gone", || {
        !connected(&a.node, "b")
    })
    .await;
    let noticed = cut.elapsed();
    println!("a lost b {noticed:?} after the cut (idle_timeout 1.5s)");
    assert!(
        noticed >= Duration::from_millis(1000),
        "gone before the idle timeout could pass: {noticed:?}"
    );
    // Calls go to c only now.
    for i in 0..50 {
        let r = client.request("echo", format!("x{i}"), &opts).await.unwrap();
        assert_eq!(r.served_by, "c");
    }
    // a keeps trying (through the cut link) with backoff: its attempts reach the proxy.
    let dropped_before = b.proxy.stats(Direction::Up).blackholed;
    eventually(Duration::from_secs(5), "a retries b while the link is cut", || {
        b.proxy.stats(Direction::Up).blackholed > dropped_before + 2
    })
    .await;

    b.proxy.blackhole(false);
    let healed = Instant::now();
    eventually(Duration::from_secs(5), "a reconnects to b", || connected(&a.node, "b")).await;
    let back = healed.elapsed();
    // Bound: the longest backoff wait (reconnect.max) plus one handshake attempt that was
    // already under way into the cut link (connect_timeout), plus scheduling slack.
    println!("a reconnected to b {back:?} after the link came back");
    assert!(back < Duration::from_millis(400 + 500 + 600), "reconnect took {back:?}");
    // Counted on a whichever side redialled first.
    assert!(a.node.stats().peer_reconnects > reconnects_before);
    // And b serves again.
    eventually(Duration::from_secs(10), "b serves again", || {
        a.node
            .service_map()
            .get("echo")
            .is_some_and(|v| v.contains(&"b".to_string()))
    })
    .await;
    // Polled with a deadline: the balancer may keep to c for a while (a stream caught in the
    // retirement of a duplicate connection used to charge b a penalty it never worked off).
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0.. {
        if client.request("echo", format!("y{i}"), &opts).await.unwrap().served_by == "b" {
            println!("b served again at call {i}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b never served again after the link healed ({i} calls)"
        );
    }
    client.close().await;
    for n in [&a.node, &b.node, &c.node] {
        n.shutdown().await;
    }
}

/// A small request goes out whole with its stream's header (header, body and end in the first
/// flight): over a 100 ms round trip a call takes one round trip, not one to open the stream
/// and a second for the body. (A round-trip count, not a speed: 100 ms dwarfs the CPU time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_request_costs_one_round_trip() {
    init_logs();
    let pki = Pki::new();
    let n = proxied(&pki, "n", vec![], Some(Echo), |_| {}).await;
    let cfg = quicmesh::ClientConfig::new(
        pki.tls(quicmesh::Role::Client, "web"),
        vec![n.proxy.local_addr().to_string()],
    );
    let client = Client::connect(cfg).await.unwrap();
    assert_eq!(client.call("echo", "warm").await.unwrap(), "warm".as_bytes());
    let one_way = Duration::from_millis(50);
    n.proxy.set_both(Impairment::delay(one_way, Duration::ZERO));
    let mut fastest = Duration::MAX;
    for i in 0..5 {
        let body = vec![i as u8; 4096];
        let started = Instant::now();
        assert_eq!(client.call("echo", body.clone()).await.unwrap(), body);
        fastest = fastest.min(started.elapsed());
    }
    println!("fastest call over a {:?} round trip: {fastest:?}", one_way * 2);
    assert!(fastest >= one_way * 2, "faster than the link allows: {fastest:?}");
    assert!(
        fastest < one_way * 3,
        "a call took {fastest:?}: more than one {:?} round trip",
        one_way * 2
    );
    client.close().await;
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_shows_in_rtt_estimates_and_p2c_prefers_the_near_node() {
    init_logs();
    let pki = Pki::new();
    let far = proxied(&pki, "far", vec![], Some(Echo), |_| {}).await;
    let near = proxied(&pki, "near", vec![], Some(Echo), |_| {}).await;
    let a = proxied(
        &pki,
        "a",
        vec![far.proxy.local_addr().to_string(), near.proxy.local_addr().to_string()],
        None::<Echo>,
        |_| {},
    )
    .await;
    eventually(Duration::from_secs(10), "a connected to both", || {
        connected(&a.node, "far") && connected(&a.node, "near")
    })
    .await;
    // 50 ms ± 20 each way on the link to `far`: a round trip of about 100 ms.
    far.proxy
        .set_both(Impairment::delay(Duration::from_millis(50), Duration::from_millis(20)));
    let rtt_of = |n: &Node, peer: &str| n.peers().iter().find(|p| p.name == peer).and_then(|p| p.rtt);
    eventually(Duration::from_secs(15), "a's RTT estimate for far near 100 ms", || {
        rtt_of(&a.node, "far").is_some_and(|r| (Duration::from_millis(80)..Duration::from_millis(130)).contains(&r))
    })
    .await;
    let near_rtt = rtt_of(&a.node, "near").unwrap();
    println!("rtt: far {:?}, near {near_rtt:?}", rtt_of(&a.node, "far").unwrap());
    assert!(near_rtt < Duration::from_millis(20), "near RTT {near_rtt:?}");

    let client = pki.client("web", &a.node).await;
    let mut to_far = 0;
    for i in 0..100 {
        let r = client
            .request("echo", format!("{i}"), &CallOptions::default())
            .await
            .unwrap();
        if r.served_by == "far" {
            to_far += 1;
        }
    }
    println!("{to_far} of 100 calls went to the far node");
    assert!(to_far <= 20, "p2c sent {to_far} of 100 calls over the slow link");
    client.close().await;
    for n in [&a.node, &far.node, &near.node] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_under_load_fails_only_calls_in_flight_and_nothing_hangs() {
    init_logs();
    let pki = Pki::new();
    let fast = |c: &mut NodeConfig| {
        c.transport.idle_timeout = Duration::from_millis(1500);
        c.transport.keepalive = Duration::from_millis(300);
        c.transport.header_timeout = Duration::from_millis(500);
    };
    let slow_echo = || {
        quicmesh::request_handler(1 << 16, |body: bytes::Bytes, _| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, String>(body)
        })
    };
    let b = proxied(&pki, "b", vec![], Some(slow_echo()), fast).await;
    let c = proxied(
        &pki,
        "c",
        vec![b.proxy.local_addr().to_string()],
        Some(slow_echo()),
        fast,
    )
    .await;
    let mut cfg = pki.node_config("a");
    fast(&mut cfg);
    cfg.peers = vec![b.proxy.local_addr().to_string(), c.proxy.local_addr().to_string()];
    let a = Node::builder(cfg).start().await.unwrap();
    eventually(Duration::from_secs(10), "a sees echo on b and c", || {
        a.service_map().get("echo").is_some_and(|v| v.len() == 2)
    })
    .await;
    let client = pki.client("web", &a).await;
    let deadline = Duration::from_secs(3);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Calls finished so far, failed or not.
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut results = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let body = format!("{w}-{i}");
                let opts = CallOptions {
                    timeout: Some(deadline),
                    ..CallOptions::default()
                };
                let started = Instant::now();
                let r = client.request("echo", body.clone(), &opts).await;
                let r = r.map(|reply| {
                    assert_eq!(reply.body, body.as_bytes());
                    reply.served_by
                });
                results.push((started, started.elapsed(), r.map_err(|e| e.to_string())));
                done.fetch_add(1, Ordering::Relaxed);
            }
            results
        }));
    }
    eventually(Duration::from_secs(10), "100 calls done before c dies", || {
        done.load(Ordering::Relaxed) >= 100
    })
    .await;
    // c dies: nothing more leaves or reaches it, as when its host loses power.
    c.proxy.blackhole(true);
    let died = Instant::now();
    drop(c.node);
    eventually(Duration::from_secs(5), "a notices c is gone", || !connected(&a, "c")).await;
    let noticed = Instant::now();
    // Wait for 100 calls that started after `noticed` to finish: of the calls that finish
    // from here on, at most one per worker (8) was already running.
    let so_far = done.load(Ordering::Relaxed);
    eventually(Duration::from_secs(10), "100 calls after a noticed", || {
        done.load(Ordering::Relaxed) >= so_far + 8 + 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for w in workers {
        results.extend(w.await.unwrap());
    }
    let failed: Vec<_> = results.iter().filter(|r| r.2.is_err()).collect();
    let slowest = results.iter().map(|r| r.1).max().unwrap();
    println!(
        "{} calls, {} failed, slowest {slowest:?}; c died {:?} before a noticed",
        results.len(),
        failed.len(),
        noticed - died
    );
    for f in &failed {
        println!("  failed after {:?}: {}", f.1, f.2.as_ref().unwrap_err());
    }
    // Nothing hangs past its deadline.
    assert!(
        slowest < deadline + Duration::from_millis(500),
        "a call took {slowest:?}"
    );
    // Only calls that were running on c when it died may fail (at most one per worker),
    // each with an error that says what happened.
    assert!(failed.len() <= 8, "{} calls failed", failed.len());
    for (started, _, r) in &failed {
        assert!(*started < died, "a call started after the death failed: {r:?}");
        let e = r.as_ref().unwrap_err();
        assert!(
            e.contains("aborted the stream") || e.contains("no reply within"),
            "unclear: {e}"
        );
    }
    // Calls that started once a knew are all served by b.
    let later: Vec<_> = results.iter().filter(|r| r.0 > noticed).collect();
    assert!(
        later.len() > 50,
        "only {} calls after the death was noticed",
        later.len()
    );
    assert!(later.iter().all(|r| r.2.as_deref() == Ok("b")));
    eventually(Duration::from_secs(5), "nothing left in flight", || a.in_flight() == 0).await;
    client.close().await;
    a.shutdown().await;
    b.node.shutdown().await;
}

/// One proxy in front of a node cuts one source's link and leaves the others alone (the chaos
/// soak partitions the mesh this way), both ways, and a cleared source is back on the
/// proxy-wide link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_source_rule_cuts_one_sources_link_and_no_other() {
    let target = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = UdpProxy::start("127.0.0.1:0".parse().unwrap(), target.local_addr().unwrap())
        .await
        .unwrap();
    let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    proxy.set_for(a.local_addr().unwrap(), Impairment::blackhole());
    assert_eq!(proxy.sources_set(), vec![a.local_addr().unwrap()]);
    let mut buf = [0u8; 16];
    // b's datagram arrives and its answer gets back; a's never arrives.
    b.send_to(b"from-b", proxy.local_addr()).await.unwrap();
    let (n, via) = within(Duration::from_secs(5), "b's datagram", target.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"from-b");
    target.send_to(b"to-b", via).await.unwrap();
    let n = within(Duration::from_secs(5), "the answer to b", b.recv(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"to-b");
    for _ in 0..5 {
        a.send_to(b"from-a", proxy.local_addr()).await.unwrap();
    }
    b.send_to(b"marker", proxy.local_addr()).await.unwrap();
    let n = within(Duration::from_secs(5), "b's marker", target.recv(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"marker", "a datagram of the cut source got through");
    assert_eq!(proxy.stats(Direction::Up).blackholed, 5);
    // Cleared, a's link is the proxy-wide (perfect) one again.
    proxy.clear_for(a.local_addr().unwrap());
    assert!(proxy.sources_set().is_empty());
    a.send_to(b"healed", proxy.local_addr()).await.unwrap();
    let n = within(
        Duration::from_secs(5),
        "a's datagram after the clear",
        target.recv(&mut buf),
    )
    .await
    .unwrap();
    assert_eq!(&buf[..n], b"healed");
}

/// Found by the chaos soak (seed 2): a partition cuts one node off under load, it declares
/// the others dead, and the partition heals. Its Dead verdicts (at the incarnations everyone
/// knows) reached the majority, which adopted them for members it was talking to that very
/// moment, and refused calls with `Unavailable` until the members refuted. A node that hears
/// a member's heartbeat over a live link now takes such a verdict as a suspicion: no call
/// fails and nobody on the majority side is marked dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_then_heal_under_load_the_far_sides_stale_deaths_do_not_stop_routing() {
    init_logs();
    let pki = Pki::new();
    let fast = |c: &mut NodeConfig| {
        quick_timers(c);
        c.gossip.suspicion_max = Duration::from_secs(2);
    };
    let b = proxied(&pki, "b", vec![], Some(Echo), fast).await;
    let seed = vec![b.proxy.local_addr().to_string()];
    let c = proxied(&pki, "c", seed.clone(), Some(Echo), fast).await;
    let d = proxied(&pki, "d", seed.clone(), None::<Echo>, fast).await;
    let e = proxied(&pki, "e", seed.clone(), None::<Echo>, fast).await;
    let a = proxied(&pki, "a", seed, None::<Echo>, fast).await;
    let (majority, minority) = ([&a, &b, &c], [&d, &e]);
    eventually(Duration::from_secs(10), "full mesh", || {
        [&a, &b, &c, &d, &e]
            .iter()
            .all(|n| n.node.peers().iter().filter(|p| p.connected).count() == 4)
    })
    .await;
    let client = pki.client("web", &a.node).await;
    // Cut d and e off (two, so they hear each other and keep their local health): each
    // side's proxies drop the other side's datagrams.
    let cut = |on: bool| cut_between(majority.iter().flat_map(|x| minority.iter().map(move |y| (*x, *y))), on);
    cut(true);
    let far_side_gave_up = || {
        minority.iter().all(|y| {
            let view = y.node.status().members;
            ["a", "b", "c"].iter().all(|n| {
                view.iter()
                    .any(|m| m.member.name == *n && m.member.status == Status::Dead)
            })
        })
    };
    eventually(
        Duration::from_secs(15),
        "d and e declare a, b and c dead",
        far_side_gave_up,
    )
    .await;

    // Calls from a to b and c run while the partition heals and e's verdicts arrive.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for w in 0..4 {
        let (client, stop, failures, calls) = (client.clone(), stop.clone(), failures.clone(), calls.clone());
        load.push(tokio::spawn(async move {
            let opts = CallOptions {
                timeout: Some(Duration::from_secs(3)),
                ..CallOptions::default()
            };
            while !stop.load(Ordering::Relaxed) {
                let body = format!("w{w}-{}", calls.fetch_add(1, Ordering::Relaxed));
                match client.request("echo", body.clone(), &opts).await {
                    Ok(r) if r.body == body.as_bytes() => {}
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("altered reply from {}", r.served_by)),
                    Err(err) => failures.lock().unwrap().push(err.to_string()),
                }
            }
        }));
    }
    cut(false);
    let healed = Instant::now();
    let mut marked_dead = Vec::new();
    while healed.elapsed() < Duration::from_secs(4) {
        for x in majority {
            for m in x.node.status().members {
                if ["a", "b", "c"].contains(&m.member.name.as_str()) && m.member.status == Status::Dead {
                    marked_dead.push(format!("{} had {} Dead", x.node.name(), m.member.name));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually(Duration::from_secs(10), "d and e are back in every view", || {
        majority.iter().all(|x| {
            let view = x.node.status().members;
            ["d", "e"].iter().all(|n| {
                view.iter()
                    .any(|m| m.member.name == *n && m.member.status == Status::Alive)
            })
        })
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    futures_join(load).await;
    marked_dead.sort_unstable();
    marked_dead.dedup();
    assert!(marked_dead.is_empty(), "after the heal: {marked_dead:?}");
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    println!(
        "{} calls across the heal, {} failed",
        calls.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(failures.is_empty(), "calls failed across the heal: {failures:?}");
    client.close().await;
    for x in [&a, &b, &c, &d, &e] {
        x.node.shutdown().await;
    }
}

/// Found by the chaos soak (seed 2026): a partition cuts a client's entry node off from every
/// node serving the service; calls into the silence eject them (`routing.eject_for`, 10 s by
/// default). The partition heals within seconds and the connections come back, but the
/// ejections ran on, and the entry refused every call for the rest of them, saying no node
/// in the mesh offered the service. A new connection now reinstates its peer, and a node
/// whose every connected candidate is ejected says so (`Unavailable`, naming them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_then_heal_the_entrys_ejections_end_with_the_new_connections() {
    init_logs();
    let pki = Pki::new();
    let fast = |c: &mut NodeConfig| {
        quick_timers(c);
        // One failure ejects, for far longer than the partition: only the new connections
        // can end the ejections.
        c.routing.eject_after = 1;
        c.routing.eject_for = Duration::from_secs(60);
    };
    let b = proxied(&pki, "b", vec![], Some(Echo), fast).await;
    let c = proxied(&pki, "c", vec![b.proxy.local_addr().to_string()], Some(Echo), fast).await;
    let seeds = vec![b.proxy.local_addr().to_string(), c.proxy.local_addr().to_string()];
    let a = proxied(&pki, "a", seeds, None::<Echo>, fast).await;
    eventually(Duration::from_secs(10), "full mesh", || {
        connected(&a.node, "b") && connected(&a.node, "c") && connected(&b.node, "c")
    })
    .await;
    let client = pki.client("web", &a.node).await;
    let opts = CallOptions {
        timeout: Some(Duration::from_secs(3)),
        ..CallOptions::default()
    };
    client.request("echo", "before", &opts).await.unwrap();
    let cut = |on: bool| cut_between([(&a, &b), (&a, &c)], on);
    cut(true);
    // Calls into the silence eject b and c (each is tried and fails); the connections then
    // time out.
    let mut seen = std::collections::BTreeSet::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(2500) {
        match client.request("echo", "during", &opts).await {
            Ok(r) => panic!("served by {} across a cut", r.served_by),
            Err(e) => seen.insert(e.to_string()),
        };
    }
    println!("refusals during the cut: {seen:#?}");
    eventually(Duration::from_secs(10), "a loses b and c", || {
        !connected(&a.node, "b") && !connected(&a.node, "c")
    })
    .await;
    cut(false);
    let healed = Instant::now();
    eventually(Duration::from_secs(10), "a reconnects to b and c", || {
        connected(&a.node, "b") && connected(&a.node, "c")
    })
    .await;
    let reply = eventually_async(Duration::from_secs(2), "a call succeeds after the heal", || async {
        client.request("echo", "after", &opts).await
    })
    .await;
    assert_eq!(reply.body, "after".as_bytes());
    println!("served again {:?} after the heal (eject_for 60 s)", healed.elapsed());
    client.close().await;
    for x in [&a, &b, &c] {
        x.node.shutdown().await;
    }
}

/// Past the overlay cap a node draws links only among members it holds alive, and its seeds
/// are contact points only: after a partition each side holds the other Dead and would never
/// link to it again. The overlay's probes of gone members are what merge the two sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_overlay_cap_a_healed_partition_merges_again() {
    init_logs();
    let pki = Pki::new();
    let fast = |c: &mut NodeConfig| {
        c.limits.max_peer_connections = 4;
        quick_timers(c);
        c.gossip.suspicion_max = Duration::from_secs(2);
        // Members no node of a side is linked to are found by their leases running out.
        c.gossip.lease = Duration::from_secs(6);
    };
    // Two sides of six: each side alone is still past the cap (five others > 4).
    let first = proxied(&pki, "n00", vec![], None::<Echo>, fast).await;
    let seed = vec![first.proxy.local_addr().to_string()];
    let mut nodes = vec![first];
    for i in 1..12 {
        nodes.push(proxied(&pki, &format!("n{i:02}"), seed.clone(), None::<Echo>, fast).await);
    }
    let all_alive = |nodes: &[Proxied]| {
        nodes.iter().all(|n| {
            let view = n.node.status().members;
            view.len() == 12 && view.iter().all(|m| m.member.status == Status::Alive)
        })
    };
    eventually(Duration::from_secs(30), "all 12 know all 12 Alive", || {
        all_alive(&nodes)
    })
    .await;
    let (left, right) = nodes.split_at(6);
    let cut = |on: bool| cut_between(left.iter().flat_map(|x| right.iter().map(move |y| (x, y))), on);
    cut(true);
    let sides_apart = || {
        let holds_gone = |side: &[Proxied], other: &[Proxied]| {
            side.iter().all(|x| {
                let view = x.node.status().members;
                other.iter().all(|y| {
                    view.iter()
                        .any(|m| m.member.name == y.node.name() && m.member.status.is_gone())
                })
            })
        };
        holds_gone(left, right) && holds_gone(right, left)
    };
    eventually(Duration::from_secs(30), "each side holds the other Dead", sides_apart).await;
    cut(false);
    eventually(
        Duration::from_secs(30),
        "after the heal, all 12 know all 12 Alive again",
        || all_alive(&nodes),
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "every node back within the cap of 4 links",
        || {
            nodes
                .iter()
                .all(|n| n.node.peers().iter().filter(|p| p.connected).count() <= 4)
        },
    )
    .await;
}
