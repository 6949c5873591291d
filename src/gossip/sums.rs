//! Anti-entropy by bucket sums: a round's opener sends one 32-bit sum per bucket of members
//! (256 bytes at any size), not a digest entry per member; only the buckets whose sums differ
//! are then compared member by member. At rest (no record changed) a round costs the same at
//! ten members as at ten thousand.
//!
//! A member's bucket is a stable hash of its name; a bucket's sum is the XOR of its members'
//! record hashes, kept up to date as records change, so that building or comparing sums never
//! walks the members. The record hash covers what decides which of two records wins (the
//! [`RecordKey`](super::RecordKey)) and the suspectors, but not the heartbeat: heartbeats
//! change every round, and failure detection reads them off direct links instead.

use std::collections::BTreeSet;

use super::names::Id;
use super::Member;

/// Buckets of the sums. 64 sums of 4 bytes: a 256-byte opener; at 10,000 members a bucket
/// holds about 156, so one differing bucket costs a reply of ~4 KiB of digest entries.
pub const BUCKETS: usize = 64;

/// FNV-1a, 64-bit: stable across builds and platforms (the sums of two nodes of different
/// builds must agree), and fast on short names.
fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The bucket a member's name falls in.
pub fn bucket_of(name: &str) -> usize {
    (fnv(FNV_OFFSET, name.as_bytes()) % BUCKETS as u64) as usize
}

/// The hash of a member's record as the sums see it (see the module docs).
pub fn record_hash(m: &Member) -> u32 {
    let k = m.key();
    let mut h = fnv(FNV_OFFSET, m.name.as_bytes());
    h = fnv(h, &k.incarnation.to_le_bytes());
    h = fnv(h, &[k.rank, k.suspectors]);
    h = fnv(h, &k.version.to_le_bytes());
    // Order-free: two nodes may have heard the same suspectors in different orders.
    let suspectors = m
        .suspectors
        .iter()
        .fold(0u64, |acc, s| acc ^ fnv(FNV_OFFSET, s.as_bytes()));
    h = fnv(h, &suspectors.to_le_bytes());
    (h ^ (h >> 32)) as u32
}

/// The sums of one node's view, and which members each bucket holds.
#[derive(Debug, Clone)]
pub struct Sums {
    sums: [u32; BUCKETS],
    /// The ids of each bucket's members (4 bytes each, with the tree's share: the names are
    /// in the node's [`super::names::Names`]).
    ids: Vec<BTreeSet<Id>>,
}

impl Default for Sums {
    fn default() -> Self {
        Sums {
            sums: [0; BUCKETS],
            ids: vec![BTreeSet::new(); BUCKETS],
        }
    }
}

impl Sums {
    /// Adds member `name` (with id `id`), whose record hashes to `hash`.
    pub fn insert(&mut self, name: &str, id: Id, hash: u32) {
        let b = bucket_of(name);
        self.sums[b] ^= hash;
        self.ids[b].insert(id);
    }

    /// Removes member `name` (with id `id`), whose record hashed to `hash`.
    pub fn remove(&mut self, name: &str, id: Id, hash: u32) {
        let b = bucket_of(name);
        self.sums[b] ^= hash;
        self.ids[b].remove(&id);
    }

    /// A member's record changed from hashing to `old` to hashing to `new`.
    pub fn change(&mut self, name: &str, old: u32, new: u32) {
        self.sums[bucket_of(name)] ^= old ^ new;
    }

    /// The sums as sent: 4 bytes per bucket, little-endian.
    pub fn encode(&self) -> Vec<u8> {
        self.sums.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    /// The buckets whose sums differ from `theirs` (as [`Sums::encode`] makes them), or None
    /// if `theirs` is not such an encoding.
    pub fn differing(&self, theirs: &[u8]) -> Option<Vec<usize>> {
        if theirs.len() != BUCKETS * 4 {
            return None;
        }
        let differ = theirs
            .chunks_exact(4)
            .zip(self.sums.iter())
            .enumerate()
            .filter(|(_, (t, ours))| t != &ours.to_le_bytes().as_slice())
            .map(|(b, _)| b)
            .collect();
        Some(differ)
    }

    /// The ids of the members of bucket `b` (in id order, not name order).
    pub fn ids(&self, b: usize) -> impl Iterator<Item = Id> + '_ {
        self.ids.get(b).into_iter().flatten().copied()
    }

    /// How many members bucket `b` holds.
    pub fn len(&self, b: usize) -> usize {
        self.ids.get(b).map_or(0, BTreeSet::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_agree_whatever_the_order_of_changes_and_ignore_heartbeats() {
        let mut a = Member::new("a", "x:1", 1, Vec::new());
        let b = Member::new("b", "x:2", 1, Vec::new());
        let mut one = Sums::default();
        one.insert("a", 0, record_hash(&a));
        one.insert("b", 1, record_hash(&b));
        let mut two = Sums::default();
        two.insert("b", 1, record_hash(&b));
        two.insert("a", 0, record_hash(&a));
        assert_eq!(one.differing(&two.encode()), Some(vec![]));

        let old = record_hash(&a);
        a.heartbeat += 100;
        assert_eq!(record_hash(&a), old, "heartbeats are not in the sums");
        a.version += 1;
        one.change("a", old, record_hash(&a));
        assert_eq!(one.differing(&two.encode()), Some(vec![bucket_of("a")]));
        assert_eq!(one.differing(&[0; 7]), None, "a wrong length is not a set of sums");

        let mut s = Member::new("c", "x:3", 1, Vec::new());
        s.suspectors = vec!["a".into(), "b".into()];
        let mut t = s.clone();
        t.suspectors.reverse();
        assert_eq!(record_hash(&s), record_hash(&t));
        t.suspectors[0] = "z".into();
        assert_ne!(record_hash(&s), record_hash(&t), "different suspectors, different sums");
    }
}
