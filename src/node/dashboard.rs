//! The web dashboard on the admin listener: `/ui` (one self-contained page, embedded in the
//! binary) and `/v1/dashboard`, the JSON it polls.
//!
//! The JSON is this node's status report and counters, plus the views of the peers it is
//! connected to, fetched over the mesh from their `quicmesh-status` service: gossip says who is
//! a member, not who is connected to whom, and the page draws the connections between nodes.
//! Rates are computed by the page from successive counters, so the node keeps no history.
//!
//! Touches: `State::status_report`, `peers` (connections, read only), `metrics` and `routing`
//! counters (read only), `tls` (certificate expiry).

use std::sync::atomic::Ordering;
use std::time::Duration;

use quinn::Connection;
use serde_json::{json, Value};

use super::state::State;
use super::sync::lock;
use crate::protocol::{
    encode_frame, read_frame, RejectCode, Response, StatusReport, StreamHeader, DEFAULT_MAX_HEADER, STATUS_SERVICE,
};

/// The page: HTML, CSS and script in one file, no external assets.
pub(crate) const PAGE: &str = include_str!("dashboard.html");

/// Peers whose views are fetched per poll; beyond this the graph shows this node's links only
/// for the rest (each view is a stream and a status report of every member).
const MAX_VIEWS: usize = 32;

/// How long one peer's view may take before the poll goes on without it.
const VIEW_TIMEOUT: Duration = Duration::from_secs(1);

/// A status report is a few hundred bytes per member; this bounds what a peer may send.
const MAX_REPORT: usize = 1 << 20;

/// Peer views this recent are served again: however many browsers poll, the peers are asked
/// at most once a second. (The node's own figures are read fresh every time.)
const FRESH: Duration = Duration::from_secs(1);

/// Everything the page shows, as JSON.
pub(crate) async fn snapshot(shared: &State) -> Value {
    let me = shared.status_report();
    let graph = shared.dashboard.get_or(FRESH, || graph(shared, &me)).await;
    let stats = &shared.metrics.stats;
    let rejected: serde_json::Map<String, Value> = RejectCode::ALL
        .iter()
        .map(|c| (c.to_string(), json!(stats.rejected[c.index()].load(Ordering::Relaxed))))
        .collect();
    let routed: Vec<Value> = lock(&shared.routing)
        .decisions()
        .iter()
        .map(|((service, node), n)| json!({ "service": service, "node": node, "count": n }))
        .collect();
    let members: Vec<Value> = me
        .members
        .iter()
        .map(|m| {
            let r = &m.member;
            json!({
                "name": r.name,
                "addr": r.addr,
                "status": r.status.to_string(),
                "incarnation": r.incarnation,
                "connected": m.connected,
                "rtt_us": m.rtt_us,
                "services": r.services,
                "inflight": r.load.inflight,
                "capacity": r.load.capacity,
                "latency_us": r.load.latency_us,
                "cpu_permille": r.load.cpu_permille,
                "mem_permille": r.load.mem_permille,
                "per_service": r.load.per_service,
            })
        })
        .collect();
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "node": me.node,
        "version": me.version,
        "now_unix": now_unix,
        "draining": shared.is_draining(),
        "cert_not_after_unix": shared.tls.not_after(),
        "in_flight": shared.load.in_flight(),
        "connections": shared.metrics.connections(),
        "members": members,
        "links": graph["links"],
        "views": graph["views"],
        "view_errors": graph["view_errors"],
        "counters": {
            "accepted": stats.accepted.load(Ordering::Relaxed),
            "served_local": stats.served_local.load(Ordering::Relaxed),
            "relayed": stats.relayed.load(Ordering::Relaxed),
            "deadline_exceeded": stats.deadlines_exceeded.load(Ordering::Relaxed),
            "rejected": rejected,
        },
        "routed": routed,
        "unreachable": me.unreachable,
        "identity_clashes": me.identity_clashes,
    })
}

/// The connections between nodes: this node's (`me`), and those its connected peers report.
async fn graph(shared: &State, me: &StatusReport) -> Value {
    let mut peers: Vec<(String, Connection)> = me
        .members
        .iter()
        .filter(|m| m.member.name != me.node && !m.member.status.is_gone())
        .filter_map(|m| {
            shared
                .peers
                .peer_conn(&m.member.name)
                .map(|c| (m.member.name.clone(), c))
        })
        .collect();
    peers.truncate(MAX_VIEWS);
    let views = futures_util::future::join_all(peers.into_iter().map(|(name, conn)| async move {
        let got = tokio::time::timeout(VIEW_TIMEOUT, peer_report(&conn)).await;
        (
            name,
            got.unwrap_or_else(|_| Err(format!("no answer within {VIEW_TIMEOUT:?}"))),
        )
    }))
    .await;

    // Links only between members this node knows, as reported by the node the connection
    // authenticated: a peer cannot invent nodes or speak for another.
    let known: std::collections::BTreeSet<&str> = me.members.iter().map(|m| m.member.name.as_str()).collect();
    let mut links = std::collections::BTreeSet::new();
    add_links(&mut links, me, &known);
    let mut viewed = vec![me.node.clone()];
    let mut view_errors = serde_json::Map::new();
    for (name, view) in views {
        match view {
            Ok(r) if r.node == name => {
                add_links(&mut links, &r, &known);
                viewed.push(name);
            }
            Ok(r) => {
                view_errors.insert(name, Value::String(format!("answered as {:?}", r.node)));
            }
            Err(e) => {
                view_errors.insert(name, Value::String(e));
            }
        }
    }

    json!({
        "links": links.into_iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
        "views": viewed,
        "view_errors": view_errors,
    })
}

/// The node-to-node connections a report shows, each as (lower name, higher name).
fn add_links(
    links: &mut std::collections::BTreeSet<(String, String)>,
    r: &StatusReport,
    known: &std::collections::BTreeSet<&str>,
) {
    for m in &r.members {
        if m.connected && m.member.name != r.node && known.contains(m.member.name.as_str()) {
            let (a, b) = (r.node.clone(), m.member.name.clone());
            links.insert(if a < b { (a, b) } else { (b, a) });
        }
    }
}

/// A peer's status report, asked for on its connection as any caller would.
async fn peer_report(conn: &Connection) -> Result<StatusReport, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let frame = encode_frame(&StreamHeader::service(STATUS_SERVICE)).map_err(|e| e.to_string())?;
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    match read_frame(&mut recv, DEFAULT_MAX_HEADER)
        .await
        .map_err(|e| e.to_string())?
    {
        Response::Accept { .. } => {}
        Response::Reject { code, reason } => return Err(format!("{code}: {reason}")),
    }
    let body = recv.read_to_end(MAX_REPORT).await.map_err(|e| e.to_string())?;
    StatusReport::from_postcard(&body).map_err(|e| format!("unreadable status report: {e}"))
}
