//! The warm backend pools (`services.NAME.preconnect`): a state part, one pool per service
//! that asks for one, filled by the preconnect driver (preconnect.rs), taken from by the
//! service streams (streams.rs) and set by every rebuild of the service set (rebuild.rs).
//! Owns its locks; takes nothing else of the node's state.

use std::collections::BTreeMap;
use std::io;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::sync::{lock, Desired};
use crate::warm::{PoolConfig, PoolStats, WarmPool};

/// What should be kept warm: service → (backend, pool).
pub(crate) type Wanted = BTreeMap<String, (String, PoolConfig)>;

/// One service's pool.
pub(crate) struct Pool {
    pub service: String,
    pub backend: String,
    pub state: Mutex<WarmPool<TcpStream>>,
    /// The jitter of this pool's connect backoff.
    pub rng: Mutex<StdRng>,
    /// Wakes the pool's filler: a connection was taken, a connect ended, or the pool changed.
    pub wake: Notify,
}

/// Every pool of the node.
pub(crate) struct WarmPools {
    pools: Mutex<BTreeMap<String, Arc<Pool>>>,
    wanted: Desired<Wanted>,
}

/// One row of [`WarmPools::rows`]: service, backend, what it keeps, idle now, counters.
pub(crate) type Row = (String, String, PoolConfig, usize, PoolStats);

impl WarmPools {
    pub fn new() -> Self {
        WarmPools {
            pools: Mutex::new(BTreeMap::new()),
            wanted: Desired::new(),
        }
    }

    /// A warm connection to `backend` for a new stream of `service`, if its pool has one
    /// that is still open; the pool is then topped up in the background.
    pub fn take(&self, service: &str, backend: &str) -> Option<TcpStream> {
        let pool = lock(&self.pools)
            .get(service)
            .filter(|p| p.backend == backend)
            .cloned()?;
        let conn = lock(&pool.state).take(alive);
        pool.wake.notify_one();
        conn
    }

    /// The pools, for the driver.
    pub fn pools(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Pool>>> {
        lock(&self.pools)
    }

    /// What should be kept warm, set by every rebuild of the service set.
    pub fn wanted(&self) -> &Desired<Wanted> {
        &self.wanted
    }

    /// Each pool's state, by service.
    pub fn rows(&self) -> Vec<Row> {
        lock(&self.pools)
            .values()
            .map(|p| {
                let s = lock(&p.state);
                (p.service.clone(), p.backend.clone(), s.config(), s.idle(), s.stats)
            })
            .collect()
    }
}

/// Whether an idle backend connection is still open: not closed or reset by the backend.
/// Bytes waiting (a server that speaks first) leave it open and stay for the stream.
pub(crate) fn alive(s: &TcpStream) -> bool {
    // A real peek (the socket is non-blocking), not tokio's cached readiness: a FIN the
    // reactor has not seen yet must still count.
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(s).peek(&mut byte) {
        Ok(n) => n > 0,
        Err(e) => matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted),
    }
}
