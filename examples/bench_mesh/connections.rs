//! Scenario 3: memory per idle client connection and per peer connection on a node process,
//! and the mTLS handshake rate.

use std::time::{Duration, Instant};

use quicmesh::{Client, ClientConfig, Node, NodeConfig, Role, TlsMaterial};

use crate::util::{cpu_secs, node_binary, recv_buffer_rss, rss_of, Error, Pki};

/// A node process of its own (so that its RSS is its own), listening on a fresh port.
async fn node_process(
    pki: &Pki,
    name: &str,
    max_streams: u32,
    max_peers: usize,
) -> Result<(tokio::process::Child, u32, u16), Error> {
    let tls = pki.tls(Role::Node, name)?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = pki.dir.path().join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "name = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n[admin]\nlisten = \"off\"\n[limits]\nmax_streams_per_client = {max_streams}\nmax_peer_connections = {max_peers}\n",
            tls.ca, tls.cert, tls.key
        ),
    )?;
    let child = tokio::process::Command::new(node_binary()?)
        .args(["node", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("no pid")?;
    Ok((child, pid, port))
}

/// Waits until every node is connected to the hub, then lets the gossip of the new members
/// settle before the size is read.
fn connected(n: &Node) -> bool {
    n.peers().iter().any(|p| p.name == "hub" && p.connected)
}

async fn all_joined(nodes: &[Node]) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes.iter().all(connected) {
        if Instant::now() > deadline {
            return Err("peers did not connect to the hub".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// Memory per peer connection: `peers` nodes in this process join a node process.
pub async fn peers(pki: &Pki, peers: usize) -> Result<(), Error> {
    // A cap above the peer count, on the hub and on the peers: every peer keeps its link to
    // the hub, so the delta is one connection per added peer, not the overlay's trimming.
    let cap = peers + 8;
    let (mut child, pid, port) = node_process(pki, "hub", 128, cap).await?;
    let start = |i: usize| async move {
        let name = format!("p{i}");
        let mut cfg = NodeConfig::new(&name, pki.tls(Role::Node, &name)?);
        cfg.listen = "127.0.0.1:0".parse()?;
        cfg.limits.max_peer_connections = cap;
        cfg.peers = vec![format!("127.0.0.1:{port}")];
        Ok::<_, Error>(Node::builder(cfg).start().await?)
    };
    let mut nodes = vec![start(0).await?];
    all_joined(&nodes).await?;
    // The node process runs with the default transport settings, as these nodes do.
    let payload = NodeConfig::new("x", pki.tls(Role::Node, "p0")?)
        .transport
        .max_udp_payload;
    let (before, buf_before) = (rss_of(pid)?, recv_buffer_rss(pid, payload)?);
    for i in 1..peers {
        nodes.push(start(i).await?);
    }
    all_joined(&nodes).await?;
    let (after, buf_after) = (rss_of(pid)?, recv_buffer_rss(pid, payload)?);
    let linked = nodes.iter().filter(|n| connected(n)).count();
    if linked != peers {
        return Err(format!("{linked} of {peers} peers linked to the hub when its size was read").into());
    }
    let per = after.saturating_sub(before) as f64 / (peers - 1) as f64 / 1024.0;
    let buf = buf_after.saturating_sub(buf_before) as f64 / (peers - 1) as f64 / 1024.0;
    println!("### Peer connections (node process)\n");
    println!("| peers | node RSS | memory per peer (RSS delta / added peers: connection, control stream, gossip record) | of it, pages of quinn's receive buffer (one per endpoint) touched by the joins | per peer without them |\n|---|---|---|---|---|");
    println!("| 1 | {:.1} MiB | – | – | – |", before as f64 / 1048576.0);
    println!(
        "| {peers} | {:.1} MiB | **{per:.1} KiB** | {buf:.1} KiB | {:.1} KiB |\n",
        after as f64 / 1048576.0,
        per - buf
    );
    for n in nodes {
        n.shutdown().await;
    }
    let _ = child.kill().await;
    Ok(())
}

/// How long the node's CPU is read while its clients idle.
const IDLE_CPU_SECS: u64 = 5;

/// Memory per idle client connection on a node process, the rate of mTLS handshakes, and the
/// node's CPU while the connections idle.
pub async fn run(pki: &Pki, idle: &[usize], max_streams: u32) -> Result<(), Error> {
    let (mut child, pid, port) = node_process(pki, "lone", max_streams, 32).await?;
    let client_tls = TlsMaterial::load(&pki.tls(Role::Client, "idle")?, Role::Client)?;
    let mut cfg = ClientConfig::new(pki.tls(Role::Client, "idle")?, vec![format!("127.0.0.1:{port}")]);
    cfg.transport.idle_timeout = Duration::from_secs(120);
    cfg.transport.keepalive = Duration::from_secs(30);
    // Wait for the node, and warm it with one connection.
    let mut first = None;
    for _ in 0..200 {
        if let Ok(c) = Client::connect_with(cfg.clone(), client_tls.clone()).await {
            first = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = first.ok_or("node did not start")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let payload = cfg.transport.max_udp_payload;
    let (before, buf_before) = (rss_of(pid)?, recv_buffer_rss(pid, payload)?);
    println!("### Connections (node process, limits.max_streams_per_client = {max_streams})\n");
    println!("| idle client connections | node RSS | memory per connection (RSS delta / connections) | of it, quinn's receive buffer | per connection without it | mTLS handshakes per second while connecting (32 at a time) | node CPU while they idle, % of a core |\n|---|---|---|---|---|---|---|");
    println!("| 1 | {:.1} MiB | – | – | – | – | – |", before as f64 / 1048576.0);
    let mut clients = Vec::new();
    for &target in idle {
        let started = Instant::now();
        let made_before = clients.len();
        while clients.len() < target {
            let n = (target - clients.len()).min(32);
            let made =
                futures_util::future::join_all((0..n).map(|_| Client::connect_with(cfg.clone(), client_tls.clone())))
                    .await;
            for c in made {
                clients.push(c?);
            }
        }
        let rate = (clients.len() - made_before) as f64 / started.elapsed().as_secs_f64();
        // Let the handshakes' transient state go before reading the steady size.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (after, buf_after) = (rss_of(pid)?, recv_buffer_rss(pid, payload)?);
        let per = (after.saturating_sub(before)) as f64 / clients.len() as f64 / 1024.0;
        let buf = buf_after.saturating_sub(buf_before) as f64 / clients.len() as f64 / 1024.0;
        // What holding idle connections costs the node: timers and keep-alives, nothing else.
        let (cpu_before, t) = (cpu_secs(pid)?, Instant::now());
        tokio::time::sleep(Duration::from_secs(IDLE_CPU_SECS)).await;
        let cpu = (cpu_secs(pid)? - cpu_before) / t.elapsed().as_secs_f64() * 100.0;
        println!(
            "| {} | {:.1} MiB | **{per:.1} KiB** | {buf:.1} KiB | {:.1} KiB | {rate:.0} | {cpu:.1} % |",
            clients.len(),
            after as f64 / 1048576.0,
            per - buf
        );
    }
    println!();
    futures_util::future::join_all(clients.iter().map(Client::close)).await;
    first.close().await;
    let _ = child.kill().await;
    Ok(())
}
