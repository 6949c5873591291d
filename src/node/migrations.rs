//! The last remote address seen of each connection, to notice migrations: QUIC moves a
//! connection to its peer's new address (a client on a new network, a NAT rebinding)
//! without telling the application. One sweep for the whole node compares them now and then
//! (`conn.rs`); a timer per connection cost about 2 % of a core per 1,000 idle clients.
//!
//! Touches only its own map; callers pass the addresses in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use super::sync::lock;

/// A connection whose remote address changed: its stable id, the old and the new address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    pub id: usize,
    pub from: SocketAddr,
    pub to: SocketAddr,
}

/// Last address seen per connection, by quinn's stable id.
#[derive(Default)]
pub(crate) struct Migrations(Mutex<HashMap<usize, SocketAddr>>);

impl Migrations {
    /// Records a connection's address when it is established, so a move before the next
    /// sweep is still seen.
    pub fn connected(&self, id: usize, addr: SocketAddr) {
        lock(&self.0).insert(id, addr);
    }

    /// Forgets a connection that ended.
    pub fn closed(&self, id: usize) {
        lock(&self.0).remove(&id);
    }

    /// Compares the connections' addresses now with the last seen, records the new ones, and
    /// returns those that moved. Only connections recorded by [`Migrations::connected`] are
    /// compared: a sweep that read a connection just before it closed must not bring it back.
    pub fn look(&self, now: impl IntoIterator<Item = (usize, SocketAddr)>) -> Vec<Moved> {
        let mut seen = lock(&self.0);
        let mut moved = Vec::new();
        for (id, addr) in now {
            if let Some(was) = seen.get_mut(&id) {
                if *was != addr {
                    moved.push(Moved {
                        id,
                        from: *was,
                        to: addr,
                    });
                    *was = addr;
                }
            }
        }
        moved
    }

    /// Connections tracked (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_move_is_reported_once_and_only_for_the_connection_that_moved() {
        let m = Migrations::default();
        m.connected(1, addr(1000));
        m.connected(2, addr(2000));
        assert!(m.look([(1, addr(1000)), (2, addr(2000))]).is_empty());
        let moved = m.look([(1, addr(1001)), (2, addr(2000))]);
        assert_eq!(
            moved,
            vec![Moved {
                id: 1,
                from: addr(1000),
                to: addr(1001)
            }]
        );
        // The new address is the one compared with from now on.
        assert!(m.look([(1, addr(1001)), (2, addr(2000))]).is_empty());
    }

    #[test]
    fn a_move_before_the_first_sweep_is_seen_and_a_closed_connection_stays_forgotten() {
        let m = Migrations::default();
        m.connected(7, addr(7000));
        assert_eq!(m.look([(7, addr(7001))]).len(), 1);
        m.closed(7);
        // A sweep that read it before it closed neither reports nor keeps it.
        assert!(m.look([(7, addr(7002))]).is_empty());
        assert_eq!(m.len(), 0);
    }
}
