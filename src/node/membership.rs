//! The gossip driver: ticks the state machine, publishes load, sends its messages over the
//! control streams, logs membership changes, and dials members learned by gossip.

use std::sync::Arc;

use tokio::time::MissedTickBehavior;
use tracing::{info, warn, Instrument};

use super::dial::{keep_connected, Purpose};
use super::shared::{lock, Shared};
use crate::gossip::{GossipEvent, Load, Status};
use crate::protocol::ControlMsg;
use crate::sysload::SysLoad;

fn current_load(shared: &Shared, sys: &mut SysLoad) -> Load {
    let inflight = shared.in_flight();
    let per_service = lock(&shared.per_service)
        .iter()
        .filter(|(s, _)| s.as_str() != crate::protocol::STATUS_SERVICE)
        .map(|(s, n)| (s.clone(), *n))
        .collect();
    let (cpu_permille, mem_permille) = sys.sample();
    Load {
        inflight: u32::try_from(inflight).unwrap_or(u32::MAX),
        capacity: shared.cfg.weight,
        cpu_permille,
        mem_permille,
        latency_us: *lock(&shared.latency_us) as u32,
        per_service,
    }
}

/// Runs gossip rounds until shutdown.
pub(crate) async fn gossip_loop(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(shared.cfg.gossip.interval);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut shutdown = shared.shutdown.subscribe();
    let mut sys = SysLoad::default();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return,
        }
        shared
            .stats
            .gossip_rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = shared.now();
        let load = current_load(&shared, &mut sys);
        let (out, events, members) = {
            let mut g = lock(&shared.gossip);
            g.set_load(load, now);
            let out = {
                let mut rng = lock(&shared.rng);
                g.tick(now, &mut *rng)
            };
            let members: Vec<(String, String)> = g
                .members()
                .filter(|m| m.name != shared.name && !m.status.is_gone())
                .map(|m| (m.name.clone(), m.addr.clone()))
                .collect();
            (out, g.take_events(), members)
        };
        for (to, msg) in out {
            shared.send_control(&to, ControlMsg::Gossip(msg));
        }
        for e in events {
            log_event(&e);
        }
        // Keep one connection per member: of two members that learned of each other by gossip,
        // the one with the lower name dials (configured peers are dialled regardless).
        for (name, addr) in members {
            if shared.name < name && shared.peer_conn(&name).is_none() && lock(&shared.dialing).insert(name.clone()) {
                let span = tracing::Span::current();
                tokio::spawn(keep_connected(shared.clone(), addr, Purpose::Member(name)).instrument(span));
            }
        }
    }
}

fn log_event(e: &GossipEvent) {
    match e {
        GossipEvent::Joined { name, incarnation } => info!(member = %name, incarnation, "member joined"),
        GossipEvent::StatusChanged { name, from, to } => match to {
            Status::Dead => warn!(member = %name, %from, "member declared dead"),
            _ => info!(member = %name, %from, %to, "member status changed"),
        },
        GossipEvent::Refuted { incarnation } => warn!(incarnation, "refuted a suspicion about this node"),
        GossipEvent::Forgotten { name } => info!(member = %name, "dead member forgotten"),
    }
}
