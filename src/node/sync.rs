//! Small synchronisation helpers shared by the node's state parts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// Locks a mutex, recovering the data if a panicking task poisoned it: every critical
/// section in the node leaves its table consistent, so the data is still good.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Holds one unit of a gauge (live connections, pending handshakes) while it exists.
pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    pub fn new(gauge: &'a AtomicUsize) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// [`Counted`] for a counter shared with a spawned task: the task holds the guard.
pub(crate) struct CountedArc(Arc<AtomicUsize>);

impl CountedArc {
    /// Counts one more and returns the guard with the count now.
    pub fn new(gauge: &Arc<AtomicUsize>) -> (Self, usize) {
        let now = gauge.fetch_add(1, Ordering::Relaxed) + 1;
        (CountedArc(gauge.clone()), now)
    }
}

impl Drop for CountedArc {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a driver should keep running (the checks, the warm pools): set by every rebuild of
/// the service set, watched by the driver, which is woken only by a real change.
pub(crate) struct Desired<T>(watch::Sender<T>);

impl<T: PartialEq + Default> Desired<T> {
    pub fn new() -> Self {
        Desired(watch::channel(T::default()).0)
    }

    /// A receiver of what is wanted.
    pub fn subscribe(&self) -> watch::Receiver<T> {
        self.0.subscribe()
    }

    /// Sets what is wanted (a change wakes the driver).
    pub fn set(&self, wanted: T) {
        self.0.send_if_modified(|w| {
            let changed = *w != wanted;
            *w = wanted;
            changed
        });
    }
}

/// A spawned task that is aborted when this is dropped: a driver's sub-tasks end with the
/// driver, however it ends (a shutdown may cancel the driver before it tidies up).
pub(crate) struct Owned(tokio::task::JoinHandle<()>);

impl Owned {
    pub fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Owned(tokio::spawn(f))
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The last value computed, and when: a caller within `fresh` of it gets it again, and
/// callers that arrive while one computes wait for that one. Bounds what an expensive read
/// (the dashboard's fan-out to every peer) costs however many ask.
pub(crate) struct Recent<T>(tokio::sync::Mutex<Option<(std::time::Instant, T)>>);

impl<T: Clone> Recent<T> {
    /// Nothing computed yet.
    pub fn new() -> Self {
        Recent(tokio::sync::Mutex::new(None))
    }

    /// The value of at most `fresh` ago, or `make`'s.
    pub async fn get_or<F: std::future::Future<Output = T>>(
        &self,
        fresh: std::time::Duration,
        make: impl FnOnce() -> F,
    ) -> T {
        let mut last = self.0.lock().await;
        if let Some((at, v)) = last.as_ref() {
            if at.elapsed() < fresh {
                return v.clone();
            }
        }
        let v = make().await;
        *last = Some((std::time::Instant::now(), v.clone()));
        v
    }
}
