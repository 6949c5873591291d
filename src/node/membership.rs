//! The gossip driver: ticks the state machine, measures load and pushes it to linked peers
//! (`pushed_load.rs`), sends gossip messages over the control streams, logs membership changes, and keeps the overlay: dials the members it
//! wants links to and lets go of the links past its cap.

use std::sync::Arc;

use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn, Instrument};

use super::dial::{keep_connected, Purpose};
use super::metrics::bump;
use super::peers::SERVICE_LINK_KEPT;
use super::state::State;
use super::sync::lock;
use crate::gossip::{GossipEvent, Load, Status};
use crate::overlay::Action;
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

/// How long a peer's control stream may run without the peer pushing its load before it is
/// taken for an older node that cannot take pushes (a dialler that can pushes at once).
const PUSH_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Measures this node's load and pushes it to the linked peers that take it and have not had
/// it.
fn push_load(shared: &State, sys: &mut SysLoad) -> Load {
    let load = current_load(shared, sys);
    shared.pushed.push(load.clone(), shared.ctx.now());
    load
}

/// Runs gossip rounds, and pushes this node's load every `gossip.load_interval`, until
/// shutdown.
pub(crate) async fn gossip_loop(shared: Arc<State>) {
    let mut every = tokio::time::interval(shared.ctx.cfg.gossip.interval);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut push = tokio::time::interval(shared.ctx.cfg.gossip.load_interval);
    push.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut shutdown = shared.ctx.on_shutdown();
    let mut sys = SysLoad::default();
    let mut load = push_load(&shared, &mut sys);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = push.tick() => {
                load = push_load(&shared, &mut sys);
                continue;
            }
            _ = shutdown.changed() => return,
        }
        bump(&shared.metrics.stats.gossip_rounds);
        let now = shared.ctx.now();
        // The record takes it at most every gossip.load_gossip_interval, or as often as it is
        // measured while a linked older node routes on records.
        let load = load.clone();
        let cfg = &shared.ctx.cfg.gossip;
        let every = if shared.pushed.any_without_pushes(now, PUSH_GRACE) {
            cfg.load_interval
        } else {
            cfg.load_gossip_interval
        };
        // Rounds go only to peers with a control stream up: past the overlay cap most
        // members have none. (Sorted: the keys of the control table.) An older node among
        // them gets the full-digest round it knows.
        let (linked, legacy) = shared.peers.control_peers_and_legacy();
        let (out, events, members) = {
            let mut g = lock(&shared.gossip);
            g.publish_load_every(every);
            g.set_load(load, now);
            let mut out = {
                let mut rng = lock(&shared.rng);
                g.tick_among(now, &mut *rng, &linked)
            };
            let mut full = None;
            for (to, msg) in &mut out {
                if legacy.contains(to) {
                    *msg = full.get_or_insert_with(|| g.legacy_syn(now)).clone();
                }
            }
            // Names only: an address is looked up for the few members the overlay dials.
            let mut members = Members::default();
            for m in g.members().filter(|m| m.name != shared.ctx.name) {
                let into = if m.status.is_gone() {
                    &mut members.gone
                } else {
                    &mut members.alive
                };
                into.push(m.name.clone());
            }
            (out, g.take_events(), members)
        };
        for (to, msg) in out {
            shared.peers.send_control(&to, ControlMsg::Gossip(msg));
        }
        for e in events {
            log_event(&e);
        }
        keep_overlay(&shared, now, &members);
    }
}

/// The other members' names (in the order gossip first heard of them; the overlay draws from
/// them at random): those gossip lists alive, and those it holds Dead or Left (not yet
/// forgotten).
#[derive(Default)]
struct Members {
    alive: Vec<String>,
    gone: Vec<String>,
}

/// Asks the overlay which members to dial and which links to let go, and does it: a full
/// mesh up to `limits.max_peer_connections` other members (of two, the lower name dials),
/// a bounded random overlay past it.
fn keep_overlay(shared: &Arc<State>, now: std::time::Duration, members: &Members) {
    let links = shared.peers.links(now, SERVICE_LINK_KEPT);
    let actions = {
        let mut overlay = lock(&shared.overlay);
        let mut rng = lock(&shared.rng);
        overlay.tick(now, &shared.ctx.name, &links, &members.alive, &members.gone, &mut *rng)
    };
    let grace = lock(&shared.overlay).config().grace;
    for action in actions {
        match action {
            Action::Dial(name) => {
                let Some(addr) = lock(&shared.gossip).member(&name).map(|m| m.addr.clone()) else {
                    continue;
                };
                if lock(&shared.overlay).is_probe(&name) {
                    debug!(member = %name, "dialling a member held gone, in case a partition healed");
                }
                if shared.peers.peer_conn(&name).is_none() && shared.peers.start_dialing(&name) {
                    let span = tracing::Span::current();
                    tokio::spawn(keep_connected(shared.clone(), addr, Purpose::Member(name)).instrument(span));
                }
            }
            Action::Close(name) => {
                if shared.peers.trim(&name, grace, SERVICE_LINK_KEPT) {
                    debug!(peer = %name, links = links.len(), cap = shared.ctx.cfg.limits.max_peer_connections, "letting a peer link go: more than limits.max_peer_connections");
                    bump(&shared.metrics.stats.links_trimmed);
                }
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
