//! The wire protocol on top of QUIC streams.
//!
//! Every stream starts with one length-prefixed postcard frame, the [`StreamHeader`], and the
//! acceptor answers with one [`Response`] frame. After `Accept`, a service stream is a plain
//! byte pipe; a control stream carries a sequence of [`ControlMsg`] frames.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of postcard. The first
//! byte of a header body is the protocol version, so a peer speaking another version gets
//! `UnsupportedVersion` rather than a decode error. Enum variants are append-only.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The stream protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// Default cap on a stream header frame.
pub const DEFAULT_MAX_HEADER: usize = 16 * 1024;

/// Cap on one control-stream message.
pub const MAX_CONTROL_MESSAGE: usize = 1024 * 1024;

/// QUIC application error codes used to close connections and reset streams.
pub mod codes {
    use quinn::VarInt;
    /// Orderly shutdown of a node or client.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(0);
    /// The connection lost the duplicate-connection tie-break against another one to the same peer.
    pub const DUPLICATE: VarInt = VarInt::from_u32(1);
    /// The peer's identity is not allowed here (e.g. wrong role for a node-to-node connection).
    pub const FORBIDDEN: VarInt = VarInt::from_u32(2);
    /// A stream was abandoned: the header did not arrive in time, or the other leg failed.
    pub const STREAM_ABORTED: VarInt = VarInt::from_u32(3);
    /// A protocol violation on the control stream.
    pub const PROTOCOL: VarInt = VarInt::from_u32(4);
    /// The request's deadline passed while it was being served or relayed; the service may
    /// have done part of the work.
    pub const DEADLINE_EXCEEDED: VarInt = VarInt::from_u32(5);
    /// Connection: another live process holds this node's identity and is connected here;
    /// this connection is refused (a misconfiguration or a stolen key).
    pub const IDENTITY_CLASH: VarInt = VarInt::from_u32(6);
    /// Connection: the node stopped with streams it had taken still unanswered (its drain
    /// grace ran out, or it was stopped at once): a request that got no answer may have been
    /// processed. After [`SHUTDOWN`] every stream the node took had its answer.
    pub const ABANDONED: VarInt = VarInt::from_u32(7);
    /// Connection, between nodes: the closing node holds more peer connections than
    /// `limits.max_peer_connections` and let this one go. Both nodes are alive; the other
    /// keeps its remaining links (and dials new ones if it has too few).
    pub const TRIMMED: VarInt = VarInt::from_u32(8);
}

/// The first frame of every stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    /// Must be [`PROTOCOL_VERSION`]; always the first byte on the wire.
    pub version: u8,
    /// What the stream is for.
    pub kind: StreamKind,
}

/// The purpose of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    /// The node-to-node control channel (one per peer connection). Nodes only.
    Control,
    /// A request for a service.
    Service(ServiceRequest),
}

/// What a service stream asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRequest {
    /// The service name.
    pub service: String,
    /// Optional routing key (consistent hashing).
    pub key: Option<Vec<u8>>,
    /// How many nodes have relayed this stream so far; only nodes may set it above zero.
    pub hops: u8,
    /// Milliseconds left until the caller gives up, if it set a deadline.
    pub deadline_ms: Option<u32>,
    /// The original caller's SPIFFE id, set by a relaying node; only nodes may set it.
    pub origin: Option<String>,
}

impl StreamHeader {
    /// A service header as a client sends it.
    pub fn service(service: &str) -> Self {
        StreamHeader {
            version: PROTOCOL_VERSION,
            kind: StreamKind::Service(ServiceRequest {
                service: service.to_owned(),
                key: None,
                hops: 0,
                deadline_ms: None,
                origin: None,
            }),
        }
    }

    /// A control header.
    pub fn control() -> Self {
        StreamHeader {
            version: PROTOCOL_VERSION,
            kind: StreamKind::Control,
        }
    }
}

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RejectCode {
    /// The header was malformed, too large, or did not arrive in time.
    BadHeader,
    /// The header's protocol version is not spoken here.
    UnsupportedVersion,
    /// No node in the mesh offers the service.
    UnknownService,
    /// The caller's identity may not do this.
    Unauthorized,
    /// The stream would need more relay hops than allowed.
    HopLimit,
    /// The service exists but cannot be reached now (backend down, peer unreachable).
    Unavailable,
    /// The node is at its limit of concurrent streams.
    Overloaded,
    /// The caller's deadline passed before the service answered.
    DeadlineExceeded,
    /// The node is draining before it stops: it takes no new streams. Nothing was processed;
    /// clients reconnect to another entry node and retry, relaying nodes pick another node.
    Draining,
}

impl RejectCode {
    /// Every code, in wire order.
    pub const ALL: [RejectCode; 9] = [
        RejectCode::BadHeader,
        RejectCode::UnsupportedVersion,
        RejectCode::UnknownService,
        RejectCode::Unauthorized,
        RejectCode::HopLimit,
        RejectCode::Unavailable,
        RejectCode::Overloaded,
        RejectCode::DeadlineExceeded,
        RejectCode::Draining,
    ];

    /// Position in [`RejectCode::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the same request may succeed on another node (nothing was processed).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            RejectCode::Unavailable | RejectCode::Overloaded | RejectCode::Draining
        )
    }
}

impl std::fmt::Display for RejectCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// The acceptor's answer to a [`StreamHeader`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The stream is accepted; `node` is the name of the node that serves it.
    Accept {
        /// The serving node.
        node: String,
    },
    /// The stream is refused.
    Reject {
        /// Machine-readable reason.
        code: RejectCode,
        /// Human-readable detail.
        reason: String,
    },
}

/// Messages on the control stream between two nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlMsg {
    /// Membership and load gossip. Each side opens with a `Syn` as soon as the stream is up,
    /// which is how two nodes introduce themselves.
    Gossip(crate::gossip::GossipMsg),
    /// RTT probe; `nonce` is the sender's clock in microseconds, echoed back.
    Ping {
        /// Echoed back in the pong.
        nonce: u64,
    },
    /// RTT probe answer.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The sender's load now, pushed over the link every `gossip.load_interval` while it
    /// changes (and once when the control stream comes up), for the receiver's routing; the
    /// gossip record carries it only every `gossip.load_gossip_interval`. Sent only to a
    /// peer known to take it: one whose `Hello` lists [`features::LOAD_PUSH`], or that pushed
    /// its own.
    Load(crate::gossip::Load),
}

/// Kinds of [`ControlMsg`] this build knows (`Gossip`, `Ping`, `Pong`, `Load`), and of
/// [`crate::gossip::GossipMsg`] (`Syn`, `SynAck`, `Ack`, `Sums`, `Buckets`).
const CONTROL_KINDS: u32 = 4;
const GOSSIP_KINDS: u32 = 5;

/// Whether a control message that did not decode is of a kind a newer node added (its enum
/// index, or that of the gossip message inside it, is past the ones this build knows). The
/// node skips such a message instead of closing the control stream, so later releases can
/// add control messages without breaking a mesh that runs this one. Anything else that does
/// not decode is a protocol violation.
pub fn is_newer_control_kind(body: &[u8]) -> bool {
    let Ok((kind, rest)) = postcard::take_from_bytes::<u32>(body) else {
        return false;
    };
    if kind >= CONTROL_KINDS {
        return true;
    }
    kind == 0 && postcard::take_from_bytes::<u32>(rest).is_ok_and(|(inner, _)| inner >= GOSSIP_KINDS)
}

/// The reply of the built-in [`STATUS_SERVICE`]: a node's view of the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The answering node.
    pub node: String,
    /// Its quicmesh version.
    pub version: String,
    /// Every member it knows, itself included.
    pub members: Vec<MemberStatus>,
    /// Per service, the recent share of this node's streams sent to each node (this one
    /// included); counts halve every minute.
    pub routes: Vec<(String, Vec<(String, f64)>)>,
    /// Peer addresses the answering node dials but cannot reach now, with the last error.
    #[serde(default)]
    pub unreachable: Vec<Unreachable>,
    /// Node identities held by two live processes at once in the last ten minutes, as the
    /// answering node saw them (it keeps one connection and refuses the other).
    #[serde(default)]
    pub identity_clashes: Vec<IdentityClash>,
}

/// Two live processes with one node identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityClash {
    /// The node name both claim.
    pub node: String,
    /// The address of the connection kept.
    pub kept: String,
    /// The address of the last connection refused.
    pub refused: String,
    /// Connections refused so far.
    pub count: u64,
    /// When the last was refused, seconds since the Unix epoch.
    pub last_unix: u64,
}

impl StatusReport {
    /// Decodes a report in postcard, as the status service sends it. Postcard is not
    /// self-describing, so a field added at the end is missing, not defaulted, in a report
    /// from an older node: such a report is read without the newer fields.
    pub fn from_postcard(bytes: &[u8]) -> Result<Self, postcard::Error> {
        // The fields after `routes` arrived one release apart: each may be missing.
        #[derive(Deserialize)]
        struct Before {
            node: String,
            version: String,
            members: Vec<MemberStatus>,
            routes: Vec<(String, Vec<(String, f64)>)>,
        }
        fn later<T: DeserializeOwned + Default>(rest: &[u8]) -> Result<(T, &[u8]), postcard::Error> {
            if rest.is_empty() {
                Ok((T::default(), rest))
            } else {
                postcard::take_from_bytes(rest)
            }
        }
        let (b, rest) = postcard::take_from_bytes::<Before>(bytes)?;
        let (unreachable, rest) = later(rest)?;
        let (identity_clashes, _newer) = later(rest)?;
        Ok(StatusReport {
            node: b.node,
            version: b.version,
            members: b.members,
            routes: b.routes,
            unreachable,
            identity_clashes,
        })
    }
}

/// A peer address a node keeps failing to dial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreachable {
    /// The address dialled, as configured or discovered (`host:port`).
    pub target: String,
    /// Failed dials in a row.
    pub failures: u32,
    /// Why the last failed: `resolve`, `timeout`, `refused`, `certificate`, `identity`, `other`.
    pub reason: String,
    /// The last error.
    pub error: String,
    /// What to check.
    pub advice: String,
    /// When the first of these failures happened, in seconds since the Unix epoch.
    pub since_unix: u64,
}

/// One row of a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member's record as gossiped.
    pub member: crate::gossip::Member,
    /// Whether the answering node has a live connection to it.
    pub connected: bool,
    /// Round-trip time measured by control-stream pings (EWMA), in microseconds.
    pub rtt_us: Option<u64>,
}

/// The service name under which every node answers with its [`StatusReport`] (postcard).
pub const STATUS_SERVICE: &str = "quicmesh-status";

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream failed or ended early.
    #[error("stream error: {}", with_causes(.0))]
    Io(#[from] std::io::Error),
    /// The stream ended cleanly before a frame began.
    #[error("stream ended before a frame")]
    Eof,
    /// The length prefix exceeds the cap.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// Announced length.
        len: usize,
        /// Cap.
        max: usize,
    },
    /// The body is not valid postcard for the expected type.
    #[error("malformed frame: {0}")]
    Decode(#[from] postcard::Error),
    /// The header names another protocol version.
    #[error("protocol version {0} is not supported (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
}

/// An error and its causes, so "connection lost" also says why (quinn keeps the
/// connection's close reason, e.g. a refused certificate, in the source chain).
fn with_causes(e: &std::io::Error) -> String {
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    // io::Error's own source is the wrapped error, whose Display `out` already shows.
    if let Some(inner) = e.get_ref() {
        cause = std::error::Error::source(inner);
    }
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

impl FrameError {
    /// The reject code a header read failure maps to.
    pub fn reject_code(&self) -> RejectCode {
        match self {
            FrameError::UnsupportedVersion(_) => RejectCode::UnsupportedVersion,
            _ => RejectCode::BadHeader,
        }
    }
}

/// Encodes `msg` as one frame (length prefix + postcard).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = postcard::to_extend(msg, vec![0u8; 4])?;
    let len = buf.len() - 4;
    let len32 = u32::try_from(len).map_err(|_| FrameError::Oversized {
        len,
        max: u32::MAX as usize,
    })?;
    buf[..4].copy_from_slice(&len32.to_be_bytes());
    Ok(buf)
}

/// Writes `msg` as one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let buf = encode_frame(msg)?;
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame's body, refusing anything over `max` bytes before reading it.
pub async fn read_frame_bytes<R>(r: &mut R, max: usize) -> Result<Vec<u8>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return Err(if got == 0 {
                FrameError::Eof
            } else {
                FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())
            });
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::Oversized { len, max });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(body)
}

/// Which process of a node is speaking: a random id drawn at start. Two connections with one
/// node identity and different boot ids come from two processes: a restart, or two holders
/// of one certificate. Sent after the `Accept` of a control stream in the same frame (older
/// nodes ignore the trailing bytes); nodes dialling carry it in the TLS server name
/// (`n<16 hex digits>.quicmesh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The process's boot id.
    pub boot: u64,
    /// What the process takes beyond the control messages every node of protocol version 1
    /// takes (bits of [`features`]; absent from older nodes, read as 0).
    pub features: u64,
}

/// Bits of [`Hello::features`].
pub mod features {
    /// Takes [`super::ControlMsg::Load`].
    pub const LOAD_PUSH: u64 = 1;
    /// Takes the bounded gossip rounds ([`crate::gossip::GossipMsg::Sums`] and
    /// [`crate::gossip::GossipMsg::Buckets`]); without it a peer gets full-digest rounds.
    pub const GOSSIP_SUMS: u64 = 2;
    /// Everything this build takes.
    pub const ALL: u64 = LOAD_PUSH | GOSSIP_SUMS;
}

impl Hello {
    /// This process's hello.
    pub fn new(boot: u64) -> Self {
        Hello {
            boot,
            features: features::ALL,
        }
    }

    /// Decodes a hello, from an older node too (its boot id alone: no features).
    pub fn decode(body: &[u8]) -> Option<Hello> {
        let (boot, rest) = postcard::take_from_bytes::<u64>(body).ok()?;
        let features = postcard::take_from_bytes::<u64>(rest).map_or(0, |(f, _)| f);
        Some(Hello { boot, features })
    }

    /// Whether the process takes `feature` (a bit of [`features`]).
    pub fn takes(&self, feature: u64) -> bool {
        self.features & feature != 0
    }

    /// The TLS server name a node dials with, carrying its boot id.
    pub fn server_name(boot: u64) -> String {
        format!("n{boot:016x}.quicmesh")
    }

    /// The boot id in a server name made by [`Hello::server_name`].
    pub fn from_server_name(name: &str) -> Option<u64> {
        let hex = name.strip_prefix('n')?.strip_suffix(".quicmesh")?;
        if hex.len() != 16 {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    }
}

/// Reads one frame and decodes it as `T`.
pub async fn read_frame<R, T>(r: &mut R, max: usize) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let body = read_frame_bytes(r, max).await?;
    Ok(postcard::from_bytes(&body)?)
}

/// Decodes a header body, checking the version byte before anything else.
pub fn decode_header(body: &[u8]) -> Result<StreamHeader, FrameError> {
    match body.first() {
        None => Err(FrameError::Decode(postcard::Error::DeserializeUnexpectedEnd)),
        Some(&v) if v != PROTOCOL_VERSION => Err(FrameError::UnsupportedVersion(v)),
        Some(_) => Ok(postcard::from_bytes(body)?),
    }
}

/// Reads and decodes a stream header.
pub async fn read_header<R>(r: &mut R, max: usize) -> Result<StreamHeader, FrameError>
where
    R: AsyncRead + Unpin,
{
    let body = read_frame_bytes(r, max).await?;
    decode_header(&body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test]
    async fn header_round_trip() {
        let h = StreamHeader::service("echo");
        let buf = encode_frame(&h).unwrap();
        let got = read_header(&mut &buf[..], DEFAULT_MAX_HEADER).await.unwrap();
        assert_eq!(got, h);
    }

    #[tokio::test]
    async fn oversized_refused_before_reading_body() {
        let mut buf = (DEFAULT_MAX_HEADER as u32 + 1).to_be_bytes().to_vec();
        buf.extend_from_slice(&[0; 8]);
        let err = read_header(&mut &buf[..], DEFAULT_MAX_HEADER).await.unwrap_err();
        assert!(matches!(err, FrameError::Oversized { .. }), "{err}");
    }

    #[tokio::test]
    async fn other_version_is_unsupported_not_garbage() {
        let mut h = StreamHeader::service("echo");
        h.version = 9;
        let buf = encode_frame(&h).unwrap();
        let err = read_header(&mut &buf[..], DEFAULT_MAX_HEADER).await.unwrap_err();
        assert_eq!(err.reject_code(), RejectCode::UnsupportedVersion);
    }

    #[tokio::test]
    async fn empty_stream_is_eof() {
        let err = read_header(&mut &[][..], DEFAULT_MAX_HEADER).await.unwrap_err();
        assert!(matches!(err, FrameError::Eof));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_header(&bytes);
            let _ = postcard::from_bytes::<ControlMsg>(&bytes);
            let _ = postcard::from_bytes::<crate::gossip::GossipMsg>(&bytes);
            let _ = postcard::from_bytes::<Response>(&bytes);
        }

        #[test]
        fn service_header_round_trips(name in "[a-z0-9-]{1,63}", key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)), hops in any::<u8>(), dl in proptest::option::of(any::<u32>())) {
            let h = StreamHeader { version: PROTOCOL_VERSION, kind: StreamKind::Service(ServiceRequest { service: name, key, hops, deadline_ms: dl, origin: None }) };
            let buf = encode_frame(&h).unwrap();
            prop_assert_eq!(decode_header(&buf[4..]).unwrap(), h);
        }
    }
}

#[cfg(test)]
mod status_compat_tests {
    use super::*;

    #[test]
    fn a_report_from_an_older_node_without_the_newer_fields_is_read() {
        #[derive(Serialize)]
        struct Before {
            node: String,
            version: String,
            members: Vec<MemberStatus>,
            routes: Vec<(String, Vec<(String, f64)>)>,
        }
        let old = postcard::to_allocvec(&Before {
            node: "a".into(),
            version: "0.0.9".into(),
            members: Vec::new(),
            routes: vec![("echo".into(), vec![("a".into(), 1.0)])],
        })
        .unwrap();
        let r = StatusReport::from_postcard(&old).unwrap();
        assert_eq!((r.node.as_str(), r.routes.len(), r.unreachable.len()), ("a", 1, 0));
        let new = StatusReport {
            unreachable: vec![Unreachable {
                target: "b:1".into(),
                failures: 2,
                reason: "timeout".into(),
                error: "e".into(),
                advice: "a".into(),
                since_unix: 9,
            }],
            ..r
        };
        let bytes = postcard::to_allocvec(&new).unwrap();
        assert_eq!(StatusReport::from_postcard(&bytes).unwrap(), new);
        // A report from the release that had `unreachable` but not `identity_clashes`.
        let middle = &bytes[..bytes.len() - 1];
        assert_eq!(StatusReport::from_postcard(middle).unwrap(), new);
        assert!(StatusReport::from_postcard(&bytes[..3]).is_err());
    }
}
