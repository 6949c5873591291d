//! `quicmesh services`: register, renew, deregister and list a node's run-time services over
//! its admin listener (`/v1/services`), the way an instance announces itself to a local
//! agent.

use std::time::Duration;

use clap::{Args, Subcommand};
use quicmesh::config::parse_duration;

use crate::BoxError;

/// `quicmesh services ...`.
#[derive(Subcommand)]
pub(crate) enum ServicesCmd {
    /// Register a service served from a local TCP backend, with a lease (or update it).
    Register {
        /// Service name, [a-z0-9-]{1,63}.
        name: String,
        /// The TCP backend, HOST:PORT.
        #[arg(long)]
        backend: String,
        /// The lease: the registration ends unless renewed within this, e.g. 10s.
        #[arg(long, value_parser = parse_duration)]
        ttl: Duration,
        /// An identity allowed to call it, spiffe://DOMAIN/client/NAME (repeatable; default:
        /// the whole trust domain).
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// Idle TCP connections to the backend kept open for new streams (a warm pool).
        #[arg(long, default_value_t = 0)]
        preconnect: u32,
        /// How long a warm connection may idle before it is replaced, e.g. 20s (below the
        /// backend's own idle timeout).
        #[arg(long, value_parser = parse_duration)]
        preconnect_idle: Option<Duration>,
        /// Keep renewing at a third of the TTL until interrupted, then deregister: wraps the
        /// lifetime of the process that serves it.
        #[arg(long)]
        heartbeat: bool,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Renew a registration's lease.
    Renew {
        /// Service name.
        name: String,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Remove a registration.
    Deregister {
        /// Service name.
        name: String,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// List the node's services: from its config, in-process, or registered (with lease).
    List {
        #[command(flatten)]
        admin: AdminArg,
    },
}

/// `--admin HOST:PORT`: where a running node's admin listener is.
#[derive(Args, Clone)]
pub(crate) struct AdminArg {
    /// The node's admin listener (`admin.listen`).
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:7480",
        env = "QUICMESH_ADMIN"
    )]
    pub admin: String,
}

/// One HTTP/1.1 request to the admin listener: (status code, body).
pub(crate) async fn admin_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.take(64 << 20).read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| format!("admin {addr}: no answer within 5s"))?
        .map_err(|e| {
            format!("admin {addr}: {e} (is a node running with admin.listen = {addr:?}? --admin sets the address)")
        })?;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("admin {addr}: not an HTTP response"))?;
    let head = String::from_utf8_lossy(&out[..split]);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("admin {addr}: not an HTTP response"))?;
    Ok((code, String::from_utf8_lossy(&out[split + 4..]).into_owned()))
}

/// The `error` of a JSON answer, or the body itself.
fn reason(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned())
}

/// A failed admin call: the node refused the request (4xx: retrying will not help), or it
/// could not be asked (not running, restarting).
#[derive(Debug)]
enum Failed {
    Refused(String),
    Unreachable(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Refused(m) | Failed::Unreachable(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Failed {}

async fn call(admin: &str, method: &str, path: &str, body: Option<&str>) -> Result<serde_json::Value, Failed> {
    let (code, text) = admin_request(admin, method, path, body)
        .await
        .map_err(|e| Failed::Unreachable(e.to_string()))?;
    if code != 200 {
        let msg = format!("{method} {path}: {code}: {}", reason(&text));
        return Err(if (400..500).contains(&code) {
            Failed::Refused(msg)
        } else {
            Failed::Unreachable(msg)
        });
    }
    serde_json::from_str(&text).map_err(|e| Failed::Unreachable(format!("admin {admin}{path}: unreadable JSON: {e}")))
}

/// Runs a `quicmesh services` command; `out` prints a line on stdout.
pub(crate) async fn run(cmd: ServicesCmd, out: impl Fn(String)) -> Result<(), BoxError> {
    match cmd {
        ServicesCmd::Register {
            name,
            backend,
            ttl,
            allow,
            preconnect,
            preconnect_idle,
            heartbeat,
            admin,
        } => {
            if heartbeat && ttl < Duration::from_secs(1) {
                return Err("--heartbeat needs --ttl of at least 1s (it renews every ttl/3)".into());
            }
            let mut body = serde_json::json!({
                "backend": backend,
                "ttl": format!("{}ms", ttl.as_millis()),
                "allow": allow,
                "preconnect": preconnect,
            });
            if let Some(idle) = preconnect_idle {
                body["preconnect_idle"] = format!("{}ms", idle.as_millis()).into();
            }
            let body = body.to_string();
            let path = format!("/v1/services/{name}");
            let v = call(&admin.admin, "PUT", &path, Some(&body)).await?;
            out(format!(
                "{name}: {} ({backend}, lease {ttl:?})",
                v["change"].as_str().unwrap_or("registered")
            ));
            if heartbeat {
                let every = ttl / 3;
                let renew = format!("/v1/services/{name}/renew");
                // One signal listener for the whole loop, so a signal during a request is
                // not lost.
                let stop = crate::wait_for_signal();
                tokio::pin!(stop);
                loop {
                    let beat = async {
                        tokio::time::sleep(every).await;
                        match call(&admin.admin, "PUT", &renew, None).await {
                            Ok(_) => Ok(()),
                            Err(e) => {
                                // The node restarted (registrations are in memory) or the
                                // lease lapsed: register again; keep trying while the node
                                // cannot be reached, give up only if it refuses.
                                tracing::warn!(error = %e, "renewal failed; registering again");
                                match call(&admin.admin, "PUT", &path, Some(&body)).await {
                                    Err(e @ Failed::Refused(_)) => Err(e),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "cannot register; trying again at the next beat");
                                        Ok(())
                                    }
                                    Ok(_) => Ok(()),
                                }
                            }
                        }
                    };
                    tokio::select! {
                        r = beat => r?,
                        () = &mut stop => break,
                    }
                }
                call(&admin.admin, "DELETE", &path, None).await?;
                out(format!("{name}: deregistered"));
            }
        }
        ServicesCmd::Renew { name, admin } => {
            let v = call(&admin.admin, "PUT", &format!("/v1/services/{name}/renew"), None).await?;
            out(format!(
                "{name}: renewed, expires in {}",
                v["expires_in"].as_str().unwrap_or("?")
            ));
        }
        ServicesCmd::Deregister { name, admin } => {
            call(&admin.admin, "DELETE", &format!("/v1/services/{name}"), None).await?;
            out(format!("{name}: deregistered"));
        }
        ServicesCmd::List { admin } => {
            let v = call(&admin.admin, "GET", "/v1/services", None).await?;
            let rows = v.as_array().cloned().unwrap_or_default();
            let mut t = quicmesh::Table::new([
                "service",
                "source",
                "backend",
                "lease",
                "expires in",
                "health",
                "warm",
                "allow",
                "last check error",
            ]);
            for r in rows {
                let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
                let allow: Vec<String> = r["allow"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                t.row([
                    s("name"),
                    s("source"),
                    s("backend"),
                    s("ttl"),
                    s("expires_in"),
                    s("health"),
                    match r["pool"].as_object() {
                        Some(p) => format!("{}/{}", p["idle"], p["preconnect"]),
                        None => "-".into(),
                    },
                    if allow.is_empty() { "-".into() } else { allow.join(",") },
                    s("last_check_error"),
                ]);
            }
            out(t.render().trim_end().to_owned());
        }
    }
    Ok(())
}
