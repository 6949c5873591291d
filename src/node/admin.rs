//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/status` (JSON), `/ui` and
//! `/v1/dashboard` (the web dashboard, `dashboard.rs`), `/healthz`,
//! `/readyz`. Served on its own address (`admin.listen`, loopback by default), never on the
//! mesh port: it is unauthenticated, for the host's monitoring and the service manager.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::debug;

use super::failure::HandshakeFailure;
use super::reach::DialFailure;
use super::services_api;
use super::state::State;
use super::sync::lock;
use crate::protocol::RejectCode;

type Labels = Vec<(&'static str, String)>;

/// Binds the admin listener (so a taken port fails the node's start, with the address named).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves admin requests until shutdown.
pub(crate) async fn serve(shared: Arc<State>, listener: TcpListener) {
    let mut shutdown = shared.ctx.on_shutdown();
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(dispatch(&shared, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// `/v1/services` (which reads a body and changes state) or one of the read-only pages.
async fn dispatch(shared: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/v1/reload" {
        if req.method() != Method::POST {
            return json(405, &serde_json::json!({ "error": "use POST /v1/reload" }));
        }
        return match super::config_reload::reload_from_source(shared) {
            Ok(r) => json(200, &serde_json::json!(r)),
            Err(e @ super::config_reload::ReloadError::NoSource) => {
                json(409, &serde_json::json!({ "error": e.to_string() }))
            }
            Err(e) => json(400, &serde_json::json!({ "error": e.to_string() })),
        };
    }
    if req.uri().path() == "/v1/dashboard" {
        if req.method() != Method::GET {
            return json(405, &serde_json::json!({ "error": "use GET /v1/dashboard" }));
        }
        return json(200, &super::dashboard::snapshot(shared).await);
    }
    let Some(rest) = req.uri().path().strip_prefix("/v1/services").map(str::to_owned) else {
        return route(shared, &req);
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return route(shared, &req);
    }
    let method = req.method().clone();
    let body =
        match http_body_util::BodyExt::collect(http_body_util::Limited::new(req.into_body(), services_api::MAX_BODY))
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                let v = serde_json::json!({ "error": format!("request body over {} bytes", services_api::MAX_BODY) });
                return json(413, &v);
            }
            Err(e) => return json(400, &serde_json::json!({ "error": format!("request body: {e}") })),
        };
    let (code, v) = services_api::handle(shared, &method, &rest, &body);
    json(code, &v)
}

fn json(code: u16, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    respond(status, "application/json", body)
}

fn route(shared: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/ui" | "/ui/" => respond(StatusCode::OK, "text/html; charset=utf-8", super::dashboard::PAGE),
        "/readyz" => match readiness(shared) {
            Ok(()) => respond(StatusCode::OK, "text/plain", "ready\n"),
            Err(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        "/status" => match serde_json::to_vec_pretty(&shared.status_report()) {
            Ok(json) => respond(StatusCode::OK, "application/json", json),
            Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
        },
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics(shared),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /ui, /metrics, /status, /healthz, /readyz, /v1/services, /v1/dashboard\n",
        ),
    }
}

/// Ready: not draining, and joined — connected to a peer, unless the node was given nobody
/// to find (a mesh of one is ready at once).
fn readiness(shared: &State) -> Result<(), String> {
    if shared.is_draining() {
        return Err("draining".into());
    }
    let connected = shared.peers.any_connected();
    let alone = shared.ctx.cfg.peers.is_empty() && shared.ctx.cfg.discovery.is_empty();
    if connected || alone {
        return Ok(());
    }
    // Name the address that failed last, with its error: that is what there is to fix.
    let troubles = shared.reach.troubles();
    match troubles.iter().max_by_key(|(_, t)| t.since_unix) {
        Some((target, t)) => Err(format!(
            "no peer reachable; {} address(es) failing, e.g. {target}: {} ({} failed dials): {}",
            troubles.len(),
            t.error,
            t.failures,
            t.reason.advice()
        )),
        None => Err("no peer reachable yet (still dialling)".into()),
    }
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

/// The node's metrics, read from its live state at scrape time.
fn metrics(shared: &State) -> String {
    let mut reg = Registry::with_prefix("quicmesh");
    let s = &shared.metrics.stats;
    let counters: [(&str, &str, &std::sync::atomic::AtomicU64); 18] = [
        (
            "streams_deadline_exceeded",
            "Accepted streams stopped because their deadline passed while being served or relayed",
            &s.deadlines_exceeded,
        ),
        ("streams_accepted", "Service streams accepted", &s.accepted),
        (
            "streams_served_local",
            "Service streams served by this node",
            &s.served_local,
        ),
        ("streams_relayed", "Service streams relayed to a peer", &s.relayed),
        (
            "handshake_failures",
            "Incoming handshakes that failed",
            &s.handshake_failures,
        ),
        (
            "bytes_to_services",
            "Bytes spliced from callers to services (TCP backends and relays)",
            &s.bytes_up,
        ),
        (
            "bytes_to_callers",
            "Bytes spliced from services back to callers",
            &s.bytes_down,
        ),
        (
            "peer_reconnects",
            "Peers connected again after their connection was lost (either side dialled)",
            &s.reconnects,
        ),
        (
            "identity_clashes",
            "Connections refused because another live process holds the same node identity",
            &s.identity_clashes,
        ),
        (
            "peer_links_trimmed",
            "Peer connections closed for being past limits.max_peer_connections (a mesh past the cap keeps a bounded overlay)",
            &s.links_trimmed,
        ),
        (
            "peer_losses",
            "Connections to peers lost (not retired as duplicates, not closed in order); zero in a healthy mesh",
            &s.peer_losses,
        ),
        ("gossip_rounds", "Gossip rounds run", &s.gossip_rounds),
        (
            "gossip_sent_bytes",
            "Bytes of gossip messages sent on control streams",
            &s.gossip_bytes_sent,
        ),
        (
            "gossip_received_bytes",
            "Bytes of gossip messages received on control streams",
            &s.gossip_bytes_received,
        ),
        (
            "connection_migrations",
            "Connections whose peer's address changed (QUIC migration)",
            &s.migrations,
        ),
        (
            "handshake_retries",
            "Retry packets sent to validate addresses above limits.max_pending_handshakes",
            &s.retries,
        ),
        (
            "tls_reloads",
            "Certificate files reloaded after a change",
            &s.tls_reloads,
        ),
        (
            "tls_reload_failures",
            "Certificate reloads that failed (the old ones stayed in use)",
            &s.tls_reload_failures,
        ),
    ];
    for (name, help, value) in counters {
        counter(&mut reg, name, help, value.load(Ordering::Relaxed));
    }
    let rejected = Family::<Labels, Counter>::default();
    for code in RejectCode::ALL {
        rejected
            .get_or_create(&vec![("code", code.to_string())])
            .inc_by(s.rejected[code.index()].load(Ordering::Relaxed));
    }
    reg.register("streams_rejected", "Streams rejected, by reject code", rejected);
    let failures = Family::<Labels, Counter>::default();
    for reason in HandshakeFailure::ALL {
        failures
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc_by(s.handshake_failure_reasons[reason.index()].load(Ordering::Relaxed));
    }
    reg.register(
        "handshake_failures_by_reason",
        "Incoming handshakes that failed, by reason",
        failures,
    );
    let healthy = Family::<Labels, Gauge>::default();
    let transitions = Family::<Labels, Counter>::default();
    let took = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (service, _, health, n, last, _) in shared.health.rows() {
        let l = vec![("service", service)];
        healthy
            .get_or_create(&l)
            .set(i64::from(health == crate::health::Health::Passing));
        transitions.get_or_create(&l).inc_by(n);
        if let Some(d) = last {
            took.get_or_create(&l).set(d.as_secs_f64());
        }
    }
    reg.register(
        "service_healthy",
        "1 if the service's backend passes its health checks, 0 if critical",
        healthy,
    );
    reg.register(
        "health_check_transitions",
        "Changes of a backend's health (passing/critical)",
        transitions,
    );
    reg.register(
        "health_check_seconds",
        "How long the last health check of each service took",
        took,
    );
    pool_metrics(&mut reg, shared);
    let dials = Family::<Labels, Counter>::default();
    for reason in DialFailure::ALL {
        dials
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc_by(shared.reach.count(reason));
    }
    reg.register("dial_failures", "Dials of peers that failed, by reason", dials);
    gauge(
        &mut reg,
        "peers_unreachable",
        "Peer addresses whose last dial failed",
        i64::try_from(shared.reach.troubles().len()).unwrap_or(i64::MAX),
    );
    gauge(
        &mut reg,
        "handshakes_pending",
        "Incoming handshakes in progress",
        i64::try_from(shared.metrics.pending_handshakes.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
    );
    let decisions = Family::<Labels, Counter>::default();
    for ((service, node), n) in lock(&shared.routing).decisions() {
        decisions
            .get_or_create(&vec![("service", service.clone()), ("node", node.clone())])
            .inc_by(*n);
    }
    reg.register(
        "routing_decisions",
        "Streams the balancer sent to each node, per service",
        decisions,
    );
    if let Some(t) = shared.tls.not_after() {
        gauge(
            &mut reg,
            "cert_not_after_timestamp_seconds",
            "When this node's certificate expires (Unix time)",
            t,
        );
    }
    let in_flight = shared.load.in_flight();
    gauge(
        &mut reg,
        "streams_in_flight",
        "Service streams in flight",
        i64::try_from(in_flight).unwrap_or(i64::MAX),
    );
    // Tasks that outlive their work are the leak a long soak finds (examples/chaos.rs).
    gauge(
        &mut reg,
        "tasks",
        "Tokio tasks alive in the node process",
        tokio::runtime::Handle::try_current()
            .map_or(0, |h| i64::try_from(h.metrics().num_alive_tasks()).unwrap_or(i64::MAX)),
    );
    gauge(
        &mut reg,
        "connections",
        "Open connections (peers and clients)",
        i64::try_from(shared.metrics.connections()).unwrap_or(i64::MAX),
    );
    gauge(
        &mut reg,
        "draining",
        "1 while the node drains before stopping",
        i64::from(shared.is_draining()),
    );

    let up = Family::<Labels, Gauge>::default();
    let rtt = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let rtts = shared.peers.rtts();
    for (name, p) in shared.peers.snapshot() {
        let live = p.live();
        up.get_or_create(&vec![("peer", name.clone())])
            .set(i64::from(live.is_some()));
        if let Some(c) = live {
            let secs = rtts.get(&name).copied().unwrap_or_else(|| c.rtt().as_secs_f64());
            rtt.get_or_create(&vec![("peer", name.clone())]).set(secs);
        }
    }
    reg.register("peer_up", "1 if the connection to the peer is up", up);
    reg.register(
        "peer_rtt_seconds",
        "Round-trip time to the peer (control-stream ping EWMA)",
        rtt,
    );

    let members = Family::<Labels, Gauge>::default();
    for m in lock(&shared.gossip).members() {
        members.get_or_create(&vec![("status", m.status.to_string())]).inc();
    }
    reg.register("members", "Members in this node's gossip view, by status", members);

    if let Some(d) = &shared.ctx.discovery {
        let lookups = Family::<Labels, Counter>::default();
        let failures = Family::<Labels, Counter>::default();
        let endpoints = Family::<Labels, Gauge>::default();
        for w in d.status() {
            let l = vec![("name", w.name.clone())];
            lookups.get_or_create(&l).inc_by(w.lookups);
            failures.get_or_create(&l).inc_by(w.failures);
            endpoints
                .get_or_create(&l)
                .set(i64::try_from(w.endpoints.len()).unwrap_or(i64::MAX));
        }
        reg.register("dns_lookups", "SRV lookups done", lookups);
        reg.register("dns_failures", "SRV lookups that failed", failures);
        reg.register("dns_endpoints", "Endpoints in the last good SRV answer", endpoints);
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
        out = format!("# encoding failed: {e}\n");
    }
    out
}

/// The warm pools' gauges and counters, by service.
fn pool_metrics(reg: &mut Registry, shared: &State) {
    let idle = Family::<Labels, Gauge>::default();
    let size = Family::<Labels, Gauge>::default();
    let takes = Family::<Labels, Counter>::default();
    let failures = Family::<Labels, Counter>::default();
    let closed = Family::<Labels, Counter>::default();
    for (service, _, cfg, n, stats) in shared.pools.rows() {
        let l = vec![("service", service.clone())];
        idle.get_or_create(&l).set(i64::try_from(n).unwrap_or(i64::MAX));
        size.get_or_create(&l).set(i64::try_from(cfg.size).unwrap_or(i64::MAX));
        failures.get_or_create(&l).inc_by(stats.failed);
        for (result, v) in [("hit", stats.hits), ("miss", stats.misses)] {
            takes
                .get_or_create(&vec![("service", service.clone()), ("result", result.to_owned())])
                .inc_by(v);
        }
        for (reason, v) in [("expired", stats.expired), ("dead", stats.dead)] {
            closed
                .get_or_create(&vec![("service", service.clone()), ("reason", reason.to_owned())])
                .inc_by(v);
        }
    }
    reg.register("pool_idle", "Warm backend connections open and idle, by service", idle);
    reg.register(
        "pool_size",
        "Warm backend connections wanted (services.NAME.preconnect)",
        size,
    );
    reg.register(
        "pool_takes",
        "New streams that took a warm connection (hit) or connected themselves (miss)",
        takes,
    );
    reg.register(
        "pool_connect_failures",
        "Connects of warm pools to their backend that failed",
        failures,
    );
    reg.register(
        "pool_closed",
        "Idle warm connections closed: idle too long (expired) or closed by the backend (dead)",
        closed,
    );
}
