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
#[derive(Default)]
pub(crate) struct PushedLoads {
    inner: Mutex<Inner>,
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
    /// What this node last queued on it (a push dropped on a full queue goes again).
    sent: Option<Load>,
}

impl Stream {
    /// Queues this node's load if the peer takes it and has not been sent it.
    fn offer(&mut self, mine: Option<&Load>) {
        let Some(load) = mine else { return };
        if self.takes && self.sent.as_ref() != Some(load) && self.tx.try_send(ControlMsg::Load(load.clone())).is_ok() {
            self.sent = Some(load.clone());
        }
    }
}

impl PushedLoads {
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
        stream.offer(mine.as_ref());
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
    pub fn received(&self, peer: &str, conn_id: usize, load: Load) {
        let mut inner = lock(&self.inner);
        let Inner { peers, mine } = &mut *inner;
        if let Some(s) = peers
            .get_mut(peer)
            .and_then(|v| v.iter_mut().find(|s| s.conn_id == conn_id))
        {
            s.theirs = Some(load);
            s.takes = true;
            s.offer(mine.as_ref());
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
    pub fn push(&self, load: Load) {
        let mut inner = lock(&self.inner);
        let Inner { peers, mine } = &mut *inner;
        *mine = Some(load);
        for s in peers.values_mut().flatten() {
            s.offer(mine.as_ref());
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
        let p = PushedLoads::default();
        p.push(load(1));
        let (tx, mut rx) = mpsc::channel(8);
        p.control_up("b", 1, tx, false, S);
        p.push(load(2));
        assert!(pushed(&mut rx).is_empty(), "not known to take pushes yet");
        p.received("b", 1, load(7));
        assert_eq!(pushed(&mut rx), vec![2], "its first push: ours back at once");
        assert_eq!(p.of("b", 1), Some(load(7)));
        p.push(load(2));
        assert!(pushed(&mut rx).is_empty(), "unchanged: nothing");
        p.push(load(3));
        assert_eq!(pushed(&mut rx), vec![3]);
        // A hello that says it takes them: ours at once.
        let (tx2, mut rx2) = mpsc::channel(8);
        p.control_up("c", 5, tx2, true, S);
        assert_eq!(pushed(&mut rx2), vec![3]);
    }

    #[test]
    fn a_push_dropped_on_a_full_queue_goes_again() {
        let p = PushedLoads::default();
        let (tx, mut rx) = mpsc::channel(1);
        p.control_up("b", 1, tx.clone(), true, S);
        tx.try_send(ControlMsg::Ping { nonce: 1 }).unwrap();
        p.push(load(4));
        let _ = rx.try_recv();
        assert!(rx.try_recv().is_err(), "dropped: the queue was full");
        p.push(load(4));
        assert_eq!(pushed(&mut rx), vec![4], "the same load again, since it was never sent");
    }

    #[test]
    fn two_control_streams_to_one_peer_each_keep_their_own_entry() {
        let p = PushedLoads::default();
        let (x, _rx_x) = mpsc::channel(8);
        let (y, mut rx_y) = mpsc::channel(8);
        // The retired connection's stream comes up last and ends first.
        p.control_up("b", 2, y, true, S);
        p.control_up("b", 1, x, true, S);
        p.received("b", 2, load(5));
        p.received("b", 1, load(9));
        assert_eq!((p.of("b", 1), p.of("b", 2)), (Some(load(9)), Some(load(5))));
        p.control_down("b", 1);
        assert_eq!(p.of("b", 1), None);
        assert_eq!(p.of("b", 2), Some(load(5)), "the kept connection's entry stays");
        p.push(load(6));
        assert_eq!(pushed(&mut rx_y), vec![6], "pushes go on the kept connection");
        p.control_down("b", 2);
        assert_eq!(p.of("b", 2), None);
    }

    #[test]
    fn a_peer_that_never_pushes_is_an_older_node_after_the_grace() {
        let p = PushedLoads::default();
        let (tx, _rx) = mpsc::channel(8);
        p.control_up("old", 1, tx, false, S);
        assert!(
            !p.any_without_pushes(S * 2, S * 5),
            "within the grace a dialler may not have pushed yet"
        );
        assert!(p.any_without_pushes(S * 6, S * 5));
        p.received("old", 1, load(0));
        assert!(!p.any_without_pushes(S * 9, S * 5), "it pushed: it takes pushes");
    }
}
