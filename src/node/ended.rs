//! Why a connection to a peer node ended, told from its close reason. Most ends are part of
//! normal operation (a duplicate retired by either side, this node or the peer shutting
//! down) and are logged at debug; only a loss is news, and only a loss makes gossip suspect
//! the peer. Pure.

#![deny(clippy::disallowed_methods)]

use crate::protocol::codes;

/// How a peer connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// This node closed it: a duplicate that lost the tie-break, or a refusal.
    Retired,
    /// This node is shutting down.
    Shutdown,
    /// The peer closed it as a duplicate: the peer is alive and keeps another connection to
    /// us, which may not have reached this side yet.
    PeerRetired,
    /// The peer shut down in order (it told gossip it left before closing).
    PeerLeft,
    /// The peer refused it: another live process holds this node's identity there.
    Clash,
    /// The peer let it go: it holds more peer connections than its cap. Both are alive.
    PeerTrimmed,
    /// Anything else: a timeout, a reset, an error. The peer may be gone.
    Lost,
}

impl Ended {
    /// Classifies `reason`; `stopping` is whether this node is shutting down.
    pub fn of(reason: &quinn::ConnectionError, stopping: bool) -> Self {
        match reason {
            quinn::ConnectionError::LocallyClosed if stopping => Ended::Shutdown,
            quinn::ConnectionError::LocallyClosed => Ended::Retired,
            quinn::ConnectionError::ApplicationClosed(c) if c.error_code == codes::DUPLICATE => Ended::PeerRetired,
            quinn::ConnectionError::ApplicationClosed(c) if c.error_code == codes::SHUTDOWN => Ended::PeerLeft,
            quinn::ConnectionError::ApplicationClosed(c) if c.error_code == codes::IDENTITY_CLASH => Ended::Clash,
            quinn::ConnectionError::ApplicationClosed(c) if c.error_code == codes::TRIMMED => Ended::PeerTrimmed,
            _ => Ended::Lost,
        }
    }

    /// Whether both nodes are alive after this end: a duplicate retired by either side, a link
    /// trimmed under the cap. A stream that failed with such a connection was caught in the
    /// swap and says nothing about the peer's health.
    pub fn both_alive(self) -> bool {
        matches!(self, Ended::Retired | Ended::PeerRetired | Ended::PeerTrimmed)
    }

    /// Whether this end is part of normal operation (logged at debug).
    pub fn expected(self) -> bool {
        !matches!(self, Ended::Lost | Ended::Clash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(code: quinn::VarInt) -> quinn::ConnectionError {
        quinn::ConnectionError::ApplicationClosed(quinn_proto::ApplicationClose {
            error_code: code,
            reason: bytes::Bytes::new(),
        })
    }

    #[test]
    fn only_a_loss_is_unexpected() {
        use quinn::ConnectionError::{LocallyClosed, TimedOut};
        assert_eq!(Ended::of(&LocallyClosed, false), Ended::Retired);
        assert_eq!(Ended::of(&LocallyClosed, true), Ended::Shutdown);
        assert_eq!(Ended::of(&app(codes::DUPLICATE), false), Ended::PeerRetired);
        assert_eq!(Ended::of(&app(codes::SHUTDOWN), false), Ended::PeerLeft);
        assert_eq!(Ended::of(&app(codes::PROTOCOL), false), Ended::Lost);
        assert_eq!(Ended::of(&app(codes::IDENTITY_CLASH), false), Ended::Clash);
        assert_eq!(Ended::of(&app(codes::TRIMMED), false), Ended::PeerTrimmed);
        assert!(Ended::PeerTrimmed.expected());
        assert!(!Ended::Clash.expected());
        assert_eq!(Ended::of(&TimedOut, false), Ended::Lost);
        assert!(Ended::PeerRetired.expected() && !Ended::Lost.expected());
        assert!(Ended::PeerRetired.both_alive() && Ended::Retired.both_alive() && Ended::PeerTrimmed.both_alive());
        assert!(!Ended::Lost.both_alive() && !Ended::PeerLeft.both_alive() && !Ended::Clash.both_alive());
    }
}
