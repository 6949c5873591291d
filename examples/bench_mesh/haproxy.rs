//! HAProxy, the baseline: started from a generated configuration, stopped on drop.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use quicmesh::TlsPaths;
use tokio::net::TcpStream;

use crate::util::{free_tcp_port, Error};

pub struct Haproxy {
    child: tokio::process::Child,
}

/// A frontend listening on a fresh loopback port.
pub fn front() -> Result<SocketAddr, Error> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?)))
}

/// HAProxy's TLS settings for one identity: `crt` wants the certificate and key in one file.
pub struct HaTls {
    pem: std::path::PathBuf,
    ca: std::path::PathBuf,
}

impl HaTls {
    pub fn new(paths: &TlsPaths, dir: &Path, name: &str) -> Result<Self, Error> {
        let pem = dir.join(format!("{name}.haproxy.pem"));
        let mut both = std::fs::read(&paths.cert)?;
        both.extend(std::fs::read(&paths.key)?);
        std::fs::write(&pem, both)?;
        Ok(HaTls {
            pem,
            ca: paths.ca.clone(),
        })
    }

    /// `bind` options: TLS with a client certificate required, as on a mesh node.
    pub fn bind(&self) -> String {
        format!(
            "ssl crt {} ca-file {} verify required",
            self.pem.display(),
            self.ca.display()
        )
    }

    /// `server` options: TLS to a server named `localhost`, presenting our certificate.
    pub fn server(&self) -> String {
        format!(
            "ssl crt {} ca-file {} verify required verifyhost localhost",
            self.pem.display(),
            self.ca.display()
        )
    }
}

/// One `listen` section: a frontend on `front` to `servers`, balanced by `balance`.
pub fn listen(cfg: &mut String, name: &str, front: SocketAddr, bind_opts: &str, balance: &str, servers: &[String]) {
    let _ = writeln!(cfg, "listen {name}\n  bind {front} {bind_opts}\n  balance {balance}");
    for (i, s) in servers.iter().enumerate() {
        let _ = writeln!(cfg, "  server s{i} {s}");
    }
}

/// The address of the first `bind` line in `cfg`, to wait on.
pub fn first_bind(cfg: &str) -> Option<SocketAddr> {
    cfg.lines()
        .find_map(|l| l.trim().strip_prefix("bind "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
}

impl Haproxy {
    /// Starts HAProxy with the `listen` sections in `body` and waits until `probe` accepts.
    pub async fn start(bin: &str, body: &str, probe: SocketAddr, dir: &Path, name: &str) -> Result<Self, Error> {
        let cfg = format!(
            "global\n  maxconn 8000\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n{body}"
        );
        let path = dir.join(format!("{name}.haproxy.cfg"));
        std::fs::write(&path, cfg)?;
        let mut child = tokio::process::Command::new(bin)
            .args(["-db", "-f"])
            .arg(&path)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        for _ in 0..300 {
            if TcpStream::connect(probe).await.is_ok() {
                return Ok(Haproxy { child });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("haproxy exited ({status}); config in {}", path.display()).into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err("haproxy did not start listening".into())
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The first line of `haproxy -v`, or `None` if it does not run.
pub fn version(bin: &str) -> Option<String> {
    let out = std::process::Command::new(bin).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(str::to_owned)
}
