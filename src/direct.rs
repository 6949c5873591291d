//! Client-side routing: the client keeps the entry node's status report (the gossiped load
//! table) and picks the serving node itself with P2C, connecting to it directly. Pure: the
//! caller passes the time; the rng is given at construction.

#![deny(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;

use crate::protocol::StatusReport;
use crate::routing::{Offer, Policy, RoutingConfig, Strategy, Table};

/// The client balances every service with P2C.
const P2C: Policy = Policy {
    strategy: Strategy::P2c,
    epsilon: 0.25,
};

/// What a client that routes for itself remembers.
pub(crate) struct Direct {
    table: Option<(Instant, StatusReport)>,
    pub conns: BTreeMap<String, quinn::Connection>,
    routing: Table,
    rng: StdRng,
    /// Origin of the routing table's clock.
    epoch: Instant,
}

impl Direct {
    /// An empty table whose clock starts at `epoch`.
    pub fn new(epoch: Instant, rng: StdRng) -> Self {
        Direct {
            table: None,
            conns: BTreeMap::new(),
            routing: RoutingConfig::default().table(),
            rng,
            epoch,
        }
    }

    fn clock(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch)
    }

    /// Whether the load table is missing or older than `refresh` at `now`.
    pub fn stale(&self, now: Instant, refresh: Duration) -> bool {
        self.table
            .as_ref()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= refresh)
    }

    /// Installs a load table fetched at `now`.
    pub fn set_table(&mut self, now: Instant, report: StatusReport) {
        self.table = Some((now, report));
    }

    /// Picks a node (name, address) for `service`, or None if the table has no taker.
    pub fn pick(&mut self, service: &str, key: Option<&[u8]>, now: Instant) -> Option<(String, String)> {
        let (_, report) = self.table.as_ref()?;
        let (offers, addrs): (Vec<Offer>, Vec<String>) = report
            .members
            .iter()
            .filter(|m| m.member.status.takes_work() && m.member.services.iter().any(|s| s == service))
            .map(|m| {
                let offer = Offer {
                    name: m.member.name.clone(),
                    weight: f64::from(m.member.load.capacity.max(1)),
                    gossiped_inflight: m.member.load.inflight,
                };
                (offer, m.member.addr.clone())
            })
            .unzip();
        let clock = self.clock(now);
        let i = self.routing.pick(service, P2C, &offers, key, clock, &mut self.rng)?;
        Some((offers[i].name.clone(), addrs[i].clone()))
    }

    /// A stream to `node` is being opened.
    pub fn begin(&mut self, node: &str) {
        self.routing.begin(node);
    }

    /// The stream to `node` opened after `took`, or failed (`None`): a failure makes the node
    /// look slow and the load table is fetched again next time.
    pub fn end(&mut self, node: &str, took: Option<Duration>, now: Instant) {
        self.routing.end(node);
        let clock = self.clock(now);
        match took {
            Some(t) => self.routing.record_success(node, t, clock),
            None => {
                self.routing.record_failure(node, clock);
                self.table = None;
            }
        }
    }
}
