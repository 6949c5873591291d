//! A duplex byte stream to a service: one QUIC bidirectional stream after its header.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::protocol::codes;

/// A duplex stream to (or, inside a handler, from) a service caller.
///
/// Reading returns the peer's bytes until it half-closes; [`ServiceStream::finish`] (or
/// `AsyncWriteExt::shutdown`) half-closes our side. Dropping it unfinished aborts the stream,
/// so a failure never looks like a short but complete reply.
#[derive(Debug)]
pub struct ServiceStream {
    send: SendStream,
    recv: RecvStream,
    served_by: String,
    finished: bool,
    /// When the request's deadline passes, if it has one (serving side).
    deadline: Option<tokio::time::Instant>,
}

impl ServiceStream {
    pub(crate) fn new(send: SendStream, recv: RecvStream, served_by: String) -> Self {
        ServiceStream {
            send,
            recv,
            served_by,
            finished: false,
            deadline: None,
        }
    }

    /// On the serving side: a stream dropped unfinished after `deadline` is reset with
    /// [`codes::DEADLINE_EXCEEDED`], so the caller learns its deadline passed.
    pub(crate) fn with_deadline(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Records that our side was finished when the request was sent whole.
    pub(crate) fn mark_finished(&mut self) {
        self.finished = true;
    }

    /// The name of the node serving this stream.
    pub fn served_by(&self) -> &str {
        &self.served_by
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.send.write_all(data).await.map_err(io::Error::from)
    }

    /// Writes a chunk without copying it.
    pub async fn write_chunk(&mut self, data: Bytes) -> io::Result<()> {
        self.send.write_chunk(data).await.map_err(io::Error::from)
    }

    /// Reads the next chunk of at most `max` bytes without copying; `None` at the end.
    pub async fn read_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        match self.recv.read_chunk(max, true).await {
            Ok(c) => Ok(c.map(|c| c.bytes)),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads everything until the peer half-closes; fails if it exceeds `limit` bytes.
    pub async fn read_to_end(&mut self, limit: usize) -> io::Result<Vec<u8>> {
        self.recv.read_to_end(limit).await.map_err(|e| match e {
            quinn::ReadToEndError::TooLong => {
                io::Error::new(io::ErrorKind::InvalidData, format!("more than {limit} bytes"))
            }
            quinn::ReadToEndError::Read(e) => e.into(),
        })
    }

    /// Half-closes our sending side: the peer reads end-of-stream after our last byte.
    pub fn finish(&mut self) -> io::Result<()> {
        self.finished = true;
        self.send
            .finish()
            .map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e))
    }

    /// Pipes this stream and a TCP connection into each other until both directions end:
    /// what `quicmesh forward` does with every connection it accepts. Each side's end of
    /// input half-closes the other; a failure in either direction resets the stream, so the
    /// service never takes a cut-off request for a whole one. Returns the bytes sent to the
    /// service and received from it.
    pub async fn splice_tcp(mut self, tcp: tokio::net::TcpStream) -> io::Result<(u64, u64)> {
        let result = super::splice::splice_own_tcp(&mut self.send, &mut self.recv, tcp).await;
        // Finished or reset by now either way; if this future is dropped first, Drop resets.
        self.finished = true;
        result.map(|s| (s.up, s.down)).map_err(io::Error::other)
    }

    /// Aborts both directions; the peer sees a reset, never a clean end.
    pub fn abort(&mut self) {
        self.finished = true;
        let _ = self.send.reset(codes::STREAM_ABORTED);
        let _ = self.recv.stop(codes::STREAM_ABORTED);
    }
}

impl Drop for ServiceStream {
    fn drop(&mut self) {
        // quinn finishes a dropped send stream implicitly, which would make a failed handler's
        // partial reply look complete. Reset instead, unless we finished on purpose.
        if !self.finished {
            let passed = self.deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            let code = if passed {
                codes::DEADLINE_EXCEEDED
            } else {
                codes::STREAM_ABORTED
            };
            let _ = self.send.reset(code);
        }
    }
}

impl AsyncRead for ServiceStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf)
    }
}

impl AsyncWrite for ServiceStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.finished = true;
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}
