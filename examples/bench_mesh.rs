//! End-to-end benchmarks against the baselines, all on this machine and in the same run:
//! relay throughput, request latency, idle-connection memory and handshake rate. Prints
//! Markdown tables (medians over `--runs`, with ratios to the baselines).
//!
//! ```text
//! cargo build --release --bin quicmesh --example bench_mesh
//! target/release/examples/bench_mesh --mib 1024 --runs 5
//! ```
//! `bench/run.sh` installs HAProxy if missing, runs this, and writes `docs/benchmarks.md`.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use quicmesh::config::{parse_duration, ServiceConfig};
use quicmesh::{Client, ClientConfig, IssueOptions, MeshCa, Node, NodeConfig, Role, TlsMaterial, TlsPaths};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "quicmesh end-to-end benchmarks with direct TCP, direct quinn and HAProxy baselines")]
struct Args {
    /// MiB pushed per throughput run.
    #[arg(long, default_value_t = 256)]
    mib: u64,
    /// Runs per throughput case (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Length of each latency measurement.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    duration: Duration,
    /// Idle client connections for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// The HAProxy binary; the HAProxy rows are left out if it cannot run.
    #[arg(long, default_value = "haproxy")]
    haproxy: String,
    /// `limits.max_streams_per_client` of the node in the connections section (quinn keeps
    /// state for every stream a peer may open, so this sets the idle cost).
    #[arg(long, default_value_t = 128)]
    client_streams: u32,
    /// Only these sections: throughput, latency, connections (default all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

const CHUNK: usize = 64 << 10;

/// Reads a connection to its end and answers with the byte count (8 bytes, big-endian).
async fn sink() -> Result<SocketAddr, Error> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; CHUNK];
                let mut n = 0u64;
                while let Ok(k) = s.read(&mut buf).await {
                    if k == 0 {
                        break;
                    }
                    n += k as u64;
                }
                let _ = s.write_all(&n.to_be_bytes()).await;
            });
        }
    });
    Ok(addr)
}

/// Reads a request to its end and writes it back.
async fn echo() -> Result<SocketAddr, Error> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).await.is_ok() {
                    let _ = s.write_all(&buf).await;
                }
            });
        }
    });
    Ok(addr)
}

fn payload() -> Bytes {
    Bytes::from((0..CHUNK).map(|i| i as u8).collect::<Vec<u8>>())
}

async fn tcp_push(addr: SocketAddr, total: u64) -> Result<Duration, Error> {
    let data = payload();
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    let mut sent = 0;
    while sent < total {
        s.write_all(&data).await?;
        sent += CHUNK as u64;
    }
    s.shutdown().await?;
    let mut n = [0u8; 8];
    s.read_exact(&mut n).await?;
    check_count(n, sent)?;
    Ok(start.elapsed())
}

fn check_count(n: [u8; 8], sent: u64) -> Result<(), Error> {
    let got = u64::from_be_bytes(n);
    if got != sent {
        return Err(format!("sink got {got} bytes of {sent}").into());
    }
    Ok(())
}

async fn mesh_push(client: &Client, total: u64) -> Result<Duration, Error> {
    let data = payload();
    let start = Instant::now();
    let mut s = client.open("sink").await?;
    let mut sent = 0;
    while sent < total {
        s.write_chunk(data.clone()).await?;
        sent += CHUNK as u64;
    }
    s.finish()?;
    let reply = s.read_to_end(8).await?;
    check_count(reply.try_into().map_err(|_| "short reply")?, sent)?;
    Ok(start.elapsed())
}

async fn quinn_push(conn: &quinn::Connection, total: u64) -> Result<Duration, Error> {
    let data = payload();
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut sent = 0;
    while sent < total {
        send.write_chunk(data.clone()).await?;
        sent += CHUNK as u64;
    }
    send.finish()?;
    let mut n = [0u8; 8];
    recv.read_exact(&mut n).await?;
    check_count(n, sent)?;
    Ok(start.elapsed())
}

/// A bare quinn server with the node's certificate: reads each stream to its end and answers
/// with the count. The QUIC stack's own limit, without the mesh.
async fn quinn_sink(tls: &TlsMaterial) -> Result<SocketAddr, Error> {
    let cfg = quinn::ServerConfig::with_crypto(tls.server_config()?);
    let ep = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse()?)?;
    let addr = ep.local_addr()?;
    tokio::spawn(async move {
        while let Some(inc) = ep.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let mut n = 0u64;
                        while let Ok(Some(c)) = recv.read_chunk(usize::MAX, true).await {
                            n += c.bytes.len() as u64;
                        }
                        let _ = send.write_all(&n.to_be_bytes()).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    Ok(addr)
}

struct Pki {
    dir: tempfile::TempDir,
    ca: MeshCa,
}

impl Pki {
    fn new() -> Result<Self, Error> {
        let dir = tempfile::tempdir()?;
        let ca = MeshCa::generate("bench.quicmesh", 2)?;
        ca.write(dir.path(), false)?;
        Ok(Pki { dir, ca })
    }

    fn tls(&self, role: Role, name: &str) -> Result<TlsPaths, Error> {
        let files = self
            .ca
            .issue(&IssueOptions::new(role, name))?
            .write(self.dir.path(), role, name, true)?;
        Ok(TlsPaths::new(self.dir.path().join("ca.crt"), files.cert, files.key))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A running HAProxy in TCP mode with one frontend per backend; stopped on drop.
struct Haproxy {
    child: tokio::process::Child,
    fronts: Vec<SocketAddr>,
}

fn free_tcp_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Haproxy {
    async fn start(bin: &str, backends: &[SocketAddr], dir: &Path) -> Result<Self, Error> {
        let mut cfg = String::from(
            "global\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n",
        );
        let mut fronts = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let port = free_tcp_port()?;
            cfg.push_str(&format!(
                "frontend f{i}\n  bind 127.0.0.1:{port}\n  default_backend b{i}\nbackend b{i}\n  server s{i} {b}\n"
            ));
            fronts.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg)?;
        let child = tokio::process::Command::new(bin)
            .args(["-db", "-f"])
            .arg(&path)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        for _ in 0..200 {
            if TcpStream::connect(fronts[0]).await.is_ok() {
                return Ok(Haproxy { child, fronts });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err("haproxy did not start listening".into())
    }
}

fn version(bin: &str) -> Option<String> {
    let out = std::process::Command::new(bin).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(str::to_owned)
}

#[derive(Clone, Copy)]
enum Target<'a> {
    Tcp(SocketAddr),
    Mesh(&'a Client),
}

async fn request(t: Target<'_>, body: &Bytes) -> Result<(), Error> {
    match t {
        Target::Tcp(addr) => {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            s.write_all(body).await?;
            s.shutdown().await?;
            let mut out = Vec::with_capacity(body.len());
            s.read_to_end(&mut out).await?;
            if out.len() != body.len() {
                return Err(format!("reply of {} bytes to {}", out.len(), body.len()).into());
            }
        }
        Target::Mesh(c) => {
            let out = c.call("echo", body.clone()).await?;
            if out.len() != body.len() {
                return Err(format!("reply of {} bytes to {}", out.len(), body.len()).into());
            }
        }
    }
    Ok(())
}

struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    rps: f64,
}

async fn latency(t: Target<'_>, size: usize, concurrency: usize, duration: Duration) -> Result<Latency, Error> {
    let body = Bytes::from(vec![7u8; size]);
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + duration;
    let workers = (0..concurrency).map(|_| {
        let (body, stop) = (body.clone(), stop.clone());
        async move {
            let mut samples = Vec::new();
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                if let Err(e) = request(t, &body).await {
                    stop.store(true, Ordering::Relaxed);
                    return Err::<Vec<f64>, Error>(e);
                }
                samples.push(start.elapsed().as_secs_f64() * 1e6);
            }
            Ok(samples)
        }
    });
    let started = Instant::now();
    let results = futures_util::future::join_all(workers).await;
    let took = started.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    all.sort_by(f64::total_cmp);
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Ok(Latency {
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
        rps: all.len() as f64 / took,
    })
}

fn rss_of(pid: u32) -> Result<u64, Error> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = statm.split_whitespace().nth(1).ok_or("statm")?.parse()?;
    Ok(pages * 4096)
}

fn node_binary() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("quicmesh"))
        .ok_or("no binary dir")?;
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("{} not built; run cargo build --release --bin quicmesh", bin.display()).into())
    }
}

/// Memory per idle client connection on a node process, and the rate of mTLS handshakes.
async fn connections(pki: &Pki, idle: usize, max_streams: u32) -> Result<(), Error> {
    let tls = pki.tls(Role::Node, "lone")?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = pki.dir.path().join("lone.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"lone\"\nlisten = \"127.0.0.1:{port}\"\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n[admin]\nlisten = \"off\"\n[limits]\nmax_streams_per_client = {max_streams}\n",
            tls.ca, tls.cert, tls.key
        ),
    )?;
    let mut child = tokio::process::Command::new(node_binary()?)
        .args(["node", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("no pid")?;
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
    let before = rss_of(pid)?;
    let started = Instant::now();
    let mut clients = Vec::with_capacity(idle);
    for batch in (0..idle).collect::<Vec<_>>().chunks(32) {
        let made = futures_util::future::join_all(
            batch
                .iter()
                .map(|_| Client::connect_with(cfg.clone(), client_tls.clone())),
        )
        .await;
        for c in made {
            clients.push(c?);
        }
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_of(pid)?;
    let per = (after.saturating_sub(before)) as f64 / idle as f64 / 1024.0;
    println!("### Connections (node process)\n");
    println!("| measure | value |\n|---|---|");
    println!(
        "| mTLS handshakes per second (32 at a time, client and node on the same 2 cores) | {:.0} |",
        idle as f64 / took.as_secs_f64()
    );
    println!(
        "| node RSS with 1 client / with {idle} idle clients | {:.1} MiB / {:.1} MiB |",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    println!("| memory per idle client connection on the node (limits.max_streams_per_client = {max_streams}) | **{per:.1} KiB** |\n");
    for c in clients {
        c.close().await;
    }
    first.close().await;
    let _ = child.kill().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let a = Args::parse();
    let want = |s: &str| a.only.is_empty() || a.only.iter().any(|o| o == s);
    let pki = Pki::new()?;
    let (sink_addr, echo_addr) = (sink().await?, echo().await?);
    // b serves the sink and echo backends; a is an entry node that relays to b.
    let mut bcfg = NodeConfig::new("b", pki.tls(Role::Node, "b")?);
    bcfg.listen = "127.0.0.1:0".parse()?;
    for (name, addr) in [("sink", sink_addr), ("echo", echo_addr)] {
        bcfg.services.insert(
            name.into(),
            ServiceConfig {
                backend: addr.to_string(),
                allow: Vec::new(),
            },
        );
    }
    let b = Node::builder(bcfg).start().await?;
    let mut acfg = NodeConfig::new("a", pki.tls(Role::Node, "a")?);
    acfg.listen = "127.0.0.1:0".parse()?;
    acfg.peers = vec![b.local_addr().to_string()];
    let a_node = Node::builder(acfg).start().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a_node.service_map().contains_key("echo") {
        if Instant::now() > deadline {
            return Err("nodes did not connect".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client_tls = pki.tls(Role::Client, "bench")?;
    let one_hop = Client::connect(ClientConfig::new(client_tls.clone(), vec![b.local_addr().to_string()])).await?;
    let two_hops = Client::connect(ClientConfig::new(
        client_tls.clone(),
        vec![a_node.local_addr().to_string()],
    ))
    .await?;
    let haproxy = match version(&a.haproxy) {
        Some(v) => match Haproxy::start(&a.haproxy, &[sink_addr, echo_addr], pki.dir.path()).await {
            Ok(h) => Some((h, v)),
            Err(e) => {
                eprintln!("HAProxy rows left out: {e}");
                None
            }
        },
        None => {
            eprintln!("HAProxy rows left out: {} -v did not run", a.haproxy);
            None
        }
    };
    println!(
        "## quicmesh {} on {} cores; {}\n",
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        haproxy.as_ref().map(|h| h.1.as_str()).unwrap_or("no HAProxy")
    );

    if want("throughput") {
        let total = a.mib << 20;
        let node_tls = TlsMaterial::load(&pki.tls(Role::Node, "q")?, Role::Node)?;
        let qaddr = quinn_sink(&node_tls).await?;
        let mut qep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        qep.set_default_client_config(quinn::ClientConfig::new(
            TlsMaterial::load(&client_tls, Role::Client)?.client_config()?,
        ));
        let qconn = qep.connect(qaddr, "quicmesh")?.await?;
        let mut rows: Vec<(&str, Vec<f64>)> = Vec::new();
        for run in 0..a.runs {
            let mut push = |name: &'static str, d: Duration| {
                let mibs = a.mib as f64 / d.as_secs_f64();
                match rows.iter_mut().find(|r| r.0 == name) {
                    Some(r) => r.1.push(mibs),
                    None => rows.push((name, vec![mibs])),
                }
            };
            push("direct TCP (baseline)", tcp_push(sink_addr, total).await?);
            if let Some((h, _)) = &haproxy {
                push("HAProxy TCP mode, one hop", tcp_push(h.fronts[0], total).await?);
            }
            push(
                "direct quinn stream, mTLS (the stack's limit)",
                quinn_push(&qconn, total).await?,
            );
            push("quicmesh: client → node → TCP sink", mesh_push(&one_hop, total).await?);
            push(
                "quicmesh: client → node → node → TCP sink",
                mesh_push(&two_hops, total).await?,
            );
            eprintln!("throughput run {} of {} done", run + 1, a.runs);
        }
        let base = median(rows[0].1.clone());
        let quinn = rows
            .iter()
            .find(|r| r.0.starts_with("direct quinn"))
            .map(|r| median(r.1.clone()))
            .unwrap_or(f64::NAN);
        println!(
            "### Relay throughput: one stream of {} MiB, median of {} runs\n",
            a.mib, a.runs
        );
        println!("| path | MiB/s (median) | min–max | × direct TCP | × direct quinn |\n|---|---|---|---|---|");
        for (name, v) in &rows {
            let m = median(v.clone());
            let (lo, hi) = v.iter().fold((f64::MAX, 0f64), |(l, h), x| (l.min(*x), h.max(*x)));
            println!(
                "| {name} | {m:.0} | {lo:.0}–{hi:.0} | {:.2} | {:.2} |",
                m / base,
                m / quinn
            );
        }
        println!();
        qconn.close(0u32.into(), b"");
    }

    if want("latency") {
        for size in [64usize, 4096] {
            println!(
                "### Request latency: {size} B request and reply, a new connection (TCP) or stream (quicmesh) per request, {:?} per cell\n",
                a.duration
            );
            println!("| path | concurrency | p50 µs | p99 µs | p99.9 µs | req/s | p50 × HAProxy | p99 × HAProxy |\n|---|---|---|---|---|---|---|---|");
            for c in [1usize, 16, 256] {
                let direct = latency(Target::Tcp(echo_addr), size, c, a.duration).await?;
                let ha = match &haproxy {
                    Some((h, _)) => Some(latency(Target::Tcp(h.fronts[1]), size, c, a.duration).await?),
                    None => None,
                };
                let m1 = latency(Target::Mesh(&one_hop), size, c, a.duration).await?;
                let m2 = latency(Target::Mesh(&two_hops), size, c, a.duration).await?;
                let row = |name: &str, l: &Latency| {
                    let (r50, r99) = match &ha {
                        Some(h) => (format!("{:.2}", l.p50 / h.p50), format!("{:.2}", l.p99 / h.p99)),
                        None => ("–".into(), "–".into()),
                    };
                    println!(
                        "| {name} | {c} | {:.0} | {:.0} | {:.0} | {:.0} | {r50} | {r99} |",
                        l.p50, l.p99, l.p999, l.rps
                    );
                };
                row("direct TCP", &direct);
                if let Some(h) = &ha {
                    row("HAProxy TCP, one hop", h);
                }
                row("quicmesh, one node", &m1);
                row("quicmesh, two nodes (relay)", &m2);
            }
            println!();
        }
    }

    if want("connections") {
        connections(&pki, a.idle, a.client_streams).await?;
    }
    one_hop.close().await;
    two_hops.close().await;
    if let Some((mut h, _)) = haproxy {
        let _ = h.child.kill().await;
    }
    a_node.shutdown().await;
    b.shutdown().await;
    Ok(())
}
