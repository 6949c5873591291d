//! Dense ids for member names, and each node's records indexed by them.
//!
//! A node holds a record of every member, so N nodes hold N² entries between them: at 10,000
//! nodes in the simulator that is 10⁸ entries, and a map keyed by name strings (about 0.5 KB
//! per entry with its tree nodes and keys) does not fit in memory. Here a name is interned
//! once into a [`Names`] table, shared by every [`crate::gossip::Gossip`] of a simulation (a
//! node has its own), and each node's entries are a vector indexed by the id, with no key
//! stored at all.
//!
//! An id is held by every table with an entry for it (and by a node for its own name), and
//! handed out again once none holds it: a member forgotten everywhere after `dead_ttl` frees
//! its id, so a long-lived mesh whose members take new names on every restart (or a peer
//! that gossips made-up members) does not grow the tables for ever. Other structures that
//! keep ids (the renewal queue) check the entry they point at, as they did when the member
//! was forgotten, so a reused id is only ever read as "someone newer".

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A member's dense id in a [`Names`] table.
pub type Id = u32;

/// Interned member names, shared by the nodes that hold a handle (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Names(Arc<Mutex<Interner>>);

#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<Arc<str>, Id>,
    /// By id: the name and how many holders it has (None: free).
    names: Vec<Option<(Arc<str>, u32)>>,
    free: Vec<Id>,
}

impl Names {
    fn lock(&self) -> MutexGuard<'_, Interner> {
        // Every change is made whole under the lock: a panic elsewhere leaves it consistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The id of `name`, if something holds it.
    pub fn id(&self, name: &str) -> Option<Id> {
        self.lock().ids.get(name).copied()
    }

    /// The id of `name`, interning it if nothing holds it, and counts one more holder.
    pub fn acquire(&self, name: &str) -> Id {
        let mut t = self.lock();
        if let Some(&id) = t.ids.get(name) {
            if let Some(Some((_, holders))) = t.names.get_mut(id as usize) {
                *holders += 1;
            }
            return id;
        }
        let name: Arc<str> = Arc::from(name);
        let id = match t.free.pop() {
            Some(id) => id,
            None => {
                t.names.push(None);
                Id::try_from(t.names.len() - 1).unwrap_or(Id::MAX)
            }
        };
        if let Some(slot) = t.names.get_mut(id as usize) {
            *slot = Some((name.clone(), 1));
        }
        t.ids.insert(name, id);
        id
    }

    /// Counts one holder less of `id`; frees it when that was the last.
    pub fn release(&self, id: Id) {
        let mut t = self.lock();
        let Some(Some((name, holders))) = t.names.get_mut(id as usize) else {
            return;
        };
        *holders -= 1;
        if *holders > 0 {
            return;
        }
        let name = name.clone();
        t.names[id as usize] = None;
        t.ids.remove(&name);
        t.free.push(id);
    }

    /// The name of `id` (empty if it is free).
    pub fn name(&self, id: Id) -> Arc<str> {
        match self.lock().names.get(id as usize) {
            Some(Some((name, _))) => name.clone(),
            _ => Arc::from(""),
        }
    }

    /// How many ids there are, held or free (one more than the highest).
    pub fn len(&self) -> usize {
        self.lock().names.len()
    }

    /// Whether no id was handed out yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Entries indexed by [`Id`]: one node's records. Each entry holds its id in the [`Names`].
#[derive(Debug)]
pub struct Slots<T> {
    names: Names,
    slots: Vec<Option<T>>,
    len: usize,
}

impl<T> Slots<T> {
    /// An empty table over `names`.
    pub fn new(names: Names) -> Self {
        Slots {
            names,
            slots: Vec::new(),
            len: 0,
        }
    }

    /// The name table the ids come from.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The entry of `name`.
    pub fn get(&self, name: &str) -> Option<&T> {
        self.get_id(self.names.id(name)?)
    }

    /// The entry of `name`, mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut T> {
        let id = self.names.id(name)?;
        self.get_id_mut(id)
    }

    /// The entry with id `id`.
    pub fn get_id(&self, id: Id) -> Option<&T> {
        self.slots.get(id as usize)?.as_ref()
    }

    /// The entry with id `id`, mutably.
    pub fn get_id_mut(&mut self, id: Id) -> Option<&mut T> {
        self.slots.get_mut(id as usize)?.as_mut()
    }

    /// Whether `name` has an entry.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets the entry of `name` (interning it); its id.
    pub fn insert(&mut self, name: &str, value: T) -> Id {
        if let Some(id) = self.names.id(name) {
            if let Some(slot) = self.get_id_mut(id) {
                *slot = value;
                return id;
            }
        }
        let id = self.names.acquire(name);
        let i = id as usize;
        if self.slots.len() <= i {
            // To every id there is: in a simulation (one table of names for all nodes)
            // every node ends up holding every name, and this sizes it once.
            let want = self.names.len().max(i + 1);
            self.slots.resize_with(want, || None);
        }
        self.slots[i] = Some(value);
        self.len += 1;
        id
    }

    /// Removes the entry of `name`, and with it this table's hold on the id.
    pub fn remove(&mut self, name: &str) -> Option<T> {
        let id = self.names.id(name)?;
        let old = self.slots.get_mut(id as usize)?.take()?;
        self.len -= 1;
        self.names.release(id);
        Some(old)
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The entries with their ids, in id order (the order names were first interned, not
    /// name order).
    pub fn iter(&self) -> impl Iterator<Item = (Id, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as Id, s.as_ref()?)))
    }

    /// The entries, in id order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }
}

impl<T: Clone> Clone for Slots<T> {
    fn clone(&self) -> Self {
        for (id, _) in self.iter() {
            let name = self.names.name(id);
            self.names.acquire(&name);
        }
        Slots {
            names: self.names.clone(),
            slots: self.slots.clone(),
            len: self.len,
        }
    }
}

impl<T> Drop for Slots<T> {
    fn drop(&mut self) {
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.is_some() {
                self.names.release(i as Id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_sharing_names_agree_on_ids_and_keep_their_own_entries() {
        let names = Names::default();
        let mut a: Slots<u8> = Slots::new(names.clone());
        let mut b: Slots<u8> = Slots::new(names.clone());
        let x = a.insert("x", 1);
        let y = b.insert("y", 2);
        assert_eq!(b.insert("x", 3), x, "one id per name across tables");
        assert_ne!(x, y);
        assert_eq!((a.get("x"), a.get("y")), (Some(&1), None));
        assert_eq!((b.get("x"), b.get("y")), (Some(&3), Some(&2)));
        assert_eq!((a.len(), b.len()), (1, 2));
        assert_eq!(a.insert("x", 4), x);
        assert_eq!(a.len(), 1, "replacing is not adding");
        assert_eq!(b.remove("x"), Some(3));
        assert_eq!((b.remove("x"), b.len()), (None, 1));
        assert_eq!(names.id("x"), Some(x), "a still holds x");
        assert_eq!(&*names.name(y), "y");
        assert_eq!(b.iter().map(|(id, v)| (id, *v)).collect::<Vec<_>>(), [(y, 2)]);
        assert_eq!(a.get("never"), None);
        assert_eq!(names.id("never"), None, "looking up does not intern");

        // Forgotten by every table, the id is free and goes to the next new name.
        assert_eq!(a.remove("x"), Some(4));
        assert_eq!(names.id("x"), None);
        let z = a.insert("z", 5);
        assert_eq!(z, x, "a freed id is handed out again");
        assert_eq!((a.get("x"), a.get("z"), b.get("z")), (None, Some(&5), None));
        let len = names.len();
        for round in 0..100 {
            let name = format!("churn-{round}");
            a.insert(&name, 0);
            a.remove(&name);
        }
        assert_eq!(names.len(), len + 1, "names that come and go reuse one id");

        // A copy holds its ids too; a dropped table lets go of its own.
        let c = b.clone();
        drop(b);
        assert_eq!(names.id("y"), Some(y));
        drop(c);
        assert_eq!(names.id("y"), None);
        let own = names.acquire("me");
        drop(a);
        assert_eq!(names.id("me"), Some(own), "held outside any table");
    }
}
