//! Discovery through DNS SRV records, against a real DNS server on loopback (the in-process
//! `ZoneServer`, over UDP and TCP): lookups and their failures, nodes that form a mesh from an
//! SRV name alone, zone changes, DNS outages, and clients that pick entry nodes by priority.
#![allow(clippy::disallowed_methods)] // tests may read the clock; see clippy.toml

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, Pki};
use quicmesh::discovery::{DnsConfig, Fault, LookupError, SrvName, SrvResolver, Zone, ZoneServer};
use quicmesh::gossip::Status;
use quicmesh::{Client, ClientConfig, ClientError, Echo, Node, NodeConfig, Role};

const SRV: &str = "_quicmesh._udp.mesh.test";

fn settings(server: SocketAddr) -> DnsConfig {
    DnsConfig {
        servers: vec![server.to_string()],
        timeout: Duration::from_millis(300),
        min_refresh: Duration::from_millis(100),
        ..DnsConfig::default()
    }
}

/// A zone `mesh.test` whose records carry `ttl` seconds, served over UDP and TCP on loopback;
/// records may be added and removed while it runs.
async fn dns(ttl: u32) -> (Arc<Zone>, ZoneServer) {
    let zone = Zone::new("mesh.test", ttl);
    let server = ZoneServer::start("127.0.0.1:0".parse().unwrap(), zone.clone())
        .await
        .unwrap();
    (zone, server)
}

fn name() -> SrvName {
    SrvName::parse(&format!("srv:{SRV}")).unwrap()
}

#[tokio::test]
async fn srv_answer_carries_targets_addresses_and_ttl() {
    common::init_logs();
    let (zone, server) = dns(7).await;
    zone.add_srv(SRV, 10, 5, "alpha.mesh.test", "127.0.0.1:7401".parse().unwrap());
    zone.add_srv(SRV, 20, 1, "bravo.mesh.test", "127.0.0.2:7402".parse().unwrap());
    let resolver = SrvResolver::new(&settings(server.addr())).unwrap();
    assert_eq!(resolver.servers(), server.addr().to_string());

    let answer = resolver.lookup(&name()).await.unwrap();
    let mut got: Vec<(u16, u16, String, SocketAddr)> = answer
        .endpoints
        .iter()
        .map(|e| (e.priority, e.weight, e.target.clone(), e.addr))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (10, 5, "alpha.mesh.test.".into(), "127.0.0.1:7401".parse().unwrap()),
            (20, 1, "bravo.mesh.test.".into(), "127.0.0.2:7402".parse().unwrap()),
        ]
    );
    assert!(
        answer.ttl <= Duration::from_secs(7) && answer.ttl >= Duration::from_secs(5),
        "{:?}",
        answer.ttl
    );
    assert!(answer.unresolved.is_empty());
    // One query: the addresses came from the additional section.
    assert_eq!(zone.queries(), 1);
}

#[tokio::test]
async fn failures_are_named() {
    common::init_logs();
    let (zone, server) = dns(1).await;
    let resolver = SrvResolver::new(&settings(server.addr())).unwrap();

    assert_eq!(resolver.lookup(&name()).await.unwrap_err(), LookupError::NxDomain);
    // The name exists (it has an address record) but no SRV records.
    zone.add_srv("other.mesh.test", 1, 1, SRV, "127.0.0.1:1".parse().unwrap());
    assert_eq!(resolver.lookup(&name()).await.unwrap_err(), LookupError::NoRecords);

    zone.add_srv(SRV, 10, 1, "alpha.mesh.test", "127.0.0.1:7401".parse().unwrap());
    zone.set_fault(Some(Fault::ServFail));
    let e = resolver.lookup(&name()).await.unwrap_err();
    assert!(matches!(&e, LookupError::Rcode(c) if c == "SERVFAIL"), "{e:?}");
    zone.set_fault(Some(Fault::Refused));
    let e = resolver.lookup(&name()).await.unwrap_err();
    assert!(e.to_string().contains("REFUSED"), "{e}");
    zone.set_fault(Some(Fault::Silent));
    let e = resolver.lookup(&name()).await.unwrap_err();
    assert!(matches!(e, LookupError::Timeout(_)), "{e:?}");
    zone.set_fault(None);
    assert_eq!(resolver.lookup(&name()).await.unwrap().endpoints.len(), 1);

    // Outside the zone.
    let outside = SrvName::parse("srv:_quicmesh._udp.elsewhere.test").unwrap();
    let e = resolver.lookup(&outside).await.unwrap_err();
    assert!(e.to_string().contains("REFUSED"), "{e}");

    // Down: nothing listens any more.
    server.stop().await;
    let e = resolver
        .lookup(&SrvName::parse("srv:_x._udp.mesh.test").unwrap())
        .await
        .unwrap_err();
    println!("down server: {e}");
    assert!(!matches!(e, LookupError::NxDomain | LookupError::NoRecords), "{e:?}");
}

#[tokio::test]
async fn targets_without_glue_are_looked_up_and_missing_ones_reported() {
    common::init_logs();
    let (zone, server) = dns(30).await;
    zone.set_glue(false);
    zone.add_srv(SRV, 10, 1, "alpha.mesh.test", "127.0.0.1:7401".parse().unwrap());
    zone.add_srv(SRV, 10, 1, "bravo.mesh.test", "127.0.0.2:7402".parse().unwrap());
    zone.add_srv(SRV, 10, 1, "ghost.mesh.test", "127.0.0.9:7409".parse().unwrap());
    zone.remove_host("ghost.mesh.test");
    let resolver = SrvResolver::new(&settings(server.addr())).unwrap();
    let answer = resolver.lookup(&name()).await.unwrap();
    let mut addrs: Vec<SocketAddr> = answer.endpoints.iter().map(|e| e.addr).collect();
    addrs.sort();
    assert_eq!(
        addrs,
        ["127.0.0.1:7401".parse().unwrap(), "127.0.0.2:7402".parse().unwrap()]
    );
    assert_eq!(answer.unresolved.len(), 1, "{:?}", answer.unresolved);
    assert!(
        answer.unresolved[0].starts_with("ghost.mesh.test."),
        "{:?}",
        answer.unresolved
    );
    assert!(zone.queries() >= 4, "SRV, then A for each target");

    // Only ghosts: the error lists them.
    let only = "_only._udp.mesh.test";
    zone.add_srv(only, 10, 1, "ghost2.mesh.test", "127.0.0.9:7409".parse().unwrap());
    zone.remove_host("ghost2.mesh.test");
    let e = resolver
        .lookup(&SrvName::parse(&format!("srv:{only}")).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, LookupError::NoAddresses(why) if why.contains("ghost2.mesh.test")),
        "{e:?}"
    );
}

#[tokio::test]
async fn large_answers_fall_back_to_tcp() {
    common::init_logs();
    let (zone, server) = dns(30).await;
    for i in 0..40u16 {
        zone.add_srv(
            SRV,
            10,
            1,
            &format!("node-{i}.mesh.test"),
            SocketAddr::from(([127, 0, 1, i as u8], 7400 + i)),
        );
    }
    let resolver = SrvResolver::new(&settings(server.addr())).unwrap();
    let answer = resolver.lookup(&name()).await.unwrap();
    assert_eq!(answer.endpoints.len(), 40);
    assert!(zone.queries() >= 2, "a truncated UDP answer, then TCP");
}

// ---- nodes and clients ----

const TTL: u32 = 1;

fn node_dns(server: SocketAddr) -> DnsConfig {
    DnsConfig {
        servers: vec![server.to_string()],
        timeout: Duration::from_millis(300),
        min_refresh: Duration::from_millis(100),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        ..DnsConfig::default()
    }
}

fn discovering(pki: &Pki, name: &str, server: SocketAddr) -> NodeConfig {
    let mut cfg = pki.node_config(name);
    cfg.discovery = vec![format!("srv:{SRV}")];
    cfg.dns = node_dns(server);
    cfg
}

fn connected_to(node: &Node, others: &[&str]) -> bool {
    let peers = node.peers();
    others.iter().all(|o| peers.iter().any(|p| p.name == *o && p.connected))
}

fn member_status(node: &Node, name: &str) -> Option<Status> {
    node.status()
        .members
        .into_iter()
        .find(|m| m.member.name == name)
        .map(|m| m.member.status)
}

fn host(name: &str) -> String {
    format!("{name}.mesh.test")
}

/// Starts nodes that know only the SRV name, publishing each one's record as it comes up
/// (as a StatefulSet's headless Service does), and waits for a full mesh.
async fn srv_mesh(pki: &Pki, zone: &Zone, server: SocketAddr, names: &[&str]) -> Vec<Node> {
    let mut nodes = Vec::new();
    for name in names {
        let node = Node::builder(discovering(pki, name, server))
            .handler("echo", Echo)
            .start()
            .await
            .unwrap();
        zone.add_srv(SRV, 10, 1, &host(name), node.local_addr());
        nodes.push(node);
    }
    eventually(Duration::from_secs(15), "full mesh from SRV records", || {
        nodes.iter().all(|n| {
            let others: Vec<&str> = names.iter().copied().filter(|o| *o != n.name()).collect();
            connected_to(n, &others)
        })
    })
    .await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_form_a_full_mesh_from_an_srv_name_alone() {
    common::init_logs();
    let pki = Pki::new();
    let (zone, server) = dns(TTL).await;
    let nodes = srv_mesh(&pki, &zone, server.addr(), &["alpha", "bravo", "charlie"]).await;
    for n in &nodes {
        // No static peers anywhere: the mesh came from DNS.
        eventually(Duration::from_secs(5), "every node's answer lists all three", || {
            n.discovery()
                .iter()
                .all(|w| w.endpoints.len() == 3 && w.error.is_none())
        })
        .await;
    }
    // And it serves.
    let client = pki.client("web", &nodes[0]).await;
    assert_eq!(&client.call("echo", "via srv").await.unwrap()[..], b"via srv");
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_to_the_zone_joins_within_the_ttl_and_removal_cuts_nothing() {
    common::init_logs();
    let pki = Pki::new();
    let (zone, server) = dns(TTL).await;
    let nodes = srv_mesh(&pki, &zone, server.addr(), &["alpha", "bravo", "charlie"]).await;

    // delta knows nobody: only the others' DNS refresh can find it.
    let delta = Node::builder(pki.node_config("delta")).start().await.unwrap();
    let added = Instant::now();
    zone.add_srv(SRV, 10, 1, &host("delta"), delta.local_addr());
    eventually(Duration::from_secs(10), "delta found through DNS", || {
        connected_to(&delta, &["alpha", "bravo", "charlie"])
    })
    .await;
    let took = added.elapsed();
    println!("delta joined {took:?} after its record was published (TTL {TTL}s)");
    assert!(
        took < Duration::from_secs(u64::from(TTL)) + Duration::from_secs(2),
        "{took:?}"
    );

    // Remove the record: the others' answers drop it, but nobody cuts delta off.
    zone.remove_srv(SRV, &host("delta"));
    let lookups: Vec<u64> = nodes.iter().map(|n| n.discovery()[0].lookups).collect();
    eventually(Duration::from_secs(10), "answers without delta", || {
        nodes.iter().zip(&lookups).all(|(n, before)| {
            let w = &n.discovery()[0];
            w.lookups > *before && w.endpoints.len() == 3 && w.endpoints.iter().all(|e| e.addr != delta.local_addr())
        })
    })
    .await;
    assert!(connected_to(&delta, &["alpha", "bravo", "charlie"]));
    for n in &nodes {
        assert_eq!(member_status(n, "delta"), Some(Status::Alive));
    }
    // Gossip, not DNS, decides liveness: when delta goes, it is Left everywhere.
    delta.shutdown().await;
    eventually(Duration::from_secs(10), "delta left", || {
        nodes
            .iter()
            .all(|n| matches!(member_status(n, "delta"), Some(Status::Left | Status::Dead) | None))
    })
    .await;
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_failing_at_start_is_survived_with_seeds_and_healed_when_it_answers() {
    common::init_logs();
    let pki = Pki::new();
    let (zone, server) = dns(TTL).await;
    let dns_addr = server.addr();
    let nodes = srv_mesh(&pki, &zone, dns_addr, &["alpha", "bravo"]).await;
    eventually(Duration::from_secs(5), "both answers list both nodes", || {
        nodes.iter().all(|n| n.discovery()[0].endpoints.len() == 2)
    })
    .await;

    // SERVFAIL: charlie starts anyway, on its static seed, and says why DNS failed.
    zone.set_fault(Some(Fault::ServFail));
    let mut cfg = discovering(&pki, "charlie", dns_addr);
    cfg.peers = vec![nodes[0].local_addr().to_string()];
    let charlie = Node::builder(cfg).start().await.unwrap();
    eventually(Duration::from_secs(10), "charlie joined through its seed", || {
        connected_to(&charlie, &["alpha", "bravo"])
    })
    .await;
    eventually(Duration::from_secs(5), "charlie reports SERVFAIL", || {
        charlie.discovery()[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("SERVFAIL"))
    })
    .await;
    let w = &charlie.discovery()[0];
    assert!(w.endpoints.is_empty() && w.failures >= 1, "{w:?}");
    // The nodes that had an answer keep it while DNS fails (serve-stale).
    eventually(Duration::from_secs(5), "alpha serves its stale answer", || {
        let w = &nodes[0].discovery()[0];
        w.error.is_some() && w.endpoints.len() == 2
    })
    .await;
    zone.set_fault(None);
    eventually(Duration::from_secs(5), "charlie's DNS heals", || {
        let w = &charlie.discovery()[0];
        w.error.is_none() && w.endpoints.len() == 2
    })
    .await;

    // Down: nothing listens. delta has no seed; it starts, and joins once DNS is back.
    server.stop().await;
    let delta = Node::builder(discovering(&pki, "delta", dns_addr))
        .start()
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "delta reports the outage", || {
        delta.discovery()[0].failures >= 2
    })
    .await;
    assert!(delta.peers().is_empty());
    println!("delta while DNS is down: {:?}", delta.discovery()[0].error);
    let _server = ZoneServer::start(dns_addr, zone.clone()).await.unwrap();
    eventually(Duration::from_secs(10), "delta joined once DNS answered", || {
        connected_to(&delta, &["alpha", "bravo", "charlie"])
    })
    .await;
    for n in nodes.into_iter().chain([charlie, delta]) {
        n.shutdown().await;
    }
}

fn client_config(pki: &Pki, server: SocketAddr) -> ClientConfig {
    let mut cfg = ClientConfig::new(pki.tls(Role::Client, "web"), vec![]);
    cfg.discovery = vec![format!("srv:{SRV}")];
    cfg.dns = node_dns(server);
    cfg.transport.connect_timeout = Duration::from_millis(500);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_pick_entry_nodes_by_srv_priority_then_weight() {
    common::init_logs();
    let pki = Pki::new();
    let nodes = common::mesh(&pki, &["alpha", "bravo", "charlie"], &[&["echo"], &[], &[]]).await;
    let (zone, server) = dns(30).await;
    // alpha is the fallback; bravo and charlie share the first tier 3:1.
    zone.add_srv(SRV, 20, 1, &host("alpha"), nodes[0].local_addr());
    zone.add_srv(SRV, 10, 3, &host("bravo"), nodes[1].local_addr());
    zone.add_srv(SRV, 10, 1, &host("charlie"), nodes[2].local_addr());

    let mut entries = std::collections::BTreeMap::<SocketAddr, u32>::new();
    for _ in 0..40 {
        let client = Client::connect(client_config(&pki, server.addr())).await.unwrap();
        *entries.entry(client.entry_addr().await.unwrap()).or_default() += 1;
        assert_eq!(&client.call("echo", "x").await.unwrap()[..], b"x");
        client.close().await;
    }
    println!("entry nodes chosen: {entries:?}");
    assert_eq!(
        entries.get(&nodes[0].local_addr()),
        None,
        "priority 20 is not used while 10 answers"
    );
    assert!(entries.contains_key(&nodes[1].local_addr()) && entries.contains_key(&nodes[2].local_addr()));

    // The first tier goes away: clients fall back to the next priority.
    let mut nodes = nodes.into_iter();
    let alpha = nodes.next().unwrap();
    for n in nodes {
        n.shutdown().await;
    }
    let client = Client::connect(client_config(&pki, server.addr())).await.unwrap();
    assert_eq!(client.entry_addr().await, Some(alpha.local_addr()));

    // DNS failing: static entries still work, and without them the error says why.
    zone.set_fault(Some(Fault::ServFail));
    let mut cfg = client_config(&pki, server.addr());
    let e = Client::connect(cfg.clone()).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::NoEntryFound(why) if why.contains("SERVFAIL")),
        "{e}"
    );
    println!("{e}");
    cfg.entries = vec![alpha.local_addr().to_string()];
    let client = Client::connect(cfg).await.unwrap();
    assert_eq!(client.entry_addr().await, Some(alpha.local_addr()));
    alpha.shutdown().await;
}

#[tokio::test]
async fn bad_discovery_config_is_refused_with_the_key() {
    let pki = Pki::new();
    let mut cfg = pki.node_config("alpha");
    cfg.discovery = vec!["_quicmesh._udp.mesh.test".into()];
    let e = Node::builder(cfg).start().await.err().unwrap().to_string();
    assert!(e.contains("discovery[0]") && e.contains("srv:"), "{e}");
    let mut cfg = pki.node_config("alpha");
    cfg.discovery = vec![format!("srv:{SRV}")];
    cfg.dns.servers = vec!["ns1.example".into()];
    let e = Node::builder(cfg).start().await.err().unwrap().to_string();
    assert!(e.contains("dns.servers[0]"), "{e}");
}
