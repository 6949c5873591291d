//! Carries out the plan against the mesh, and the background tasks that run beside it: the
//! observer of every node's member view and the renewer of the leased registrations.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ledger::{Resurrections, Window};
use super::mesh::{http, leased_of, sample, Mesh};
use super::schedule::{Fault, FaultKind};
use crate::protocol::{Response, StatusReport};
use crate::{Client, RejectCode, Role, TlsMaterial};

/// A lease's TTL; renewed every quarter of it.
pub(super) const LEASE_TTL: Duration = Duration::from_secs(3);

/// What the nemesis did and found.
#[derive(Default)]
pub(super) struct Log {
    pub windows: Vec<Window>,
    /// Faults that could not be carried out as planned (a node down for a garbage burst...),
    /// by kind.
    pub skipped: Vec<(&'static str, String)>,
    /// Broken promises found while carrying faults out.
    pub violations: Vec<String>,
    pub garbage_streams: u64,
}

pub(super) struct Nemesis {
    pub mesh: Arc<Mesh>,
    pub clients: Vec<Client>,
    pub t0: Instant,
    pub log: Mutex<Log>,
    /// Held from a node fault's strike to its undo, so a fault that runs late (a drain's
    /// wait, a slow restart) is undone before the next one at that node strikes.
    pub node_faults: Vec<tokio::sync::Mutex<()>>,
}

impl Nemesis {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn violation(&self, what: String) {
        self.log()
            .violations
            .push(format!("at {:.1}s: {what}", self.t0.elapsed().as_secs_f64()));
    }

    /// Runs every fault of `plan` at its time, concurrently, and returns when all are undone.
    pub async fn run(self: &Arc<Self>, plan: Vec<Fault>) {
        let mut tasks = tokio::task::JoinSet::new();
        for (id, f) in plan.into_iter().enumerate() {
            let me = self.clone();
            tasks.spawn(async move {
                tokio::time::sleep_until((me.t0 + f.at).into()).await;
                let _held = match node_of(&f.kind) {
                    Some(n) => Some(me.node_faults[n].lock().await),
                    None => None,
                };
                let start = me.t0.elapsed();
                me.strike(id, &f.kind).await;
                tokio::time::sleep_until((me.t0 + f.until).into()).await;
                me.undo(id, &f.kind).await;
                me.log().windows.push(Window {
                    kind: f.kind,
                    start,
                    end: me.t0.elapsed(),
                });
            });
        }
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                self.violation(format!("a fault's task failed (a harness bug): {e}"));
            }
        }
    }

    async fn strike(&self, id: usize, kind: &FaultKind) {
        let mesh = &self.mesh;
        match kind {
            FaultKind::Kill { node, .. } => mesh.kill(*node).await,
            FaultKind::Drain { node } => {
                // Grace 2 s plus the time to say goodbye; a node that does not exit is a bug.
                if let Err(e) = mesh.drain(*node, Duration::from_secs(8)).await {
                    self.violation(e);
                }
            }
            FaultKind::Partition { .. } | FaultKind::Impair { .. } => {
                let mut w = mesh.wires();
                w.faults.push((id, kind.clone()));
                w.apply();
            }
            FaultKind::Rebind { client } => match std::net::UdpSocket::bind("127.0.0.1:0") {
                Ok(s) => {
                    if let Err(e) = self.clients[*client].rebind(s) {
                        self.violation(format!("client {client} could not rebind: {e}"));
                    }
                }
                Err(e) => self
                    .log()
                    .skipped
                    .push((kind.label(), format!("rebind: no socket: {e}"))),
            },
            FaultKind::RotateCert { node } => self.rotate(*node).await,
            FaultKind::Garbage { node, streams } => self.garbage(*node, *streams).await,
            FaultKind::BackendDown { node } => mesh.backends[*node].lock().await.down(),
            FaultKind::LeaseLapse { node } => self.lapse(*node).await,
        }
    }

    async fn undo(&self, id: usize, kind: &FaultKind) {
        let mesh = &self.mesh;
        match kind {
            FaultKind::Kill { node, .. } | FaultKind::Drain { node } => {
                if matches!(kind, FaultKind::Kill { new_port: true, .. }) {
                    if let Err(e) = mesh.move_port(*node).await {
                        self.violation(e.to_string());
                    }
                }
                if let Err(e) = mesh.launch(*node).await {
                    self.violation(format!("restart: {e}"));
                }
            }
            FaultKind::Partition { .. } | FaultKind::Impair { .. } => {
                let mut w = mesh.wires();
                w.faults.retain(|(i, _)| *i != id);
                w.apply();
            }
            FaultKind::BackendDown { node } => {
                if let Err(e) = mesh.backends[*node].lock().await.up().await {
                    self.violation(e.to_string());
                }
            }
            FaultKind::LeaseLapse { node } => self.reregister(*node).await,
            _ => {}
        }
    }

    /// Rotation must be picked up: the node counts a reload within a few reload intervals.
    async fn rotate(&self, node: usize) {
        let v = &self.mesh.views[node];
        let reloads = || async {
            match http(v.admin, "GET", "/metrics", None).await {
                Ok((200, m)) => sample(&m, "quicmesh_tls_reloads_total"),
                _ => None,
            }
        };
        let before = reloads().await;
        if let Err(e) = self.mesh.rotate(node).await {
            self.violation(format!("rotating {}'s certificate: {e}", v.name));
            return;
        }
        let (Some(before), generation) = (before, v.generation.load(Ordering::Relaxed)) else {
            // Its restart reads the new files (a pair that did not load would fail the restart).
            let why = format!("rotation at {} while it was down", v.name);
            self.log().skipped.push((FaultKind::RotateCert { node }.label(), why));
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if reloads().await.is_some_and(|n| n > before) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if v.alive.load(Ordering::Relaxed) && v.generation.load(Ordering::Relaxed) == generation {
            self.violation(format!("{} did not reload its rotated certificate within 5 s", v.name));
        }
    }

    /// A burst of garbage headers from a client of the mesh's own CA: each gets `BadHeader`.
    async fn garbage(&self, node: usize, streams: u32) {
        let mesh = &self.mesh;
        let to = mesh.advertised(node);
        let setup = async {
            let tls =
                TlsMaterial::load(&mesh.tls(Role::Client, "stranger"), Role::Client).map_err(|e| e.to_string())?;
            let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().map_err(|_| "address".to_string())?)
                .map_err(|e| e.to_string())?;
            ep.set_default_client_config(quinn::ClientConfig::new(
                tls.client_config().map_err(|e| e.to_string())?,
            ));
            let conn = ep
                .connect(to, "quicmesh")
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((ep, conn))
        };
        let (_ep, conn) = match tokio::time::timeout(Duration::from_secs(3), setup).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let why = format!("garbage at {}: {e}", mesh.views[node].name);
                return self.log().skipped.push((GARBAGE, why));
            }
            Err(_) => {
                let why = format!("garbage at {}: no handshake in 3 s", mesh.views[node].name);
                return self.log().skipped.push((GARBAGE, why));
            }
        };
        let mut wrong = 0u32;
        let mut sent = 0u64;
        for i in 0..streams {
            let len = (i as usize * 7) % 40 + 5;
            let mut bytes = (len as u32).to_be_bytes().to_vec();
            bytes.push(1);
            bytes.extend((1..len).map(|j| (j * 131 + i as usize) as u8 | 0x80));
            let one = async {
                let (mut send, mut recv) = conn.open_bi().await.ok()?;
                send.write_all(&bytes).await.ok()?;
                let _ = send.finish();
                crate::protocol::read_frame::<_, Response>(&mut recv, 64 * 1024)
                    .await
                    .ok()
            };
            match tokio::time::timeout(Duration::from_secs(3), one).await {
                Ok(Some(Response::Reject {
                    code: RejectCode::BadHeader,
                    ..
                })) => sent += 1,
                Ok(Some(other)) => {
                    wrong += 1;
                    if wrong == 1 {
                        self.violation(format!("garbage at {} was answered {other:?}", mesh.views[node].name));
                    }
                }
                // The node went down or drains mid-burst: the rest of the burst is moot.
                _ => break,
            }
        }
        conn.close(0u32.into(), b"done");
        self.log().garbage_streams += sent;
    }

    /// Stops renewing the node's lease; the registration must end within the TTL (and a
    /// second for the expiry sweep).
    async fn lapse(&self, node: usize) {
        let v = &self.mesh.views[node];
        v.lease_paused.store(true, Ordering::Relaxed);
        let generation = v.generation.load(Ordering::Relaxed);
        let deadline = Instant::now() + LEASE_TTL + Duration::from_secs(2);
        while Instant::now() < deadline {
            if !registered(v.admin, &leased_of(node)).await.unwrap_or(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if v.alive.load(Ordering::Relaxed) && v.generation.load(Ordering::Relaxed) == generation {
            self.violation(format!(
                "{}'s lease on {} was not renewed for {:?} and the registration is still there",
                v.name,
                leased_of(node),
                LEASE_TTL + Duration::from_secs(2)
            ));
        }
    }

    /// Renewals resume (re-registering), and the registration must be back within 5 s.
    async fn reregister(&self, node: usize) {
        let v = &self.mesh.views[node];
        v.lease_paused.store(false, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if registered(v.admin, &leased_of(node)).await == Some(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if v.alive.load(Ordering::Relaxed) {
            self.violation(format!("{} did not take {} back within 5 s", v.name, leased_of(node)));
        }
    }
}

/// [`FaultKind::Garbage`]'s label.
const GARBAGE: &str = "garbage stream burst";

/// The node a fault holds for its whole window (a process, a backend, a lease).
fn node_of(kind: &FaultKind) -> Option<usize> {
    match *kind {
        FaultKind::Kill { node, .. }
        | FaultKind::Drain { node }
        | FaultKind::BackendDown { node }
        | FaultKind::LeaseLapse { node } => Some(node),
        _ => None,
    }
}

/// Whether the node lists `service` among its services (`None`: it did not answer).
async fn registered(admin: std::net::SocketAddr, service: &str) -> Option<bool> {
    let (code, body) = http(admin, "GET", "/v1/services", None).await.ok()?;
    if code != 200 {
        return None;
    }
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
    Some(rows.iter().any(|r| r["name"] == service))
}

/// Keeps each node's leased registration renewed (registering it again when the node says it
/// does not know it: the node restarted or the lease lapsed), as `quicmesh services register
/// --heartbeat` would.
pub(super) async fn renew_leases(mesh: Arc<Mesh>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let ttl = format!("{}ms", LEASE_TTL.as_millis());
    while !stop.load(Ordering::Relaxed) {
        // All at once: one slow node must not make the others' leases lapse.
        let mut renewals = tokio::task::JoinSet::new();
        for (i, v) in mesh.views.iter().enumerate() {
            if v.lease_paused.load(Ordering::Relaxed) || !v.alive.load(Ordering::Relaxed) {
                continue;
            }
            let (admin, name, ttl) = (v.admin, leased_of(i), ttl.clone());
            let backend = mesh.backends[i].lock().await.addr;
            renewals.spawn(async move {
                let renewed = http(admin, "PUT", &format!("/v1/services/{name}/renew"), None).await;
                if let Ok((404, _)) = renewed {
                    let body = format!("{{\"backend\": \"{backend}\", \"ttl\": \"{ttl}\"}}");
                    let _ = http(admin, "PUT", &format!("/v1/services/{name}"), Some(&body)).await;
                }
            });
        }
        while renewals.join_next().await.is_some() {}
        tokio::time::sleep(LEASE_TTL / 4).await;
    }
}

/// Each live node's member view, with its generation: `(node, generation, report)`.
pub(super) async fn views(mesh: &Mesh) -> Vec<(usize, u32, StatusReport)> {
    let mut out = Vec::new();
    for (i, v) in mesh.views.iter().enumerate() {
        if !v.alive.load(Ordering::Relaxed) {
            continue;
        }
        let generation = v.generation.load(Ordering::Relaxed);
        if let Ok((200, body)) = http(v.admin, "GET", "/status", None).await {
            if let Ok(r) = serde_json::from_str::<StatusReport>(&body) {
                out.push((i, generation, r));
            }
        }
    }
    out
}

/// Reads every live node's view every 250 ms until `stop`, watching for resurrections.
pub(super) async fn observe(
    mesh: Arc<Mesh>,
    t0: Instant,
    watch: Arc<Mutex<Resurrections>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        for (i, generation, r) in views(&mesh).await {
            let members: Vec<_> = r
                .members
                .iter()
                .map(|m| (m.member.name.clone(), m.member.status, m.member.incarnation))
                .collect();
            watch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .observe(i, generation, t0.elapsed(), &members);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
