//! Load pushed over peer links: per control stream (one per connection), what the peer last
//! pushed, whether it takes this node's, and what this node last queued to it; and this
//! node's own load as last measured.
//!
//! Routing compares the in-flight counts and latencies of the nodes it could send a stream
//! to. Carried in gossip records, every load change of every member travelled to every
//! member (the largest part of gossip's bytes at a thousand nodes, and stale by the time
//! it arrived past a few thousand). Pushed, a node's load goes only to the peers it has
//! links to (at most `limits.max_peer_connections` plus the service links of its callers),
//! fresh every `gossip.load_interval`; the gossip record carries it only every
//! `gossip.load_gossip_interval`, for status views of members without a link, unless a
//! linked peer cannot take pushes (an older node), which still routes on records.
//!
//! Entries are per connection, and pushes go out on the entry's own control stream: while
//! a duplicate connection is being retired two control streams to one peer run at once,
//! and the end of either must not take the other's entry with it.
//!
//! Written by the control streams (a peer's pushes, its stream coming up and going down)
//! and the gossip loop (this node's load); read by routing and status.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

use super::sync::lock;
use crate::gossip::Load;
use crate::protocol::ControlMsg;

/// See the module docs.
pub(crate) struct PushedLoads {
    inner: Mutex<Inner>,
    /// Least time between two pushes to one peer that change only the host's CPU and memory
    /// use (`gossip.load_gossip_interval`): that reading moves nearly every sample, and
    /// pushing each move to every linked peer twice a second cost an idle 40-node mesh on
    /// one host ~0.15 cores of 2 (`examples/bench_idle`, both versions in one run).
    host_every: Duration,
}

#[derive(Default)]
struct Inner {
    /// Per peer, its control streams (usually one).
    peers: BTreeMap<String, Vec<Stream>>,
    mine: Option<Load>,
}

/// One control stream to a peer, as far as pushed load goes.
struct Stream {
    /// The connection (stable id) it runs on.
    conn_id: usize,
    /// Its writer.
    tx: mpsc::Sender<ControlMsg>,
    /// Whether the peer takes [`ControlMsg::Load`]: its `Hello` said so, or it pushed its
    /// own (an older node would close the stream on a kind it does not know).
    takes: bool,
    /// When the stream came up (the node's clock).
    since: Duration,
    /// What the peer pushed last on it.
    theirs: Option<Load>,
    /// What this node last queued on it, and when (a push dropped on a full queue goes
    /// again; one that differs from it only by noise does not go).
    sent: Option<(Load, Duration)>,
}

impl Stream {
    /// Queues this node's load if the peer takes it and it differs from what the peer has:
    /// in what routing compares, or in the host's CPU and memory use once `host_every` has
    /// passed since the last push.
    fn offer(&mut self, mine: Option<&Load>, now: Duration, host_every: Duration) {
        let Some(load) = mine else { return };
        let due = match &self.sent {
            None => true,
            Some((sent, at)) => {
                load.routing_differs(sent) || (load.host_differs(sent) && now.saturating_sub(*at) >= host_every)
            }
        };
        if self.takes && due && self.tx.try_send(ControlMsg::Load(load.clone())).is_ok() {
            self.sent = Some((load.clone(), now));
        }
    }
}

impl PushedLoads {
    /// No control streams yet; see [`PushedLoads::host_every`](Self) for `host_every`.
    pub fn new(host_every: Duration) -> Self {
        PushedLoads {
            inner: Mutex::new(Inner::default()),
            host_every,
        }
    }

    /// A control stream to `peer` on connection `conn_id` is up, written through `tx`;
    /// `takes` if the peer's `Hello` said it takes pushed load (it then gets ours at once).
    pub fn control_up(&self, peer: &str, conn_id: usize, tx: mpsc::Sender<ControlMsg>, takes: bool, now: Duration) {
        let mut inner = lock(&self.inner);
        let Inner { peers, mine } = &mut *inner;
        let streams = peers.entry(peer.to_owned()).or_default();
        streams.retain(|s| s.conn_id != conn_id);
        let mut stream = Stream {
            conn_id,
            tx,
            takes,
            since: now,
            theirs: None,
            sent: None,
        };
        stream.offer(mine.as_ref(), now, self.host_every);
        streams.push(stream);
    }

    /// The control stream to `peer` on `conn_id` ended.
    pub fn control_down(&self, peer: &str, conn_id: usize) {
        let mut inner = lock(&self.inner);
        if let Some(streams) = inner.peers.get_mut(peer) {
            streams.retain(|s| s.conn_id != conn_id);
            if streams.is_empty() {
                inner.peers.remove(peer);
            }
        }
    }

    /// `peer` pushed `load` on `conn_id`. A peer that pushes takes pushes: the first time,
    /// it gets this node's load back on the same stream.
    pub fn received(&self, peer: &str, conn_id: usize, load: Load, now: Duration) {
        let mut inner = lock(&self.inner);
        let Inner { peers, mine } = &mut *inner;
        if let Some(s) = peers
            .get_mut(peer)
            .and_then(|v| v.iter_mut().find(|s| s.conn_id == conn_id))
        {
            s.theirs = Some(load);
            s.takes = true;
            s.offer(mine.as_ref(), now, self.host_every);
        }
    }

    /// What `peer` last pushed on connection `conn_id` (the one routing would use): load
    /// pushed on another connection says nothing of this one.
    pub fn of(&self, peer: &str, conn_id: usize) -> Option<Load> {
        let inner = lock(&self.inner);
        inner
            .peers
            .get(peer)
            .and_then(|v| v.iter().find(|s| s.conn_id == conn_id))
            .and_then(|s| s.theirs.clone())
    }

    /// Records this node's load now and queues it on every control stream that takes it and
    /// has not had it (a change, or an earlier push dropped on a full queue).
    pub fn push(&self, load: Load, now: Duration) {
        let mut inner = lock(&self.inner);
        let Inner { peers, mine } = &mut *inner;
        *mine = Some(load);
        for s in peers.values_mut().flatten() {
            s.offer(mine.as_ref(), now, self.host_every);
        }
    }

    /// This node's load as last measured.
    pub fn mine(&self) -> Option<Load> {
        lock(&self.inner).mine.clone()
    }

    /// Whether some peer's control stream has been up for `grace` at `now` without the peer
    /// taking pushed load: an older node, which routes on gossip records.
    pub fn any_without_pushes(&self, now: Duration, grace: Duration) -> bool {
        let inner = lock(&self.inner);
        inner
            .peers
            .values()
            .flatten()
            .any(|s| !s.takes && now.saturating_sub(s.since) >= grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(inflight: u32) -> Load {
        Load {
            inflight,
            ..Load::default()
        }
    }

    fn pushed(rx: &mut mpsc::Receiver<ControlMsg>) -> Vec<u32> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let ControlMsg::Load(l) = m {
                out.push(l.inflight);
            }
        }
        out
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_peer_gets_pushes_once_it_is_known_to_take_them_and_only_changes() {
        let p = PushedLoads::new(S * 10);
        p.push(load(1), S);
        let (tx, mut rx) = mpsc::channel(8);
        p.control_up("b", 1, tx, false, S);
        p.push(load(2), S);
        assert!(pushed(&mut rx).is_empty(), "not known to take pushes yet");
        p.received("b", 1, load(7), S);
        assert_eq!(pushed(&mut rx), vec![2], "its first push: ours back at once");
        assert_eq!(p.of("b", 1), Some(load(7)));
        p.push(load(2), S);
        assert!(pushed(&mut rx).is_empty(), "unchanged: nothing");
        p.push(load(3), S);
        assert_eq!(pushed(&mut rx), vec![3]);
        // A hello that says it takes them: ours at once.
        let (tx2, mut rx2) = mpsc::channel(8);
        p.control_up("c", 5, tx2, true, S);
        assert_eq!(pushed(&mut rx2), vec![3]);
    }

    #[test]
    fn sampling_noise_is_not_pushed() {
        let p = PushedLoads::new(S * 10);
        let (tx, mut rx) = mpsc::channel(8);
        p.control_up("b", 1, tx, true, S);
        let at = |cpu: u16, latency_us: u32| Load {
            cpu_permille: cpu,
            latency_us,
            ..Load::default()
        };
        let cpus = |rx: &mut mpsc::Receiver<ControlMsg>| {
            let mut out = Vec::new();
            while let Ok(ControlMsg::Load(l)) = rx.try_recv() {
                out.push(l.cpu_permille);
            }
            out
        };
        p.push(at(100, 1000), S);
        p.push(at(110, 1040), S * 2);
        assert_eq!(
            cpus(&mut rx),
            vec![100],
            "under 2 points of CPU and a tenth of latency: noise"
        );
        p.push(at(400, 1040), S * 3);
        assert!(
            cpus(&mut rx).is_empty(),
            "the host's CPU alone waits for host_every (10 s)"
        );
        p.push(at(400, 1040), S * 11);
        assert_eq!(cpus(&mut rx), vec![400], "and then goes");
        p.push(at(100, 1150), S * 12);
        assert_eq!(cpus(&mut rx), vec![100], "latency up by more than a tenth goes at once");
        let mut busy = at(100, 1150);
        busy.inflight = 1;
        p.push(busy, S * 12);
        assert_eq!(cpus(&mut rx), vec![100], "any change of in-flight streams goes at once");
    }

    #[test]
    fn a_push_dropped_on_a_full_queue_goes_again() {
        let p = PushedLoads::new(S * 10);
        let (tx, mut rx) = mpsc::channel(1);
        p.control_up("b", 1, tx.clone(), true, S);
        tx.try_send(ControlMsg::Ping { nonce: 1 }).unwrap();
        p.push(load(4), S);
        let _ = rx.try_recv();
        assert!(rx.try_recv().is_err(), "dropped: the queue was full");
        p.push(load(4), S);
        assert_eq!(pushed(&mut rx), vec![4], "the same load again, since it was never sent");
    }

    #[test]
    fn two_control_streams_to_one_peer_each_keep_their_own_entry() {
        let p = PushedLoads::new(S * 10);
        let (x, _rx_x) = mpsc::channel(8);
        let (y, mut rx_y) = mpsc::channel(8);
        // The retired connection's stream comes up last and ends first.
        p.control_up("b", 2, y, true, S);
        p.control_up("b", 1, x, true, S);
        p.received("b", 2, load(5), S);
        p.received("b", 1, load(9), S);
        assert_eq!((p.of("b", 1), p.of("b", 2)), (Some(load(9)), Some(load(5))));
        p.control_down("b", 1);
        assert_eq!(p.of("b", 1), None);
        assert_eq!(p.of("b", 2), Some(load(5)), "the kept connection's entry stays");
        p.push(load(6), S);
        assert_eq!(pushed(&mut rx_y), vec![6], "pushes go on the kept connection");
        p.control_down("b", 2);
        assert_eq!(p.of("b", 2), None);
    }

    #[test]
    fn a_peer_that_never_pushes_is_an_older_node_after_the_grace() {
        let p = PushedLoads::new(S * 10);
        let (tx, _rx) = mpsc::channel(8);
        p.control_up("old", 1, tx, false, S);
        assert!(
            !p.any_without_pushes(S * 2, S * 5),
            "within the grace a dialler may not have pushed yet"
        );
        assert!(p.any_without_pushes(S * 6, S * 5));
        p.received("old", 1, load(0), S);
        assert!(!p.any_without_pushes(S * 9, S * 5), "it pushed: it takes pushes");
    }
}
