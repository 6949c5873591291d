//! Scenario 1: one stream pushing `--mib` through each path to a sink that counts the bytes.

use std::time::{Duration, Instant};

use quicmesh::Client;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::backends::{payload, CHUNK};
use crate::util::{median, Error};

/// Where a throughput run pushes its bytes.
pub enum Path<'a> {
    Tcp(std::net::SocketAddr),
    Tls(std::net::SocketAddr, &'a TlsConnector),
    Quinn(&'a quinn::Connection),
    Mesh(&'a Client),
}

fn check_count(n: [u8; 8], sent: u64) -> Result<(), Error> {
    let got = u64::from_be_bytes(n);
    if got != sent {
        return Err(format!("sink got {got} bytes of {sent}").into());
    }
    Ok(())
}

async fn push_stream<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, total: u64) -> Result<(), Error> {
    let data = payload();
    let mut sent = 0;
    while sent < total {
        s.write_all(&data).await?;
        sent += CHUNK as u64;
    }
    s.shutdown().await?;
    let mut n = [0u8; 8];
    s.read_exact(&mut n).await?;
    check_count(n, sent)
}

/// Pushes `total` bytes (rounded up to whole chunks) and waits for the sink's count.
pub async fn push(path: &Path<'_>, total: u64) -> Result<Duration, Error> {
    let start = Instant::now();
    match path {
        Path::Tcp(addr) => push_stream(TcpStream::connect(addr).await?, total).await?,
        Path::Tls(addr, connector) => push_stream(crate::tls::connect(*addr, connector).await?, total).await?,
        Path::Quinn(conn) => {
            let data = payload();
            let (mut send, mut recv) = conn.open_bi().await?;
            let mut sent = 0;
            while sent < total {
                send.write_chunk(data.clone()).await?;
                sent += CHUNK as u64;
            }
            send.finish()?;
            let mut n = [0u8; 8];
            recv.read_exact(&mut n).await?;
            check_count(n, sent)?;
        }
        Path::Mesh(client) => {
            let data = payload();
            let mut s = client.open("sink").await?;
            let mut sent = 0;
            while sent < total {
                s.write_chunk(data.clone()).await?;
                sent += CHUNK as u64;
            }
            s.finish()?;
            let reply = s.read_to_end(8).await?;
            check_count(reply.try_into().map_err(|_| "short reply")?, sent)?;
        }
    }
    Ok(start.elapsed())
}

/// Runs every path `runs` times, interleaved, and prints the table. The first path is the
/// baseline of the ratios; the path named `quinn` is the stack's limit.
pub async fn run(paths: &[(&str, Path<'_>)], mib: u64, runs: usize, quinn: &str) -> Result<(), Error> {
    let mut rows: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for run in 0..runs {
        for (i, (_, p)) in paths.iter().enumerate() {
            let d = push(p, mib << 20).await?;
            rows[i].push(mib as f64 / d.as_secs_f64());
        }
        eprintln!("throughput run {} of {runs} done", run + 1);
    }
    let base = median(rows[0].clone());
    let q = paths
        .iter()
        .position(|(n, _)| *n == quinn)
        .map(|i| median(rows[i].clone()))
        .unwrap_or(f64::NAN);
    println!("### Relay throughput: one stream of {mib} MiB, median of {runs} runs\n");
    println!("| path | MiB/s (median) | min–max | × direct TCP | × direct quinn |\n|---|---|---|---|---|");
    for ((name, _), v) in paths.iter().zip(&rows) {
        let m = median(v.clone());
        let (lo, hi) = v.iter().fold((f64::MAX, 0f64), |(l, h), x| (l.min(*x), h.max(*x)));
        println!("| {name} | {m:.0} | {lo:.0}–{hi:.0} | {:.2} | {:.2} |", m / base, m / q);
    }
    println!();
    Ok(())
}
