//! The warm backend pools (`services.NAME.preconnect`): a state part, one pool per service
//! that asks for one, filled by the preconnect driver (preconnect.rs), taken from by the
//! service streams (streams.rs) and set by every rebuild of the service set (rebuild.rs).
//! Owns its locks; takes nothing else of the node's state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use rand::rngs::StdRng;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

use super::sync::lock;
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
    wanted: watch::Sender<Wanted>,
}

/// One row of [`WarmPools::rows`]: service, backend, what it keeps, idle now, counters.
pub(crate) type Row = (String, String, PoolConfig, usize, PoolStats);

impl WarmPools {
    pub fn new() -> Self {
        WarmPools {
            pools: Mutex::new(BTreeMap::new()),
            wanted: watch::channel(Wanted::new()).0,
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

    /// A receiver of what should be kept warm.
    pub fn subscribe(&self) -> watch::Receiver<Wanted> {
        self.wanted.subscribe()
    }

    /// Sets what should be kept warm (a change wakes the driver).
    pub fn want(&self, wanted: Wanted) {
        self.wanted.send_if_modified(|w| {
            let changed = *w != wanted;
            *w = wanted;
            changed
        });
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
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    // A peek that would wait means open and quiet; the no-op waker is replaced by the
    // stream's own as soon as it reads.
    match s.poll_peek(&mut Context::from_waker(Waker::noop()), &mut buf) {
        Poll::Pending => true,
        Poll::Ready(Ok(n)) => n > 0,
        Poll::Ready(Err(_)) => false,
    }
}
