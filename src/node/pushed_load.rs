//! Load pushed over peer links: what each linked peer last said its load was, on which
//! connection, and whether it takes this node's; and this node's own load as last pushed.
//!
//! Routing compares the in-flight counts and latencies of the nodes it could send a stream
//! to. Carried in gossip records, every load change of every member travelled to every
//! member (the largest part of gossip's bytes at a thousand nodes, and stale by the time
//! it arrived past a few thousand). Pushed, a node's load goes only to the peers it has
//! links to (at most `limits.max_peer_connections` plus the service links of its callers),
//! fresh every `gossip.load_interval`; the gossip record carries it only every
//! `gossip.load_gossip_interval`, for status views of members without a link.
//!
//! Written by the control streams (a peer's pushes, its stream coming up and going down)
//! and the gossip loop (this node's load); read by routing and status.

use std::collections::HashMap;
use std::sync::Mutex;

use super::sync::lock;
use crate::gossip::Load;

/// See the module docs.
#[derive(Default)]
pub(crate) struct PushedLoads {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    peers: HashMap<String, PeerLoad>,
    mine: Option<Load>,
}

/// One peer's control stream, as far as pushed load goes.
struct PeerLoad {
    /// The connection (stable id) the control stream runs on.
    conn_id: usize,
    /// Whether the peer takes [`crate::protocol::ControlMsg::Load`]: its `Hello` said so, or
    /// it pushed its own (an older node would close the stream on a kind it does not know).
    takes: bool,
    /// What it pushed last on this connection.
    load: Option<Load>,
}

impl PushedLoads {
    /// `peer`'s control stream on connection `conn_id` is up (it replaces any older one).
    pub fn control_up(&self, peer: &str, conn_id: usize, takes: bool) {
        lock(&self.inner).peers.insert(
            peer.to_owned(),
            PeerLoad {
                conn_id,
                takes,
                load: None,
            },
        );
    }

    /// `peer`'s control stream on `conn_id` ended; a newer one's entry stays.
    pub fn control_down(&self, peer: &str, conn_id: usize) {
        let mut inner = lock(&self.inner);
        if inner.peers.get(peer).is_some_and(|p| p.conn_id == conn_id) {
            inner.peers.remove(peer);
        }
    }

    /// `peer` pushed `load` on `conn_id`. Returns whether this was the first sign that it
    /// takes pushed load (it should get this node's at once). A push on a connection that
    /// is not the peer's current control stream is stale and dropped.
    pub fn received(&self, peer: &str, conn_id: usize, load: Load) -> bool {
        let mut inner = lock(&self.inner);
        match inner.peers.get_mut(peer) {
            Some(p) if p.conn_id == conn_id => {
                p.load = Some(load);
                !std::mem::replace(&mut p.takes, true)
            }
            _ => false,
        }
    }

    /// What `peer` last pushed, if it pushed on connection `conn_id` (the one routing would
    /// use): load pushed on a connection since closed says nothing of a new one.
    pub fn of(&self, peer: &str, conn_id: usize) -> Option<Load> {
        let inner = lock(&self.inner);
        inner
            .peers
            .get(peer)
            .filter(|p| p.conn_id == conn_id)
            .and_then(|p| p.load.clone())
    }

    /// Records this node's load now; returns whether it differs from the last one (and should
    /// be pushed).
    pub fn set_mine(&self, load: &Load) -> bool {
        let mut inner = lock(&self.inner);
        if inner.mine.as_ref() == Some(load) {
            return false;
        }
        inner.mine = Some(load.clone());
        true
    }

    /// This node's load as last recorded.
    pub fn mine(&self) -> Option<Load> {
        lock(&self.inner).mine.clone()
    }

    /// The peers whose control stream takes pushed load.
    pub fn takers(&self) -> Vec<String> {
        let inner = lock(&self.inner);
        inner
            .peers
            .iter()
            .filter(|(_, p)| p.takes)
            .map(|(n, _)| n.clone())
            .collect()
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

    #[test]
    fn a_push_counts_only_on_the_peers_current_control_stream() {
        let p = PushedLoads::default();
        assert!(!p.received("b", 1, load(3)), "no control stream: dropped");
        p.control_up("b", 1, false);
        assert!(p.takers().is_empty(), "not known to take it yet");
        assert!(p.received("b", 1, load(3)), "its first push says it takes pushed load");
        assert!(!p.received("b", 1, load(4)), "only the first");
        assert_eq!(p.takers(), vec!["b".to_owned()]);
        assert_eq!(p.of("b", 1), Some(load(4)));
        assert_eq!(p.of("b", 2), None, "another connection's routing does not use it");
        // A new connection replaces the old; the old one's end leaves the new entry alone.
        p.control_up("b", 2, true);
        assert_eq!(p.of("b", 2), None, "nothing pushed on the new one yet");
        assert!(!p.received("b", 1, load(9)), "a late push on the old connection");
        assert_eq!(p.of("b", 2), None);
        p.control_down("b", 1);
        assert_eq!(p.takers(), vec!["b".to_owned()]);
        p.control_down("b", 2);
        assert!(p.takers().is_empty());
    }

    #[test]
    fn only_a_change_of_this_nodes_load_is_pushed() {
        let p = PushedLoads::default();
        assert_eq!(p.mine(), None);
        assert!(p.set_mine(&load(1)));
        assert!(!p.set_mine(&load(1)));
        assert!(p.set_mine(&load(2)));
        assert_eq!(p.mine(), Some(load(2)));
    }
}
