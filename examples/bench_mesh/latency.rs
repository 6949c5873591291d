//! Scenario 2: request/response latency at fixed concurrency, closed loop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quicmesh::Client;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::util::{Error, Latency};

/// Where a request goes. TCP and TLS open a connection per request (a TCP-mode proxy cannot
/// tell requests apart on one connection); the mesh opens a stream per request.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    Tcp(SocketAddr),
    Tls(SocketAddr, &'a TlsConnector),
    Mesh(&'a Client, &'a str),
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, body: &[u8]) -> Result<Vec<u8>, Error> {
    s.write_all(body).await?;
    s.shutdown().await?;
    let mut out = Vec::with_capacity(body.len());
    s.read_to_end(&mut out).await?;
    Ok(out)
}

/// One request; returns the reply.
pub async fn request(t: Target<'_>, body: &Bytes) -> Result<Bytes, Error> {
    Ok(match t {
        Target::Tcp(addr) => {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            exchange(s, body).await?.into()
        }
        Target::Tls(addr, connector) => exchange(crate::tls::connect(addr, connector).await?, body)
            .await?
            .into(),
        Target::Mesh(c, service) => c.call(service, body.clone()).await?,
    })
}

/// Runs `concurrency` closed-loop workers for `duration`; `check` sees every reply.
pub async fn measure<F>(concurrency: usize, duration: Duration, one: impl Fn() -> F) -> Result<Latency, Error>
where
    F: std::future::Future<Output = Result<(), Error>>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + duration;
    let workers = (0..concurrency).map(|_| {
        let stop = stop.clone();
        let one = &one;
        async move {
            let mut samples = Vec::new();
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                if let Err(e) = one().await {
                    stop.store(true, Ordering::Relaxed);
                    return Err::<Vec<f64>, Error>(e);
                }
                samples.push(start.elapsed().as_secs_f64() * 1e6);
            }
            Ok(samples)
        }
    });
    let started = Instant::now();
    let results = futures_util::future::join_all(workers).await;
    let took = started.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Latency::from_samples(all, took)
}

/// Echo latency of `size`-byte requests to `t`.
pub async fn latency(t: Target<'_>, size: usize, concurrency: usize, duration: Duration) -> Result<Latency, Error> {
    let body = Bytes::from(vec![7u8; size]);
    measure(concurrency, duration, || {
        let body = body.clone();
        async move {
            let out = request(t, &body).await?;
            if out.len() != body.len() {
                return Err(format!("reply of {} bytes to {}", out.len(), body.len()).into());
            }
            Ok(())
        }
    })
    .await
}

/// Prints the latency tables: every target at every size and concurrency, with ratios to the
/// target named `base`.
pub async fn run(targets: &[(&str, Target<'_>)], base: &str, duration: Duration) -> Result<(), Error> {
    for size in [64usize, 4096] {
        println!(
            "### Request latency: {size} B request and reply, a new connection (TCP, TLS) or stream (quicmesh) per request, {duration:?} per cell\n"
        );
        println!("| path | concurrency | p50 µs | p99 µs | p99.9 µs | req/s | p50 × {base} | p99 × {base} |\n|---|---|---|---|---|---|---|---|");
        for c in [1usize, 16, 256] {
            let mut got = Vec::new();
            for (name, t) in targets {
                got.push((*name, latency(*t, size, c, duration).await?));
            }
            let b = got.iter().find(|(n, _)| *n == base).map(|(_, l)| (l.p50, l.p99));
            for (name, l) in &got {
                let (r50, r99) = match b {
                    Some((p50, p99)) => (format!("{:.2}", l.p50 / p50), format!("{:.2}", l.p99 / p99)),
                    None => ("–".into(), "–".into()),
                };
                println!(
                    "| {name} | {c} | {:.0} | {:.0} | {:.0} | {:.0} | {r50} | {r99} |",
                    l.p50, l.p99, l.p999, l.rps
                );
            }
        }
        println!();
    }
    Ok(())
}
