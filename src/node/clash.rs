//! Two live processes holding one node identity: told apart from a restart, and refused.
//!
//! A node that restarted dials in with a new boot id while its old connection is silent (it
//! crashed) or closed (it stopped): the new connection replaces the old one at once, as
//! always. A second process with the same certificate dials in with another boot id while
//! the first still answers on its connection: that is a clash. Letting the newcomer win, as
//! a restart would, makes the two displace each other every reconnect, each briefly
//! suspected; so the connection that holds is kept, the newcomer is refused with
//! `IDENTITY_CLASH`, and the clash is raised loudly (error log, metric, `/status`): it is a
//! misconfiguration or a stolen key.

use std::time::Duration;

use quinn::Connection;
use tracing::error;

use super::metrics::bump;
use super::state::State;
use crate::protocol::{codes, Hello};

/// The boot id a dialling node put in its TLS server name, if it is a node that does.
pub(crate) fn boot_of_dialler(conn: &Connection) -> Option<u64> {
    let data = conn.handshake_data()?;
    let hs = data.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?;
    Hello::from_server_name(hs.server_name.as_deref()?)
}

/// Whether the process on `old` still answers: a ping on its control stream comes back
/// within the silence bound.
pub(crate) async fn still_alive(shared: &State, peer: &str, old: &Connection) -> bool {
    let nonce = u64::try_from(shared.ctx.now().as_micros()).unwrap_or(u64::MAX);
    let bound = crate::transport::silence_bound(old);
    let before = old.stats().udp_rx.datagrams;
    match shared.peers.ping_acked(peer, nonce) {
        // The pong, or at least the QUIC acknowledgement of the ping's packet (which comes
        // within a round trip even when the peer's application is slow or its queue full).
        Some(pong) => {
            let answered = matches!(tokio::time::timeout(bound, pong).await, Ok(Ok(())));
            shared.peers.forget_pong(peer, nonce);
            answered || (old.close_reason().is_none() && old.stats().udp_rx.datagrams > before)
        }
        // No control stream yet: anything heard on the connection will do.
        None => {
            tokio::time::sleep(bound.max(Duration::from_millis(250))).await;
            old.close_reason().is_none() && old.stats().udp_rx.datagrams > before
        }
    }
}

/// Refuses `new`, which claims `peer`'s identity while `old` holds it; counts and logs it.
pub(crate) fn refuse(shared: &State, peer: &str, old: &Connection, new: &Connection) {
    bump(&shared.metrics.stats.identity_clashes);
    let (kept, refused) = (old.remote_address(), new.remote_address());
    let count = shared
        .peers
        .record_clash(peer, kept, refused, crate::unix_time().as_secs());
    // Once per refused connection: the refused process backs off to reconnect.max between
    // attempts, so this cannot flood the log.
    error!(
        node = %peer, %kept, %refused, count,
        "identity clash: two live processes hold node {peer}'s certificate; keeping the connection from {kept}, refusing the one from {refused}. Either two nodes were given the same name and certificate, or the key was stolen (revoke it with `quicmesh certs revoke`)"
    );
    let reason =
        format!("identity clash: another live process with this node's certificate is connected here from {kept}");
    new.close(codes::IDENTITY_CLASH, reason.as_bytes());
}
