//! Small synchronisation helpers shared by the node's state parts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

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
