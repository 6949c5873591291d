//! A UDP proxy that impairs what passes through it, for tests and experiments on one host.
//!
//! Every source address that sends to the proxy gets its own upstream socket, so the target
//! sees one distinct peer per source (and a source that changes its address looks, to the
//! target, like a peer that migrated). Each direction has its own [`Link`], changeable while
//! traffic flows.

use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::model::{DropReason, Fate, Impairment, Link};

/// Which way a datagram travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a source to the target.
    Up,
    /// From the target back to a source.
    Down,
}

/// Counters of one direction.
#[derive(Debug, Default)]
struct DirStats {
    delivered: AtomicU64,
    lost: AtomicU64,
    blackholed: AtomicU64,
    queue_dropped: AtomicU64,
}

/// A snapshot of what the proxy did in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Datagrams delivered (duplicates count twice).
    pub delivered: u64,
    /// Dropped by random loss.
    pub lost: u64,
    /// Dropped because the link was blackholed.
    pub blackholed: u64,
    /// Dropped because the bandwidth queue was full.
    pub queue_dropped: u64,
}

struct State {
    up: Mutex<Link>,
    down: Mutex<Link>,
    /// Links of particular sources, in place of `up`/`down` for them: one proxy in front of a
    /// node can then cut or impair that node's link to one peer and not the others.
    per_source: Mutex<HashMap<SocketAddr, [Link; 2]>>,
    rng: Mutex<SmallRng>,
    stats: [DirStats; 2],
    epoch: Instant,
}

impl State {
    fn link(&self, dir: Direction) -> &Mutex<Link> {
        match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    fn stats(&self, dir: Direction) -> &DirStats {
        &self.stats[dir as usize]
    }

    /// Decides the fate of a datagram from (`Up`) or to (`Down`) `source`, and counts it.
    fn fate(&self, dir: Direction, source: SocketAddr, len: usize) -> Option<Vec<Instant>> {
        let now = self.epoch.elapsed();
        let fate = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            let mut per_source = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
            match per_source.get_mut(&source) {
                Some(links) => links[dir as usize].on_datagram(now, len, &mut *rng),
                None => {
                    drop(per_source);
                    let mut link = self.link(dir).lock().unwrap_or_else(|p| p.into_inner());
                    link.on_datagram(now, len, &mut *rng)
                }
            }
        };
        let s = self.stats(dir);
        match fate {
            Fate::Dropped(DropReason::Loss) => s.lost.fetch_add(1, Ordering::Relaxed),
            Fate::Dropped(DropReason::Blackhole) => s.blackholed.fetch_add(1, Ordering::Relaxed),
            Fate::Dropped(DropReason::Queue) => s.queue_dropped.fetch_add(1, Ordering::Relaxed),
            Fate::Deliver(times) => {
                s.delivered.fetch_add(times.len() as u64, Ordering::Relaxed);
                return Some(times.into_iter().map(|t| self.epoch + t).collect());
            }
        };
        None
    }
}

/// A running impairment proxy. Dropping it stops it.
pub struct UdpProxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: Arc<State>,
    tasks: JoinSet<()>,
}

impl UdpProxy {
    /// Listens on `listen` and forwards to `target`, with a perfect link both ways to start.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let addr = socket.local_addr()?;
        let state = Arc::new(State {
            up: Mutex::new(Link::default()),
            down: Mutex::new(Link::default()),
            per_source: Mutex::new(HashMap::new()),
            rng: Mutex::new(SmallRng::from_os_rng()),
            stats: Default::default(),
            epoch: Instant::now(),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(run(socket, target, state.clone()));
        Ok(UdpProxy {
            addr,
            target,
            state,
            tasks,
        })
    }

    /// The address sources send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address datagrams are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Sets the impairment of one direction.
    pub fn set(&self, dir: Direction, imp: Impairment) {
        self.state.link(dir).lock().unwrap_or_else(|p| p.into_inner()).set(imp);
    }

    /// Sets the same impairment both ways.
    pub fn set_both(&self, imp: Impairment) {
        self.set(Direction::Up, imp);
        self.set(Direction::Down, imp);
    }

    /// Cuts (`true`) or restores (`false`) the link both ways, keeping the other settings.
    pub fn blackhole(&self, on: bool) {
        for dir in [Direction::Up, Direction::Down] {
            let mut link = self.state.link(dir).lock().unwrap_or_else(|p| p.into_inner());
            let mut imp = link.impairment();
            imp.blackhole = on;
            link.set(imp);
        }
    }

    /// Gives datagrams from `source` (and the replies to it) their own impairment, both ways,
    /// in place of the proxy-wide one; [`Impairment::default`] makes that link perfect.
    pub fn set_for(&self, source: SocketAddr, imp: Impairment) {
        let mut per_source = self.state.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let links = per_source
            .entry(source)
            .or_insert_with(|| [Link::default(), Link::default()]);
        for link in links.iter_mut() {
            link.set(imp);
        }
    }

    /// Puts `source` back under the proxy-wide impairment.
    pub fn clear_for(&self, source: SocketAddr) {
        self.state
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&source);
    }

    /// The sources with an impairment of their own.
    pub fn sources_set(&self) -> Vec<SocketAddr> {
        let per_source = self.state.per_source.lock().unwrap_or_else(|p| p.into_inner());
        per_source.keys().copied().collect()
    }

    /// What the proxy has done in one direction so far.
    pub fn stats(&self, dir: Direction) -> ProxyStats {
        let s = self.state.stats(dir);
        ProxyStats {
            delivered: s.delivered.load(Ordering::Relaxed),
            lost: s.lost.load(Ordering::Relaxed),
            blackholed: s.blackholed.load(Ordering::Relaxed),
            queue_dropped: s.queue_dropped.load(Ordering::Relaxed),
        }
    }

    /// Stops forwarding.
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

/// A datagram waiting for its delivery time; ordered so the heap pops the earliest first,
/// and datagrams due at the same instant leave in the order they arrived.
struct Due {
    at: Instant,
    seq: u64,
    to: SocketAddr,
    data: Bytes,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Sends datagrams from `socket` at their due times, in due order.
fn scheduler(socket: Arc<UdpSocket>) -> mpsc::UnboundedSender<(Instant, SocketAddr, Bytes)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, SocketAddr, Bytes)>();
    tokio::spawn(async move {
        let mut heap = BinaryHeap::new();
        let mut seq = 0u64;
        loop {
            let next = heap.peek().map(|d: &Due| d.at);
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some((at, to, data)) => {
                        seq += 1;
                        heap.push(Due { at, seq, to, data });
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if next.is_some() => {
                    let now = Instant::now();
                    while heap.peek().is_some_and(|d| d.at <= now) {
                        if let Some(d) = heap.pop() {
                            let _ = socket.send_to(&d.data, d.to).await;
                        }
                    }
                }
            }
        }
    });
    tx
}

/// Decides `data`'s fate and hands each delivery to the scheduler (which keeps order).
/// `source` is the address on the far side of the proxy from the target, whichever way
/// `data` travels.
fn forward(
    state: &State,
    dir: Direction,
    source: SocketAddr,
    tx: &mpsc::UnboundedSender<(Instant, SocketAddr, Bytes)>,
    to: SocketAddr,
    data: Bytes,
) {
    if let Some(times) = state.fate(dir, source, data.len()) {
        for at in times {
            let _ = tx.send((at, to, data.clone()));
        }
    }
}

async fn run(socket: Arc<UdpSocket>, target: SocketAddr, state: Arc<State>) {
    let down_tx = scheduler(socket.clone());
    let mut upstreams: HashMap<SocketAddr, mpsc::UnboundedSender<(Instant, SocketAddr, Bytes)>> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 65_536];
    let bind_ip: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            // ICMP errors surface here on some systems; the socket itself is still fine.
            continue;
        };
        let data = Bytes::copy_from_slice(&buf[..n]);
        let up_tx = match upstreams.get(&from) {
            Some(tx) => tx.clone(),
            None => {
                let Ok(up) = UdpSocket::bind(bind_ip).await else {
                    continue;
                };
                let up = Arc::new(up);
                let tx = scheduler(up.clone());
                upstreams.insert(from, tx.clone());
                let (state, down_tx) = (state.clone(), down_tx.clone());
                tasks.spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    loop {
                        match up.recv_from(&mut buf).await {
                            Ok((n, _)) => {
                                let data = Bytes::copy_from_slice(&buf[..n]);
                                forward(&state, Direction::Down, from, &down_tx, from, data);
                            }
                            Err(_) => continue,
                        }
                    }
                });
                tx
            }
        };
        forward(&state, Direction::Up, from, &up_tx, target, data);
    }
}
