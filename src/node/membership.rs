//! The gossip driver: ticks the state machine, publishes load, sends its messages over the
//! control streams, logs membership changes, and dials members learned by gossip.

use std::sync::Arc;

use tokio::time::MissedTickBehavior;
use tracing::{info, warn, Instrument};

use super::dial::{keep_connected, Purpose};
use super::metrics::bump;
use super::state::State;
use super::sync::lock;
use crate::gossip::{GossipEvent, Load, Status};
use crate::protocol::ControlMsg;
use crate::sysload::SysLoad;

fn current_load(shared: &State, sys: &mut SysLoad) -> Load {
    let inflight = shared.load.in_flight();
    let per_service = shared.load.per_service();
    let (cpu_permille, mem_permille) = sys.sample();
    Load {
        inflight: u32::try_from(inflight).unwrap_or(u32::MAX),
        capacity: shared.ctx.cfg.weight,
        cpu_permille,
        mem_permille,
        latency_us: shared.load.serve_time_us() as u32,
        per_service,
    }
}

/// Runs gossip rounds until shutdown.
pub(crate) async fn gossip_loop(shared: Arc<State>) {
    let mut every = tokio::time::interval(shared.ctx.cfg.gossip.interval);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut shutdown = shared.ctx.on_shutdown();
    let mut sys = SysLoad::default();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return,
        }
        bump(&shared.metrics.stats.gossip_rounds);
        let now = shared.ctx.now();
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
                .filter(|m| m.name != shared.ctx.name && !m.status.is_gone())
                .map(|m| (m.name.clone(), m.addr.clone()))
                .collect();
            (out, g.take_events(), members)
        };
        for (to, msg) in out {
            shared.peers.send_control(&to, ControlMsg::Gossip(msg));
        }
        for e in events {
            log_event(&e);
        }
        // Keep one connection per member: of two members that learned of each other by gossip,
        // the one with the lower name dials (configured peers are dialled regardless).
        for (name, addr) in members {
            if shared.ctx.name < name && shared.peers.peer_conn(&name).is_none() && shared.peers.start_dialing(&name) {
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
