//! The soak's traffic: clients calling the mesh without pause, with request/response calls
//! whose replies must come back byte for byte, and long streams whose every chunk names its
//! stream and sequence number, so bytes of another stream or a lost chunk cannot pass.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ledger::{Call, Outcome};
use super::mesh::{Mesh, SERVICES};
use crate::{CallError, CallOptions, Client};

/// A request/response call's deadline (it travels in the header).
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How far past its deadline a call may end before it counts as hung (scheduling on a
/// loaded 2-core machine).
pub(super) const HANG_SLACK: Duration = Duration::from_secs(1);
/// A long stream's chunk must echo back within this, or the stream counts as stalled.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the workers record, shared with the report.
pub(super) struct Records {
    pub t0: Instant,
    pub calls: Mutex<Vec<Call>>,
    pub streams: Mutex<Vec<Call>>,
    /// Successful calls' latencies, with their start offsets.
    pub latencies: Mutex<Vec<(Duration, Duration)>>,
}

impl Records {
    pub fn new(t0: Instant) -> Self {
        Records {
            t0,
            calls: Mutex::default(),
            streams: Mutex::default(),
            latencies: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request body that names its call: 16 bytes of id and length, then bytes drawn from the
/// id, so a reply of another call, a truncated or a reordered one differs from it.
pub(super) fn body(id: u64, len: usize) -> Bytes {
    let len = len.max(16);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(len as u64).to_be_bytes());
    let mut rng = SmallRng::seed_from_u64(id);
    out.extend((16..len).map(|_| rng.random::<u8>()));
    Bytes::from(out)
}

/// Says how `got` differs from `want`.
fn differs(want: &[u8], got: &[u8]) -> String {
    match want.iter().zip(got).position(|(a, b)| a != b) {
        Some(at) => format!(
            "{} of {} bytes back, first difference at byte {at}",
            got.len(),
            want.len()
        ),
        None => format!("{} of {} bytes back, equal as far as they go", got.len(), want.len()),
    }
}

/// The class of a failed call, as a report line groups it. `Protocol` and
/// `ResponseTooLarge` are bugs, not faults: the report counts them as violations.
pub(super) fn class(e: &CallError) -> String {
    match e {
        CallError::Rejected { code, .. } => format!("rejected: {code}"),
        CallError::Stream(_) => "stream failed (reset or connection lost)".into(),
        CallError::Timeout(_) => "deadline passed".into(),
        CallError::Connect(_) => "no entry node reachable".into(),
        CallError::Protocol(_) => PROTOCOL_ERROR.into(),
        CallError::ResponseTooLarge(_) => TOO_LARGE.into(),
    }
}

pub(super) const PROTOCOL_ERROR: &str = "PROTOCOL ERROR (a bug)";
pub(super) const TOO_LARGE: &str = "RESPONSE TOO LARGE (a bug)";

/// The node a client entered through, if it has a connection.
async fn entry(mesh: &Mesh, client: &Client) -> Option<usize> {
    let addr: SocketAddr = client.entry_addr().await?;
    mesh.wires().node_of.get(&addr).copied()
}

fn replicas(service: usize, nodes: usize) -> Vec<usize> {
    (0..nodes).filter(|i| i % SERVICES == service).collect()
}

/// Calls random services with random bodies until `stop`.
pub(super) async fn call_worker(
    mesh: Arc<Mesh>,
    records: Arc<Records>,
    client: Client,
    idx: usize,
    worker: u64,
    stop: Arc<AtomicBool>,
) {
    let nodes = mesh.views.len();
    let mut rng = SmallRng::seed_from_u64(worker);
    let mut id = worker << 40;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let svc = rng.random_range(0..SERVICES);
        let len = match rng.random_range(0..100) {
            0..=59 => rng.random_range(16..1_000),
            60..=94 => rng.random_range(1_000..64_000),
            _ => rng.random_range(64_000..300_000),
        };
        let want = body(id, len);
        let e0 = entry(&mesh, &client).await;
        let start = records.t0.elapsed();
        let opts = CallOptions {
            timeout: Some(CALL_TIMEOUT),
            ..CallOptions::default()
        };
        let r = client.request(&format!("svc{svc}"), want.clone(), &opts).await;
        let end = records.t0.elapsed();
        let e1 = entry(&mesh, &client).await;
        let took = end - start;
        let outcome = if took > CALL_TIMEOUT + HANG_SLACK {
            Outcome::Hung(took)
        } else {
            match r {
                Ok(reply) if reply.body == want => {
                    lock(&records.latencies).push((start, took));
                    Outcome::Ok
                }
                Ok(reply) if reply.body.len() < want.len() && want.starts_with(&reply.body) => Outcome::Short {
                    served_by: reply.served_by,
                    got: reply.body.len(),
                    want: want.len(),
                },
                Ok(reply) => Outcome::Corrupt(format!(
                    "call {id} to svc{svc} at {:.2}s–{:.2}s, served by {}: {}",
                    start.as_secs_f64(),
                    end.as_secs_f64(),
                    reply.served_by,
                    differs(&want, &reply.body)
                )),
                Err(e) => Outcome::Failed(class(&e)),
            }
        };
        lock(&records.calls).push(Call {
            client: idx,
            replicas: replicas(svc, nodes),
            entries: [e0, e1].into_iter().flatten().collect(),
            start,
            end,
            outcome,
        });
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

/// A chunk of a long stream: stream id, sequence number, then bytes drawn from both.
fn chunk(stream: u64, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(2048);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    let mut rng = SmallRng::seed_from_u64(stream.wrapping_mul(1_000_003) ^ seq);
    out.extend((16..2048).map(|_| rng.random::<u8>()));
    out
}

/// Holds long streams open (2–10 s, a chunk every 50 ms, each echoed before the next) until
/// `stop`.
pub(super) async fn stream_worker(
    mesh: Arc<Mesh>,
    records: Arc<Records>,
    client: Client,
    idx: usize,
    worker: u64,
    stop: Arc<AtomicBool>,
) {
    let nodes = mesh.views.len();
    let mut rng = SmallRng::seed_from_u64(worker);
    let mut id = worker << 40;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let svc = rng.random_range(0..SERVICES);
        let chunks = rng.random_range(40..200u64);
        let e0 = entry(&mesh, &client).await;
        let start = records.t0.elapsed();
        let outcome = one_stream(&client, svc, id, chunks, &stop).await;
        let end = records.t0.elapsed();
        let e1 = entry(&mesh, &client).await;
        lock(&records.streams).push(Call {
            client: idx,
            replicas: replicas(svc, nodes),
            entries: [e0, e1].into_iter().flatten().collect(),
            start,
            end,
            outcome,
        });
    }
}

async fn one_stream(client: &Client, svc: usize, id: u64, chunks: u64, stop: &AtomicBool) -> Outcome {
    let opened = tokio::time::timeout(CALL_TIMEOUT, client.open(&format!("svc{svc}"))).await;
    let mut s = match opened {
        Err(_) => return Outcome::Failed("open: deadline passed".into()),
        Ok(Err(e)) => return Outcome::Failed(format!("open: {}", class(&e))),
        Ok(Ok(s)) => s,
    };
    let mut back = vec![0u8; 2048];
    for seq in 0..chunks {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let want = chunk(id, seq);
        let step = async {
            s.write_all(&want).await?;
            s.read_exact(&mut back).await.map(|_| ())
        };
        match tokio::time::timeout(CHUNK_TIMEOUT, step).await {
            Err(_) => return Outcome::Failed("stream stalled".into()),
            Ok(Err(_)) => return Outcome::Failed("stream failed (reset or connection lost)".into()),
            Ok(Ok(())) if back != want => {
                let (got_id, got_seq) = (
                    u64::from_be_bytes(back[..8].try_into().unwrap_or_default()),
                    u64::from_be_bytes(back[8..16].try_into().unwrap_or_default()),
                );
                return Outcome::Corrupt(format!(
                    "stream {id} chunk {seq}: got stream {got_id} chunk {got_seq} ({})",
                    differs(&want, &back)
                ));
            }
            Ok(Ok(())) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let end = async {
        s.shutdown().await?;
        s.read_to_end(64 * 1024).await
    };
    match tokio::time::timeout(CHUNK_TIMEOUT, end).await {
        Err(_) => Outcome::Failed("stream stalled".into()),
        Ok(Err(_)) => Outcome::Failed("stream failed (reset or connection lost)".into()),
        Ok(Ok(rest)) if !rest.is_empty() => {
            Outcome::Corrupt(format!("stream {id}: {} bytes after the last echo", rest.len()))
        }
        Ok(Ok(_)) => Outcome::Ok,
    }
}
