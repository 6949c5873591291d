//! One accepted stream: read its header, check who may do what, then serve it locally or
//! relay it one hop to a peer that offers the service.

use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info};

use super::balance::{self, Choice};
use super::control::{end_control, run_control};
use super::ended::Ended;
use super::metrics::bump;
use super::route::{reject, route, Reject, Route};
use super::services::{Local, ServiceSet};
use super::state::State;
use super::sync::lock;
use crate::identity::{Identity, Role};
use crate::protocol::{
    codes, read_frame, read_header, write_frame, FrameError, RejectCode, Response, ServiceRequest, StreamHeader,
    StreamKind, PROTOCOL_VERSION, STATUS_SERVICE,
};
use crate::service::{splice_quic, splice_tcp, RequestContext, ServiceStream};

/// Writes a response frame, bounded in time so a peer that never reads cannot pin the task.
async fn respond(shared: &State, send: &mut SendStream, resp: &impl serde::Serialize) -> bool {
    matches!(
        tokio::time::timeout(shared.ctx.cfg.transport.header_timeout, write_frame(send, resp)).await,
        Ok(Ok(()))
    )
}

async fn send_reject(shared: &State, mut send: SendStream, mut recv: RecvStream, caller: &Identity, r: Reject) {
    let budget = shared.metrics.reject(r.code, shared.ctx.now());
    match budget {
        Some(0) => info!(caller = %caller, code = %r.code, reason = %r.reason, "stream rejected"),
        Some(held_back) => info!(
            caller = %caller,
            code = %r.code,
            reason = %r.reason,
            held_back,
            "stream rejected ({held_back} similar lines held back by the log rate limit; see quicmesh_streams_rejected_total)"
        ),
        None => debug!(caller = %caller, code = %r.code, reason = %r.reason, "stream rejected"),
    }
    let resp = Response::Reject {
        code: r.code,
        reason: r.reason,
    };
    if respond(shared, &mut send, &resp).await {
        let _ = send.finish();
    }
    let _ = recv.stop(codes::STREAM_ABORTED);
}

/// Serves one stream opened by `caller` on `conn`.
pub(crate) async fn handle_stream(
    shared: Arc<State>,
    conn: Connection,
    caller: Arc<Identity>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let header = tokio::time::timeout(
        shared.ctx.cfg.transport.header_timeout,
        read_header(&mut recv, shared.ctx.cfg.limits.max_header_bytes),
    )
    .await;
    let header = match header {
        Ok(Ok(h)) => h,
        Ok(Err(FrameError::Eof)) => {
            let _ = send.finish();
            return;
        }
        Ok(Err(e)) => {
            let r = reject(e.reject_code(), e.to_string());
            return send_reject(&shared, send, recv, &caller, r).await;
        }
        Err(_) => {
            let r = reject(
                RejectCode::BadHeader,
                format!("no stream header within {:?}", shared.ctx.cfg.transport.header_timeout),
            );
            return send_reject(&shared, send, recv, &caller, r).await;
        }
    };
    debug_assert_eq!(header.version, PROTOCOL_VERSION);
    match header.kind {
        StreamKind::Control => {
            if caller.role != Role::Node {
                let r = reject(RejectCode::Unauthorized, "only nodes may open a control stream");
                return send_reject(&shared, send, recv, &caller, r).await;
            }
            // The Accept carries which process this is (older peers ignore the trailer).
            let accept = (
                Response::Accept {
                    node: shared.ctx.name.clone(),
                },
                crate::protocol::Hello::new(shared.ctx.boot),
            );
            if !respond(&shared, &mut send, &accept).await {
                return;
            }
            // Whether the dialler takes pushed load is known once it pushes its own.
            let result = run_control(&shared, &conn, &caller.name, send, recv, false, None).await;
            end_control(&conn, result);
        }
        StreamKind::Service(req) => {
            if shared.is_draining() && req.service != STATUS_SERVICE {
                let r = reject(
                    RejectCode::Draining,
                    format!("node {} is draining before it stops; use another node", shared.ctx.name),
                );
                return send_reject(&shared, send, recv, &caller, r).await;
            }
            if caller.role == Role::Node {
                // A peer routes to us over this link: the overlay keeps it past its cap.
                shared.peers.used_for_service(&caller.name);
            }
            // Resolves once the caller has acknowledged the whole reply (or stopped the stream).
            let delivered = send.stopped();
            let in_use = shared.peers.in_use(&conn);
            let Ok(_permit) = shared.load.inflight.clone().try_acquire_owned() else {
                let r = reject(
                    RejectCode::Overloaded,
                    format!(
                        "node {} is at limits.max_inflight ({})",
                        shared.ctx.name, shared.ctx.cfg.limits.max_inflight
                    ),
                );
                return send_reject(&shared, send, recv, &caller, r).await;
            };
            bump(&shared.metrics.stats.accepted);
            let deadline = req
                .deadline_ms
                .map(|ms| Instant::now() + Duration::from_millis(u64::from(ms)));
            // One version of the service set for the whole stream, read once.
            let services = shared.services.current();
            let hop_limit = shared.ctx.cfg.limits.hop_limit;
            let routed = route(&shared.ctx.identity, &services, hop_limit, &caller, &req);
            let stream = Incoming {
                shared: &shared,
                services,
                conn: &conn,
                caller: &caller,
                send,
                recv,
                deadline,
            };
            let _counted = shared.load.service_stream(&req.service);
            // Serving and relaying are boxed: inline, their state (dispatch's 6.5 KB, serving's
            // 2 KB) would size every stream's future, the control stream's too, which lives as
            // long as the peer.
            match routed {
                Err(r) => stream.reject(r).await,
                Ok((origin, Route::Here(local))) => Box::pin(stream.serve_local(&origin, &req, local)).await,
                Ok((origin, Route::Choose(local))) => Box::pin(stream.dispatch(&origin, req, local)).await,
            }
            shared
                .load
                .track_delivery(delivered, in_use, shared.ctx.cfg.transport.idle_timeout);
        }
    }
}

/// An accepted stream ran out of time and was reset with `DEADLINE_EXCEEDED`: counted, and
/// logged at info within the rejected-stream log budget.
fn deadline_passed(shared: &State, caller: &Identity, service: &str, how: &str) {
    bump(&shared.metrics.stats.deadlines_exceeded);
    let what = "the caller's deadline passed while the stream was being";
    match shared.metrics.log_budget(shared.ctx.now()) {
        Some(_) => info!(%caller, service, "{what} {how}; reset it with DEADLINE_EXCEEDED (code 5)"),
        None => debug!(%caller, service, "{what} {how}; reset it with DEADLINE_EXCEEDED (code 5)"),
    }
}

fn timeout_until(deadline: Option<Instant>, cap: Duration) -> Duration {
    match deadline {
        Some(d) => d.saturating_duration_since(Instant::now()).min(cap),
        None => cap,
    }
}

/// Relay attempts per stream: the first candidate, and one retry if it refused or failed
/// before any byte of the caller's was sent on.
const RELAY_ATTEMPTS: usize = 2;

/// An accepted service stream whose header has been read and checked.
struct Incoming<'a> {
    shared: &'a Arc<State>,
    /// The local services as they were when the stream arrived.
    services: Arc<ServiceSet>,
    conn: &'a Connection,
    caller: &'a Identity,
    send: SendStream,
    recv: RecvStream,
    deadline: Option<Instant>,
}

/// Why opening the downstream leg of a relay failed.
enum Downstream {
    Rejected(RejectCode, String),
    Failed(String),
    /// Not a packet from the peer since the header went out, for several probe timeouts: it
    /// is down (crashed without closing), though its connection has not timed out yet.
    Silent(String),
}

impl Incoming<'_> {
    async fn reject(self, r: Reject) {
        send_reject(self.shared, self.send, self.recv, self.caller, r).await;
    }

    async fn accept(&mut self, node: &str) -> bool {
        let accept = Response::Accept { node: node.to_owned() };
        respond(self.shared, &mut self.send, &accept).await
    }

    fn fail(mut self, what: &str) {
        debug!(caller = %self.caller, error = %what, "service stream failed");
        let _ = self.send.reset(codes::STREAM_ABORTED);
        let _ = self.recv.stop(codes::STREAM_ABORTED);
    }

    async fn serve_local(mut self, origin: &Identity, req: &ServiceRequest, local: Local) {
        let shared = self.shared;
        let started = Instant::now();
        if !self.services.allows(&req.service, origin) {
            let why = format!(
                "{origin} may not call service {:?} on node {} (not in services.{}.allow)",
                req.service, shared.ctx.name, req.service
            );
            return self.reject(reject(RejectCode::Unauthorized, why)).await;
        }
        if self.deadline.is_some_and(|d| d <= Instant::now()) {
            let why = format!(
                "the deadline passed before service {:?} was called on node {}",
                req.service, shared.ctx.name
            );
            return self.reject(reject(RejectCode::DeadlineExceeded, why)).await;
        }
        if !matches!(local, Local::Status) {
            bump(&shared.metrics.stats.served_local);
        }
        match local {
            Local::Status => {
                if !self.accept(&shared.ctx.name).await {
                    return self.fail("caller stopped reading");
                }
                let report = shared.status_report();
                match postcard::to_allocvec(&report) {
                    Ok(bytes) => {
                        if self.send.write_all(&bytes).await.is_ok() {
                            let _ = self.send.finish();
                        }
                    }
                    Err(e) => self.fail(&e.to_string()),
                }
                return;
            }
            Local::Tcp(backend) => {
                let wait = timeout_until(self.deadline, shared.ctx.cfg.transport.connect_timeout);
                // The pools' lock only for a service that has one: the common case stays lock-free.
                let warm = if self.services.pools.contains_key(&req.service) {
                    shared.pools.take(&req.service, &backend)
                } else {
                    None
                };
                let connect = async {
                    match warm {
                        Some(t) => Ok(t),
                        None => TcpStream::connect(&backend).await,
                    }
                };
                let tcp = match tokio::time::timeout(wait, connect).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        let reason = format!(
                            "backend {backend} of service {:?} on node {}: {e}",
                            req.service, shared.ctx.name
                        );
                        return self.reject(reject(RejectCode::Unavailable, reason)).await;
                    }
                    Err(_) => {
                        let reason = format!(
                            "backend {backend} of service {:?} on node {}: connect timed out after {wait:?}",
                            req.service, shared.ctx.name
                        );
                        return self.reject(reject(RejectCode::Unavailable, reason)).await;
                    }
                };
                if !self.accept(&shared.ctx.name).await {
                    return self.fail("caller stopped reading");
                }
                match splice_tcp((self.conn, self.send, self.recv), tcp, self.deadline).await {
                    Ok(n) => shared.metrics.count_bytes(n.up, n.down),
                    Err(e) if e.is_deadline() => deadline_passed(shared, self.caller, &req.service, "served"),
                    Err(e) => debug!(caller = %self.caller, error = %e, "backend splice ended early"),
                }
            }
            Local::Handler(h) => {
                if !self.accept(&shared.ctx.name).await {
                    return self.fail("caller stopped reading");
                }
                let stream =
                    ServiceStream::new(self.send, self.recv, shared.ctx.name.clone()).with_deadline(self.deadline);
                let ctx = RequestContext {
                    caller: origin.clone(),
                    service: req.service.clone(),
                    node: shared.ctx.name.clone(),
                    key: req.key.clone(),
                };
                let fut = h.serve(stream, ctx);
                // Dropping the future drops its unfinished stream, which resets it (with
                // DEADLINE_EXCEEDED once the deadline has passed).
                let result = match self.deadline {
                    Some(d) => match tokio::time::timeout_at(d, fut).await {
                        Ok(r) => r,
                        Err(_) => {
                            deadline_passed(shared, self.caller, &req.service, "served");
                            Ok(())
                        }
                    },
                    None => fut.await,
                };
                if let Err(e) = result {
                    debug!(caller = %self.caller, service = %req.service, error = %e, "handler failed");
                }
            }
        }
        let took = started.elapsed();
        balance::record_success(shared, &shared.ctx.name, took);
        shared.load.served(took);
    }

    /// Picks the node for the stream with the service's balancer (this node competes if it
    /// serves the service), relays it there, and retries once on another node if the first
    /// refused or failed before any byte flowed (within the retry budget).
    async fn dispatch(mut self, origin: &Identity, req: ServiceRequest, local: Option<Local>) {
        let shared = self.shared;
        // Whether the next node could still relay it: then, with no server of the service
        // linked here, the stream may go through a linked node that routes it on.
        let can_relay = local.is_none() && req.hops.saturating_add(1) < shared.ctx.cfg.limits.hop_limit;
        if local.is_none() {
            // Past the overlay cap the service's nodes may all be beyond this node's links.
            super::on_demand::reach(shared, &req.service, self.deadline, can_relay).await;
        }
        lock(&shared.routing).deposit();
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<Reject> = None;
        for attempt in 0..RELAY_ATTEMPTS {
            if attempt > 0 && !lock(&shared.routing).withdraw() {
                break;
            }
            let mut choice = balance::choose(shared, &req.service, req.key.as_deref(), local.is_some(), &tried);
            // A relay node is not a server of the service: what goes wrong past it (its own
            // servers refusing, unreachable) is not its fault, and its latency includes a
            // hop. Charged, a relay would lose work (or be ejected) for the services it serves.
            let via_relay = choice.is_none() && can_relay;
            if via_relay {
                let mut exclude: Vec<&str> = tried.iter().map(String::as_str).collect();
                exclude.push(&self.caller.name);
                choice = super::on_demand::relay_via(shared, &req.service, &exclude).map(|(via, c)| {
                    debug!(service = %req.service, %via, "no server of the service linked here; relaying through a linked node");
                    Choice::Remote(via, c)
                });
            }
            let (peer, pconn) = match (choice, &local) {
                (Some(Choice::Local), Some(l)) => return self.serve_local(origin, &req, l.clone()).await,
                (Some(Choice::Remote(peer, conn)), _) => (peer, conn),
                _ => break,
            };
            shared.peers.used_for_service(&peer);
            let remaining_ms = match self.deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now()).as_millis();
                    if left == 0 {
                        return self
                            .reject(reject(RejectCode::DeadlineExceeded, "deadline passed before relaying"))
                            .await;
                    }
                    Some(u32::try_from(left).unwrap_or(u32::MAX))
                }
                None => None,
            };
            let down = ServiceRequest {
                hops: req.hops.saturating_add(1),
                origin: Some(origin.uri()),
                deadline_ms: remaining_ms,
                ..req.clone()
            };
            let _pending = balance::pending(shared, &peer);
            let _in_use = shared.peers.in_use(&pconn);
            let started = Instant::now();
            // Giving up on a silent peer early only helps if the stream can go elsewhere: on
            // the last attempt, or with no other node (or local service) to try, it waits the
            // header timeout as before (a lossy link to the only provider is slow, not dead).
            let elsewhere = attempt + 1 < RELAY_ATTEMPTS
                && (local.is_some()
                    || shared
                        .candidates(&req.service)
                        .0
                        .iter()
                        .any(|(n, _, _)| *n != peer && !tried.contains(n)));
            match self.open_downstream(&pconn, down, elsewhere).await {
                Ok((node, ds, dr)) => {
                    if !self.accept(&node).await {
                        let (mut ds, mut dr) = (ds, dr);
                        let _ = ds.reset(codes::STREAM_ABORTED);
                        let _ = dr.stop(codes::STREAM_ABORTED);
                        return self.fail("caller stopped reading");
                    }
                    bump(&shared.metrics.stats.relayed);
                    let first_byte = std::sync::OnceLock::new();
                    let result = splice_quic(
                        (self.conn, self.send, self.recv),
                        (&pconn, ds, dr),
                        self.deadline,
                        &first_byte,
                    )
                    .await;
                    // Latency is time to the first byte of the reply: the serving node's work
                    // plus the hop, without the time a long stream stays open.
                    let end = first_byte.get().copied().unwrap_or_else(Instant::now);
                    match &result {
                        Ok(n) => {
                            shared.metrics.count_bytes(n.up, n.down);
                            if !via_relay {
                                balance::record_success(shared, &peer, end.saturating_duration_since(started));
                            }
                        }
                        Err(e) if e.is_deadline() => deadline_passed(shared, self.caller, &req.service, "relayed"),
                        Err(e) => debug!(caller = %self.caller, via = %peer, error = %e, "relay ended early"),
                    }
                    return;
                }
                Err(Downstream::Rejected(code, reason)) if code.is_retryable() => {
                    debug!(via = %peer, %code, %reason, via_relay, "relay attempt refused");
                    if !via_relay {
                        balance::record_failure(shared, &peer);
                    }
                    last = Some(reject(code, reason));
                }
                Err(Downstream::Rejected(code, reason)) => return self.reject(reject(code, reason)).await,
                Err(Downstream::Failed(e)) => {
                    last = Some(reject(RejectCode::Unavailable, format!("relay to node {peer}: {e}")));
                    // A duplicate connection retired (by either side) or a link trimmed under
                    // the cap closes while both nodes are healthy: no penalty, and the peer
                    // stays eligible over the connection it keeps. (Charged, a node back
                    // from a partition lost every comparison to a measured one.)
                    let stopping = shared.ctx.is_shutting_down();
                    if pconn
                        .close_reason()
                        .is_some_and(|r| Ended::of(&r, stopping).both_alive())
                    {
                        debug!(via = %peer, error = %e, "stream caught in a connection's retirement; retrying");
                        continue;
                    }
                    debug!(via = %peer, error = %e, via_relay, "relay attempt failed");
                    if !via_relay {
                        balance::record_failure(shared, &peer);
                    }
                }
                Err(Downstream::Silent(e)) => {
                    // Ejected at once: every stream sent there would wait the same way until
                    // gossip declares it dead or its connection times out. (A relay waits
                    // on the server past it before it answers: its silence may be that one's.)
                    if !via_relay {
                        balance::eject(shared, &peer);
                    }
                    info!(caller = %self.caller, service = %req.service, via = %peer, error = %e, "peer is silent; ejected, trying another node");
                    last = Some(reject(RejectCode::Unavailable, format!("relay to node {peer}: {e}")));
                }
            }
            tried.push(peer);
        }
        let r = last.unwrap_or_else(|| {
            let (live, offline) = shared.candidates(&req.service);
            if !live.is_empty() {
                // Connected and taking work, yet not chosen: the balancer has them ejected.
                let names: Vec<&str> = live.iter().map(|(n, _, _)| n.as_str()).collect();
                reject(
                    RejectCode::Unavailable,
                    format!(
                        "the connected nodes that offer service {:?} ({}) are all ejected after failing or going silent; each is tried again after routing.eject_for or on a new connection",
                        req.service,
                        names.join(", ")
                    ),
                )
            } else if offline {
                reject(
                    RejectCode::Unavailable,
                    format!("no reachable node can take service {:?} now (the nodes that offer it are disconnected, draining or ejected)", req.service),
                )
            } else {
                reject(RejectCode::UnknownService, format!("no node in the mesh offers service {:?}", req.service))
            }
        });
        self.reject(r).await
    }

    async fn open_downstream(
        &self,
        pconn: &Connection,
        req: ServiceRequest,
        probe_silence: bool,
    ) -> Result<(String, SendStream, RecvStream), Downstream> {
        let shared = self.shared;
        let wait = timeout_until(self.deadline, shared.ctx.cfg.transport.header_timeout);
        let give_up = Instant::now() + wait;
        let (mut s, mut r) = match tokio::time::timeout(wait, pconn.open_bi()).await {
            Ok(Ok(sr)) => sr,
            Ok(Err(e)) => return Err(Downstream::Failed(e.to_string())),
            Err(_) => return Err(Downstream::Failed(format!("no stream credit within {wait:?}"))),
        };
        let heard = pconn.stats().udp_rx.datagrams;
        let answered = {
            let exchange = async {
                let header = StreamHeader {
                    version: PROTOCOL_VERSION,
                    kind: StreamKind::Service(req),
                };
                write_frame(&mut s, &header)
                    .await
                    .map_err(|e| Downstream::Failed(e.to_string()))?;
                read_frame::<_, Response>(&mut r, shared.ctx.cfg.limits.max_header_bytes)
                    .await
                    .map_err(|e| Downstream::Failed(e.to_string()))
            };
            tokio::pin!(exchange);
            // A live peer acknowledges the header's packet within a round trip (plus its ack
            // delay), even when its answer must wait for a backend. Nothing at all for several of
            // those means it is down: move on now rather than at the header timeout.
            // Silence is judged only over the whole bound: a deadline that ends first says
            // nothing about the peer (it must not get a healthy node ejected).
            let bound = crate::transport::silence_bound(pconn);
            let left = give_up.saturating_duration_since(Instant::now());
            let probe = if probe_silence { bound.min(left) } else { left };
            let answered = tokio::select! {
                a = &mut exchange => Some(a),
                () = tokio::time::sleep(probe) => None,
            };
            let answered = match answered {
                Some(a) => Ok(a),
                None if probe_silence && probe == bound && pconn.stats().udp_rx.datagrams == heard => {
                    Err(Downstream::Silent(format!(
                        "not a packet from it within {probe:?} of the request (RTT {:?})",
                        pconn.rtt()
                    )))
                }
                None => match tokio::time::timeout_at(give_up, &mut exchange).await {
                    Ok(a) => Ok(a),
                    Err(_) if self.deadline.is_some_and(|d| d <= Instant::now()) => Err(Downstream::Rejected(
                        RejectCode::DeadlineExceeded,
                        "deadline passed while waiting for the serving node".into(),
                    )),
                    Err(_) => Err(Downstream::Failed(format!("no answer within {wait:?}"))),
                },
            };
            answered
        };
        match answered.and_then(|a| a) {
            Ok(Response::Accept { node }) => Ok((node, s, r)),
            Ok(Response::Reject { code, reason }) => Err(Downstream::Rejected(code, reason)),
            Err(e) => {
                // Reset, not dropped: a dropped send stream is finished, and a peer that is
                // only slow would serve the request with an empty body while it is retried.
                let _ = s.reset(codes::STREAM_ABORTED);
                let _ = r.stop(codes::STREAM_ABORTED);
                Err(e)
            }
        }
    }
}
