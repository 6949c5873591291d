//! Certificate rotation without a restart: the node re-reads its CA, certificate, key and
//! CRL files every `tls.reload`, and when they changed, installs the new ones for the
//! handshakes that follow. Established connections keep the keys they agreed on.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{info, warn};

use super::shared::{lock, Shared};
use super::NodeError;
use crate::identity::{Role, TlsMaterial};

/// The bytes of the files, to notice any change (an mtime can miss a same-second rewrite).
fn snapshot(shared: &Shared) -> Vec<Option<Vec<u8>>> {
    let t = &shared.cfg.tls;
    [Some(&t.ca), Some(&t.cert), Some(&t.key), t.crl.as_ref()]
        .into_iter()
        .map(|p| p.and_then(|p| std::fs::read(p).ok()))
        .collect()
}

/// Watches the files until shutdown. Started only for nodes whose TLS came from files.
pub(crate) async fn reload_loop(shared: Arc<Shared>) {
    let every = shared.cfg.tls.reload;
    if every.is_zero() {
        return;
    }
    let mut last = snapshot(&shared);
    let mut shutdown = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = snapshot(&shared);
        if now == last {
            continue;
        }
        last = now;
        match reload(&shared) {
            Ok(()) => {
                shared.stats.tls_reloads.fetch_add(1, Ordering::Relaxed);
                info!(cert = %shared.cfg.tls.cert.display(), "certificates reloaded; new handshakes use them");
                super::log_cert_expiry(*lock(&shared.cert_not_after));
            }
            Err(e) => {
                // Often a rotation caught half way (certificate written, key not yet): the
                // next change of the files triggers another attempt.
                shared.stats.tls_reload_failures.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "certificate files changed but cannot be used; keeping the current ones");
            }
        }
    }
}

fn reload(shared: &Shared) -> Result<(), NodeError> {
    let tls = TlsMaterial::load(&shared.cfg.tls, Role::Node)?;
    if tls.identity() != &shared.identity {
        return Err(NodeError::NameMismatch {
            config: shared.identity.to_string(),
            cert: tls.identity().clone(),
        });
    }
    let (accept, dial) = super::transports(&shared.cfg)?;
    let mut server = quinn::ServerConfig::with_crypto(tls.server_config()?);
    server.transport_config(accept);
    let mut client = quinn::ClientConfig::new(tls.client_config()?);
    client.transport_config(dial);
    shared.endpoint.set_server_config(Some(server));
    *lock(&shared.client_config) = client;
    *lock(&shared.cert_not_after) = tls.not_after();
    Ok(())
}
