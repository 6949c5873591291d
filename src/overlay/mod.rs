//! The peer overlay: which members a node keeps a connection to.
//!
//! A pure state machine ([`Overlay`]), like [`crate::gossip`]: the node tells it the links it
//! has and the members gossip lists alive, with the time and an rng, and it answers which
//! members to dial and which links to close. [`sim`] runs ten thousand of them in one process.
//!
//! - **Small meshes stay full meshes.** While a node knows no more live members than
//!   `max_links` (`limits.max_peer_connections`), it wants a connection to every one of them,
//!   and of two members the one with the lower name dials, as before the overlay existed.
//! - **Past the cap, a bounded random overlay.** A node keeps between `low` (half the cap) and
//!   `max_links` links: below `low` it dials members drawn at random; above `max_links` it closes
//!   links drawn at random (never one marked `keep`, nor one younger than `grace`, so a new
//!   member gets its first gossip exchange before a full node lets it go). Random links of
//!   degree at least `low` make a random graph, connected with high probability and of
//!   diameter about log N / log `low`; a node that loses links to crashes dials new members at
//!   the next round once it is below `low`.
//!
//! HyParView (Leitão et al., 2007) is the reference. Its active view is this set of links, and
//! its rule that a join is admitted even by a full node (which then drops a random link) is
//! the `grace` rule here. Its passive view and shuffles are not needed: they exist because
//! a HyParView member knows only a few others, while a quicmesh node already holds every
//! member's record for routing (the gossip table), so it draws its reserve from there.

#![deny(clippy::disallowed_methods)]

#[cfg(feature = "testkit")]
pub mod sim;
mod view;

use std::time::Duration;

pub use view::Overlay;

/// Overlay settings (the node derives them from `limits.max_peer_connections` and
/// `transport.connect_timeout`).
#[derive(Debug, Clone, PartialEq)]
pub struct OverlayConfig {
    /// Most links kept once the mesh is larger than this; a mesh of at most this many other
    /// members stays a full mesh.
    pub max_links: usize,
    /// A link younger than this is never closed for being one too many.
    pub grace: Duration,
    /// A dial not reported as ended after this long is forgotten (and may be tried again).
    pub dial_timeout: Duration,
    /// A member whose dial failed is not drawn again for this long.
    pub avoid_for: Duration,
}

impl OverlayConfig {
    /// Settings for a cap of `max_links` links, with the node's defaults for the rest.
    pub fn new(max_links: usize) -> Self {
        OverlayConfig {
            max_links,
            grace: Duration::from_secs(2),
            dial_timeout: Duration::from_secs(10),
            avoid_for: Duration::from_secs(30),
        }
    }

    /// Fewest links a node in a large mesh keeps: half the cap, at least one.
    pub fn low(&self) -> usize {
        self.max_links.div_ceil(2).max(1)
    }
}

/// One link (a live connection to a peer) as the node reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Link<P> {
    /// The peer.
    pub peer: P,
    /// When the link came up.
    pub since: Duration,
    /// Never closed by the overlay: a link that carried a service stream lately (routing needs
    /// it). Configured peers are not kept past the cap: they are contact points.
    pub keep: bool,
}

/// What the overlay asks the node to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Dial this member; report the result with [`Overlay::dial_ended`].
    Dial(P),
    /// Close the link to this peer: the node has more than it needs.
    Close(P),
}
