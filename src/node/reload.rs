//! Certificate rotation without a restart: the node re-reads its CA, certificate, key and
//! CRL files every `tls.reload`, and when they changed, installs the new ones for the
//! handshakes that follow. Established connections keep the keys they agreed on.

use std::sync::Arc;

use tracing::{info, warn};

use super::error::NodeError;
use super::metrics::bump;
use super::state::State;
use super::tls::{log_cert_expiry, quinn_configs};
use crate::identity::{Role, TlsMaterial};

/// The bytes of the files, to notice any change (an mtime can miss a same-second rewrite).
fn snapshot(shared: &State) -> Vec<Option<Vec<u8>>> {
    let t = &shared.ctx.cfg.tls;
    [Some(&t.ca), Some(&t.cert), Some(&t.key), t.crl.as_ref()]
        .into_iter()
        .map(|p| p.and_then(|p| std::fs::read(p).ok()))
        .collect()
}

/// Watches the files until shutdown. Started only for nodes whose TLS came from files.
pub(crate) async fn reload_loop(shared: Arc<State>) {
    let every = shared.ctx.cfg.tls.reload;
    if every.is_zero() {
        return;
    }
    let mut last = snapshot(&shared);
    let mut shutdown = shared.ctx.on_shutdown();
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
                bump(&shared.metrics.stats.tls_reloads);
                info!(cert = %shared.ctx.cfg.tls.cert.display(), "certificates reloaded; new handshakes use them");
                log_cert_expiry(shared.tls.not_after());
            }
            Err(e) => {
                // Often a rotation caught half way (certificate written, key not yet): the
                // next change of the files triggers another attempt.
                bump(&shared.metrics.stats.tls_reload_failures);
                warn!(error = %e, "certificate files changed but cannot be used; keeping the current ones");
            }
        }
    }
}

fn reload(shared: &State) -> Result<(), NodeError> {
    let tls = TlsMaterial::load(&shared.ctx.cfg.tls, Role::Node)?;
    if tls.identity() != &shared.ctx.identity {
        return Err(NodeError::NameMismatch {
            config: shared.ctx.identity.to_string(),
            cert: tls.identity().clone(),
        });
    }
    let (server, client) = quinn_configs(&shared.ctx.cfg, &tls)?;
    shared.ctx.endpoint.set_server_config(Some(server));
    shared.tls.replace(client, tls.not_after());
    Ok(())
}
