//! The health-check driver: one task per checked service probes its backend every interval
//! (a TCP connect, or an HTTP GET), and one task keeps them in line with the service set and
//! turns results into health (see [`super::health`]). A service whose backend turns critical
//! is taken out of the local service set and out of the node's gossiped service list, so no
//! node routes to it; it comes back after `rise` passes. One log line per transition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::health_table::{Entry, Wanted};
use super::state::State;
use super::sync::Owned;
use crate::health::{http_passes, CheckConfig, CheckKind, Checker, Health};

/// One probe of `backend`: Ok, or why it failed.
async fn probe(backend: &str, check: &CheckConfig) -> Result<(), String> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(backend)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if check.kind == CheckKind::Tcp {
            return Ok(());
        }
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {backend}\r\nUser-Agent: quicmesh-health-check\r\nConnection: close\r\n\r\n",
            check.path
        );
        s.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut head = vec![0u8; 256];
        let n = s.read(&mut head).await.map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&head[..n]);
        let line = text.lines().next().unwrap_or_default();
        if http_passes(line) {
            Ok(())
        } else {
            Err(format!("GET {} answered {line:?}", check.path))
        }
    };
    match tokio::time::timeout(check.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

/// Probes one service's backend every interval until aborted, sending each result.
async fn check_loop(
    service: String,
    backend: String,
    check: CheckConfig,
    results: mpsc::Sender<(String, String, Duration, Result<(), String>)>,
) {
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = tokio::time::Instant::now();
        let r = probe(&backend, &check).await;
        let took = tokio::time::Instant::now().saturating_duration_since(started);
        if results.send((service.clone(), backend.clone(), took, r)).await.is_err() {
            return;
        }
    }
}

/// Keeps the check tasks in line with what is wanted and applies their results, until
/// shutdown.
pub(crate) async fn run(shared: Arc<State>) {
    let mut wanted = shared.health.wanted().subscribe();
    let mut shutdown = shared.ctx.on_shutdown();
    let (tx, mut rx) = mpsc::channel(64);
    let mut tasks: Tasks = BTreeMap::new();
    // What was wanted before this task subscribed counts too (a new receiver sees no change).
    let first = wanted.borrow_and_update().clone();
    sync(&shared, &first, &mut tasks, &tx);
    loop {
        tokio::select! {
            changed = wanted.changed() => {
                if changed.is_err() {
                    break;
                }
                let want = wanted.borrow_and_update().clone();
                sync(&shared, &want, &mut tasks, &tx);
            }
            Some((service, backend, took, result)) = rx.recv() => {
                observe(&shared, &service, &backend, took, result);
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// The running checks (each aborted when dropped, so they end with this driver).
type Tasks = BTreeMap<String, (String, CheckConfig, Owned)>;

/// Starts checks for new or changed services, stops those no longer wanted.
fn sync(
    shared: &State,
    want: &Wanted,
    tasks: &mut Tasks,
    tx: &mpsc::Sender<(String, String, Duration, Result<(), String>)>,
) {
    tasks.retain(|name, (backend, check, _)| want.get(name).is_some_and(|(b, c)| b == backend && c == check));
    let mut entries = shared.health.entries();
    entries.retain(|name, e| want.get(name).is_some_and(|(b, c)| *b == e.backend && *c == e.check));
    for (name, (backend, check)) in want {
        if tasks.contains_key(name) {
            continue;
        }
        entries.insert(
            name.clone(),
            Entry {
                backend: backend.clone(),
                check: check.clone(),
                checker: Checker::new(check),
                last: None,
            },
        );
        let task = Owned::spawn(check_loop(name.clone(), backend.clone(), check.clone(), tx.clone()));
        tasks.insert(name.clone(), (backend.clone(), check.clone(), task));
    }
}

/// Feeds one result into its service's state machine; a transition rebuilds the service set.
fn observe(shared: &State, service: &str, backend: &str, took: Duration, result: Result<(), String>) {
    let transition = {
        let mut entries = shared.health.entries();
        let Some(e) = entries.get_mut(service).filter(|e| e.backend == backend) else {
            return; // a result from a check since stopped
        };
        e.last = Some((took, result.as_ref().err().cloned()));
        e.checker.observe(result.is_ok()).map(|h| (h, e.check.clone()))
    };
    match transition {
        Some((Health::Critical, check)) => {
            warn!(
                %service, %backend, error = result.err().unwrap_or_default(),
                "backend failed {} checks in a row: critical, no longer offered", check.fall
            );
            super::rebuild::apply(shared);
        }
        Some((Health::Passing, check)) => {
            info!(%service, %backend, "backend passed {} checks in a row: passing, offered again", check.rise);
            super::rebuild::apply(shared);
        }
        None => {}
    }
}
