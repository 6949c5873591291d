//! The servers behind every path: TCP sink and echoes, a delayed backend for the skew runs,
//! and bare quinn servers for the stack's own baselines.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quicmesh::TlsMaterial;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::util::Error;

/// Bytes per write of the pushing clients and per read of the sinks.
pub const CHUNK: usize = 64 << 10;

pub fn payload() -> Bytes {
    Bytes::from((0..CHUNK).map(|i| i as u8).collect::<Vec<u8>>())
}

/// Reads `s` to its end and answers with the byte count (8 bytes, big-endian).
pub async fn count_to_end<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    while let Ok(k) = s.read(&mut buf).await {
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    let _ = s.write_all(&n.to_be_bytes()).await;
    let _ = s.shutdown().await;
}

/// A TCP server of [`count_to_end`].
pub async fn sink() -> Result<SocketAddr, Error> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(count_to_end(s));
        }
    });
    Ok(addr)
}

/// Reads a request to its end and writes it back.
pub async fn echo() -> Result<SocketAddr, Error> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).await.is_ok() {
                    let _ = s.write_all(&buf).await;
                }
            });
        }
    });
    Ok(addr)
}

/// Writes back whatever arrives as soon as it arrives, until the end: a connection that is
/// reused for many requests.
pub async fn stream_echo() -> Result<SocketAddr, Error> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// A backend that takes `delay` (µs, changeable while it runs) per request: reads the request
/// to its end, waits, and answers with its index (one byte).
pub async fn delayed(index: u8, delay: Arc<AtomicU64>) -> Result<SocketAddr, Error> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            let delay = delay.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).await.is_ok() {
                    tokio::time::sleep(Duration::from_micros(delay.load(Ordering::Relaxed))).await;
                    let _ = s.write_all(&[index]).await;
                }
            });
        }
    });
    Ok(addr)
}

/// A bare quinn server with a node's certificate. Each stream is either counted (`sink`: read
/// to the end, answer with the count) or echoed as it arrives. The QUIC stack's own limit,
/// without the mesh.
pub async fn quinn_server(tls: &TlsMaterial, sink: bool) -> Result<SocketAddr, Error> {
    let cfg = quinn::ServerConfig::with_crypto(tls.server_config()?);
    let ep = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse()?)?;
    let addr = ep.local_addr()?;
    tokio::spawn(async move {
        while let Some(inc) = ep.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let mut n = 0u64;
                        while let Ok(Some(c)) = recv.read_chunk(usize::MAX, true).await {
                            n += c.bytes.len() as u64;
                            if !sink && send.write_chunk(c.bytes).await.is_err() {
                                return;
                            }
                        }
                        if sink {
                            let _ = send.write_all(&n.to_be_bytes()).await;
                        }
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    Ok(addr)
}
