//! `quicmesh demo`: the whole mesh on one machine, with nothing to set up.
//!
//! Makes a throwaway CA and certificates in a temporary directory, starts a DNS server for a
//! demo zone, a TCP backend and three nodes on loopback with services spread across them.
//! The nodes know only an SRV name: each publishes its record as it starts (as a Kubernetes
//! StatefulSet behind a headless Service would) and finds the others through DNS. The demo
//! waits for the mesh to form, finds an entry node through SRV like a client would, drives
//! calls through every node, and prints who served what and how fast.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use quicmesh::config::ServiceConfig;
use quicmesh::discovery::{Zone, ZoneServer};
use quicmesh::{
    request_handler, CallError, Client, ClientConfig, Echo, IssueOptions, MeshCa, Node, NodeConfig, Role, Table,
    TlsPaths,
};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Calls per (entry node, service) pair. Default 50.
    pub calls: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { calls: 50 }
    }
}

/// Errors of the demo (each is a real failure of the mesh or the machine).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Setting up files failed.
    #[error("demo setup: {0}")]
    Setup(String),
    /// A node failed to start.
    #[error(transparent)]
    Node(#[from] quicmesh::NodeError),
    /// The client failed to connect.
    #[error(transparent)]
    Client(#[from] quicmesh::ClientError),
    /// The mesh did not form in time.
    #[error("mesh did not form within {0:?}: {1}")]
    MeshTimeout(Duration, String),
}

const NODES: [&str; 3] = ["alpha", "bravo", "charlie"];
const TRUST_DOMAIN: &str = "demo.quicmesh";
/// The demo's DNS zone (`.test` is reserved for exactly this, RFC 6761).
const ZONE: &str = "quicmesh.test";
/// The SRV name every node publishes itself under and discovers the others by.
const SRV_NAME: &str = "_quicmesh._udp.quicmesh.test";
/// TTL of the demo zone's records, seconds.
const TTL: u32 = 5;

fn setup(e: impl std::fmt::Display) -> DemoError {
    DemoError::Setup(e.to_string())
}

/// A TCP backend that upper-cases what it reads (the `upper` service on bravo).
async fn start_upper_backend() -> Result<String, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(setup)?;
    let addr = listener.local_addr().map_err(setup)?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if sock.read_to_end(&mut buf).await.is_ok() {
                    buf.make_ascii_uppercase();
                    let _ = sock.write_all(&buf).await;
                    let _ = sock.shutdown().await;
                }
            });
        }
    });
    Ok(addr.to_string())
}

fn tls_paths(dir: &Path, role: Role, name: &str) -> TlsPaths {
    TlsPaths::new(
        dir.join("ca.crt"),
        dir.join(format!("{role}-{name}.crt")),
        dir.join(format!("{role}-{name}.key")),
    )
}

/// SRV priority of each node: alpha and bravo are the preferred entry nodes, charlie the
/// fallback (weights 3:1 within the first tier).
fn srv_rank(name: &str) -> (u16, u16) {
    match name {
        "alpha" => (10, 3),
        "bravo" => (10, 1),
        _ => (20, 1),
    }
}

async fn start_nodes(dir: &Path, upper_backend: String, dns: &ZoneServer) -> Result<Vec<Node>, DemoError> {
    let mut nodes: Vec<Node> = Vec::new();
    for name in NODES {
        let mut cfg = NodeConfig::new(name, tls_paths(dir, Role::Node, name));
        cfg.listen = "127.0.0.1:0".parse().map_err(setup)?;
        // No peers: each node finds the others through the SRV records, its own included.
        cfg.discovery = vec![format!("srv:{SRV_NAME}")];
        cfg.dns.servers = vec![dns.addr().to_string()];
        cfg.admin.listen = "127.0.0.1:0".into();
        let mut b = Node::builder(cfg.clone());
        match name {
            "alpha" => b = b.handler("echo", Echo),
            "bravo" => {
                cfg.services
                    .insert("upper".into(), ServiceConfig::tcp(upper_backend.clone()));
                b = Node::builder(cfg);
            }
            _ => {
                b = b.handler("echo", Echo).handler(
                    "whoami",
                    request_handler(1024, |_req: Bytes, ctx| async move {
                        Ok(Bytes::from(format!(
                            "{} served {} for {}",
                            ctx.node, ctx.service, ctx.caller
                        )))
                    }),
                )
            }
        }
        let node = b.start().await?;
        let (priority, weight) = srv_rank(name);
        dns.zone()
            .add_srv(SRV_NAME, priority, weight, &format!("{name}.{ZONE}"), node.local_addr());
        nodes.push(node);
    }
    Ok(nodes)
}

async fn wait_for_mesh(nodes: &[Node]) -> Result<(), DemoError> {
    let limit = Duration::from_secs(10);
    let deadline = Instant::now() + limit;
    let expected = ["echo", "upper", "whoami"];
    loop {
        let mut missing: Vec<String> = nodes
            .iter()
            .flat_map(|n| {
                let map = n.service_map();
                expected
                    .iter()
                    .filter(move |s| !map.contains_key(**s))
                    .map(move |s| format!("{} does not see {s}", n.name()))
            })
            .collect();
        for n in nodes {
            let up = n.peers().iter().filter(|p| p.connected).count();
            if up + 1 < nodes.len() {
                missing.push(format!("{} is connected to {up} peers", n.name()));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DemoError::MeshTimeout(limit, missing.join(", ")));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A demo mesh that has run its calls and is still up.
pub struct Demo {
    /// What the demo did and measured, as text tables.
    pub report: String,
    nodes: Vec<Node>,
    dns: ZoneServer,
    /// Holds the certificates; removed on drop.
    dir: tempfile::TempDir,
}

/// Starts the demo mesh, drives the calls and returns the running mesh with its report.
pub async fn run(opts: DemoOptions) -> Result<Demo, DemoError> {
    let dir = tempfile::tempdir().map_err(setup)?;
    let ca = MeshCa::generate(TRUST_DOMAIN, 1).map_err(setup)?;
    ca.write(dir.path(), false).map_err(setup)?;
    for name in NODES {
        ca.issue(&IssueOptions::new(Role::Node, name))
            .and_then(|c| c.write(dir.path(), Role::Node, name, false))
            .map_err(setup)?;
    }
    ca.issue(&IssueOptions::new(Role::Client, "demo"))
        .and_then(|c| c.write(dir.path(), Role::Client, "demo", false))
        .map_err(setup)?;
    let mut out = format!(
        "quicmesh demo: CA for trust domain {TRUST_DOMAIN:?} and certificates in {}\n",
        dir.path().display()
    );

    let zone = Zone::new(ZONE, TTL);
    let dns = ZoneServer::start("127.0.0.1:0".parse().map_err(setup)?, zone)
        .await
        .map_err(setup)?;
    out.push_str(&format!(
        "DNS server for zone {ZONE} on {} (UDP and TCP); nodes know only srv:{SRV_NAME}\n",
        dns.addr()
    ));
    let upper = start_upper_backend().await?;
    let started = Instant::now();
    let nodes = start_nodes(dir.path(), upper.clone(), &dns).await?;
    wait_for_mesh(&nodes).await?;
    out.push_str(&format!("mesh formed through DNS SRV in {}\n\n", ms(started.elapsed())));

    let mut t = Table::new(["SRV record", "priority", "weight", "target", "port"]);
    for r in dns.zone().srv(SRV_NAME) {
        t.row([
            format!("{SRV_NAME}. {TTL}"),
            r.priority.to_string(),
            r.weight.to_string(),
            r.target,
            r.port.to_string(),
        ]);
    }
    out.push_str(&t.render());
    out.push('\n');

    // A client that knows only the SRV name picks its entry node by priority, then weight.
    let mut srv_client = ClientConfig::new(tls_paths(dir.path(), Role::Client, "demo"), Vec::new());
    srv_client.discovery = vec![format!("srv:{SRV_NAME}")];
    srv_client.dns.servers = vec![dns.addr().to_string()];
    let mut picked: BTreeMap<String, usize> = BTreeMap::new();
    let mut clients = Vec::new();
    for _ in 0..20 {
        let client = Client::connect(srv_client.clone()).await?;
        if let Some(entry) = client.entry_addr().await {
            let name = nodes
                .iter()
                .find(|n| n.local_addr() == entry)
                .map_or_else(|| entry.to_string(), |n| n.name().to_owned());
            *picked.entry(name).or_default() += 1;
        }
        clients.push(client);
    }
    // Closing waits for the peer to acknowledge; do it for all at once.
    futures_util::future::join_all(clients.iter().map(Client::close)).await;
    let picked: Vec<String> = picked.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    out.push_str(&format!(
        "20 clients that know only srv:{SRV_NAME} entered through: {} (alpha:bravo weighs 3:1; charlie is priority 20, the fallback)\n\n",
        picked.join(" ")
    ));

    let mut t = Table::new(["node", "listen", "services here", "peers", "last SRV answer (TTL 5s)"]);
    for n in &nodes {
        let dns_answer = n
            .discovery()
            .iter()
            .map(|w| {
                let age = w.answer_age.map(|a| format!("{} ago", ms(a))).unwrap_or_default();
                match &w.error {
                    None => format!("{} endpoints, {age}", w.endpoints.len()),
                    Some(e) => format!("{} endpoints, stale: {e}", w.endpoints.len()),
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        let peers: Vec<String> = n
            .peers()
            .iter()
            .map(|p| format!("{} ({})", p.name, p.rtt.map(ms).unwrap_or_else(|| "down".into())))
            .collect();
        let mut here = n.local_services();
        if n.name() == "bravo" {
            here = here.into_iter().map(|s| format!("{s} -> tcp {upper}")).collect();
        }
        t.row([
            n.name().to_owned(),
            n.local_addr().to_string(),
            here.join(", "),
            peers.join(", "),
            dns_answer,
        ]);
    }
    out.push_str(&t.render());
    out.push('\n');

    let mut t = Table::new(["entry", "service", "calls", "ok", "served by", "p50", "p99"]);
    let services = ["echo", "upper", "whoami"];
    let mut sample = String::new();
    for n in &nodes {
        let cfg = ClientConfig::new(
            tls_paths(dir.path(), Role::Client, "demo"),
            vec![n.local_addr().to_string()],
        );
        let client = Client::connect(cfg).await?;
        for svc in services {
            let mut lat = Vec::with_capacity(opts.calls);
            let mut served: BTreeMap<String, usize> = BTreeMap::new();
            let mut ok = 0;
            for i in 0..opts.calls {
                let body = format!("hello {i} from the demo client");
                let t0 = Instant::now();
                if let Ok(reply) = client.request(svc, body, &Default::default()).await {
                    lat.push(t0.elapsed());
                    ok += 1;
                    *served.entry(reply.served_by).or_default() += 1;
                    if svc == "whoami" && sample.is_empty() {
                        sample = String::from_utf8_lossy(&reply.body).into_owned();
                    }
                }
            }
            lat.sort();
            let served = served
                .iter()
                .map(|(k, v)| format!("{k}×{v}"))
                .collect::<Vec<_>>()
                .join(" ");
            t.row([
                n.name().to_owned(),
                svc.to_owned(),
                opts.calls.to_string(),
                ok.to_string(),
                served,
                ms(percentile(&lat, 0.5)),
                ms(percentile(&lat, 0.99)),
            ]);
        }
        if n.name() == "alpha" {
            let err = client
                .call("nope", "x")
                .await
                .err()
                .map(|e: CallError| e.to_string())
                .unwrap_or_default();
            out.push_str(&format!("calling an unknown service through alpha: {err}\n"));
        }
        client.close().await;
    }
    out.push_str(&format!("a whoami reply: {sample}\n\n"));
    out.push_str(&t.render());
    out.push('\n');

    let mut t = Table::new(["node", "accepted", "served here", "relayed", "rejected"]);
    for n in &nodes {
        let s = n.stats();
        let rejected = s
            .rejected
            .iter()
            .map(|(c, k)| format!("{c}×{k}"))
            .collect::<Vec<_>>()
            .join(" ");
        t.row([
            n.name().to_owned(),
            s.streams_accepted.to_string(),
            s.served_local.to_string(),
            s.relayed.to_string(),
            rejected,
        ]);
    }
    out.push_str(&t.render());
    out.push_str(
        "\nthe mesh as alpha sees it (gossiped membership and load table; `quicmesh status` prints the same):\n",
    );
    out.push_str(&quicmesh::render_status(&nodes[0].status()));
    Ok(Demo {
        report: out,
        nodes,
        dns,
        dir,
    })
}

impl Demo {
    /// How to reach the running mesh, for `--serve`.
    pub fn serve_hint(&self) -> String {
        format!(
            "serving until Ctrl-C. Dashboard: http://{a}/ui in a browser. Metrics: curl http://{a}/metrics (also /status, /readyz). Try:\n  quicmesh call echo --discovery srv:{SRV_NAME} --dns-server {} --ca {d}/ca.crt --cert {d}/client-demo.crt --cert-key {d}/client-demo.key <<< hello",
            self.dns.addr(),
            a = self.nodes[0].admin_addr().map(|a| a.to_string()).unwrap_or_default(),
            d = self.dir.path().display()
        )
    }

    /// Stops the nodes.
    pub async fn stop(self) {
        let t0 = Instant::now();
        let n = &self.nodes;
        tokio::join!(n[0].shutdown(), n[1].shutdown(), n[2].shutdown());
        tracing::debug!(took = ?t0.elapsed(), "nodes stopped");
    }
}
