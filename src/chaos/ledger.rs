//! What the soak checks, as pure functions of what it recorded: which failed calls a fault
//! explains, members that come back from the dead without a new incarnation, whether the
//! nodes' views agree, and whether a node's resources came back down.

#![deny(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::time::Duration;

use super::schedule::FaultKind;
use crate::gossip::Status;

/// A fault as it was carried out: offsets from the start of the run.
#[derive(Debug, Clone)]
pub struct Window {
    /// What it did.
    pub kind: FaultKind,
    /// When it struck.
    pub start: Duration,
    /// When it was undone (the restarted node answered, the link healed...).
    pub end: Duration,
}

/// How one call or stream ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every byte came back as sent.
    Ok,
    /// It failed with an error of this class (a reject code, `reset`, `timeout`...).
    Failed(String),
    /// Bytes came back that were not the ones sent: never allowed.
    Corrupt(String),
    /// A clean reply that is a strict prefix of the one due, from the named node. Allowed
    /// only if that node's backend stopped during the call: a TCP backend that dies after
    /// reading a request closes its connection as one that has answered does (see
    /// [`short_reply_explained`]).
    Short {
        /// The serving node.
        served_by: String,
        /// Bytes back.
        got: usize,
        /// Bytes due.
        want: usize,
    },
    /// It outlived its deadline by more than the slack: never allowed.
    Hung(Duration),
}

/// One call or long stream.
#[derive(Debug, Clone)]
pub struct Call {
    /// The calling client.
    pub client: usize,
    /// The nodes that serve the called service.
    pub replicas: Vec<usize>,
    /// The entry nodes the client used around the call (before and after).
    pub entries: Vec<usize>,
    /// When it started.
    pub start: Duration,
    /// When it ended.
    pub end: Duration,
    /// How.
    pub outcome: Outcome,
}

/// Whether `kind` is on the call's path: its client, its entry node, a node serving it, or
/// a link between those.
pub fn touches(kind: &FaultKind, call: &Call) -> bool {
    let on_path = |n: usize| call.entries.contains(&n) || call.replicas.contains(&n);
    match kind {
        FaultKind::Kill { node, .. } | FaultKind::Drain { node } => on_path(*node),
        FaultKind::BackendDown { node } => call.replicas.contains(node),
        FaultKind::Partition { side } => call
            .entries
            .iter()
            .any(|e| call.replicas.iter().any(|r| side.contains(e) != side.contains(r))),
        FaultKind::Impair { a, b, .. } => call
            .entries
            .iter()
            .any(|&e| call.replicas.iter().any(|&r| (e, r) == (*a, *b) || (r, e) == (*a, *b))),
        FaultKind::Rebind { client } => call.client == *client,
        FaultKind::RotateCert { .. } | FaultKind::Garbage { .. } | FaultKind::LeaseLapse { .. } => false,
    }
}

/// The faults that explain a failed call: on its path, able to fail calls, and active
/// during it or up to `settle` before it began (detection and rerouting take that long).
pub fn explaining<'a>(call: &Call, windows: &'a [Window], settle: Duration) -> Vec<&'a Window> {
    windows
        .iter()
        .filter(|w| w.kind.may_fail_calls() && w.start <= call.end && call.start <= w.end + settle)
        .filter(|w| touches(&w.kind, call))
        .collect()
}

/// Whether a short reply from `served_by` is the work of a backend stopped mid-call: a
/// [`FaultKind::BackendDown`] at that node struck while the call ran (with 500 ms of slack
/// for the nemesis's clock on a loaded machine). Anything else that cuts a reply short is a bug.
pub fn short_reply_explained(call: &Call, served_by: &str, windows: &[Window], names: &[String]) -> bool {
    let slack = Duration::from_millis(500);
    windows.iter().any(|w| match w.kind {
        FaultKind::BackendDown { node } => {
            names.get(node).is_some_and(|n| n == served_by)
                && w.start + slack >= call.start
                && w.start <= call.end + slack
        }
        _ => false,
    })
}

/// Watches the members each node reports for a Dead (or Left) member seen Alive again at the
/// same or a lower incarnation: gossip must never do that.
#[derive(Debug, Default)]
pub struct Resurrections {
    /// Per (observer, its process generation, member): the last status and incarnation seen.
    last: HashMap<(usize, u32, String), (Status, u64)>,
    /// What was found, one line each.
    pub found: Vec<String>,
}

impl Resurrections {
    /// Takes one node's view. A restarted observer (`generation` changed) starts afresh.
    pub fn observe(&mut self, observer: usize, generation: u32, at: Duration, members: &[(String, Status, u64)]) {
        for (name, status, inc) in members {
            let key = (observer, generation, name.clone());
            if let Some(&(was, was_inc)) = self.last.get(&key) {
                let back = matches!(was, Status::Dead | Status::Left)
                    && matches!(status, Status::Alive | Status::Suspect | Status::Draining);
                if back && *inc <= was_inc {
                    self.found.push(format!(
                        "at {:.1}s node {observer} saw {name} go from {was:?} back to {status:?} at incarnation {inc} (was {was_inc})",
                        at.as_secs_f64()
                    ));
                }
            }
            self.last.insert(key, (*status, *inc));
        }
    }
}

/// One node's view of the members: name, status, incarnation.
pub type View = Vec<(String, Status, u64)>;

/// Whether every view lists exactly `expected`, all Alive, each at the same incarnation in
/// every view (so no view still holds a restarted member's old record): `Err` says the first
/// difference.
pub fn views_agree(views: &[(usize, View)], expected: &[String]) -> Result<(), String> {
    let mut incarnations: HashMap<&str, (usize, u64)> = HashMap::new();
    for (observer, view) in views {
        for name in expected {
            match view.iter().find(|(n, _, _)| n == name) {
                None => return Err(format!("node {observer} does not know {name}")),
                Some((_, s, _)) if *s != Status::Alive => return Err(format!("node {observer} has {name} {s:?}")),
                Some((_, _, inc)) => match incarnations.get(name.as_str()) {
                    Some(&(other, seen)) if seen != *inc => {
                        return Err(format!(
                            "node {observer} has {name} at incarnation {inc}, node {other} at {seen}"
                        ))
                    }
                    Some(_) => {}
                    None => {
                        incarnations.insert(name, (*observer, *inc));
                    }
                },
            }
        }
        if let Some((n, s, _)) = view
            .iter()
            .find(|(n, s, _)| !expected.contains(n) && *s == Status::Alive)
        {
            return Err(format!("node {observer} has a member nobody runs, {n}, {s:?}"));
        }
    }
    Ok(())
}

/// A node process's resources at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Tokio tasks alive.
    pub tasks: u64,
    /// Open QUIC connections (peers and clients).
    pub conns: u64,
}

/// Whether `after` is back within the soak's margins of `before`: memory within 1.5× + 16 MiB
/// (allocators keep some), tasks within 1.5× + 32, file descriptors within 16 and connections
/// within 4 (a dial under way at the first reading, clients reconnected) of where they were. `Err` names what stayed up.
pub fn settled(before: &Usage, after: &Usage) -> Result<(), String> {
    let mut over = Vec::new();
    if after.rss_kib > before.rss_kib * 3 / 2 + 16 * 1024 {
        over.push(format!("RSS {} → {} KiB", before.rss_kib, after.rss_kib));
    }
    if after.tasks > before.tasks * 3 / 2 + 32 {
        over.push(format!("tasks {} → {}", before.tasks, after.tasks));
    }
    if after.fds > before.fds + 16 {
        over.push(format!("fds {} → {}", before.fds, after.fds));
    }
    if after.conns > before.conns + 4 {
        over.push(format!("connections {} → {}", before.conns, after.conns));
    }
    if over.is_empty() {
        Ok(())
    } else {
        Err(over.join(", "))
    }
}

/// The `p` quantile (0–1) of `xs`, nearest rank; `None` if empty.
pub fn quantile(xs: &mut [Duration], p: f64) -> Option<Duration> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_unstable();
    let rank = ((p * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    Some(xs[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    fn call(entries: &[usize], replicas: &[usize], start: f64, end: f64) -> Call {
        Call {
            client: 0,
            replicas: replicas.to_vec(),
            entries: entries.to_vec(),
            start: s(start),
            end: s(end),
            outcome: Outcome::Failed("reset".into()),
        }
    }

    #[test]
    fn a_failure_is_explained_only_by_a_fault_on_its_path_at_its_time() {
        let w = |kind, a, b| Window {
            kind,
            start: s(a),
            end: s(b),
        };
        let windows = vec![
            w(
                FaultKind::Kill {
                    node: 5,
                    new_port: false,
                },
                10.0,
                14.0,
            ),
            w(FaultKind::Partition { side: vec![1, 2] }, 20.0, 25.0),
            w(
                FaultKind::Impair {
                    a: 0,
                    b: 3,
                    loss: 0.2,
                    delay: s(0.01),
                },
                30.0,
                31.0,
            ),
            w(FaultKind::RotateCert { node: 3 }, 40.0, 40.0),
            w(FaultKind::BackendDown { node: 3 }, 50.0, 52.0),
        ];
        let settle = s(5.0);
        let why = |c: &Call| explaining(c, &windows, settle).len();
        // The killed node as entry or replica, during the kill or within the settle time after.
        assert_eq!(why(&call(&[5], &[3], 12.0, 12.1)), 1);
        assert_eq!(why(&call(&[0], &[5, 9], 18.0, 18.1)), 1);
        assert_eq!(why(&call(&[0], &[5, 9], 19.5, 19.6)), 0, "past the settle time");
        assert_eq!(why(&call(&[0], &[3], 12.0, 12.1)), 0, "not on the path");
        // A partition explains only a call whose entry and replicas are on different sides.
        assert_eq!(why(&call(&[1], &[3], 21.0, 21.1)), 1);
        assert_eq!(why(&call(&[1], &[2], 21.0, 21.1)), 0);
        // An impaired link only between the entry and a replica.
        assert_eq!(why(&call(&[3], &[0], 30.5, 30.6)), 1);
        assert_eq!(why(&call(&[3], &[4], 30.5, 30.6)), 0);
        // Rotation never explains a failure; a stopped backend only at its node's replicas.
        assert_eq!(why(&call(&[3], &[3], 40.0, 40.1)), 0);
        assert_eq!(why(&call(&[0], &[3], 51.0, 51.1)), 1);
        assert_eq!(why(&call(&[3], &[4], 51.0, 51.1)), 0, "the entry's backend is not used");
        // A call spanning the start of a fault counts.
        assert_eq!(why(&call(&[0], &[5], 9.0, 10.5)), 1);
    }

    #[test]
    fn a_short_reply_is_explained_only_by_the_serving_nodes_backend_stopping_during_the_call() {
        let names: Vec<String> = (0..4).map(|i| format!("n{i:02}")).collect();
        let windows = vec![Window {
            kind: FaultKind::BackendDown { node: 2 },
            start: s(10.0),
            end: s(14.0),
        }];
        let c = |a, b| call(&[0], &[2], a, b);
        assert!(short_reply_explained(&c(9.99, 10.01), "n02", &windows, &names));
        assert!(
            !short_reply_explained(&c(9.99, 10.01), "n01", &windows, &names),
            "another node's reply"
        );
        assert!(
            !short_reply_explained(&c(11.0, 11.1), "n02", &windows, &names),
            "the backend was already down"
        );
        assert!(!short_reply_explained(&c(5.0, 5.1), "n02", &windows, &names));
    }

    #[test]
    fn a_dead_member_back_alive_needs_a_higher_incarnation() {
        let mut r = Resurrections::default();
        let view = |st, inc| vec![("b".to_string(), st, inc)];
        r.observe(0, 0, s(1.0), &view(Status::Alive, 5));
        r.observe(0, 0, s(2.0), &view(Status::Dead, 5));
        r.observe(0, 0, s(3.0), &view(Status::Alive, 6));
        assert!(r.found.is_empty(), "{:?}", r.found);
        r.observe(0, 0, s(4.0), &view(Status::Dead, 6));
        r.observe(0, 0, s(5.0), &view(Status::Alive, 6));
        assert_eq!(r.found.len(), 1, "{:?}", r.found);
        assert!(
            r.found[0].contains("from Dead back to Alive at incarnation 6"),
            "{}",
            r.found[0]
        );
        // A restarted observer starts afresh.
        r.observe(0, 1, s(6.0), &view(Status::Alive, 6));
        assert_eq!(r.found.len(), 1);
    }

    #[test]
    fn views_agree_only_when_all_list_every_member_alive_at_one_incarnation() {
        let names = vec!["a".to_string(), "b".to_string()];
        let v = |b: Status, inc: u64| vec![("a".to_string(), Status::Alive, 1), ("b".to_string(), b, inc)];
        assert!(views_agree(&[(0, v(Status::Alive, 1)), (1, v(Status::Alive, 1))], &names).is_ok());
        let e = views_agree(&[(0, v(Status::Alive, 1)), (1, v(Status::Suspect, 1))], &names).unwrap_err();
        assert_eq!(e, "node 1 has b Suspect");
        let e = views_agree(&[(0, v(Status::Alive, 1)), (1, v(Status::Alive, 2))], &names).unwrap_err();
        assert_eq!(e, "node 1 has b at incarnation 2, node 0 at 1");
        let e = views_agree(&[(0, vec![("a".to_string(), Status::Alive, 1)])], &names).unwrap_err();
        assert_eq!(e, "node 0 does not know b");
        let mut extra = v(Status::Alive, 1);
        extra.push(("ghost".to_string(), Status::Alive, 1));
        assert!(views_agree(&[(0, extra)], &names).unwrap_err().contains("ghost"));
        let mut gone = v(Status::Alive, 1);
        gone.push(("old".to_string(), Status::Dead, 1));
        assert!(
            views_agree(&[(0, gone)], &names).is_ok(),
            "a Dead record of a departed name is fine"
        );
    }

    #[test]
    fn usage_settles_within_the_margins_and_names_what_did_not() {
        let before = Usage {
            rss_kib: 30_000,
            fds: 20,
            tasks: 100,
            conns: 13,
        };
        assert!(settled(
            &before,
            &Usage {
                rss_kib: 60_000,
                ..before
            }
        )
        .is_ok());
        let e = settled(
            &before,
            &Usage {
                rss_kib: 80_000,
                tasks: 400,
                ..before
            },
        )
        .unwrap_err();
        assert_eq!(e, "RSS 30000 → 80000 KiB, tasks 100 → 400");
        assert!(settled(&before, &Usage { conns: 17, ..before }).is_ok());
        assert!(settled(&before, &Usage { conns: 18, ..before })
            .unwrap_err()
            .contains("connections 13 → 18"));
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut xs: Vec<Duration> = (1..=100).map(|i| s(f64::from(i))).collect();
        assert_eq!(quantile(&mut xs, 0.99), Some(s(99.0)));
        assert_eq!(quantile(&mut xs, 0.5), Some(s(50.0)));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
