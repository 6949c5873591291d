//! The preconnect driver: keeps each service's warm pool (see [`crate::warm`]) filled with
//! open TCP connections to its backend. One task follows what the service set wants kept
//! warm; one filler per pool opens what the pool lacks, closes connections that idled too
//! long or that the backend closed, and backs off while the backend refuses. A pool whose
//! service is removed, re-pointed at another backend or critical is closed with its
//! connections. A failing pool logs once when it starts failing and once when it recovers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};

use super::state::State;
use super::sync::{lock, Owned};
use super::warm_pools::{alive, Pool, Wanted};
use crate::warm::WarmPool;

/// How often a quiet pool looks for connections the backend closed.
const SWEEP: Duration = Duration::from_secs(1);

/// Keeps the fillers in line with what is wanted, until shutdown; then closes every pool.
pub(crate) async fn run(shared: Arc<State>) {
    let mut wanted = shared.pools.wanted().subscribe();
    let mut shutdown = shared.ctx.on_shutdown();
    let mut fillers: BTreeMap<String, Owned> = BTreeMap::new();
    // What was wanted before this task subscribed counts too (a new receiver sees no change).
    let first = wanted.borrow_and_update().clone();
    sync(&shared, &first, &mut fillers);
    loop {
        tokio::select! {
            changed = wanted.changed() => {
                if changed.is_err() {
                    break;
                }
                let want = wanted.borrow_and_update().clone();
                sync(&shared, &want, &mut fillers);
            }
            _ = shutdown.changed() => break,
        }
    }
    sync(&shared, &Wanted::new(), &mut fillers);
}

/// Closes the pools no longer wanted (or wanted for another backend), resizes changed ones
/// and starts new ones.
fn sync(shared: &State, want: &Wanted, fillers: &mut BTreeMap<String, Owned>) {
    let mut closed = Vec::new();
    let mut pools = shared.pools.pools();
    pools.retain(|name, p| {
        let keep = want.get(name).is_some_and(|(b, _)| *b == p.backend);
        if !keep {
            closed.extend(lock(&p.state).close());
            fillers.remove(name);
        }
        keep
    });
    for (name, (backend, cfg)) in want {
        if let Some(p) = pools.get(name) {
            let mut state = lock(&p.state);
            if state.config() != *cfg {
                state.resize(*cfg);
                p.wake.notify_one();
            }
            continue;
        }
        let seed: u64 = lock(&shared.rng).random();
        let pool = Arc::new(Pool {
            service: name.clone(),
            backend: backend.clone(),
            state: std::sync::Mutex::new(WarmPool::new(*cfg)),
            rng: std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            wake: tokio::sync::Notify::new(),
        });
        pools.insert(name.clone(), pool.clone());
        let timeout = shared.ctx.cfg.transport.connect_timeout;
        fillers.insert(name.clone(), Owned::spawn(fill(pool, timeout).in_current_span()));
    }
    drop(pools);
    // Closed outside the lock: each is a close(2).
    drop(closed);
}

/// Fills one pool until aborted.
async fn fill(pool: Arc<Pool>, timeout: Duration) {
    loop {
        let now = Instant::now();
        let (n, closed, next) = {
            let mut p = lock(&pool.state);
            let closed = p.sweep(now.into_std(), alive);
            (p.to_open(now.into_std()), closed, p.next_deadline())
        };
        drop(closed);
        for _ in 0..n {
            tokio::spawn(connect(pool.clone(), timeout).in_current_span());
        }
        let next = next.map_or(now + SWEEP, |d| Instant::from_std(d).min(now + SWEEP));
        tokio::select! {
            _ = pool.wake.notified() => {}
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

/// One connect into the pool.
async fn connect(pool: Arc<Pool>, timeout: Duration) {
    let result = match tokio::time::timeout(timeout, TcpStream::connect(&pool.backend)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("connect timed out after {timeout:?}")),
    };
    let now = Instant::now().into_std();
    match result {
        Ok(s) => {
            let (recovered, extra) = {
                let mut p = lock(&pool.state);
                let failing = p.failing() > 0;
                (failing, p.opened(s, now))
            };
            drop(extra);
            if recovered {
                info!(service = %pool.service, backend = %pool.backend, "warm pool connects to the backend now");
            }
        }
        Err(e) => {
            let (first, wait) = {
                let mut p = lock(&pool.state);
                let first = p.failing() == 0;
                (first, p.failed(now, &mut *lock(&pool.rng)))
            };
            if first {
                warn!(
                    service = %pool.service, backend = %pool.backend, error = %e, retry_in = ?wait,
                    "warm pool cannot connect to the backend; streams connect themselves meanwhile, retrying with backoff"
                );
            }
        }
    }
    pool.wake.notify_one();
}
