//! Idle real node processes on loopback: connections per node, memory and CPU of the whole
//! idle mesh, for a full mesh and for the overlay's caps, measured in the same run.
//!
//! ## Usage
//! ```text
//! cargo build --release && cargo run --release --example bench_idle                  # N = 40, 80
//! cargo run --release --example bench_idle -- --nodes 40 --caps 1000,32,8 --secs 10
//! ```
//! Each mesh: N `quicmesh node` processes (the release binary next to this example, or
//! `$QUICMESH_BIN`), every one joining through the first; once every node lists N members
//! Alive and 5 s more have passed, CPU (user + system, from `/proc`) is summed over all
//! processes for `--secs`, and RSS and connections per node are read at the end. A cap of at
//! least N − 1 is a full mesh; ratios are against it.

#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quicmesh::gossip::Status;
use quicmesh::protocol::StatusReport;
use quicmesh::{IssueOptions, MeshCa, Role, Table};

type Error = Box<dyn std::error::Error>;

struct Args {
    nodes: Vec<usize>,
    caps: Vec<usize>,
    secs: u64,
}

fn parse_list(v: Option<String>, flag: &str) -> Result<Vec<usize>, Error> {
    let v = v.ok_or_else(|| format!("{flag} takes a comma-separated list of numbers"))?;
    v.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .map_err(|_| format!("{flag}: {x:?} is not a number").into())
        })
        .collect()
}

fn args() -> Result<Args, Error> {
    let mut a = Args {
        nodes: vec![40, 80],
        caps: vec![10_000, 32, 8],
        secs: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--nodes" => a.nodes = parse_list(it.next(), "--nodes")?,
            "--caps" => a.caps = parse_list(it.next(), "--caps")?,
            "--secs" => {
                a.secs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--secs takes a number of seconds")?
            }
            other => return Err(format!("unknown argument {other:?}; use --nodes, --caps, --secs").into()),
        }
    }
    Ok(a)
}

fn binary() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("QUICMESH_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("quicmesh"))
        .ok_or("cannot place the quicmesh binary")?;
    if !p.exists() {
        return Err(format!(
            "{} is missing: run `cargo build --release` first, or set QUICMESH_BIN",
            p.display()
        )
        .into());
    }
    Ok(p)
}

fn free_port(udp: bool) -> Result<u16, Error> {
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
    })
}

fn status(admin: u16) -> Result<StatusReport, Error> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /status HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let json = body.split_once("\r\n\r\n").map(|(_, b)| b).ok_or("no HTTP body")?;
    Ok(serde_json::from_str(json)?)
}

/// CPU time of `pid` so far, in clock ticks (user + system).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

struct Mesh {
    children: Vec<Child>,
    admins: Vec<u16>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(bin: &Path, dir: &Path, ca: &MeshCa, n: usize, cap: usize) -> Result<Mesh, Error> {
    let mut mesh = Mesh {
        children: Vec::new(),
        admins: Vec::new(),
    };
    let seed = format!("127.0.0.1:{}", free_port(true)?);
    for i in 0..n {
        let name = format!("idle{i:03}");
        let cert = dir.join(format!("node-{name}.crt"));
        if !cert.exists() {
            ca.issue(&IssueOptions::new(Role::Node, &name))?
                .write(dir, Role::Node, &name, false)?;
        }
        let admin = free_port(false)?;
        let listen = if i == 0 {
            seed.clone()
        } else {
            format!("127.0.0.1:{}", free_port(true)?)
        };
        let peers = if i == 0 { String::new() } else { format!("{seed:?}") };
        let config = dir.join(format!("{name}-{cap}.toml"));
        std::fs::write(
            &config,
            format!(
                "name = {name:?}\nlisten = {listen:?}\npeers = [{peers}]\n\
                 [tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\
                 [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
                 [limits]\nmax_peer_connections = {cap}\n",
                ca = dir.join("ca.crt"),
                key = dir.join(format!("node-{name}.key")),
            ),
        )?;
        let child = Command::new(bin)
            .args(["--threads", "1", "node", "--config"])
            .arg(&config)
            .env("RUST_LOG", "quicmesh=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        mesh.children.push(child);
        mesh.admins.push(admin);
    }
    Ok(mesh)
}

fn settled(mesh: &Mesh, n: usize) -> bool {
    mesh.admins
        .iter()
        .all(|&a| status(a).is_ok_and(|s| s.members.iter().filter(|m| m.member.status == Status::Alive).count() == n))
}

struct Row {
    n: usize,
    cap: usize,
    links: (usize, f64, usize),
    rss_mib: f64,
    cpu_cores: f64,
}

fn measure(bin: &Path, dir: &Path, ca: &MeshCa, n: usize, cap: usize, secs: u64) -> Result<Row, Error> {
    let mesh = start(bin, dir, ca, n, cap)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !settled(&mesh, n) {
        if Instant::now() > deadline {
            return Err(format!("{n} nodes with cap {cap} did not all see each other within 120 s").into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(5));
    let pids: Vec<u32> = mesh.children.iter().map(Child::id).collect();
    let before: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let ticks = pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>() - before;
    let cpu_cores = ticks as f64 / 100.0 / t0.elapsed().as_secs_f64();
    let rss_mib = pids.iter().map(|&p| rss_kib(p)).sum::<u64>() as f64 / 1024.0;
    let counts: Vec<usize> = mesh
        .admins
        .iter()
        .map(|&a| status(a).map(|s| s.members.iter().filter(|m| m.connected).count().saturating_sub(1)))
        .collect::<Result<_, _>>()?;
    let links = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64,
        counts.iter().copied().max().unwrap_or(0),
    );
    Ok(Row {
        n,
        cap,
        links,
        rss_mib,
        cpu_cores,
    })
}

fn main() -> Result<(), Error> {
    let a = args()?;
    let bin = binary()?;
    let dir = tempfile::tempdir()?;
    let ca = MeshCa::generate("idle.bench", 2)?;
    ca.write(dir.path(), false)?;
    let mut t = Table::new([
        "nodes",
        "max_peer_connections",
        "links per node min/mean/max",
        "RSS, all nodes (MiB)",
        "CPU, all nodes (cores)",
        "CPU per node (% of a core)",
        "CPU vs full mesh",
    ]);
    for &n in &a.nodes {
        let mut full: Option<f64> = None;
        for &cap in &a.caps {
            let r = measure(&bin, dir.path(), &ca, n, cap, a.secs)?;
            let label = if r.cap + 1 >= r.n {
                format!("{} (full mesh)", r.cap)
            } else {
                r.cap.to_string()
            };
            if r.cap + 1 >= r.n && full.is_none() {
                full = Some(r.cpu_cores);
            }
            t.row([
                r.n.to_string(),
                label,
                format!("{}/{:.1}/{}", r.links.0, r.links.1, r.links.2),
                format!("{:.0}", r.rss_mib),
                format!("{:.2}", r.cpu_cores),
                format!("{:.1}", r.cpu_cores * 100.0 / r.n as f64),
                full.map(|f| format!("{:.2}×", r.cpu_cores / f))
                    .unwrap_or_else(|| "-".into()),
            ]);
            eprintln!("measured {n} nodes, cap {cap}");
        }
    }
    print!("{}", t.render());
    Ok(())
}
