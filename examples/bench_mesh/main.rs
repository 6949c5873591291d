//! End-to-end benchmarks against the baselines, all on this machine and in the same run:
//! relay throughput, request latency, the sidecar path, connection scale, stream scale and
//! routing under skew.
//! Prints Markdown tables (medians over `--runs`, with ratios to the baselines).
//!
//! ```text
//! cargo build --release --bin quicmesh --example bench_mesh
//! target/release/examples/bench_mesh --mib 1024 --runs 5
//! ```
//! `bench/run.sh` installs HAProxy if missing, runs this, and writes `docs/benchmarks.md`.
#![allow(clippy::disallowed_methods)]

mod backends;
mod connections;
mod haproxy;
mod latency;
mod sidecar;
mod skew;
mod streams;
mod throughput;
mod tls;
mod util;

use std::time::{Duration, Instant};

use clap::Parser;
use quicmesh::config::{parse_duration, ServiceConfig};
use quicmesh::{Client, ClientConfig, IssueOptions, Node, NodeConfig, Role, TlsMaterial};

use haproxy::{HaTls, Haproxy};
use latency::Target;
use throughput::Path;
use util::{Error, Pki};

#[derive(Parser)]
#[command(about = "quicmesh end-to-end benchmarks with direct TCP, direct quinn and HAProxy baselines")]
struct Args {
    /// MiB pushed per throughput run.
    #[arg(long, default_value_t = 256)]
    mib: u64,
    /// Runs per throughput case (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Length of each latency, stream and skew measurement.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    duration: Duration,
    /// Idle client connections for the memory measurement: RSS is read after each count.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    idle: Vec<usize>,
    /// Peer nodes joining one node process for the per-peer memory measurement.
    #[arg(long, default_value_t = 40)]
    peers: usize,
    /// The HAProxy binary; the HAProxy rows are left out if it cannot run.
    #[arg(long, default_value = "haproxy")]
    haproxy: String,
    /// `limits.max_streams_per_client` of the node in the connections section (quinn keeps
    /// state for every stream a peer may open, so this sets the idle cost).
    #[arg(long, default_value_t = 128)]
    client_streams: u32,
    /// Requests per latency cell of the sidecar section (all workers together).
    #[arg(long, default_value_t = 40_000)]
    sidecar_requests: usize,
    /// Seconds per iperf3 run of the sidecar section.
    #[arg(long, default_value_t = 5)]
    iperf_secs: u32,
    /// Only these sections: throughput, latency, sidecar, streams, skew, connections (default all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only the throughput and sidecar paths whose names contain one of these (for profiling
    /// one path).
    #[arg(long, value_delimiter = ',')]
    paths: Vec<String>,
}

fn service(backend: std::net::SocketAddr) -> ServiceConfig {
    ServiceConfig::tcp(backend.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let a = Args::parse();
    let want = |s: &str| a.only.is_empty() || a.only.iter().any(|o| o == s);
    let pki = Pki::new()?;
    let dir = pki.dir.path();
    let (sink, echo, stream_echo) = (
        backends::sink().await?,
        backends::echo().await?,
        backends::stream_echo().await?,
    );
    // b serves the backends; a is an entry node that relays to b.
    let mut bcfg = NodeConfig::new("b", pki.tls(Role::Node, "b")?);
    bcfg.listen = "127.0.0.1:0".parse()?;
    for (name, addr) in [("sink", sink), ("echo", echo), ("stream-echo", stream_echo)] {
        bcfg.services.insert(name.into(), service(addr));
    }
    let mut warm = service(stream_echo);
    warm.preconnect = streams::WARM_POOL;
    bcfg.services.insert(streams::WARM.into(), warm);
    let b = Node::builder(bcfg)
        .handler(streams::IN_PROCESS, quicmesh::Echo)
        .start()
        .await?;
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

    // TLS over TCP, with the mesh's own CA: HAProxy's frontend and server certificates, the
    // TLS sink behind it and the bench's client.
    let mut local = IssueOptions::new(Role::Node, "tls-front");
    local.dns = vec!["localhost".into()];
    let front_tls = HaTls::new(&pki.tls_with(local.clone())?, dir, "front")?;
    local.name = "tls-back".into();
    let back_paths = pki.tls_with(local)?;
    let back_tls = HaTls::new(&back_paths, dir, "back")?;
    let tls_sink = tls::sink(tls::acceptor(&back_paths)?).await?;
    let connector = tls::connector(&client_tls)?;

    let version = haproxy::version(&a.haproxy);
    let mut ha = None;
    let (ha_tcp_sink, ha_tcp_echo, ha_tls_sink, ha_tls_echo) = (
        haproxy::front()?,
        haproxy::front()?,
        haproxy::front()?,
        haproxy::front()?,
    );
    match &version {
        Some(_) => {
            let mut body = String::new();
            haproxy::listen(&mut body, "tcp_sink", ha_tcp_sink, "", "first", &[sink.to_string()]);
            haproxy::listen(&mut body, "tcp_echo", ha_tcp_echo, "", "first", &[echo.to_string()]);
            let tls_server = format!("{tls_sink} {}", back_tls.server());
            haproxy::listen(
                &mut body,
                "tls_sink",
                ha_tls_sink,
                &front_tls.bind(),
                "first",
                &[tls_server],
            );
            haproxy::listen(
                &mut body,
                "tls_echo",
                ha_tls_echo,
                &front_tls.bind(),
                "first",
                &[echo.to_string()],
            );
            match Haproxy::start(&a.haproxy, &body, ha_tcp_sink, dir, "main").await {
                Ok(h) => ha = Some(h),
                Err(e) => eprintln!("HAProxy rows left out: {e}"),
            }
        }
        None => eprintln!("HAProxy rows left out: {} -v did not run", a.haproxy),
    }
    println!(
        "## quicmesh {} on {} cores; {}\n",
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        version.as_deref().filter(|_| ha.is_some()).unwrap_or("no HAProxy")
    );

    if want("throughput") {
        let (_qep, qconn) = quinn_pair(&pki, &client_tls, true).await?;
        const QUINN: &str = "direct quinn stream, mTLS (the stack's limit)";
        let mut paths = vec![
            ("direct TCP (baseline)", Path::Tcp(sink)),
            (
                "direct TLS 1.3 over TCP, mTLS (rustls both ends)",
                Path::Tls(tls_sink, &connector),
            ),
        ];
        if ha.is_some() {
            paths.push(("HAProxy TCP mode, one hop", Path::Tcp(ha_tcp_sink)));
            paths.push((
                "HAProxy, TLS on both legs (client → HAProxy → TLS sink)",
                Path::Tls(ha_tls_sink, &connector),
            ));
        }
        paths.push((QUINN, Path::Quinn(&qconn)));
        paths.push(("quicmesh: client → node → TCP sink", Path::Mesh(&one_hop)));
        paths.push(("quicmesh: client → node → node → TCP sink", Path::Mesh(&two_hops)));
        if !a.paths.is_empty() {
            paths.retain(|(n, _)| a.paths.iter().any(|p| n.contains(p.as_str())));
        }
        throughput::run(&paths, a.mib, a.runs, QUINN).await?;
        qconn.close(0u32.into(), b"");
    }

    if want("latency") {
        let mut targets = vec![("direct TCP", Target::Tcp(echo))];
        if ha.is_some() {
            targets.push(("HAProxy TCP, one hop", Target::Tcp(ha_tcp_echo)));
            targets.push((
                "HAProxy TLS (mTLS handshake per request), one hop",
                Target::Tls(ha_tls_echo, &connector),
            ));
        }
        targets.push(("quicmesh, one node", Target::Mesh(&one_hop, "echo")));
        targets.push(("quicmesh, two nodes (relay)", Target::Mesh(&two_hops, "echo")));
        latency::run(&targets, "HAProxy TCP, one hop", a.duration).await?;
    }

    if want("sidecar") {
        let opts = sidecar::Opts {
            haproxy: ha.as_ref().map(|_| a.haproxy.as_str()),
            requests: a.sidecar_requests,
            iperf_secs: a.iperf_secs,
            runs: a.runs,
            only: &a.paths,
        };
        sidecar::run(&pki, &front_tls, &back_tls, stream_echo, &opts).await?;
    }

    if want("streams") {
        let (_qep, qconn) = quinn_pair(&pki, &client_tls, false).await?;
        streams::run(&qconn, &one_hop, a.duration).await?;
        qconn.close(0u32.into(), b"");
    }

    if want("skew") {
        let bin = ha.as_ref().map(|_| a.haproxy.as_str());
        skew::run(&pki, bin, a.duration).await?;
    }

    if want("connections") {
        connections::run(&pki, &a.idle, a.client_streams).await?;
        connections::peers(&pki, a.peers.max(2)).await?;
    }
    one_hop.close().await;
    two_hops.close().await;
    if let Some(h) = ha {
        h.stop().await;
    }
    a_node.shutdown().await;
    b.shutdown().await;
    Ok(())
}

/// A bare quinn server (sink or echo, see [`backends::quinn_server`]) and a connection to it
/// with the bench's client certificate; the endpoint must outlive the connection.
async fn quinn_pair(
    pki: &Pki,
    client: &quicmesh::TlsPaths,
    sink: bool,
) -> Result<(quinn::Endpoint, quinn::Connection), Error> {
    let name = if sink { "quinn-sink" } else { "quinn-echo" };
    let server = backends::quinn_server(&TlsMaterial::load(&pki.tls(Role::Node, name)?, Role::Node)?, sink).await?;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(quinn::ClientConfig::new(
        TlsMaterial::load(client, Role::Client)?.client_config()?,
    ));
    let conn = ep.connect(server, "quicmesh")?.await?;
    Ok((ep, conn))
}
