//! Connection migration: a client or node whose local address changes in the middle of a
//! long transfer keeps its QUIC connection and its open stream. On loopback (a new port),
//! and across a veth pair into a network namespace with a secondary address (a new IP),
//! run when root and `ip netns` are available.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::*;
use quicmesh::{Client, ClientConfig, Echo, Node, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOTAL: usize = 16 << 20;
const CHUNK: usize = 64 << 10;

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 12)) as u8
}

/// Streams `TOTAL` patterned bytes to `service` and reads the echo concurrently; calls
/// `midway` once half has been written. Returns what came back.
async fn transfer(client: &Client, service: &str, midway: impl FnOnce()) -> Vec<u8> {
    let stream = client.open(service).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let write = async move {
        let mut midway = Some(midway);
        let mut sent = 0;
        while sent < TOTAL {
            let chunk: Vec<u8> = (sent..sent + CHUNK).map(pattern).collect();
            wr.write_all(&chunk).await.unwrap();
            sent += CHUNK;
            if sent >= TOTAL / 2 {
                if let Some(f) = midway.take() {
                    f();
                }
            }
        }
        wr.shutdown().await.unwrap();
    };
    let read = async move {
        let mut out = Vec::with_capacity(TOTAL);
        rd.read_to_end(&mut out).await.unwrap();
        out
    };
    let ((), out) = within(Duration::from_secs(60), "transfer", async { tokio::join!(write, read) }).await;
    out
}

fn check(out: &[u8]) {
    assert_eq!(out.len(), TOTAL, "bytes lost or added");
    if let Some(i) = (0..TOTAL).find(|&i| out[i] != pattern(i)) {
        panic!("byte {i} out of order or corrupted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_changes_port_mid_transfer_keeps_its_stream() {
    init_logs();
    let pki = Pki::new();
    let node = Node::builder(pki.node_config("a"))
        .handler("echo", Echo)
        .start()
        .await
        .unwrap();
    let client = pki.client("mover", &node).await;
    let before = client.local_addr().unwrap();
    let out = transfer(&client, "echo", || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.rebind(socket).unwrap();
    })
    .await;
    check(&out);
    let after = client.local_addr().unwrap();
    assert_ne!(before.port(), after.port());
    eventually(Duration::from_secs(5), "the node counts the migration", || {
        node.stats().migrations == 1
    })
    .await;
    let s = node.stats();
    // One connection and one stream throughout: nothing was re-established or retried.
    assert_eq!((s.connections, s.streams_accepted, s.handshake_failures), (1, 1, 0));
    client.close().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_changes_port_mid_relay_keeps_its_peer_connection_and_the_stream() {
    init_logs();
    let pki = Pki::new();
    // b is the entry; a serves echo and dialled b, so a is the QUIC client on that link
    // (only the dialling side of a QUIC connection can migrate).
    let b = Node::builder(pki.node_config("b")).start().await.unwrap();
    let mut cfg = pki.node_config("a");
    cfg.peers = vec![b.local_addr().to_string()];
    let a = Node::builder(cfg).handler("echo", Echo).start().await.unwrap();
    eventually(Duration::from_secs(10), "b sees echo on a", || {
        sees_all(&[&b], &["echo"])
    })
    .await;
    let client = pki.client("web", &b).await;
    let out = transfer(&client, "echo", || {
        a.rebind(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
    })
    .await;
    check(&out);
    eventually(Duration::from_secs(5), "b counts a's migration", || {
        b.stats().migrations == 1
    })
    .await;
    assert_eq!(b.stats().relayed, 1);
    assert!(b.peers().iter().any(|p| p.name == "a" && p.connected));
    assert_eq!(a.stats().peer_reconnects, 0);
    client.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A network namespace joined to this one by a veth pair; removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn ip(args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip").args(args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `host` (with `secondary`) on this side, `inner` inside the namespace, all /24.
    fn new(name: &str, host: &str, secondary: &str, inner: &str) -> Result<Self, String> {
        netns_usable()?;
        let _ = Self::ip(&["netns", "del", name]);
        Self::ip(&["netns", "add", name])?;
        let ns = Netns { name: name.into() };
        let (h, n) = (format!("{name}h"), format!("{name}n"));
        Self::ip(&["link", "add", &h, "type", "veth", "peer", "name", &n])?;
        Self::ip(&["link", "set", &n, "netns", name])?;
        Self::ip(&["addr", "add", &format!("{host}/24"), "dev", &h])?;
        Self::ip(&["addr", "add", &format!("{secondary}/24"), "dev", &h])?;
        Self::ip(&["link", "set", &h, "up"])?;
        Self::ip(&["-n", name, "addr", "add", &format!("{inner}/24"), "dev", &n])?;
        Self::ip(&["-n", name, "link", "set", &n, "up"])?;
        Self::ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Self::ip(&["link", "del", &format!("{}h", self.name)]);
        let _ = Self::ip(&["netns", "del", &self.name]);
    }
}

/// A streaming TCP echo backend on `ip`.
async fn echo_backend(ip: &str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_ip_address_changes_keeps_its_stream_across_a_veth_link() {
    init_logs();
    let id = std::process::id() % 200 + 20;
    let name = format!("qmmig{id}");
    let (host, secondary, inner) = (
        format!("10.213.{id}.1"),
        format!("10.213.{id}.3"),
        format!("10.213.{id}.2"),
    );
    let ns = match Netns::new(&name, &host, &secondary, &inner) {
        Ok(ns) => ns,
        Err(why) => {
            println!("SKIPPED: needs root and ip netns ({why})");
            return;
        }
    };
    let pki = Pki::new();
    let backend = echo_backend(&host).await;
    let tls = pki.tls(Role::Node, "inside");
    let text = format!(
        "name = \"inside\"\nlisten = \"{inner}:7400\"\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n[services.echo]\nbackend = \"{backend}\"\n[admin]\nlisten = \"{inner}:7480\"\n",
        tls.ca, tls.cert, tls.key,
    );
    let config = pki.path().join("inside.toml");
    std::fs::write(&config, text).unwrap();
    let log_path = pki.path().join("inside.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut node = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(bin())
        .args(["node", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let admin = format!("{inner}:7480");
    let mut ready = false;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(&admin).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        ready,
        "node in the namespace did not start: {}",
        std::fs::read_to_string(&log_path).unwrap()
    );

    let mut cfg = ClientConfig::new(pki.tls(Role::Client, "roamer"), vec![format!("{inner}:7400")]);
    cfg.bind = Some(format!("{host}:0").parse().unwrap());
    let client = Client::connect(cfg).await.unwrap();
    assert_eq!(client.local_addr().unwrap().ip().to_string(), host);
    let out = transfer(&client, "echo", || {
        client
            .rebind(UdpSocket::bind((secondary.as_str(), 0)).unwrap())
            .unwrap();
    })
    .await;
    check(&out);
    assert_eq!(client.local_addr().unwrap().ip().to_string(), secondary);
    let mut metrics = String::new();
    for _ in 0..500 {
        metrics = http(admin.as_str(), "GET", "/metrics").await.1;
        if metrics.contains("quicmesh_connection_migrations_total 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        metrics.contains("quicmesh_connection_migrations_total 1"),
        "{metrics}\n{log}"
    );
    assert!(metrics.contains("quicmesh_connections 1"), "{metrics}");
    assert!(metrics.contains("quicmesh_streams_accepted_total 1"), "{metrics}");
    assert!(
        log.contains("connection migrated") && log.contains(&secondary),
        "the node's log names no migration to {secondary}:\n{log}"
    );
    client.close().await;
    let _ = node.kill().await;
    drop(ns);
}
