//! Scenario 6: the sidecar path, every hop a process of its own, as it runs in production.
//!
//! A TCP client keeps one connection per worker and sends 64 B, reading 64 B back, through:
//! direct TCP; one HAProxy TCP hop; an HAProxy chain with TLS on both inner legs
//! (TCP → relay → TLS → relay → TLS → terminator → backend, the shape of two sidecars); and
//! quicmesh `quicmesh forward` → node A → node B → backend, and entering at node B. iperf3
//! measures bulk throughput through each of the same paths.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use quicmesh::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::haproxy::{self, HaTls, Haproxy};
use crate::util::{free_tcp_port, median, node_binary, Error, Pki};

const BODY: usize = 64;

/// What the section needs from the command line.
pub struct Opts<'a> {
    /// The HAProxy binary, if it runs.
    pub haproxy: Option<&'a str>,
    /// Requests per latency cell, across all workers.
    pub requests: usize,
    /// Seconds per iperf3 run.
    pub iperf_secs: u32,
    /// Rounds over every path (medians and ranges are reported).
    pub runs: usize,
    /// Only the paths whose names contain one of these (all if empty).
    pub only: &'a [String],
}

/// One path: where the client connects for the echo and for iperf3.
struct PathAddrs {
    name: &'static str,
    echo: SocketAddr,
    iperf: Option<SocketAddr>,
}

/// Child processes, killed when this is dropped.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Procs {
    fn spawn(&mut self, cmd: &mut Command) -> Result<(), Error> {
        self.0.push(cmd.kill_on_drop(true).stdin(Stdio::null()).spawn()?);
        Ok(())
    }
}

fn node_config(
    pki: &Pki,
    name: &str,
    port: u16,
    peers: &[u16],
    services: &[(&str, SocketAddr)],
) -> Result<std::path::PathBuf, Error> {
    let tls = pki.tls(Role::Node, name)?;
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let mut text = format!(
        "name = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\npeers = [{}]\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n[admin]\nlisten = \"off\"\n",
        peers.join(", "),
        tls.ca,
        tls.cert,
        tls.key
    );
    for (svc, addr) in services {
        text.push_str(&format!("[services.{svc}]\nbackend = \"{addr}\"\n"));
    }
    let path = pki.dir.path().join(format!("sidecar-{name}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// One 64 B exchange on `s`.
async fn ping(s: &mut TcpStream, buf: &mut [u8; BODY]) -> Result<(), Error> {
    s.write_all(&[7u8; BODY]).await?;
    s.read_exact(buf).await?;
    Ok(())
}

/// A connection through `addr` that has answered one exchange, retried until `within`.
async fn ready(addr: SocketAddr, within: Duration) -> Result<TcpStream, Error> {
    let deadline = Instant::now() + within;
    loop {
        let attempt = async {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; BODY];
            tokio::time::timeout(Duration::from_secs(1), ping(&mut s, &mut buf))
                .await
                .map_err(|_| "no echo within 1 s")??;
            Ok::<_, Error>(s)
        };
        match attempt.await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => return Err(format!("{addr} never echoed: {e}").into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// p50 and p99 (µs) and the request rate of `requests` exchanges over `concurrency`
/// persistent connections.
async fn latency(addr: SocketAddr, concurrency: usize, requests: usize) -> Result<(f64, f64, f64), Error> {
    let mut conns = Vec::new();
    for _ in 0..concurrency {
        let mut s = ready(addr, Duration::from_secs(5)).await?;
        let mut buf = [0u8; BODY];
        for _ in 0..50 {
            ping(&mut s, &mut buf).await?;
        }
        conns.push(s);
    }
    let each = requests.max(1).div_ceil(concurrency);
    let started = Instant::now();
    let workers = conns.into_iter().map(|mut s| {
        tokio::spawn(async move {
            let mut buf = [0u8; BODY];
            let mut samples = Vec::with_capacity(each);
            for _ in 0..each {
                let t = Instant::now();
                ping(&mut s, &mut buf).await?;
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok::<_, Error>(samples)
        })
    });
    let mut all = Vec::new();
    for w in futures_util::future::join_all(workers).await {
        all.extend(w??);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Ok((q(0.5), q(0.99), all.len() as f64 / secs))
}

/// iperf3's received rate through `addr`, Gbit/s.
async fn iperf(addr: SocketAddr, secs: u32) -> Result<f64, Error> {
    let out = Command::new("iperf3")
        .args(["-c", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", &secs.to_string(), "-J"])
        .stdin(Stdio::null())
        .output()
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "iperf3 through {addr} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3 through {addr}: {err}").into());
    }
    v.pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .map(|b| b / 1e9)
        .ok_or_else(|| format!("iperf3 through {addr}: no end.sum_received in its JSON").into())
}

/// An HAProxy chain to `backend` with TLS on both inner legs: its entry, and the `listen`
/// sections of its three hops (for one process, or one each).
fn chain(name: &str, front: &HaTls, back: &HaTls, backend: SocketAddr) -> Result<(SocketAddr, [String; 3]), Error> {
    let (entry, relay, terminator) = (haproxy::front()?, haproxy::front()?, haproxy::front()?);
    let tls_to = |a: SocketAddr| format!("{a} {}", back.server());
    let mut hops = [String::new(), String::new(), String::new()];
    let [c0, c1, c2] = &mut hops;
    haproxy::listen(c0, &format!("{name}_entry"), entry, "", "first", &[tls_to(relay)]);
    haproxy::listen(
        c1,
        &format!("{name}_relay"),
        relay,
        &front.bind(),
        "first",
        &[tls_to(terminator)],
    );
    haproxy::listen(
        c2,
        &format!("{name}_term"),
        terminator,
        &front.bind(),
        "first",
        &[backend.to_string()],
    );
    Ok((entry, hops))
}

/// The echo and iperf3 entries of one path.
type Entries = (SocketAddr, Option<SocketAddr>);

/// Starts nodes A and B (B serves `services`) and forwarders into each; returns the
/// entries of the two-node path and of the one-node path. `threads` is passed to the nodes
/// as `--threads` (forwarders run on their default, one thread).
fn mesh(
    procs: &mut Procs,
    pki: &Pki,
    tag: &str,
    services: &[(&str, SocketAddr)],
    threads: Option<u16>,
) -> Result<(Entries, Entries), Error> {
    let bin = node_binary()?;
    let threads: Vec<String> = threads
        .map(|t| vec!["--threads".into(), t.to_string()])
        .unwrap_or_default();
    let udp = || -> Result<u16, Error> { Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port()) };
    let (pa, pb) = (udp()?, udp()?);
    for (name, port, peers, svcs) in [("b", pb, vec![], services), ("a", pa, vec![pb], &[][..])] {
        procs.spawn(
            Command::new(&bin)
                .args(&threads)
                .args(["node", "--config"])
                .arg(node_config(pki, &format!("sc-{tag}{name}"), port, &peers, svcs)?)
                .env("RUST_LOG", "warn"),
        )?;
    }
    let client = pki.tls(Role::Client, "sidecar")?;
    let has_iperf = services.iter().any(|(s, _)| *s == "iperf");
    let mut forward = |entry: u16, service: &str| -> Result<SocketAddr, Error> {
        let port = free_tcp_port()?;
        let listen = format!("127.0.0.1:{port}");
        procs.spawn(
            Command::new(&bin)
                .args(["forward", &listen, service, "--entry", &format!("127.0.0.1:{entry}")])
                .arg("--ca")
                .arg(&client.ca)
                .arg("--cert")
                .arg(&client.cert)
                .arg("--cert-key")
                .arg(&client.key)
                .env("RUST_LOG", "warn")
                .stderr(Stdio::null()),
        )?;
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    };
    let mut entries = |node: u16| -> Result<Entries, Error> {
        Ok((
            forward(node, "echo")?,
            if has_iperf { Some(forward(node, "iperf")?) } else { None },
        ))
    };
    Ok((entries(pa)?, entries(pb)?))
}

fn range(v: &[f64]) -> String {
    let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
    if v.len() < 2 {
        String::new()
    } else {
        format!(" ({lo:.0}–{hi:.0})")
    }
}

/// Runs the section and prints its table.
pub async fn run(pki: &Pki, front: &HaTls, back: &HaTls, echo: SocketAddr, o: &Opts<'_>) -> Result<(), Error> {
    let mut procs = Procs::default();
    let iperf_server = if Command::new("iperf3").arg("-v").output().await.is_ok() {
        let port = free_tcp_port()?;
        procs.spawn(
            Command::new("iperf3")
                .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null()),
        )?;
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    } else {
        eprintln!("iperf3 is not installed: the sidecar table has no throughput column");
        None
    };
    let mut services = vec![("echo", echo)];
    if let Some(i) = iperf_server {
        services.push(("iperf", i));
    }
    let (mesh_two, mesh_one) = mesh(&mut procs, pki, "", &services, None)?;
    let (single_two, single_one) = mesh(&mut procs, pki, "t1", &services, Some(1))?;

    let mut paths = vec![PathAddrs {
        name: "direct TCP",
        echo,
        iperf: iperf_server,
    }];
    let mut _ha = Vec::new();
    if let Some(ha_bin) = o.haproxy {
        // One process for the single hop and the whole chain, as HAProxy is usually run; and
        // the chain again with a process per hop, as the mesh runs (one host per hop).
        let mut cfg = String::new();
        let mut hops = [String::new(), String::new(), String::new()];
        let one = haproxy::front()?;
        haproxy::listen(&mut cfg, "sc_echo", one, "", "first", &[echo.to_string()]);
        // One chain's hops all go into `cfg`; the other's each into a process of its own.
        let mut both = |name: &str, to: SocketAddr| -> Result<(SocketAddr, SocketAddr), Error> {
            let (in_one, sections) = chain(&format!("sc_chain_{name}"), front, back, to)?;
            cfg.push_str(&sections.concat());
            let (per_hop, sections) = chain(&format!("sc_hops_{name}"), front, back, to)?;
            for (h, s) in hops.iter_mut().zip(sections) {
                h.push_str(&s);
            }
            Ok((in_one, per_hop))
        };
        let (chain_echo, hops_echo) = both("echo", echo)?;
        let (chain_iperf, hops_iperf) = match iperf_server {
            Some(i) => {
                let (c, h) = both("iperf", i)?;
                (Some(c), Some(h))
            }
            None => (None, None),
        };
        let one_iperf = match iperf_server {
            Some(i) => {
                let f = haproxy::front()?;
                haproxy::listen(&mut cfg, "sc_iperf", f, "", "first", &[i.to_string()]);
                Some(f)
            }
            None => None,
        };
        _ha.push(Haproxy::start(ha_bin, &cfg, one, pki.dir.path(), "sidecar").await?);
        for (k, h) in hops.iter().enumerate() {
            let probe = haproxy::first_bind(h).ok_or("an HAProxy hop with no listener")?;
            _ha.push(Haproxy::start(ha_bin, h, probe, pki.dir.path(), &format!("sidecar-hop{k}")).await?);
        }
        paths.push(PathAddrs {
            name: "HAProxy TCP, one hop",
            echo: one,
            iperf: one_iperf,
        });
        paths.push(PathAddrs {
            name: CHAIN,
            echo: chain_echo,
            iperf: chain_iperf,
        });
        paths.push(PathAddrs {
            name: HOPS,
            echo: hops_echo,
            iperf: hops_iperf,
        });
    }
    for (name, (echo, iperf)) in [
        (TWO_NODES, mesh_two),
        (ONE_NODE, mesh_one),
        (TWO_NODES_T1, single_two),
        (ONE_NODE_T1, single_one),
    ] {
        paths.push(PathAddrs { name, echo, iperf });
    }
    if !o.only.is_empty() {
        paths.retain(|p| o.only.iter().any(|n| p.name.contains(n.as_str())));
    }
    // The nodes have met and the forwarders are connected once every path echoes.
    for p in &paths {
        ready(p.echo, Duration::from_secs(30)).await?;
    }

    // Rounds over every path, so drift on this shared machine spreads over all of them.
    let mut got: Vec<[Vec<f64>; 4]> = paths.iter().map(|_| Default::default()).collect();
    for _ in 0..o.runs.max(1) {
        for (p, g) in paths.iter().zip(got.iter_mut()) {
            let (p50, p99, _) = latency(p.echo, 1, o.requests).await?;
            let (_, _, rps) = latency(p.echo, 16, o.requests).await?;
            g[0].push(p50);
            g[1].push(p99);
            g[2].push(rps);
            if let Some(i) = p.iperf {
                g[3].push(iperf(i, o.iperf_secs).await?);
            }
        }
    }
    print_table(&paths, &got, o);
    Ok(())
}

const CHAIN: &str = "HAProxy chain, TLS on both inner legs";
const TWO_NODES: &str = "quicmesh: forward → node A → node B";
const ONE_NODE: &str = "quicmesh: forward → node B";
const TWO_NODES_T1: &str = "quicmesh, nodes with --threads 1 too: forward → node A → node B";
const ONE_NODE_T1: &str = "quicmesh, nodes with --threads 1 too: forward → node B";
const HOPS: &str = "HAProxy chain, a process per hop";

fn print_table(paths: &[PathAddrs], got: &[[Vec<f64>; 4]], o: &Opts<'_>) {
    println!(
        "### The sidecar path: persistent TCP connections, 64 B each way ({} requests per cell), iperf3 {} s; every hop its own process; medians of {} rounds (range)\n",
        o.requests, o.iperf_secs, o.runs
    );
    println!("| path | c=1 p50 µs | c=1 p99 µs | c=16 req/s | iperf3 Gbit/s |\n|---|---|---|---|---|");
    let med = |v: &Vec<f64>| if v.is_empty() { f64::NAN } else { median(v.clone()) };
    for (p, g) in paths.iter().zip(got) {
        let gbit = if g[3].is_empty() {
            "–".to_string()
        } else {
            let (lo, hi) = g[3]
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
            format!("{:.2} ({lo:.2}–{hi:.2})", med(&g[3]))
        };
        println!(
            "| {} | {:.0}{} | {:.0}{} | {:.0}{} | {gbit} |",
            p.name,
            med(&g[0]),
            range(&g[0]),
            med(&g[1]),
            range(&g[1]),
            med(&g[2]),
            range(&g[2]),
        );
    }
    let find = |n: &str| paths.iter().position(|p| p.name == n).map(|i| &got[i]);
    let ratio = |a: &str, b: &str, k: usize| match (find(a), find(b)) {
        (Some(x), Some(y)) if !x[k].is_empty() && !y[k].is_empty() => format!("{:.2}×", med(&x[k]) / med(&y[k])),
        _ => "–".into(),
    };
    for (label, two, one) in [
        (
            "the default threads (forward 1, nodes one per CPU)",
            TWO_NODES,
            ONE_NODE,
        ),
        ("--threads 1 on the nodes too", TWO_NODES_T1, ONE_NODE_T1),
    ] {
        println!(
            "\nAgainst the targets, quicmesh with {label}: two nodes vs the HAProxy chain: c=1 p50 {} (target ≤ 1.10×), c=16 req/s {} (≥ 1.0×), iperf3 {} (≥ 1.0×); vs the chain with a process per hop: {}, {}, {}. One node vs one HAProxy TCP hop: c=1 p50 {} (≤ 1.25×). The relay hop keeps {} of one node's throughput (target ≥ 0.80×).",
            ratio(two, CHAIN, 0),
            ratio(two, CHAIN, 2),
            ratio(two, CHAIN, 3),
            ratio(two, HOPS, 0),
            ratio(two, HOPS, 2),
            ratio(two, HOPS, 3),
            ratio(one, "HAProxy TCP, one hop", 0),
            ratio(two, one, 3),
        );
    }
    println!();
}
