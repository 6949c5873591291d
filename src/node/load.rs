//! This node's own load: service streams in flight (the `limits.max_inflight` semaphore and
//! the per-service counts gossiped to peers), how long it takes to serve a stream, and the
//! replies written but not yet acknowledged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use super::sync::lock;
use crate::routing::Ewma;

/// Weight of each served stream in the service-time average published in gossip.
const SERVE_ALPHA: f64 = 0.2;

/// The node's load.
pub(crate) struct LoadState {
    /// Permits for service streams in flight (served here or relayed).
    pub inflight: Arc<Semaphore>,
    max_inflight: usize,
    /// In-flight streams per service, for the load table.
    per_service: Mutex<BTreeMap<String, u32>>,
    /// How long this node takes to serve a stream, microseconds.
    serve_time_us: Mutex<Ewma>,
    /// Replies written but not yet acknowledged by their callers. A connection close discards
    /// unacknowledged data, so a drain waits for this to reach zero before closing.
    undelivered: watch::Sender<usize>,
}

impl LoadState {
    pub fn new(max_inflight: usize) -> Self {
        LoadState {
            inflight: Arc::new(Semaphore::new(max_inflight)),
            max_inflight,
            per_service: Mutex::new(BTreeMap::new()),
            serve_time_us: Mutex::new(Ewma::new(SERVE_ALPHA)),
            undelivered: watch::channel(0).0,
        }
    }

    /// Service streams in flight now (served here or relayed).
    pub fn in_flight(&self) -> usize {
        self.max_inflight.saturating_sub(self.inflight.available_permits())
    }

    /// `limits.max_inflight`.
    pub fn max_inflight(&self) -> usize {
        self.max_inflight
    }

    /// Counts a stream of `service` until the guard drops.
    pub fn service_stream(&self, service: &str) -> ServiceGuard<'_> {
        *lock(&self.per_service).entry(service.to_owned()).or_insert(0) += 1;
        ServiceGuard {
            load: self,
            service: service.to_owned(),
        }
    }

    /// In-flight streams per service, the status service left out.
    pub fn per_service(&self) -> Vec<(String, u32)> {
        lock(&self.per_service)
            .iter()
            .filter(|(s, _)| s.as_str() != crate::protocol::STATUS_SERVICE)
            .map(|(s, n)| (s.clone(), *n))
            .collect()
    }

    /// A locally served stream took `took`.
    pub fn served(&self, took: Duration) {
        lock(&self.serve_time_us).observe(took.as_secs_f64() * 1e6);
    }

    /// The service-time average, microseconds (0 before any stream).
    pub fn serve_time_us(&self) -> f64 {
        lock(&self.serve_time_us).get().unwrap_or(0.0)
    }

    /// Counts a reply as undelivered until `delivered` (a `SendStream::stopped` future)
    /// resolves or `limit` passes, whichever comes first. `keep` lives as long.
    pub fn track_delivery<F, K>(&self, delivered: F, keep: K, limit: Duration)
    where
        F: std::future::Future + Send + 'static,
        K: Send + 'static,
    {
        let counter = self.undelivered.clone();
        counter.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(limit, delivered).await;
            counter.send_modify(|n| *n = n.saturating_sub(1));
            drop(keep);
        });
    }

    /// A receiver of the undelivered-reply count.
    pub fn undelivered(&self) -> watch::Receiver<usize> {
        self.undelivered.subscribe()
    }
}

/// See [`LoadState::service_stream`].
pub(crate) struct ServiceGuard<'a> {
    load: &'a LoadState,
    service: String,
}

impl Drop for ServiceGuard<'_> {
    fn drop(&mut self) {
        let mut map = lock(&self.load.per_service);
        if let Some(n) = map.get_mut(&self.service) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.service);
            }
        }
    }
}
