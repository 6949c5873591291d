//! Streams in use per connection, so a connection that lost the duplicate tie-break, or that
//! the overlay lets go of, is closed only once the streams already running on it are done.
//!
//! When two nodes dial each other at once, both keep the same one of the two connections and
//! retire the other. Streams may already be running on the retired one (a relay opened in the
//! moment between its handshake and the tie-break); closing it at once would cut them. Each
//! stream holds a [`InUse`] guard on its connection, on the serving side until the caller has
//! acknowledged the whole reply; a retired connection is closed when its last guard drops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use quinn::{Connection, VarInt};

use super::sync::lock;
use crate::protocol::codes;

/// Per-connection stream counts and the retired connections waiting for theirs to end.
#[derive(Debug, Default)]
pub(crate) struct ConnUse {
    counts: HashMap<usize, usize>,
    /// Retired connections, with the close code and reason they get.
    retired: HashMap<usize, (Connection, VarInt, &'static [u8])>,
}

/// Shared handle to the table.
pub(crate) type ConnUseTable = Arc<Mutex<ConnUse>>;

/// Marks one stream as running on a connection until dropped.
#[derive(Debug)]
pub(crate) struct InUse {
    table: ConnUseTable,
    id: usize,
}

/// Counts a stream on `conn`.
pub(crate) fn in_use(table: &ConnUseTable, conn: &Connection) -> InUse {
    let id = conn.stable_id();
    *lock(table).counts.entry(id).or_insert(0) += 1;
    InUse {
        table: table.clone(),
        id,
    }
}

/// Stops using `conn`, the loser of a duplicate tie-break: see [`retire_with`].
pub(crate) fn retire(table: &ConnUseTable, conn: &Connection) {
    retire_with(table, conn, codes::DUPLICATE, b"duplicate connection");
}

/// Stops using `conn`: closes it with `code` and `reason` now if no stream runs on it, else
/// when the last one ends (also for a link the overlay lets go of: a relay that started just
/// before is not cut).
pub(crate) fn retire_with(table: &ConnUseTable, conn: &Connection, code: VarInt, reason: &'static [u8]) {
    let id = conn.stable_id();
    let mut t = lock(table);
    if t.counts.get(&id).copied().unwrap_or(0) == 0 {
        drop(t);
        conn.close(code, reason);
    } else {
        t.retired.insert(id, (conn.clone(), code, reason));
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut t = lock(&self.table);
        let left = match t.counts.get_mut(&self.id) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            t.counts.remove(&self.id);
            if let Some((conn, code, reason)) = t.retired.remove(&self.id) {
                drop(t);
                conn.close(code, reason);
            }
        }
    }
}
