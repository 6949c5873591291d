//! Runs the lookups of every `srv:` name on schedule and publishes the endpoints found.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::name::SrvName;
use super::order::Endpoint;
use super::resolve::{DiscoveryError, SrvResolver};
use super::settings::DnsConfig;
use super::watch::{Step, Watch, WatchStatus};

/// Discovery of nodes through a set of SRV names.
///
/// [`Discovery::run`] keeps every name fresh; [`Discovery::endpoints`] is the union of their
/// last good answers, and [`Discovery::subscribe`] says when it changed.
pub struct Discovery {
    resolver: SrvResolver,
    watches: Mutex<Vec<Watch>>,
    changed: watch::Sender<u64>,
    rng: Mutex<StdRng>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("servers", &self.resolver.servers())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Discovery {
    /// Discovery of `names` through the name servers of `settings`; nothing is looked up yet.
    pub fn new(names: &[SrvName], settings: &DnsConfig) -> Result<Arc<Self>, DiscoveryError> {
        let resolver = SrvResolver::new(settings)?;
        let now = Instant::now();
        let watches = names.iter().map(|n| Watch::new(n.clone(), settings, now)).collect();
        Ok(Arc::new(Discovery {
            resolver,
            watches: Mutex::new(watches),
            changed: watch::channel(0).0,
            rng: Mutex::new(StdRng::from_os_rng()),
        }))
    }

    /// The name servers asked, for log lines.
    pub fn servers(&self) -> &str {
        self.resolver.servers()
    }

    /// Every endpoint of every name's last good answer.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut all: Vec<Endpoint> = lock(&self.watches)
            .iter()
            .flat_map(|w| w.endpoints().iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// A snapshot of every name's discovery.
    pub fn status(&self) -> Vec<WatchStatus> {
        let now = Instant::now();
        lock(&self.watches).iter().map(|w| w.status(now)).collect()
    }

    /// Changes whenever [`Discovery::endpoints`] may have changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Looks up every name whose lookup is due (all of them, the first time), concurrently.
    pub async fn refresh_due(&self) {
        let now = Instant::now();
        let due: Vec<SrvName> = lock(&self.watches)
            .iter()
            .filter(|w| w.due() <= now)
            .map(|w| w.name().clone())
            .collect();
        let lookups = due.into_iter().map(|name| async move {
            let outcome = self.resolver.lookup(&name).await;
            (name, outcome)
        });
        let mut changed = false;
        for (name, outcome) in futures_util::future::join_all(lookups).await {
            changed |= self.apply(&name, outcome);
        }
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Feeds one lookup's outcome to its watch and logs what happened; true if the endpoints
    /// changed.
    fn apply(&self, name: &SrvName, outcome: Result<super::resolve::Answer, super::resolve::LookupError>) -> bool {
        let now = Instant::now();
        let mut watches = lock(&self.watches);
        let Some(w) = watches.iter_mut().find(|w| w.name() == name) else {
            return false;
        };
        let mut rng = lock(&self.rng);
        let servers = self.resolver.servers();
        let step = match outcome {
            Ok(answer) => {
                for why in &answer.unresolved {
                    warn!(%name, %servers, target = %why, "SRV target has no address; skipping it");
                }
                w.answered(now, answer.endpoints, answer.ttl, &mut *rng)
            }
            Err(e) => w.failed(now, e.to_string(), &mut *rng),
        };
        match step {
            Step::Fresh { diff, next, recovered } => {
                if recovered {
                    info!(%name, %servers, endpoints = w.endpoints().len(), "DNS discovery answers again");
                }
                if diff.added.is_empty() && diff.removed.is_empty() {
                    debug!(%name, endpoints = w.endpoints().len(), ?next, "SRV answer unchanged");
                    return false;
                }
                let show = |v: &[Endpoint]| v.iter().map(|e| format!("{}={}", e.target, e.addr)).collect::<Vec<_>>();
                info!(%name, added = ?show(&diff.added), removed = ?show(&diff.removed), ?next, "SRV answer changed");
                true
            }
            Step::Failed { retry, stale, streak } => {
                let error = w.status(now).error.unwrap_or_default();
                // Every failure is counted in the status; the log says it at the first, and then
                // at the 2nd, 4th, 8th... so an outage does not flood it.
                if streak.is_power_of_two() {
                    if stale > 0 {
                        warn!(%name, %servers, %error, streak, ?retry, "DNS discovery failed; still using the last good answer ({stale} endpoints)");
                    } else {
                        warn!(%name, %servers, %error, streak, ?retry, "DNS discovery failed; no answer yet, working with the peers already known");
                    }
                } else {
                    debug!(%name, %servers, %error, streak, ?retry, "DNS discovery failed again");
                }
                false
            }
        }
    }

    /// Keeps every name fresh until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.refresh_due().await;
            let next = lock(&self.watches).iter().map(Watch::due).min();
            let Some(next) = next else { return };
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}
