//! Byte pipes between an accepted stream and what serves it.
//!
//! Each direction is pumped independently so half-close works (a request body can end while
//! the reply is still streaming). QUIC→QUIC moves batches of received `Bytes` with
//! `read_chunks`/`write_all_chunks`, without copying; QUIC→TCP gathers a batch into one
//! buffer so the backend gets one write per batch, not one per QUIC frame. If anything fails — a reset, a lost
//! connection, the deadline — every direction that has not ended cleanly is reset, so neither
//! side ever mistakes a broken transfer for a complete one.

use std::future::Future;
use std::io;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::protocol::codes;

/// Bytes moved by a finished splice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Spliced {
    /// From the caller to the service.
    pub up: u64,
    /// From the service to the caller.
    pub down: u64,
}

/// Why a splice ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpliceError {
    #[error("caller → service: {0}")]
    Up(io::Error),
    #[error("service → caller: {0}")]
    Down(io::Error),
    #[error("connection closed: {0}")]
    ConnectionClosed(quinn::ConnectionError),
    #[error("deadline exceeded")]
    Deadline,
}

impl SpliceError {
    /// Whether the splice stopped because the request's deadline passed.
    pub(crate) fn is_deadline(&self) -> bool {
        matches!(self, SpliceError::Deadline)
    }
}

/// Largest read from or write to a TCP backend.
const TCP_CHUNK: usize = 64 * 1024;
/// Most QUIC frames moved per call between two streams.
const BATCH: usize = 32;

async fn quic_to_quic(
    from: &mut RecvStream,
    to: &mut SendStream,
    first_byte: Option<&std::sync::OnceLock<Instant>>,
) -> io::Result<u64> {
    // Everything already received moves in one call each way: one lock of each connection
    // per batch instead of per ~1.2 KB frame.
    let mut batch: [Bytes; BATCH] = Default::default();
    let mut n = 0u64;
    while let Some(k) = from.read_chunks(&mut batch).await.map_err(io::Error::from)? {
        if let Some(f) = first_byte {
            f.get_or_init(Instant::now);
        }
        n += batch[..k].iter().map(|b| b.len() as u64).sum::<u64>();
        to.write_all_chunks(&mut batch[..k]).await.map_err(io::Error::from)?;
    }
    to.finish()
        .map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e))?;
    Ok(n)
}

async fn quic_to_tcp(from: &mut RecvStream, to: &mut OwnedWriteHalf) -> io::Result<u64> {
    // Reading into a buffer drains every frame already received, so the backend gets one
    // write per batch rather than one per QUIC frame: on loopback a write per ~1.2 KB frame
    // cost more than the copy (profiled in docs/benchmarks.md). `read_buf` fills the
    // buffer's spare capacity without zeroing it first.
    let mut buf = BytesMut::with_capacity(TCP_CHUNK);
    let mut n = 0u64;
    loop {
        buf.clear();
        if from.read_buf(&mut buf).await? == 0 {
            break;
        }
        n += buf.len() as u64;
        to.write_all(&buf).await?;
    }
    // Half-close toward the backend: it sees EOF on the request and can still reply.
    to.shutdown().await?;
    Ok(n)
}

async fn tcp_to_quic(from: &mut OwnedReadHalf, to: &mut SendStream) -> io::Result<u64> {
    let mut n = 0u64;
    let mut buf = BytesMut::with_capacity(TCP_CHUNK);
    loop {
        buf.reserve(TCP_CHUNK);
        let got = from.read_buf(&mut buf).await?;
        if got == 0 {
            break;
        }
        n += got as u64;
        to.write_chunk(buf.split().freeze()).await.map_err(io::Error::from)?;
    }
    to.finish()
        .map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e))?;
    Ok(n)
}

/// Runs two pumps to completion, or stops at the first failure, connection loss or deadline.
/// Returns which directions completed cleanly alongside the outcome.
async fn run_pumps<A, B>(
    up: A,
    down: B,
    conns: &[&Connection],
    deadline: Option<Instant>,
) -> (bool, bool, Result<Spliced, SpliceError>)
where
    A: Future<Output = io::Result<u64>>,
    B: Future<Output = io::Result<u64>>,
{
    tokio::pin!(up, down);
    let closed = async {
        match conns {
            [a] => a.closed().await,
            [a, b, ..] => tokio::select! { e = a.closed() => e, e = b.closed() => e },
            [] => std::future::pending().await,
        }
    };
    tokio::pin!(closed);
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    let (mut up_n, mut down_n) = (None, None);
    while up_n.is_none() || down_n.is_none() {
        tokio::select! {
            r = &mut up, if up_n.is_none() => match r {
                Ok(n) => up_n = Some(n),
                Err(e) => return (false, down_n.is_some(), Err(SpliceError::Up(e))),
            },
            r = &mut down, if down_n.is_none() => match r {
                Ok(n) => down_n = Some(n),
                Err(e) => return (up_n.is_some(), false, Err(SpliceError::Down(e))),
            },
            e = &mut closed => return (up_n.is_some(), down_n.is_some(), Err(SpliceError::ConnectionClosed(e))),
            () = &mut sleep => return (up_n.is_some(), down_n.is_some(), Err(SpliceError::Deadline)),
        }
    }
    let spliced = Spliced {
        up: up_n.unwrap_or_default(),
        down: down_n.unwrap_or_default(),
    };
    (true, true, Ok(spliced))
}

/// The code to reset unfinished directions with: the caller learns whether its deadline
/// passed or the splice failed.
fn reset_code(result: &Result<Spliced, SpliceError>) -> quinn::VarInt {
    match result {
        Err(SpliceError::Deadline) => codes::DEADLINE_EXCEEDED,
        _ => codes::STREAM_ABORTED,
    }
}

/// Splices a caller's stream to a stream on another node's connection (one relay hop).
/// `first_byte` is set when the first byte of the reply arrives.
pub(crate) async fn splice_quic(
    caller: (&Connection, SendStream, RecvStream),
    server: (&Connection, SendStream, RecvStream),
    deadline: Option<Instant>,
    first_byte: &std::sync::OnceLock<Instant>,
) -> Result<Spliced, SpliceError> {
    let (caller_conn, mut c_send, mut c_recv) = caller;
    let (server_conn, mut s_send, mut s_recv) = server;
    let (up_ok, down_ok, result) = run_pumps(
        quic_to_quic(&mut c_recv, &mut s_send, None),
        quic_to_quic(&mut s_recv, &mut c_send, Some(first_byte)),
        &[caller_conn, server_conn],
        deadline,
    )
    .await;
    let code = reset_code(&result);
    if !up_ok {
        let _ = c_recv.stop(code);
        let _ = s_send.reset(code);
    }
    if !down_ok {
        let _ = s_recv.stop(code);
        let _ = c_send.reset(code);
    }
    result
}

/// Closes a TCP connection with a reset instead of a FIN: after a failed splice the far end
/// must not take the bytes it got for the whole request or reply (dropping the halves would
/// shut the write side down cleanly).
fn reset_tcp(read: OwnedReadHalf, write: OwnedWriteHalf) {
    if let Ok(tcp) = read.reunite(write) {
        let _ = tcp.set_zero_linger();
    }
}

/// Which side of a stream–TCP splice is the caller: where `up` bytes come from.
enum CallerSide {
    /// The stream's peer calls a TCP backend (the node serving a local service).
    Stream,
    /// A TCP client calls through our own stream (the sidecar, `quicmesh forward`).
    Tcp,
}

/// Pumps a stream and a TCP connection into each other: TCP → stream in chunks of up to
/// 64 KiB without copying, stream → TCP one write per batch, `TCP_NODELAY` so a small
/// message is not held back. On failure the stream's unfinished directions are reset and
/// the TCP connection is reset too (a FIN would make a cut-off message look whole).
async fn splice_stream_tcp(
    send: &mut SendStream,
    recv: &mut RecvStream,
    tcp: TcpStream,
    caller: CallerSide,
    conns: &[&Connection],
    deadline: Option<Instant>,
) -> Result<Spliced, SpliceError> {
    let _ = tcp.set_nodelay(true);
    let (mut t_read, mut t_write) = tcp.into_split();
    let to_tcp = quic_to_tcp(recv, &mut t_write);
    let from_tcp = tcp_to_quic(&mut t_read, send);
    let (to_tcp_ok, from_tcp_ok, result) = match caller {
        CallerSide::Stream => run_pumps(to_tcp, from_tcp, conns, deadline).await,
        CallerSide::Tcp => {
            let (from_ok, to_ok, result) = run_pumps(from_tcp, to_tcp, conns, deadline).await;
            (to_ok, from_ok, result)
        }
    };
    let code = reset_code(&result);
    if !to_tcp_ok {
        let _ = recv.stop(code);
    }
    if !from_tcp_ok {
        let _ = send.reset(code);
    }
    if result.is_err() {
        reset_tcp(t_read, t_write);
    }
    result
}

/// Splices one of our own streams to a TCP connection whose client is the caller (the
/// sidecar's side of a stream to a service). `up` counts what went toward the service.
pub(crate) async fn splice_own_tcp(
    send: &mut SendStream,
    recv: &mut RecvStream,
    tcp: TcpStream,
) -> Result<Spliced, SpliceError> {
    splice_stream_tcp(send, recv, tcp, CallerSide::Tcp, &[], None).await
}

/// Splices a caller's stream to a connected local TCP backend.
pub(crate) async fn splice_tcp(
    caller: (&Connection, SendStream, RecvStream),
    backend: TcpStream,
    deadline: Option<Instant>,
) -> Result<Spliced, SpliceError> {
    let (conn, mut send, mut recv) = caller;
    splice_stream_tcp(&mut send, &mut recv, backend, CallerSide::Stream, &[conn], deadline).await
}
