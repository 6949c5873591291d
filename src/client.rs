//! The client library: call mesh services through any entry node.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use quicmesh::{Client, ClientConfig, TlsPaths};
//! let tls = TlsPaths::new("certs/ca.crt", "certs/client-web.crt", "certs/client-web.key");
//! let client = Client::connect(ClientConfig::new(tls, vec!["127.0.0.1:7401".into()])).await?;
//! let reply = client.call("echo", "hello").await?;
//! assert_eq!(&reply[..], b"hello");
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::config::{ClientConfig, ConfigError};
use crate::identity::{peer_identity, Identity, Role, TlsError, TlsMaterial};
use crate::node::SNI;
use crate::protocol::{
    codes, encode_frame, read_frame, FrameError, RejectCode, Response, ServiceRequest, StreamHeader, StreamKind,
    PROTOCOL_VERSION,
};
use crate::service::ServiceStream;
use crate::transport::{bind_udp, transport_config, TransportError};

/// Errors setting up a client or reaching an entry node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Certificates could not be loaded or used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The local UDP socket could not be bound.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// quinn could not start the endpoint.
    #[error("starting the QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    /// No entry node could be reached; each attempt's error is listed.
    #[error("no entry node reachable: {}", .0.iter().map(|(e, why)| format!("{e}: {why}")).collect::<Vec<_>>().join("; "))]
    NoEntryReachable(Vec<(String, String)>),
    /// DNS discovery found no entry node and no static `entries` are configured.
    #[error("no entry node to try: DNS discovery found none ({0}) and `entries` is empty")]
    NoEntryFound(String),
    /// DNS discovery could not be set up.
    #[error("discovery: {0}")]
    Discovery(#[from] crate::discovery::DiscoveryError),
}

/// Errors of one call or stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// Reaching the mesh failed.
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// The mesh refused the request; nothing was processed.
    #[error("{code}: {reason}")]
    Rejected {
        /// Machine-readable reason.
        code: RejectCode,
        /// Human-readable detail from the node.
        reason: String,
    },
    /// The stream failed after it was accepted (reset, connection lost), or the connection was
    /// lost after a whole small request had been sent and before the node answered. The request
    /// may have been (partly) processed; it is not retried automatically.
    #[error("stream failed: {0}")]
    Stream(#[source] StreamError),
    /// The reply is larger than `max_response_bytes`.
    #[error("response exceeds max_response_bytes ({0} bytes)")]
    ResponseTooLarge(usize),
    /// The call's timeout passed.
    #[error("no reply within {0:?}: the call's deadline passed")]
    Timeout(Duration),
    /// The node answered with something that is not the quicmesh protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] FrameError),
}

impl CallError {
    /// The reject code, if the mesh refused the request.
    pub fn reject_code(&self) -> Option<RejectCode> {
        match self {
            CallError::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Per-request options.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Routing key (for consistent hashing).
    pub key: Option<Bytes>,
    /// Give up after this long; the deadline travels with the request across hops.
    pub timeout: Option<Duration>,
}

/// A reply and who produced it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The response bytes.
    pub body: Bytes,
    /// The node that served the request.
    pub served_by: String,
}

/// A mesh client: one QUIC connection to an entry node, a stream per request.
///
/// Cheap to clone; clones share the connection. Reconnects (trying entries in order) when
/// the connection is lost.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    identity: Identity,
    endpoint: quinn::Endpoint,
    conn: Mutex<Option<quinn::Connection>>,
    /// The entry the connection was made to, and the one whose connection was last lost or
    /// drained, with when: dialled last for a while, since it is likely down or restarting
    /// (its old port answers nothing until the new process is up).
    entries: std::sync::Mutex<EntryMemory>,
    /// Client-side routing state, if `routing.direct`.
    direct: Option<std::sync::Mutex<crate::direct::Direct>>,
    /// SRV discovery of entry nodes, if `discovery` is set.
    discovery: Option<Arc<crate::discovery::Discovery>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("identity", &self.inner.identity.uri())
            .field("entries", &self.inner.cfg.entries)
            .field("discovery", &self.inner.cfg.discovery)
            .finish_non_exhaustive()
    }
}

async fn resolve(entry: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(entry)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "resolves to no address".to_owned())
}

/// Entry nodes to try, in order: those found through `discovery` in RFC 2782 order (looked up
/// again if their TTL ran out; the last good answer if DNS fails), then the static `entries`.
async fn entry_candidates(cfg: &ClientConfig, discovery: Option<&crate::discovery::Discovery>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(d) = discovery {
        d.refresh_due().await;
        let found = d.endpoints();
        if found.is_empty() {
            for s in d.status() {
                if let Some(e) = s.error {
                    warn!(name = %s.name, servers = %d.servers(), error = %e, "no entry node found through DNS");
                }
            }
        }
        let ordered =
            crate::discovery::rfc2782_order(&found, &mut <rand::rngs::SmallRng as rand::SeedableRng>::from_os_rng());
        out.extend(ordered.into_iter().map(|e| e.addr.to_string()));
    }
    for e in &cfg.entries {
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    out
}

impl Client {
    /// Loads the certificate files named in `cfg` and connects to the first reachable entry.
    pub async fn connect(cfg: ClientConfig) -> Result<Self, ClientError> {
        cfg.validate()?;
        let tls = TlsMaterial::load(&cfg.tls, Role::Client)?;
        Self::connect_with(cfg, tls).await
    }

    /// Like [`Client::connect`], with TLS material already loaded.
    pub async fn connect_with(cfg: ClientConfig, tls: TlsMaterial) -> Result<Self, ClientError> {
        cfg.validate()?;
        let discovery = if cfg.discovery.is_empty() {
            None
        } else {
            Some(crate::discovery::Discovery::new(&cfg.discovery_names()?, &cfg.dns)?)
        };
        // Bind for the address family of the first entry that resolves.
        let mut family_v6 = false;
        for e in entry_candidates(&cfg, discovery.as_deref()).await {
            if let Ok(a) = resolve(&e).await {
                family_v6 = a.is_ipv6();
                break;
            }
        }
        let bind: SocketAddr = if let Some(b) = cfg.bind {
            b
        } else if family_v6 {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let socket = bind_udp(bind, cfg.transport.udp_buffer)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| ClientError::Endpoint(std::io::Error::other("no async runtime found")))?;
        let mut endpoint =
            quinn::Endpoint::new(crate::transport::endpoint_config(&cfg.transport), None, socket, runtime)
                .map_err(ClientError::Endpoint)?;
        let mut client_config = quinn::ClientConfig::new(tls.client_config()?);
        // Nodes never open streams toward clients.
        client_config.transport_config(transport_config(&cfg.transport, 0)?);
        endpoint.set_default_client_config(client_config);
        let cfg_direct = cfg.routing.direct;
        let client = Client {
            inner: Arc::new(Inner {
                identity: tls.identity().clone(),
                cfg,
                endpoint,
                conn: Mutex::new(None),
                entries: std::sync::Mutex::new(EntryMemory::default()),
                direct: cfg_direct.then(|| {
                    let rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
                    std::sync::Mutex::new(crate::direct::Direct::new(std::time::Instant::now(), rng))
                }),
                discovery,
            }),
        };
        client.connection().await?;
        Ok(client)
    }

    /// This client's identity.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The entry node's address, if connected.
    pub async fn entry_addr(&self) -> Option<SocketAddr> {
        self.inner
            .conn
            .lock()
            .await
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .map(|c| c.remote_address())
    }

    /// The local UDP address of the client's endpoint.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Moves the client's endpoint to a new UDP socket; the connection and its open streams
    /// survive (QUIC connection migration).
    pub fn rebind(&self, socket: std::net::UdpSocket) -> std::io::Result<()> {
        self.inner.endpoint.rebind(socket)
    }

    /// The live connection, or a new one to the first entry that answers.
    async fn connection(&self) -> Result<quinn::Connection, ClientError> {
        let mut guard = self.inner.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
            crate::node::lock_std(&self.inner.entries).lost_now();
        }
        let mut candidates = entry_candidates(&self.inner.cfg, self.inner.discovery.as_deref()).await;
        let lost = crate::node::lock_std(&self.inner.entries).recently_lost(std::time::Instant::now());
        lost_entry_last(&mut candidates, lost.as_deref());
        // Raced, not tried one by one: an entry that crashed but is still listed (in DNS, in
        // `entries`) costs the stagger instead of the whole connect timeout.
        let tried = match crate::race::race(candidates, crate::race::ENTRY_STAGGER, |entry: String| async move {
            self.dial(&entry).await
        })
        .await
        {
            Ok((entry, c)) => {
                debug!(%entry, "connected to entry node");
                crate::node::lock_std(&self.inner.entries).current = Some(entry);
                *guard = Some(c.clone());
                return Ok(c);
            }
            Err(tried) => tried,
        };
        if tried.is_empty() {
            let why = self
                .inner
                .discovery
                .as_ref()
                .map(|d| {
                    d.status()
                        .into_iter()
                        .map(|s| format!("{} via {}: {}", s.name, d.servers(), s.error.unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            return Err(ClientError::NoEntryFound(why));
        }
        Err(ClientError::NoEntryReachable(tried))
    }

    async fn dial(&self, entry: &str) -> Result<quinn::Connection, String> {
        let addr = resolve(entry).await?;
        let connecting = self.inner.endpoint.connect(addr, SNI).map_err(|e| e.to_string())?;
        let timeout = self.inner.cfg.transport.connect_timeout;
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| format!("handshake timed out after {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        // The verifier admits only nodes of our trust domain; this makes the check visible.
        let id = peer_identity(&conn).map_err(|e| e.to_string())?;
        if id.role != Role::Node {
            conn.close(codes::FORBIDDEN, b"not a node");
            return Err(format!("{id} is not a node"));
        }
        Ok(conn)
    }

    /// Opens a duplex stream to `service`.
    pub async fn open(&self, service: &str) -> Result<ServiceStream, CallError> {
        self.open_with(service, &CallOptions::default()).await
    }

    /// Opens a duplex stream to `service` with options.
    pub async fn open_with(&self, service: &str, opts: &CallOptions) -> Result<ServiceStream, CallError> {
        let fut = self.open_inner(service, opts, None);
        match opts.timeout {
            Some(t) => tokio::time::timeout(t, fut).await.map_err(|_| CallError::Timeout(t))?,
            None => fut.await,
        }
    }

    /// Opens a stream to `service`. With `body`, the whole request (header, body, end) is sent
    /// before the node answers, so a small request costs no round trip more than its reply.
    async fn open_inner(
        &self,
        service: &str,
        opts: &CallOptions,
        body: Option<&Bytes>,
    ) -> Result<ServiceStream, CallError> {
        let header = StreamHeader {
            version: PROTOCOL_VERSION,
            kind: StreamKind::Service(ServiceRequest {
                service: service.to_owned(),
                key: opts.key.as_ref().map(|k| k.to_vec()),
                hops: 0,
                deadline_ms: opts.timeout.map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX)),
                origin: None,
            }),
        };
        let frame = encode_frame(&header)?;
        let request = Request { frame: &frame, body };
        if self.inner.direct.is_some() && service != crate::protocol::STATUS_SERVICE {
            match self.open_direct(service, opts, request).await {
                Ok(Some(s)) => return Ok(s),
                Ok(None) => {}
                Err(Failed { error, sent: true }) => return Err(error),
                Err(Failed { error, sent: false }) => {
                    debug!(error = %error, "direct routing failed; going through the entry node")
                }
            }
        }
        self.open_via_entry(request).await
    }

    /// Opens the stream through the entry node, which routes it.
    async fn open_via_entry(&self, request: Request<'_>) -> Result<ServiceStream, CallError> {
        // Retries, each on a fresh connection, only when nothing can have been processed: the
        // connection died before the stream opened, the entry node is draining, or the
        // connection closed before the node answered and either the request body was still
        // held back or the node closed in order (it answers every stream it took first).
        const ATTEMPTS: usize = 3;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let conn = self.connection().await?;
            let (send, recv) = match conn.open_bi().await {
                Ok(s) => s,
                Err(e) if attempt < ATTEMPTS => {
                    debug!(error = %e, "connection lost before opening a stream; reconnecting");
                    self.forget(&conn).await;
                    continue;
                }
                Err(e) => return Err(CallError::Stream(e.into())),
            };
            match finish_open(send, recv, request).await {
                Err(Failed {
                    error:
                        CallError::Rejected {
                            code: RejectCode::Draining,
                            reason,
                        },
                    ..
                }) if attempt < ATTEMPTS => {
                    debug!(%reason, "entry node is draining; moving to another");
                    self.forget(&conn).await;
                }
                Err(Failed { error, sent })
                    if attempt < ATTEMPTS && conn.close_reason().is_some() && (!sent || closed_in_order(&conn)) =>
                {
                    debug!(%error, "connection closed before the node answered; reconnecting");
                    self.forget(&conn).await;
                }
                Err(Failed { error, .. }) => return Err(error),
                Ok(s) => return Ok(s),
            }
        }
    }

    /// Stops using `conn` for new streams (if it is still the entry connection). It is not
    /// closed: other calls may be in flight on it, and a draining node lets them finish and
    /// closes it itself.
    async fn forget(&self, conn: &quinn::Connection) {
        let mut guard = self.inner.conn.lock().await;
        if guard.as_ref().is_some_and(|c| c.stable_id() == conn.stable_id()) {
            *guard = None;
            crate::node::lock_std(&self.inner.entries).lost_now();
        }
    }

    /// Client-side routing: pick the node from the fetched load table and open the stream on
    /// a direct connection to it. `Ok(None)`: the table knows no taker; use the entry node.
    async fn open_direct(
        &self,
        service: &str,
        opts: &CallOptions,
        request: Request<'_>,
    ) -> Result<Option<ServiceStream>, Failed> {
        let Some(direct) = &self.inner.direct else {
            return Ok(None);
        };
        let before = |error: CallError| Failed { error, sent: false };
        let refresh = self.inner.cfg.routing.refresh;
        if crate::node::lock_std(direct).stale(std::time::Instant::now(), refresh) {
            let status =
                encode_frame(&StreamHeader::service(crate::protocol::STATUS_SERVICE)).map_err(|e| before(e.into()))?;
            let status = Request {
                frame: &status,
                body: None,
            };
            let mut stream = Box::pin(self.open_via_entry(status)).await.map_err(before)?;
            stream.finish().map_err(|e| before(CallError::Stream(e.into())))?;
            let bytes = stream
                .read_to_end(self.inner.cfg.max_response_bytes)
                .await
                .map_err(|e| before(CallError::Stream(StreamError::Read(e))))?;
            let report = crate::protocol::StatusReport::from_postcard(&bytes).map_err(|e| {
                before(CallError::Stream(StreamError::Direct(format!(
                    "unreadable status report: {e}"
                ))))
            })?;
            crate::node::lock_std(direct).set_table(std::time::Instant::now(), report);
        }
        let picked = crate::node::lock_std(direct).pick(service, opts.key.as_deref(), std::time::Instant::now());
        let Some((node, addr)) = picked else { return Ok(None) };
        let existing = crate::node::lock_std(direct)
            .conns
            .get(&node)
            .filter(|c| c.close_reason().is_none())
            .cloned();
        let conn = match existing {
            Some(c) => c,
            None => {
                let c = self
                    .dial(&addr)
                    .await
                    .map_err(|e| before(CallError::Stream(StreamError::Direct(e))))?;
                let id =
                    peer_identity(&c).map_err(|e| before(CallError::Stream(StreamError::Direct(e.to_string()))))?;
                if id.name != node {
                    c.close(codes::FORBIDDEN, b"not the node the table names");
                    let why = format!("{addr} is {id}, not node {node}");
                    return Err(before(CallError::Stream(StreamError::Direct(why))));
                }
                crate::node::lock_std(direct).conns.insert(node.clone(), c.clone());
                c
            }
        };
        crate::node::lock_std(direct).begin(&node);
        let started = std::time::Instant::now();
        let result = async {
            let (send, recv) = conn.open_bi().await.map_err(|e| before(CallError::Stream(e.into())))?;
            finish_open(send, recv, request).await
        }
        .await;
        let took = result.is_ok().then(|| started.elapsed());
        crate::node::lock_std(direct).end(&node, took, std::time::Instant::now());
        result.map(Some)
    }

    /// The entry node's view of the mesh (members, load table, RTTs), from the built-in
    /// status service.
    pub async fn status(&self) -> Result<crate::protocol::StatusReport, CallError> {
        let bytes = self.call(crate::protocol::STATUS_SERVICE, Vec::new()).await?;
        crate::protocol::StatusReport::from_postcard(&bytes).map_err(|e| CallError::Protocol(e.into()))
    }

    /// Sends `body` to `service` and returns the whole reply.
    pub async fn call(&self, service: &str, body: impl Into<Bytes>) -> Result<Bytes, CallError> {
        Ok(self.request(service, body, &CallOptions::default()).await?.body)
    }

    /// Sends `body` to `service` with options; returns the reply and the serving node.
    ///
    /// A body up to 64 KiB goes out with the stream's header, before the node answers, so the
    /// call costs one round trip; a larger one is streamed once the node has accepted.
    pub async fn request(&self, service: &str, body: impl Into<Bytes>, opts: &CallOptions) -> Result<Reply, CallError> {
        let body = body.into();
        let max = self.inner.cfg.max_response_bytes;
        let fut = async {
            if body.len() <= PIPELINE_MAX {
                let mut stream = self.open_inner(service, opts, Some(&body)).await?;
                let out = stream.read_to_end(max).await.map_err(|e| match e.kind() {
                    std::io::ErrorKind::InvalidData => CallError::ResponseTooLarge(max),
                    _ => reply_failure(e, opts.timeout),
                })?;
                return Ok(Reply {
                    served_by: stream.served_by().to_owned(),
                    body: Bytes::from(out),
                });
            }
            let stream = self.open_inner(service, opts, None).await?;
            // Write and read concurrently: a streaming service may reply before the request ends,
            // and with large bodies both flow-control windows must keep moving.
            let served_by = stream.served_by().to_owned();
            let (mut rd, mut wr) = tokio::io::split(stream);
            let write = async {
                use tokio::io::AsyncWriteExt;
                wr.write_all(&body).await?;
                wr.shutdown().await
            };
            let read = async {
                use tokio::io::AsyncReadExt;
                let mut out = Vec::new();
                let mut limited = (&mut rd).take(max as u64 + 1);
                limited.read_to_end(&mut out).await?;
                Ok::<_, std::io::Error>(out)
            };
            let (w, r) = tokio::join!(write, read);
            let out = r.map_err(|e| reply_failure(e, opts.timeout))?;
            if let Err(e) = w {
                // The reply ended cleanly, so the service chose to stop reading early: the
                // reply stands.
                debug!(error = %e, "service stopped reading the request before it ended");
            }
            if out.len() > max {
                let mut s = rd.unsplit(wr);
                s.abort();
                return Err(CallError::ResponseTooLarge(max));
            }
            Ok(Reply {
                body: Bytes::from(out),
                served_by,
            })
        };
        match opts.timeout {
            Some(t) => tokio::time::timeout(t, fut).await.map_err(|_| CallError::Timeout(t))?,
            None => fut.await,
        }
    }

    /// Closes the connection cleanly.
    pub async fn close(&self) {
        let mut conns: Vec<quinn::Connection> = self.inner.conn.lock().await.take().into_iter().collect();
        if let Some(direct) = &self.inner.direct {
            conns.extend(std::mem::take(&mut crate::node::lock_std(direct).conns).into_values());
        }
        crate::transport::close_and_flush(&conns, codes::SHUTDOWN, b"client closed", Duration::from_secs(1)).await;
    }
}

/// Sends the header on a fresh stream and reads the node's answer.
/// Request bodies up to this size are sent with the header, before the node answers: they fit
/// the stream's first flow-control window, so writing them never waits for the node. Larger
/// bodies are streamed once the node has accepted (a refusal then wastes nothing).
const PIPELINE_MAX: usize = 64 * 1024;

/// What opens a stream: the encoded header, and the whole body if it goes out at once.
#[derive(Clone, Copy)]
struct Request<'a> {
    frame: &'a [u8],
    body: Option<&'a Bytes>,
}

/// A failed open, and whether the request had been sent: if so, a failure other than a
/// refusal leaves it unknown whether the service got it, so it must not be sent again.
struct Failed {
    error: CallError,
    sent: bool,
}

/// How long an entry whose connection was lost is dialled last: long enough for a restart,
/// short enough that a preferred entry (SRV priority, the order given) is soon first again.
const LOST_ENTRY_LAST_FOR: Duration = Duration::from_secs(10);

/// Which entry the client is connected to, and which one it lost last.
#[derive(Debug, Default)]
struct EntryMemory {
    current: Option<String>,
    lost: Option<(String, std::time::Instant)>,
}

impl EntryMemory {
    /// The connection to the current entry is gone.
    fn lost_now(&mut self) {
        if let Some(entry) = self.current.take() {
            self.lost = Some((entry, std::time::Instant::now()));
        }
    }

    /// The entry lost within [`LOST_ENTRY_LAST_FOR`] of `now`, if any.
    fn recently_lost(&self, now: std::time::Instant) -> Option<String> {
        self.lost
            .as_ref()
            .filter(|(_, at)| now.saturating_duration_since(*at) < LOST_ENTRY_LAST_FOR)
            .map(|(e, _)| e.clone())
    }
}

/// Moves the entry `lost` to the end, keeping the order of the rest: the race starts with
/// an entry likely to answer, and the lost one still gets its turn (it may be back, or the
/// only one).
fn lost_entry_last(candidates: &mut [String], lost: Option<&str>) {
    if let Some(lost) = lost {
        candidates.sort_by_key(|c| c == lost);
    }
}

/// The node closed the connection in order (shutting down): it answered every stream it took.
fn closed_in_order(conn: &quinn::Connection) -> bool {
    matches!(conn.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == codes::SHUTDOWN)
}

async fn finish_open(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    request: Request<'_>,
) -> Result<ServiceStream, Failed> {
    let sent = request.body.is_some();
    let failed = |error: CallError| Failed { error, sent };
    let wrote = async {
        send.write_all(request.frame).await?;
        if let Some(body) = request.body {
            send.write_chunk(body.clone()).await?;
            send.finish()?;
        }
        Ok::<_, quinn::WriteError>(())
    }
    .await;
    // A refusal may stop the stream while the body is still being written: the answer says
    // why, so read it before reporting the write.
    let resp: Response = match read_frame(&mut recv, crate::protocol::DEFAULT_MAX_HEADER).await {
        Ok(r) => r,
        Err(e) if sent => return Err(failed(CallError::Stream(StreamError::AfterSend(e)))),
        Err(e) => return Err(failed(e.into())),
    };
    match resp {
        Response::Reject { code, reason } => Err(Failed {
            error: CallError::Rejected { code, reason },
            sent: false,
        }),
        Response::Accept { node } => {
            let finished = match wrote {
                Ok(()) => sent,
                // Stopped with code 0 after accepting: the node (or its service) answered
                // without reading the rest of the request, as the status service does, and
                // dropped its end (quinn stops a dropped stream with 0). Its reply stands. (Seen
                // as "stream failed: sending stopped by peer: error 0" from `quicmesh status`
                // when the client was descheduled between writing the header and the body.)
                Err(quinn::WriteError::Stopped(code)) if code == quinn::VarInt::from_u32(0) => true,
                Err(e) => return Err(failed(CallError::Stream(e.into()))),
            };
            let mut stream = ServiceStream::new(send, recv, node);
            if finished {
                stream.mark_finished();
            }
            Ok(stream)
        }
    }
}

/// Says what a reset stream means, rather than quinn's bare "stream reset by peer: error 3".
/// Why a stream failed once it was open. The quinn or I/O error is the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The connection was lost or closed before the stream could be used.
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    /// Writing the request failed (the node stopped reading, or the connection was lost).
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
    /// The stream had already been finished or reset.
    #[error(transparent)]
    Closed(#[from] quinn::ClosedStream),
    /// Reading the reply failed: the node reset the stream, or the connection was lost.
    #[error("{}", read_failure(.0))]
    Read(#[source] std::io::Error),
    /// The node's answer did not arrive after the whole request had been sent.
    #[error("{0}; the request had been sent, so it may have been processed")]
    AfterSend(#[source] FrameError),
    /// Finishing the request side of the stream failed.
    #[error(transparent)]
    Finish(#[from] std::io::Error),
    /// Client-side routing could not reach the node its load table named.
    #[error("{0}")]
    Direct(String),
}

/// The code the node reset the reply with, if that is why reading failed.
fn reset_code(e: &std::io::Error) -> Option<quinn::VarInt> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<quinn::ReadError>())
        .and_then(|r| match r {
            quinn::ReadError::Reset(code) => Some(*code),
            _ => None,
        })
}

/// A failed read of the reply as a call error: a reset for a passed deadline is the call's
/// timeout, whichever side noticed first.
fn reply_failure(e: std::io::Error, timeout: Option<Duration>) -> CallError {
    match (reset_code(&e), timeout) {
        (Some(code), Some(t)) if code == codes::DEADLINE_EXCEEDED => CallError::Timeout(t),
        _ => CallError::Stream(StreamError::Read(e)),
    }
}

fn read_failure(e: &std::io::Error) -> String {
    match reset_code(e) {
        Some(code) if code == codes::DEADLINE_EXCEEDED => format!(
            "the request's deadline passed while the node was serving it (code {code}); the request may have been partly processed"
        ),
        Some(code) if code == codes::STREAM_ABORTED => format!(
            "the node aborted the stream mid-reply (code {code}): the serving node, its backend or the connection to it failed; the request may have been partly processed"
        ),
        Some(code) => format!("the node reset the stream mid-reply (code {code})"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lost_entry_is_dialled_last_and_the_rest_keep_their_order() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut c = list(&["127.0.0.1:1", "127.0.0.1:2", "node-c:3", "127.0.0.1:4"]);
        lost_entry_last(&mut c, Some("127.0.0.1:1"));
        assert_eq!(c, list(&["127.0.0.1:2", "node-c:3", "127.0.0.1:4", "127.0.0.1:1"]));
        lost_entry_last(&mut c, None);
        assert_eq!(c, list(&["127.0.0.1:2", "node-c:3", "127.0.0.1:4", "127.0.0.1:1"]));
        // An address no entry names changes nothing.
        lost_entry_last(&mut c, Some("10.0.0.1:1"));
        assert_eq!(c, list(&["127.0.0.1:2", "node-c:3", "127.0.0.1:4", "127.0.0.1:1"]));
        // Host names are entries too.
        lost_entry_last(&mut c, Some("node-c:3"));
        assert_eq!(c, list(&["127.0.0.1:2", "127.0.0.1:4", "127.0.0.1:1", "node-c:3"]));
    }

    #[test]
    fn a_lost_entry_is_remembered_for_a_while_only() {
        let mut m = EntryMemory::default();
        m.lost_now();
        assert_eq!(m.lost, None, "nothing was connected");
        m.current = Some("a:1".into());
        m.lost_now();
        let (_, at) = m.lost.clone().unwrap();
        assert_eq!(m.recently_lost(at).as_deref(), Some("a:1"));
        assert_eq!(m.recently_lost(at + LOST_ENTRY_LAST_FOR), None);
        // A second loss before a new connection keeps the first.
        m.lost_now();
        assert_eq!(m.recently_lost(at).as_deref(), Some("a:1"));
    }
}
