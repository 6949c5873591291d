//! Scenario 4: what a new stream per request costs against reusing one stream, on a bare
//! quinn connection and through a node.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use quicmesh::{Client, ServiceStream};
use tokio::io::AsyncReadExt;

use crate::latency::measure;
use crate::util::{Error, Latency};

const SIZE: usize = 64;

/// The stream-echo service with a warm pool of [`WARM_POOL`] backend connections.
pub const WARM: &str = "stream-echo-warm";
/// Its `preconnect`.
pub const WARM_POOL: u32 = 64;
/// An in-process echo handler: a new stream without any backend connection, the floor a
/// warm pool can approach.
pub const IN_PROCESS: &str = "echo-in-process";

fn check(got: usize) -> Result<(), Error> {
    if got != SIZE {
        return Err(format!("reply of {got} bytes to {SIZE}").into());
    }
    Ok(())
}

/// A new stream per request on one quinn connection to an echo server.
async fn quinn_new(conn: &quinn::Connection, c: usize, d: Duration) -> Result<Latency, Error> {
    let body = Bytes::from(vec![7u8; SIZE]);
    measure(c, d, || async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_chunk(body.clone()).await?;
        send.finish()?;
        check(recv.read_to_end(SIZE * 2).await?.len())
    })
    .await
}

/// One long-lived stream per worker on the same connection, request after request.
async fn quinn_reused(conn: &quinn::Connection, c: usize, d: Duration) -> Result<Latency, Error> {
    let mut pool = Vec::new();
    for _ in 0..c {
        pool.push(conn.open_bi().await?);
    }
    let pool = Mutex::new(pool);
    let body = [7u8; SIZE];
    let l = measure(c, d, || async {
        let (mut send, mut recv) = pool.lock().map_err(|_| "poisoned")?.pop().ok_or("pool empty")?;
        send.write_all(&body).await?;
        let mut out = [0u8; SIZE];
        recv.read_exact(&mut out).await?;
        pool.lock().map_err(|_| "poisoned")?.push((send, recv));
        Ok(())
    })
    .await?;
    for (mut send, _) in pool.into_inner().map_err(|_| "poisoned")? {
        send.finish()?;
    }
    Ok(l)
}

/// A new mesh stream (and so a new backend connection, or a warm one) per request.
async fn mesh_new(client: &Client, service: &str, c: usize, d: Duration) -> Result<Latency, Error> {
    let body = Bytes::from(vec![7u8; SIZE]);
    measure(c, d, || async {
        check(client.call(service, body.clone()).await?.len())
    })
    .await
}

/// One tunnelled stream per worker, request after request (one backend connection each).
async fn mesh_reused(client: &Client, c: usize, d: Duration) -> Result<Latency, Error> {
    let mut pool: Vec<ServiceStream> = Vec::new();
    for _ in 0..c {
        pool.push(client.open("stream-echo").await?);
    }
    let pool = Mutex::new(pool);
    let body = [7u8; SIZE];
    let l = measure(c, d, || async {
        let mut s = pool.lock().map_err(|_| "poisoned")?.pop().ok_or("pool empty")?;
        s.write_all(&body).await?;
        let mut out = [0u8; SIZE];
        s.read_exact(&mut out).await?;
        pool.lock().map_err(|_| "poisoned")?.push(s);
        Ok(())
    })
    .await?;
    for mut s in pool.into_inner().map_err(|_| "poisoned")? {
        s.finish()?;
    }
    Ok(l)
}

/// Prints the table: for each stack and concurrency, reused against new streams.
pub async fn run(conn: &quinn::Connection, client: &Client, d: Duration) -> Result<(), Error> {
    println!("### Stream scale: {SIZE} B echo over one connection, a new stream per request against one reused stream per worker, {d:?} per cell\n");
    println!("| stack | concurrency | streams | p50 µs | p99 µs | req/s (= new streams/s) | p50 × reused | p99 × reused |\n|---|---|---|---|---|---|---|---|");
    let warm_label = format!("new per request, warm backend pool (preconnect = {WARM_POOL})");
    for c in [1usize, 16, 64] {
        let qr = quinn_reused(conn, c, d).await?;
        let qn = quinn_new(conn, c, d).await?;
        let mr = mesh_reused(client, c, d).await?;
        let mn = mesh_new(client, "stream-echo", c, d).await?;
        let mw = mesh_new(client, WARM, c, d).await?;
        let mh = mesh_new(client, IN_PROCESS, c, d).await?;
        for (stack, kind, l, base) in [
            ("bare quinn", "reused", &qr, &qr),
            ("bare quinn", "new per request", &qn, &qr),
            ("quicmesh, one node", "reused (one backend connection each)", &mr, &mr),
            (
                "quicmesh, one node",
                "new per request (and a backend connection)",
                &mn,
                &mr,
            ),
            ("quicmesh, one node", warm_label.as_str(), &mw, &mr),
            (
                "quicmesh, one node",
                "new per request, in-process echo handler (no backend)",
                &mh,
                &mr,
            ),
        ] {
            println!(
                "| {stack} | {c} | {kind} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
                l.p50,
                l.p99,
                l.rps,
                l.p50 / base.p50,
                l.p99 / base.p99
            );
        }
    }
    println!();
    Ok(())
}
