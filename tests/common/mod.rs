//! Test harness: real certificates in a temp dir, real nodes on loopback.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quicmesh::{Client, ClientConfig, Echo, IssueOptions, MeshCa, Node, NodeConfig, Role, TlsPaths};

pub const TD: &str = "test.quicmesh";

/// A CA and a directory of certificates.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: MeshCa,
}

impl Pki {
    pub fn new() -> Self {
        Self::with_domain(TD)
    }

    pub fn with_domain(td: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::generate(td, 2).unwrap();
        ca.write(dir.path(), false).unwrap();
        Pki { dir, ca }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Issues (once) and returns the files for `role`/`name`.
    pub fn tls(&self, role: Role, name: &str) -> TlsPaths {
        let cert = self.path().join(format!("{role}-{name}.crt"));
        if !cert.exists() {
            self.ca
                .issue(&IssueOptions::new(role, name))
                .unwrap()
                .write(self.path(), role, name, false)
                .unwrap();
        }
        TlsPaths::new(
            self.path().join("ca.crt"),
            cert,
            self.path().join(format!("{role}-{name}.key")),
        )
    }

    pub fn node_config(&self, name: &str) -> NodeConfig {
        let mut cfg = NodeConfig::new(name, self.tls(Role::Node, name));
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.reconnect.initial = Duration::from_millis(20);
        cfg.reconnect.max = Duration::from_millis(500);
        cfg
    }

    pub async fn client(&self, name: &str, entry: &Node) -> Client {
        let cfg = ClientConfig::new(self.tls(Role::Client, name), vec![entry.local_addr().to_string()]);
        Client::connect(cfg).await.unwrap()
    }
}

/// Polls `cond` until it holds or `limit` passes (then panics with `what`).
pub async fn eventually<F: FnMut() -> bool>(limit: Duration, what: &str, mut cond: F) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually`] for an async check: polls `cond` until it returns `Ok` and returns its value,
/// or panics with `what` and the last `Err` (why it did not hold yet) once `limit` passes.
pub async fn eventually_async<T, E, F, Fut>(limit: Duration, what: &str, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = Instant::now() + limit;
    loop {
        match cond().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for: {what} (last: {last})"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fails the test instead of hanging if `fut` takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {limit:?}"),
    }
}

/// Whether every node sees every listed service.
pub fn sees_all(nodes: &[&Node], services: &[&str]) -> bool {
    nodes.iter().all(|n| {
        let m = n.service_map();
        services.iter().all(|s| m.contains_key(*s))
    })
}

/// Starts a chain-dialled mesh: each node dials the ones before it. `services[i]` are
/// in-process echo handlers on node i.
pub async fn mesh(pki: &Pki, names: &[&str], services: &[&[&str]]) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut cfg = pki.node_config(name);
        cfg.peers = nodes.iter().map(|n| n.local_addr().to_string()).collect();
        let mut b = Node::builder(cfg);
        for s in services.get(i).copied().unwrap_or_default() {
            b = b.handler(s, Echo);
        }
        nodes.push(b.start().await.unwrap());
    }
    let all: Vec<&str> = services.iter().flat_map(|s| s.iter().copied()).collect();
    let refs: Vec<&Node> = nodes.iter().collect();
    eventually(Duration::from_secs(10), "mesh formed", || {
        sees_all(&refs, &all)
            && refs
                .iter()
                .all(|n| n.peers().iter().filter(|p| p.connected).count() == names.len() - 1)
    })
    .await;
    nodes
}

/// A UDP port that was free a moment ago (for nodes that must restart on the same address).
/// Drawn below the ephemeral range and handed out once per process, as the chaos soak's
/// ([`quicmesh::chaos::free_port`]): a port from `bind(0)` could be taken, before the node
/// binds it, by the ephemeral socket of a client or a `quicmesh call` process of a test
/// running alongside (a node that then exits at start fails its test by timing out).
pub fn free_udp_port() -> u16 {
    free_port(true)
}

#[cfg(feature = "testkit")]
fn free_port(udp: bool) -> u16 {
    quicmesh::chaos::free_port(udp).unwrap()
}

/// Without the testkit feature (the README's test command has it), the kernel's pick.
#[cfg(not(feature = "testkit"))]
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// A TCP backend on loopback: reads each connection to its end and answers `reply(request)`.
pub async fn tcp_backend(reply: fn(Vec<u8>) -> Vec<u8>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).await.is_ok() {
                    let _ = s.write_all(&reply(buf)).await;
                }
            });
        }
    });
    addr
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quicmesh"))
}

/// Logs to the test output when RUST_LOG is set (`RUST_LOG=quicmesh=debug cargo test ...`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A raw QUIC connection with a real certificate, speaking the protocol by hand.
pub async fn raw_conn(pki: &Pki, role: Role, name: &str, to: std::net::SocketAddr) -> quinn::Connection {
    let tls = quicmesh::TlsMaterial::load(&pki.tls(role, name), role).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(tls.client_config().unwrap()));
    ep.connect(to, "quicmesh").unwrap().await.unwrap()
}

/// Sends `bytes` on a new stream, finishes it, and returns the node's response.
pub async fn send_raw(conn: &quinn::Connection, bytes: &[u8]) -> quicmesh::protocol::Response {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let _ = send.finish();
    quicmesh::protocol::read_frame(&mut recv, 64 * 1024).await.unwrap()
}

/// The reject code of a response, if it is a refusal.
pub fn code(r: &quicmesh::protocol::Response) -> Option<quicmesh::RejectCode> {
    match r {
        quicmesh::protocol::Response::Reject { code, .. } => Some(*code),
        quicmesh::protocol::Response::Accept { .. } => None,
    }
}

/// A process's resident memory, in bytes (Linux).
pub fn rss_of(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// One HTTP/1.1 request over a raw TCP socket (the admin endpoint): (status code, body).
pub async fn http(addr: impl tokio::net::ToSocketAddrs, method: &str, path: &str) -> (u16, String) {
    http_with_body(addr, method, path, "").await
}

/// [`http`] with a request body.
pub async fn http_with_body(
    addr: impl tokio::net::ToSocketAddrs,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_owned())
}

/// A TCP port on loopback that was free a moment ago (for admin listeners of node processes);
/// drawn as [`free_udp_port`]'s.
pub fn free_tcp_port() -> u16 {
    free_port(false)
}

/// The value of the Prometheus sample line starting with `series ` (name and labels, exactly).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Whether network namespaces can be made here (root and a working `ip netns`).
pub fn netns_usable() -> Result<(), String> {
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("cannot run id: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root".into());
    }
    let ip = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map_err(|e| format!("no ip command: {e}"))?;
    if !ip.status.success() {
        return Err(format!("ip netns unusable: {}", String::from_utf8_lossy(&ip.stderr)));
    }
    Ok(())
}

/// Runs `quicmesh call ARGS...` with `body` on stdin: Ok((stdout, stderr)) if it exits 0,
/// else Err(stderr).
pub async fn cli_call(args: &[String], body: &str) -> Result<(String, String), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(bin())
        .arg("call")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(body.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok((text(&out.stdout), text(&out.stderr)))
    } else {
        Err(text(&out.stderr))
    }
}

/// Makes a CA for `trust_domain` in `dir` with `quicmesh certs init`, then a certificate for
/// each `(kind, name)` (`"node"` or `"client"`), through the binary as a user would.
pub fn cli_certs(dir: &Path, trust_domain: &str, holders: &[(&str, &str)]) {
    let d = dir.to_str().unwrap();
    let run = |args: &[&str]| std::process::Command::new(bin()).args(args).output().unwrap();
    let o = run(&["certs", "init", "--trust-domain", trust_domain, "--out", d]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (kind, name) in holders {
        let o = run(&["certs", kind, name, "--ca", d, "--out", d]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// Prints every `*.log` file in a directory if the test panics while this is alive: the logs
/// of node processes would otherwise go with their temp dir, and a failure in CI would say
/// only what the test saw. Declare it after the temp dir, so it is dropped first.
pub struct LogsOnPanic(pub PathBuf);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                eprintln!("---- {} ----\n{text}", path.display());
            }
        }
    }
}
