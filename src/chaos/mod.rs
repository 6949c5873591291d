//! The chaos soak: a mesh of real node processes under many faults at once, for as long as
//! asked, with its promises checked while it runs and after (issue 19).
//!
//! A seed draws the plan ([`schedule::plan`]): SIGKILLs and restarts (some on a new port),
//! SIGTERM drains, partitions, lossy and slow links, client rebinds, certificate rotations,
//! garbage bursts, backends stopped and started, leases let lapse. Two clients call the mesh
//! throughout. [`ledger`] holds the checks, pure and unit-tested; the rest is the thin layer
//! that runs processes, proxies and clients. `examples/chaos.rs` is the command line; the
//! test suite runs a short soak with a fixed and a random seed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod ledger;
mod load;
mod mesh;
mod nemesis;
mod report;
pub mod schedule;

pub use mesh::free_port;
pub use report::Report;

use ledger::{Resurrections, Usage};
use mesh::{http, sample, Mesh};
use schedule::Shape;

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Draws the plan; the same seed replays the same plan.
    pub seed: u64,
    /// The mesh and how long faults are injected.
    pub shape: Shape,
    /// The `quicmesh` binary the nodes run.
    pub node_bin: PathBuf,
    /// Where certificates, configs and node logs go; a fresh temporary directory if `None`.
    /// Kept when the soak finds a violation.
    pub dir: Option<PathBuf>,
    /// Traffic before the first fault, to measure the nodes' resources at rest.
    pub warmup: Duration,
    /// Traffic after the views agree again, to measure latency and resources after.
    pub cooldown: Duration,
    /// A failure this long after a fault on its path ended is still the fault's.
    pub settle: Duration,
    /// How long the views may take to agree after the last fault.
    pub converge_within: Duration,
}

impl ChaosOptions {
    /// Defaults for a soak of `duration` with `seed`, running `node_bin`.
    pub fn new(seed: u64, duration: Duration, node_bin: PathBuf) -> Self {
        ChaosOptions {
            seed,
            shape: Shape::new(duration),
            node_bin,
            dir: None,
            warmup: Duration::from_secs(5),
            cooldown: Duration::from_secs(10),
            settle: Duration::from_secs(5),
            converge_within: Duration::from_secs(30),
        }
    }
}

/// Why the soak could not run (a violation found is not an error: it is in the [`Report`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChaosError {
    /// Files, ports, proxies or certificates could not be set up.
    #[error("setting up the soak: {0}")]
    Setup(String),
    /// A node process would not start or the mesh did not form.
    #[error("{0}")]
    Node(String),
    /// A client could not connect before any fault.
    #[error("a client could not connect before any fault: {0}")]
    Client(String),
}

/// A node process's resources now, read from /proc and its metrics.
async fn usage(mesh: &Mesh, i: usize) -> Option<Usage> {
    let v = &mesh.views[i];
    let pid = v.pid.load(Ordering::Relaxed);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let (_, m) = http(v.admin, "GET", "/metrics", None).await.ok()?;
    Some(Usage {
        rss_kib,
        fds,
        tasks: sample(&m, "quicmesh_tasks")? as u64,
        conns: sample(&m, "quicmesh_connections")? as u64,
    })
}

/// [`usage`], tried up to three times (a node busy with the soak may miss one 2 s answer).
async fn usage_retried(mesh: &Mesh, i: usize) -> Option<Usage> {
    for _ in 0..3 {
        if let Some(u) = usage(mesh, i).await {
            return Some(u);
        }
    }
    None
}

/// Polls until every live node lists every node Alive; `Err` has the last difference.
async fn converge(mesh: &Mesh, within: Duration) -> Result<Duration, String> {
    let names: Vec<String> = mesh.views.iter().map(|v| v.name.clone()).collect();
    let t0 = Instant::now();
    loop {
        let views: Vec<_> = nemesis::views(mesh)
            .await
            .into_iter()
            .map(|(i, _, r)| {
                let members = r
                    .members
                    .iter()
                    .map(|m| (m.member.name.clone(), m.member.status, m.member.incarnation))
                    .collect();
                (i, members)
            })
            .collect();
        let result = if views.len() < names.len() {
            Err(format!("{} of {} nodes answer", views.len(), names.len()))
        } else {
            ledger::views_agree(&views, &names)
        };
        match result {
            Ok(()) => return Ok(t0.elapsed()),
            Err(e) if t0.elapsed() > within => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Runs the soak and reports what it found.
pub async fn run(opts: &ChaosOptions) -> Result<Report, ChaosError> {
    let shape = opts.shape;
    let tmp;
    let dir = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| ChaosError::Setup(format!("creating {}: {e}", d.display())))?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("quicmesh-chaos-")
                .tempdir()
                .map_err(|e| ChaosError::Setup(format!("a temporary directory: {e}")))?;
            tmp.path().to_owned()
        }
    };
    // Keep the configs and node logs for whoever looks into a violation or an error.
    let keep = |dir: &std::path::Path| -> Option<PathBuf> {
        if opts.dir.is_some() {
            return Some(dir.to_owned());
        }
        let kept = std::env::temp_dir().join(format!("quicmesh-chaos-{}", opts.seed));
        let _ = std::fs::remove_dir_all(&kept);
        std::fs::rename(dir, &kept).ok().map(|()| kept)
    };
    let kept_with = |e: ChaosError| match keep(&dir) {
        Some(d) => ChaosError::Node(format!("{e} (configs and node logs: {})", d.display())),
        None => e,
    };
    // A node that fails to start is as worth a look as one that fails later.
    let mesh = match Mesh::start(&dir, &opts.node_bin, shape.nodes, shape.seeds, shape.clients).await {
        Ok(m) => m,
        Err(e) => return Err(kept_with(e)),
    };
    let result = soak(opts, &mesh).await;
    mesh.stop().await;
    match result {
        Ok(mut report) => {
            if !report.violations.is_empty() || opts.dir.is_some() {
                report.logs = keep(&dir);
            }
            Ok(report)
        }
        Err(e) => Err(kept_with(e)),
    }
}

async fn soak(opts: &ChaosOptions, mesh: &Arc<Mesh>) -> Result<Report, ChaosError> {
    let shape = opts.shape;
    converge(mesh, Duration::from_secs(30))
        .await
        .map_err(|e| ChaosError::Node(format!("the mesh did not form within 30 s: {e}")))?;
    let mut clients = Vec::new();
    for c in 0..shape.clients {
        // Each client lists every node, starting at a different one.
        let mut entries: Vec<String> = (0..shape.nodes).map(|i| mesh.advertised(i).to_string()).collect();
        entries.rotate_left(c * shape.nodes / shape.clients.max(1));
        let mut cfg = crate::ClientConfig::new(mesh.tls(crate::Role::Client, &format!("load{c}")), entries);
        cfg.transport.connect_timeout = Duration::from_secs(2);
        let client = crate::Client::connect(cfg)
            .await
            .map_err(|e| ChaosError::Client(e.to_string()))?;
        clients.push(client);
    }
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(load::Records::new(t0));
    let mut workers = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        for w in 0..6u64 {
            let seed = opts.seed.wrapping_mul(31).wrapping_add(c as u64 * 100 + w);
            let args = (mesh.clone(), records.clone(), client.clone(), c, seed, stop.clone());
            if w < 4 {
                workers.spawn(load::call_worker(args.0, args.1, args.2, args.3, args.4, args.5));
            } else {
                workers.spawn(load::stream_worker(args.0, args.1, args.2, args.3, args.4, args.5));
            }
        }
    }
    let side_stop = Arc::new(AtomicBool::new(false));
    let watch = Arc::new(Mutex::new(Resurrections::default()));
    let mut side = tokio::task::JoinSet::new();
    side.spawn(nemesis::renew_leases(mesh.clone(), side_stop.clone()));
    side.spawn(nemesis::observe(mesh.clone(), t0, watch.clone(), side_stop.clone()));
    tokio::time::sleep(opts.warmup).await;
    let mut before = Vec::new();
    for i in 0..shape.nodes {
        before.push(usage_retried(mesh, i).await.ok_or_else(|| {
            ChaosError::Node(format!(
                "could not read {}'s resources before the faults",
                mesh.views[i].name
            ))
        })?);
    }

    let plan: Vec<schedule::Fault> = schedule::plan(opts.seed, &shape)
        .into_iter()
        .map(|mut f| {
            f.at += opts.warmup;
            f.until += opts.warmup;
            f
        })
        .collect();
    let planned = plan.clone();
    let nemesis = Arc::new(nemesis::Nemesis {
        mesh: mesh.clone(),
        clients: clients.clone(),
        t0,
        log: Mutex::default(),
        node_faults: (0..shape.nodes).map(|_| tokio::sync::Mutex::new(())).collect(),
    });
    let _ = std::fs::write(
        mesh.dir.join("plan.txt"),
        planned
            .iter()
            .map(|f| {
                format!(
                    "{:>8.2}s {:>8.2}s {:?}\n",
                    f.at.as_secs_f64(),
                    f.until.as_secs_f64(),
                    f.kind
                )
            })
            .collect::<String>(),
    );
    nemesis.run(plan).await;
    let faults_over = t0.elapsed();
    let convergence = converge(mesh, opts.converge_within).await;
    let converged_at = t0.elapsed();
    tokio::time::sleep(opts.cooldown).await;

    // Resources come back down: poll (allocators and timers take a moment), then judge.
    let restarted: Vec<bool> = mesh.views.iter().map(|v| v.restarted.load(Ordering::Relaxed)).collect();
    let rest = before.iter().fold(Usage::default(), |m, u| Usage {
        rss_kib: m.rss_kib.max(u.rss_kib),
        fds: m.fds.max(u.fds),
        tasks: m.tasks.max(u.tasks),
        conns: m.conns.max(u.conns),
    });
    let baseline = |i: usize| if restarted[i] { rest } else { before[i] };
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let mut after = Vec::new();
        for i in 0..shape.nodes {
            after.push(usage_retried(mesh, i).await);
        }
        let ok = (0..shape.nodes).all(|i| after[i].is_some_and(|a| ledger::settled(&baseline(i), &a).is_ok()));
        if ok || Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}
    side_stop.store(true, Ordering::Relaxed);
    while side.join_next().await.is_some() {}
    // Nothing may stay in flight once the callers are gone.
    let mut stuck = Vec::new();
    for (i, v) in mesh.views.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = match http(v.admin, "GET", "/metrics", None).await {
                Ok((200, m)) => sample(&m, "quicmesh_streams_in_flight"),
                _ => None,
            };
            if n == Some(0.0) {
                break;
            }
            if Instant::now() > deadline {
                stuck.push(match n {
                    Some(n) => format!(
                        "{} still has {n} streams in flight 10 s after the last caller stopped",
                        mesh.views[i].name
                    ),
                    None => format!("{} did not answer /metrics after the soak", mesh.views[i].name),
                });
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for c in &clients {
        c.close().await;
    }
    let log = std::mem::take(&mut *nemesis.log.lock().unwrap_or_else(|p| p.into_inner()));
    let found = std::mem::take(&mut watch.lock().unwrap_or_else(|p| p.into_inner()).found);
    let take = |m: &Mutex<Vec<ledger::Call>>| std::mem::take(&mut *m.lock().unwrap_or_else(|p| p.into_inner()));
    let (calls, streams) = (take(&records.calls), take(&records.streams));
    let latencies = std::mem::take(&mut *records.latencies.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Report::build(report::Inputs {
        opts,
        planned,
        log,
        calls,
        streams,
        latencies,
        faults_over,
        converged_at,
        convergence,
        names: mesh.views.iter().map(|v| v.name.clone()).collect(),
        before: (0..shape.nodes).map(baseline).collect(),
        after,
        restarted,
        resurrections: found,
        stuck,
    }))
}
