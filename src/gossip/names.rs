//! Dense ids for member names, and each node's records indexed by them.
//!
//! A node holds a record of every member, so N nodes hold N² entries between them: at 10,000
//! nodes in the simulator that is 10⁸ entries, and a map keyed by name strings (about 0.5 KB
//! per entry with its tree nodes and keys) does not fit in memory. Here a name is interned
//! once into a [`Names`] table, shared by every [`crate::gossip::Gossip`] of a simulation (a
//! node has its own), and each node's entries are a vector indexed by the id, with no key
//! stored at all.
//!
//! Ids are never reused: a forgotten member keeps its id (its name and one empty slot per
//! node, about 60 B), so a member that comes back gets the same one. That bounds a node's
//! table by the names it has ever seen, which in a long-lived mesh whose members get new
//! names on every restart grows without end; dropping those ids needs every structure that
//! holds one to forget it first, which is left for when a real fleet shows the need.

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
    names: Vec<Arc<str>>,
}

impl Names {
    fn lock(&self) -> MutexGuard<'_, Interner> {
        // The table only ever grows by whole entries: a panic elsewhere leaves it consistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The id of `name`, if it was ever interned.
    pub fn id(&self, name: &str) -> Option<Id> {
        self.lock().ids.get(name).copied()
    }

    /// The id of `name`, interning it if it is new.
    pub fn intern(&self, name: &str) -> Id {
        let mut t = self.lock();
        if let Some(&id) = t.ids.get(name) {
            return id;
        }
        let id = Id::try_from(t.names.len()).unwrap_or(Id::MAX);
        let name: Arc<str> = Arc::from(name);
        t.names.push(name.clone());
        t.ids.insert(name, id);
        id
    }

    /// The name of `id` (empty if `id` was never handed out).
    pub fn name(&self, id: Id) -> Arc<str> {
        self.lock()
            .names
            .get(id as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }

    /// How many names were interned.
    pub fn len(&self) -> usize {
        self.lock().names.len()
    }

    /// Whether no name was interned yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Entries indexed by [`Id`]: one node's records.
#[derive(Debug, Clone)]
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
        let id = self.names.intern(name);
        let i = id as usize;
        if self.slots.len() <= i {
            // To every name known so far: in a simulation (one table of names for all
            // nodes) every node ends up holding every name, and this sizes it once.
            let want = self.names.len().max(i + 1);
            self.slots.resize_with(want, || None);
        }
        if self.slots[i].replace(value).is_none() {
            self.len += 1;
        }
        id
    }

    /// Removes the entry of `name`.
    pub fn remove(&mut self, name: &str) -> Option<T> {
        let id = self.names.id(name)?;
        let old = self.slots.get_mut(id as usize)?.take();
        if old.is_some() {
            self.len -= 1;
        }
        old
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
        assert_eq!(names.id("x"), Some(x), "a removed entry keeps its id");
        assert_eq!(&*names.name(y), "y");
        assert_eq!(b.iter().map(|(id, v)| (id, *v)).collect::<Vec<_>>(), [(y, 2)]);
        assert_eq!(a.get("never"), None);
        assert_eq!(names.id("never"), None, "looking up does not intern");
    }
}
