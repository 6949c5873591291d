//! Client-side routing: the client keeps the entry node's status report (the gossiped load
//! table) and picks the serving node itself with P2C, connecting to it directly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::protocol::StatusReport;
use crate::routing::{Balancer, Candidate, PeakEwma, Strategy};

/// Time constant of the client's latency estimates.
const TAU: Duration = Duration::from_secs(10);

/// What a client that routes for itself remembers.
pub(crate) struct Direct {
    pub table: Option<(Instant, StatusReport)>,
    pub conns: BTreeMap<String, quinn::Connection>,
    balancers: BTreeMap<String, Balancer>,
    latency: BTreeMap<String, PeakEwma>,
    pub pending: BTreeMap<String, u32>,
    rng: StdRng,
    epoch: Instant,
}

impl Direct {
    pub fn new() -> Self {
        Direct {
            table: None,
            conns: BTreeMap::new(),
            balancers: BTreeMap::new(),
            latency: BTreeMap::new(),
            pending: BTreeMap::new(),
            rng: StdRng::from_os_rng(),
            epoch: Instant::now(),
        }
    }

    /// Whether the table is missing or older than `refresh`.
    pub fn stale(&self, refresh: Duration) -> bool {
        self.table.as_ref().is_none_or(|(at, _)| at.elapsed() >= refresh)
    }

    /// Picks a node (name, address) for `service`, or None if the table has no taker.
    pub fn pick(&mut self, service: &str, key: Option<&[u8]>) -> Option<(String, String)> {
        let (_, report) = self.table.as_ref()?;
        let mut cands: Vec<(Candidate, String)> = report
            .members
            .iter()
            .filter(|m| m.member.status.takes_work() && m.member.services.iter().any(|s| s == service))
            .map(|m| {
                let name = m.member.name.clone();
                (
                    Candidate {
                        weight: f64::from(m.member.load.capacity.max(1)),
                        gossiped_inflight: m.member.load.inflight,
                        local_inflight: self.pending.get(&name).copied().unwrap_or(0),
                        // Unsampled nodes look free, so each gets tried and measured once.
                        latency: self.latency.get(&name).map_or(0.0, PeakEwma::get),
                        name,
                    },
                    m.member.addr.clone(),
                )
            })
            .collect();
        cands.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let only: Vec<Candidate> = cands.iter().map(|(c, _)| c.clone()).collect();
        let b = self
            .balancers
            .entry(service.to_owned())
            .or_insert_with(|| Balancer::new(Strategy::P2c, 0.25));
        let i = b.pick(&only, key, &mut self.rng)?;
        let (c, addr) = cands.swap_remove(i);
        Some((c.name, addr))
    }

    /// Records how long `node` took to accept a stream.
    pub fn observe(&mut self, node: &str, took: Duration) {
        let now = self.epoch.elapsed();
        self.latency
            .entry(node.to_owned())
            .or_insert_with(|| PeakEwma::new(took.as_secs_f64(), TAU, now))
            .observe(took.as_secs_f64(), now);
    }
}
