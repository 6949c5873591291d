//! The QUIC layer: transport settings, endpoints, and the duplicate-connection rule.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, VarInt};

use crate::config::TransportConfig;

/// Errors creating an endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The idle timeout does not fit QUIC's encoding.
    #[error("idle timeout {0:?} is out of range")]
    IdleTimeout(Duration),
}

/// Builds the quinn transport configuration.
///
/// `max_bidi_streams` is how many concurrent streams the *peer* may open to us: nodes allow
/// their configured limit, clients allow none (nodes never open streams to clients).
pub fn transport_config(
    t: &TransportConfig,
    max_bidi_streams: u32,
) -> Result<Arc<quinn::TransportConfig>, TransportError> {
    let ms = u64::try_from(t.idle_timeout.as_millis()).map_err(|_| TransportError::IdleTimeout(t.idle_timeout))?;
    let idle = VarInt::from_u64(ms).map_err(|_| TransportError::IdleTimeout(t.idle_timeout))?;
    let mut tc = quinn::TransportConfig::default();
    tc.keep_alive_interval(Some(t.keepalive))
        .max_idle_timeout(Some(IdleTimeout::from(idle)))
        .max_concurrent_bidi_streams(VarInt::from_u32(max_bidi_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    // PLPMTUD probes up to the bound; the peer's endpoint (below) caps it at what it accepts.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(t.max_udp_payload);
    tc.mtu_discovery_config(Some(mtu));
    Ok(Arc::new(tc))
}

/// The endpoint settings: the largest UDP payload this endpoint accepts, which it advertises
/// and the peer's path MTU discovery stops at (quinn's default, 1472, would cap every path
/// there whatever the discovery's bound).
pub fn endpoint_config(t: &TransportConfig) -> quinn::EndpointConfig {
    let mut e = quinn::EndpointConfig::default();
    // Validated config keeps it in quinn's range; an out-of-range value keeps quinn's default.
    let _ = e.max_udp_payload_size(t.max_udp_payload);
    e
}

/// Streams allowed to a peer when its connection opens; raised on demand up to the limit.
pub const INITIAL_STREAMS: u32 = 16;

/// How many concurrent streams a connection lets its peer open, raised as the peer uses them.
///
/// quinn keeps state for every stream it allows (about 84 B each, allocated when allowed),
/// so allowing a node's full limit upfront made every idle peer connection cost ~86 KiB at
/// 1,024. The allowance starts at [`INITIAL_STREAMS`] and doubles, up to the configured
/// limit, whenever the streams in flight reach three quarters of it: early enough that the
/// new credit (one MAX_STREAMS frame) arrives before the peer runs out. It never shrinks:
/// quinn frees no state when the limit goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAllowance {
    current: u32,
    max: u32,
}

impl StreamAllowance {
    /// An allowance that may grow to `max`.
    pub fn new(max: u32) -> Self {
        StreamAllowance {
            current: INITIAL_STREAMS.min(max),
            max,
        }
    }

    /// What the peer may open now.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Whether the allowance has reached its limit (it grows no more).
    pub fn at_limit(&self) -> bool {
        self.current >= self.max
    }

    /// A stream was accepted and `in_flight` are open now (this one included): the new
    /// allowance to give the peer, if it should grow.
    pub fn on_accept(&mut self, in_flight: u32) -> Option<u32> {
        if self.current >= self.max || u64::from(in_flight) * 4 < u64::from(self.current) * 3 {
            return None;
        }
        self.current = self.current.saturating_mul(2).min(self.max);
        Some(self.current)
    }
}

/// How long after its handler ends a stream still counts against the peer's allowance in
/// quinn: until the peer acknowledges our end of it (a round trip, plus its ack delay),
/// twice the round trip to be safe. Overcounting only grows the allowance sooner.
pub fn stream_release_lag(rtt: Duration) -> Duration {
    rtt * 2 + MAX_ACK_DELAY
}

/// The longest a QUIC peer delays an acknowledgement (quinn's default, RFC 9000's 25 ms).
const MAX_ACK_DELAY: Duration = Duration::from_millis(25);

/// Binds a UDP socket for an endpoint, reporting the address on failure, and sizes its
/// buffers to `buffer` bytes (0: the kernel's default).
pub fn bind_udp(addr: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket, TransportError> {
    let s = std::net::UdpSocket::bind(addr).map_err(|source| TransportError::Bind { addr, source })?;
    if buffer > 0 {
        size_buffers(&s, buffer);
    }
    Ok(s)
}

/// Best effort: a smaller buffer than asked costs throughput, not correctness, so it is a
/// warning that says which sysctl to raise.
fn size_buffers(s: &std::net::UdpSocket, want: usize) {
    let r = socket2::SockRef::from(s);
    let _ = r.set_recv_buffer_size(want);
    let _ = r.set_send_buffer_size(want);
    // Linux reports twice the size it was given (the other half is its bookkeeping).
    let got = r.recv_buffer_size().unwrap_or(0);
    if got < want {
        tracing::warn!(
            asked = want,
            got,
            "the UDP receive buffer is smaller than transport.udp_buffer; raise net.core.rmem_max (and wmem_max) to at least {want} or packets will be dropped under load"
        );
    }
}

/// Two nodes that dial each other at the same moment end up with two connections; both sides
/// must keep the same one without talking about it.
///
/// Rule: if the two connections were dialled by different sides and the existing one is
/// young (`< window`), keep the one dialled by the node with the lower name. Otherwise keep
/// the newer one: a peer dials only when it has lost its connection to us, so an older
/// connection it did not dial is one it no longer has.
///
/// Returns `true` if the new connection should replace the existing one.
pub fn keep_new_connection(
    me: &str,
    peer: &str,
    existing_dialed_by_me: bool,
    existing_age: Duration,
    new_dialed_by_me: bool,
    window: Duration,
) -> bool {
    if existing_dialed_by_me == new_dialed_by_me || existing_age >= window {
        return true;
    }
    let i_am_lower = me < peer;
    // The preferred connection is the one dialled by the lower name.
    new_dialed_by_me == i_am_lower
}

/// The window in which two connections count as a simultaneous dial.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = DEDUP_WINDOW;
    const YOUNG: Duration = Duration::from_millis(10);

    #[test]
    fn simultaneous_dial_both_sides_agree() {
        // a dials b and b dials a at once. Each side sees the other's connection second.
        // On a: existing = a's own dial, new = b's dial.
        let a_keeps_new = keep_new_connection("a", "b", true, YOUNG, false, W);
        // On b: existing = b's own dial, new = a's dial.
        let b_keeps_new = keep_new_connection("b", "a", true, YOUNG, false, W);
        // Both must keep a's dial: a keeps existing (false), b takes new (true).
        assert!(!a_keeps_new);
        assert!(b_keeps_new);
        // And in the other arrival order the same connection survives.
        assert!(keep_new_connection("a", "b", false, YOUNG, true, W));
        assert!(!keep_new_connection("b", "a", false, YOUNG, true, W));
    }

    #[test]
    fn udp_buffers_are_sized_up_to_the_kernel_cap() {
        let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok());
        let want = 1 << 20;
        let s = bind_udp("127.0.0.1:0".parse().unwrap(), want).unwrap();
        let got = socket2::SockRef::from(&s).recv_buffer_size().unwrap();
        // Linux doubles what it is given, up to twice the cap.
        if let Some(cap) = cap {
            assert!(got >= want.min(cap), "asked {want}, cap {cap}, got {got}");
        }
        let default = bind_udp("127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let kernel = socket2::SockRef::from(&default).recv_buffer_size().unwrap();
        assert!(
            cap.is_none_or(|c| c < want) || got > kernel,
            "sized {got}, default {kernel}"
        );
    }

    #[test]
    fn stream_allowance_grows_ahead_of_use_and_stops_at_the_limit() {
        let mut a = StreamAllowance::new(1024);
        assert_eq!(a.current(), INITIAL_STREAMS);
        // Below three quarters: nothing to do.
        assert_eq!(a.on_accept(11), None);
        assert_eq!(a.on_accept(12), Some(32));
        assert_eq!(a.on_accept(23), None);
        assert_eq!(a.on_accept(24), Some(64));
        // A burst that keeps every stream busy doubles at each step up to the limit.
        let mut steps = vec![];
        for n in 25..=1024 {
            if let Some(c) = a.on_accept(n) {
                steps.push(c);
            }
        }
        assert_eq!(steps, [128, 256, 512, 1024]);
        assert!(a.at_limit());
        assert_eq!(a.on_accept(1024), None);
        // A limit below the initial allowance is the allowance, and never grows.
        let mut small = StreamAllowance::new(4);
        assert_eq!(small.current(), 4);
        assert_eq!(small.on_accept(4), None);
        // Odd limits are reached exactly.
        let mut odd = StreamAllowance::new(100);
        let grown: Vec<u32> = (1..=100).filter_map(|n| odd.on_accept(n)).collect();
        assert_eq!(grown, [32, 64, 100]);
    }

    #[test]
    fn reconnects_replace_stale_connections() {
        assert!(keep_new_connection("a", "b", true, YOUNG, true, W));
        assert!(keep_new_connection("a", "b", false, YOUNG, false, W));
        // b restarted and dialled a; a's old dial to b is stale even though a is lower.
        assert!(keep_new_connection("a", "b", true, Duration::from_secs(60), false, W));
    }
}

/// Closes `conns` and waits, at most `limit`, until each one's CONNECTION_CLOSE is on the
/// wire, so peers learn of it at once instead of at their idle timeout.
///
/// [`quinn::Endpoint::wait_idle`] waits longer for nothing more: it also waits out every
/// connection's draining period (three PTOs, about a second before the first RTT sample) and
/// half-open handshakes to peers that are gone. A close is never acknowledged in QUIC, so
/// "sent" is all there is to wait for.
pub async fn close_and_flush(conns: &[quinn::Connection], code: VarInt, reason: &[u8], limit: Duration) {
    // A connection the peer closed first has nothing to send. quinn counts no CONNECTION_CLOSE
    // frames, but after a close that packet is the only one a connection sends.
    let ours: Vec<(&quinn::Connection, u64)> = conns
        .iter()
        .filter(|c| c.close_reason().is_none())
        .map(|c| (c, c.stats().udp_tx.datagrams))
        .collect();
    for (c, _) in &ours {
        c.close(code, reason);
    }
    // Sent, or closed by the peer first after all (then our close had nothing to do).
    let sent = |(c, before): &(&quinn::Connection, u64)| {
        c.stats().udp_tx.datagrams > *before || !matches!(c.close_reason(), Some(quinn::ConnectionError::LocallyClosed))
    };
    let flushed = async {
        // The connection drivers send as soon as they are polled: a few ticks at most.
        while !ours.iter().all(sent) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let _ = tokio::time::timeout(limit, flushed).await;
}

/// Frees the UDP address of a closed `endpoint` whose connections are still draining, and
/// waits (at most `limit`) until it can be bound again.
///
/// The endpoint is handed throwaway sockets: the first rebind keeps the old socket as the
/// "previous" one (quinn still reads it during a migration), the second drops it, and each
/// connection lets go of it when its driver takes the rebind. Whether that has happened is
/// seen by binding the address, the only test there is.
pub async fn release_socket(endpoint: &quinn::Endpoint, addr: SocketAddr, limit: Duration) {
    let spare = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    for _ in 0..2 {
        match std::net::UdpSocket::bind(spare) {
            Ok(s) => {
                if endpoint.rebind(s).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let free = async {
        while std::net::UdpSocket::bind(addr).is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let _ = tokio::time::timeout(limit, free).await;
}

/// How long a connection may stay completely silent after we sent on it before the peer is
/// taken for down: four of its probe timeouts (RTT plus the peer's 25 ms maximum ack delay;
/// a live peer acknowledges within one, and a lost packet or two is repaired within the
/// next), and never under 250 ms, so a scheduling hiccup on a busy host is not a crash.
pub fn silence_bound(conn: &quinn::Connection) -> Duration {
    silence_bound_for(conn.rtt())
}

fn silence_bound_for(rtt: Duration) -> Duration {
    const FLOOR: Duration = Duration::from_millis(250);
    ((rtt + MAX_ACK_DELAY) * 4).max(FLOOR)
}

#[cfg(test)]
mod silence_tests {
    use super::*;

    #[test]
    fn silence_bound_follows_the_rtt_above_a_floor() {
        assert_eq!(
            silence_bound_for(Duration::from_micros(100)),
            Duration::from_millis(250)
        );
        assert_eq!(silence_bound_for(Duration::from_millis(75)), Duration::from_millis(400));
    }
}
