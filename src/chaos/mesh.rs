//! The soak's mesh: node processes of the real binary, each behind its own impairment proxy
//! (its advertised address), each with a TCP echo backend of the harness's, and the
//! certificates they use. Each part has its own lock: a restart holds only its node's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::schedule::FaultKind;
use super::ChaosError;
use crate::identity::{IssueOptions, MeshCa, Role, TlsPaths};
use crate::impair::{Impairment, UdpProxy};

/// Nodes serving each service: node `i` serves `svc{i % SERVICES}`.
pub(super) const SERVICES: usize = 4;

/// The service node `i` serves from its config file.
pub(super) fn service_of(i: usize) -> String {
    format!("svc{}", i % SERVICES)
}

/// The service node `i` holds with a lease (registered and renewed over its admin API).
pub(super) fn leased_of(i: usize) -> String {
    format!("leased{i}")
}

/// A loopback port free for `udp` or TCP, below Linux's ephemeral range (32768+): the
/// proxies' upstream sockets and the clients bind ephemeral ports all the time, and one could
/// take a port reserved for a node that is down or not started yet.
///
/// A port is handed out once per process: nodes start one after another, so a port checked
/// free for one node and not yet bound could otherwise be handed to another (a soak of 12
/// nodes drew such a pair in about one run of forty, and the second node exited at start).
pub fn free_port(udp: bool) -> Result<u16, ChaosError> {
    use rand::Rng;
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::from_os_rng();
    let mut handed_out = crate::node::lock_std(&HANDED_OUT);
    for _ in 0..200 {
        let port = rng.random_range(20_000..32_000u16);
        if handed_out.contains(&port) {
            continue;
        }
        let ok = if udp {
            std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        } else {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        };
        if ok {
            handed_out.push(port);
            return Ok(port);
        }
    }
    Err(ChaosError::Setup("no free loopback port in 20000–32000".into()))
}

/// A TCP echo backend that can be stopped (every connection reset) and started again on its
/// port.
pub(super) struct Backend {
    pub addr: SocketAddr,
    /// The accept loop; dropping it drops the connections' tasks with it.
    running: Option<tokio::task::JoinHandle<()>>,
}

impl Backend {
    pub async fn start() -> Result<Self, ChaosError> {
        let mut b = Backend {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port(false)?)),
            running: None,
        };
        b.up().await?;
        Ok(b)
    }

    /// Starts serving on its address (again).
    pub async fn up(&mut self) -> Result<(), ChaosError> {
        let l = TcpListener::bind(self.addr)
            .await
            .map_err(|e| ChaosError::Setup(format!("backend on {}: {e}", self.addr)))?;
        self.running = Some(tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    a = l.accept() => if let Ok((s, _)) = a {
                        conns.spawn(echo(s));
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        }));
        Ok(())
    }

    /// Stops serving: the listener closes and open connections are dropped (reset).
    pub fn down(&mut self) {
        if let Some(t) = self.running.take() {
            t.abort();
        }
    }
}

/// Echoes until the caller finishes, then finishes.
async fn echo(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let (mut r, mut w) = s.split();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = w.shutdown().await;
}

/// How the nodes are wired: each node's bound address and its proxy, and the link faults in
/// force, from which every proxy's per-source rules are derived.
#[derive(Default)]
pub(super) struct Wires {
    pub bind: Vec<SocketAddr>,
    pub proxies: Vec<Arc<UdpProxy>>,
    /// Every proxy address a node has had, so a client's entry maps to its node.
    pub node_of: HashMap<SocketAddr, usize>,
    /// Link faults in force, by fault id.
    pub faults: Vec<(usize, FaultKind)>,
}

impl Wires {
    /// Sets every proxy's rules from the faults in force: node `i`'s proxy gets, for each
    /// other node's bound address, the impairment of the link between them.
    pub fn apply(&self) {
        for (i, proxy) in self.proxies.iter().enumerate() {
            for source in proxy.sources_set() {
                if !self.bind.contains(&source) {
                    proxy.clear_for(source);
                }
            }
            for (j, &source) in self.bind.iter().enumerate() {
                if i == j {
                    continue;
                }
                match self.link(i, j) {
                    Some(imp) => proxy.set_for(source, imp),
                    None => proxy.clear_for(source),
                }
            }
        }
    }

    /// The impairment of the link between nodes `i` and `j`, if any fault is on it.
    fn link(&self, i: usize, j: usize) -> Option<Impairment> {
        let mut imp: Option<Impairment> = None;
        for (_, f) in &self.faults {
            match f {
                FaultKind::Partition { side } if side.contains(&i) != side.contains(&j) => {
                    imp.get_or_insert_with(Impairment::default).blackhole = true;
                }
                FaultKind::Impair { a, b, loss, delay } if (i, j) == (*a, *b) || (j, i) == (*a, *b) => {
                    let x = imp.get_or_insert_with(Impairment::default);
                    x.loss = x.loss.max(*loss);
                    x.delay += *delay;
                    x.jitter += *delay / 4;
                }
                _ => {}
            }
        }
        imp
    }
}

/// One node's process and what it needs to start again.
pub(super) struct Proc {
    pub child: Option<Child>,
    pub config: PathBuf,
    pub log: PathBuf,
}

/// What the rest of the soak reads about a node without taking its lock.
pub(super) struct NodeView {
    pub name: String,
    pub admin: SocketAddr,
    /// The process answers on its admin listener.
    pub alive: AtomicBool,
    /// Bumped at every start, so observers know a fresh process from an old one.
    pub generation: AtomicU32,
    /// The harness stops renewing this node's lease while set.
    pub lease_paused: AtomicBool,
    /// Started more than once.
    pub restarted: AtomicBool,
    pub pid: AtomicU32,
}

/// The mesh.
pub(super) struct Mesh {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub ca: MeshCa,
    pub seeds: usize,
    pub views: Vec<NodeView>,
    pub procs: Vec<tokio::sync::Mutex<Proc>>,
    pub backends: Vec<tokio::sync::Mutex<Backend>>,
    pub wires: Mutex<Wires>,
}

impl Mesh {
    /// Writes the CA and certificates and starts `nodes` node processes on loopback.
    pub async fn start(
        dir: &Path,
        bin: &Path,
        nodes: usize,
        seeds: usize,
        clients: usize,
    ) -> Result<Arc<Self>, ChaosError> {
        let setup = |what: &str, e: &dyn std::fmt::Display| ChaosError::Setup(format!("{what}: {e}"));
        let ca = MeshCa::generate("chaos.quicmesh", 2).map_err(|e| setup("generating the CA", &e))?;
        ca.write(dir, true).map_err(|e| setup("writing the CA", &e))?;
        let mut wires = Wires::default();
        let mut views = Vec::new();
        let mut procs = Vec::new();
        let mut backends = Vec::new();
        for i in 0..nodes {
            let name = format!("n{i:02}");
            ca.issue(&IssueOptions::new(Role::Node, &name))
                .and_then(|c| c.write(dir, Role::Node, &name, true))
                .map_err(|e| setup("issuing a node certificate", &e))?;
            let bind = SocketAddr::from(([127, 0, 0, 1], free_port(true)?));
            let proxy = UdpProxy::start("127.0.0.1:0".parse().map_err(|e| setup("proxy address", &e))?, bind)
                .await
                .map_err(|e| setup("starting a proxy", &e))?;
            wires.node_of.insert(proxy.local_addr(), i);
            wires.bind.push(bind);
            wires.proxies.push(Arc::new(proxy));
            backends.push(tokio::sync::Mutex::new(Backend::start().await?));
            views.push(NodeView {
                name: name.clone(),
                admin: SocketAddr::from(([127, 0, 0, 1], free_port(false)?)),
                alive: AtomicBool::new(false),
                generation: AtomicU32::new(0),
                lease_paused: AtomicBool::new(false),
                restarted: AtomicBool::new(false),
                pid: AtomicU32::new(0),
            });
            procs.push(tokio::sync::Mutex::new(Proc {
                child: None,
                config: dir.join(format!("{name}.toml")),
                log: dir.join(format!("{name}.log")),
            }));
        }
        for c in 0..clients {
            ca.issue(&IssueOptions::new(Role::Client, &format!("load{c}")))
                .and_then(|x| x.write(dir, Role::Client, &format!("load{c}"), true))
                .map_err(|e| setup("issuing a client certificate", &e))?;
        }
        ca.issue(&IssueOptions::new(Role::Client, "stranger"))
            .and_then(|x| x.write(dir, Role::Client, "stranger", true))
            .map_err(|e| setup("issuing a client certificate", &e))?;
        let mesh = Arc::new(Mesh {
            dir: dir.to_owned(),
            bin: bin.to_owned(),
            ca,
            seeds,
            views,
            procs,
            backends,
            wires: Mutex::new(wires),
        });
        for i in 0..nodes {
            mesh.launch(i).await?;
        }
        Ok(mesh)
    }

    /// The files of a client's (or a node's) certificate.
    pub fn tls(&self, role: Role, name: &str) -> TlsPaths {
        TlsPaths::new(
            self.dir.join("ca.crt"),
            self.dir.join(format!("{role}-{name}.crt")),
            self.dir.join(format!("{role}-{name}.key")),
        )
    }

    pub fn wires(&self) -> std::sync::MutexGuard<'_, Wires> {
        self.wires.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Node `i`'s advertised address (its proxy).
    pub fn advertised(&self, i: usize) -> SocketAddr {
        self.wires().proxies[i].local_addr()
    }

    /// Writes node `i`'s config and starts its process; returns once its admin listener
    /// answers.
    pub async fn launch(&self, i: usize) -> Result<(), ChaosError> {
        let mut p = self.procs[i].lock().await;
        let v = &self.views[i];
        if let Some(Ok(None)) = p.child.as_mut().map(|c| c.try_wait()) {
            return Err(ChaosError::Setup(format!(
                "{} is already running (a harness bug)",
                v.name
            )));
        }
        let (bind, advertise) = {
            let w = self.wires();
            (w.bind[i], w.proxies[i].local_addr())
        };
        let peers: Vec<String> = (0..self.seeds)
            .filter(|&s| s != i)
            .map(|s| format!("\"{}\"", self.advertised(s)))
            .collect();
        let tls = self.tls(Role::Node, &v.name);
        let backend = self.backends[i].lock().await.addr;
        // Timeouts short enough that a 60 s soak sees detection, reconnects and drains; an
        // ejection lasts the soak's settle time, so one that outlives its cause longer than
        // that fails calls with no fault on their path.
        let text = format!(
            "name = \"{name}\"\nlisten = \"{bind}\"\nadvertise = \"{advertise}\"\npeers = [{peers}]\n\
             [tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\nreload = \"300ms\"\n\
             [services.{svc}]\nbackend = \"{backend}\"\n\
             [admin]\nlisten = \"{admin}\"\n\
             [transport]\nkeepalive = \"500ms\"\nidle_timeout = \"3s\"\nconnect_timeout = \"2s\"\nheader_timeout = \"2s\"\n\
             [reconnect]\ninitial = \"50ms\"\nmax = \"1s\"\n\
             [drain]\ngrace = \"2s\"\n\
             [routing]\neject_for = \"5s\"\n",
            name = v.name,
            peers = peers.join(", "),
            ca = tls.ca,
            cert = tls.cert,
            key = tls.key,
            svc = service_of(i),
            admin = v.admin,
        );
        std::fs::write(&p.config, text)
            .map_err(|e| ChaosError::Setup(format!("writing {}: {e}", p.config.display())))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .map_err(|e| ChaosError::Setup(format!("opening {}: {e}", p.log.display())))?;
        let err = log
            .try_clone()
            .map_err(|e| ChaosError::Setup(format!("opening {}: {e}", p.log.display())))?;
        let child = Command::new(&self.bin)
            .arg("node")
            .arg("--config")
            .arg(&p.config)
            .env("RUST_LOG", "quicmesh=info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| ChaosError::Setup(format!("starting {}: {e}", self.bin.display())))?;
        v.pid.store(child.id(), Ordering::Relaxed);
        p.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((200, _)) = http(v.admin, "GET", "/healthz", None).await {
                break;
            }
            if let Some(Ok(Some(status))) = p.child.as_mut().map(|c| c.try_wait()) {
                return Err(ChaosError::Node(format!(
                    "{} exited at start ({status}); see {}",
                    v.name,
                    p.log.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Node(format!(
                    "{} did not answer on its admin listener {} within 15 s; see {}",
                    v.name,
                    v.admin,
                    p.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if v.generation.fetch_add(1, Ordering::Relaxed) > 0 {
            v.restarted.store(true, Ordering::Relaxed);
        }
        v.alive.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// SIGKILLs node `i`.
    pub async fn kill(&self, i: usize) {
        let mut p = self.procs[i].lock().await;
        self.views[i].alive.store(false, Ordering::Relaxed);
        if let Some(mut c) = p.child.take() {
            let _ = c.kill();
            let _ = tokio::task::spawn_blocking(move || c.wait()).await;
        }
    }

    /// SIGTERMs node `i` and waits for it to drain and exit; `Err` if it had not exited
    /// `limit` after the signal (it is killed then).
    pub async fn drain(&self, i: usize, limit: Duration) -> Result<Duration, String> {
        let mut p = self.procs[i].lock().await;
        let Some(mut c) = p.child.take() else {
            return Ok(Duration::ZERO);
        };
        let t0 = Instant::now();
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        self.views[i].alive.store(false, Ordering::Relaxed);
        loop {
            if let Ok(Some(_)) = c.try_wait() {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > limit {
                let _ = c.kill();
                let _ = c.wait();
                return Err(format!("{} had not exited {limit:?} after SIGTERM", self.views[i].name));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Moves node `i` to a new port with a new proxy (a new advertised address); call it
    /// while the node is down.
    pub async fn move_port(&self, i: usize) -> Result<(), ChaosError> {
        let bind = SocketAddr::from(([127, 0, 0, 1], free_port(true)?));
        let proxy = UdpProxy::start(SocketAddr::from(([127, 0, 0, 1], 0)), bind)
            .await
            .map_err(|e| ChaosError::Setup(format!("starting a proxy: {e}")))?;
        let mut w = self.wires();
        w.node_of.insert(proxy.local_addr(), i);
        w.bind[i] = bind;
        w.proxies[i] = Arc::new(proxy);
        w.apply();
        Ok(())
    }

    /// Re-issues node `i`'s certificate and key and renames them into place, as rotation
    /// tools do.
    pub async fn rotate(&self, i: usize) -> Result<(), String> {
        // Not while the node (re)starts: it would read a key and a certificate that differ.
        let _p = self.procs[i].lock().await;
        let name = &self.views[i].name;
        let staging = self.dir.join(format!("staging-{name}"));
        std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
        self.ca
            .issue(&IssueOptions::new(Role::Node, name))
            .and_then(|c| c.write(&staging, Role::Node, name, true))
            .map_err(|e| e.to_string())?;
        let live = self.tls(Role::Node, name);
        for (from, to) in [
            (staging.join(format!("node-{name}.key")), live.key),
            (staging.join(format!("node-{name}.crt")), live.cert),
        ] {
            std::fs::rename(&from, &to).map_err(|e| format!("{} → {}: {e}", from.display(), to.display()))?;
        }
        Ok(())
    }

    /// Kills every node process still running.
    pub async fn stop(&self) {
        for i in 0..self.procs.len() {
            self.kill(i).await;
        }
    }
}

impl Drop for Mesh {
    /// No node process outlives the soak, however it ends (an error, a panic).
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut c) = p.get_mut().child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// One HTTP/1.1 request to an admin listener: the status code and the body.
pub(super) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let go = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let code = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("not an HTTP answer: {:.60}", text))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((code, body))
    };
    match tokio::time::timeout(Duration::from_secs(2), go).await {
        Ok(r) => r,
        Err(_) => Err(format!("{method} {path}: no answer within 2 s")),
    }
}

/// A sample's value in Prometheus text (the first series whose name and labels start so).
pub(super) fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
