//! The broadcast queue (memberlist's `TransmitLimitedQueue`): ids of members whose records
//! changed here, each to be sent a bounded number of times, piggybacked on the round's
//! openers. The records that were sent least go first, so a fresh change overtakes one that
//! has already been sent around; past the cap, the most-sent are dropped (anti-entropy still
//! carries them).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use super::names::Id;

/// Members with news to send, and how many more times each goes out.
#[derive(Debug, Clone, Default)]
pub struct News {
    /// (transmissions left, newest first by sequence, member), highest left first.
    order: BTreeSet<(Reverse<u32>, Reverse<u64>, Id)>,
    left: HashMap<Id, (u32, u64)>,
    seq: u64,
}

/// Most queued names: a mass join (a whole fleet starting) queues one per member.
const CAP: usize = 512;

/// Transmissions per change: `mult` × ⌈log₁₀(members + 1)⌉ (memberlist's
/// `RetransmitMult` × ⌈log₁₀(n + 1)⌉), so that a change reaches every member with high
/// probability while each node sends it only a few times.
pub fn transmissions(mult: u32, members: usize) -> u32 {
    let digits = ((members + 1) as f64).log10().ceil().max(1.0) as u32;
    mult.saturating_mul(digits)
}

impl News {
    /// Queues member `id`'s record to go out `times` times (replacing what was left of an
    /// earlier change of it).
    pub fn add(&mut self, id: Id, times: u32) {
        self.remove(id);
        if times == 0 {
            return;
        }
        self.seq += 1;
        self.order.insert((Reverse(times), Reverse(self.seq), id));
        self.left.insert(id, (times, self.seq));
        while self.order.len() > CAP {
            if let Some(last) = self.order.pop_last() {
                self.left.remove(&last.2);
            }
        }
    }

    /// Drops member `id` from the queue (its record is gone).
    pub fn remove(&mut self, id: Id) {
        if let Some((times, seq)) = self.left.remove(&id) {
            self.order.remove(&(Reverse(times), Reverse(seq), id));
        }
    }

    /// The members to send in one message (at most `max`), counting one transmission for
    /// each.
    pub fn take(&mut self, max: usize) -> Vec<Id> {
        let picked: Vec<(Reverse<u32>, Reverse<u64>, Id)> = self.order.iter().take(max).copied().collect();
        let mut out = Vec::with_capacity(picked.len());
        for item in picked {
            self.order.remove(&item);
            let (Reverse(times), Reverse(seq), id) = item;
            if times > 1 {
                self.order.insert((Reverse(times - 1), Reverse(seq), id));
                self.left.insert(id, (times - 1, seq));
            } else {
                self.left.remove(&id);
            }
            out.push(id);
        }
        out
    }

    /// Members queued.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is queued.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_goes_out_a_bounded_number_of_times_least_sent_first() {
        assert_eq!(transmissions(4, 9), 4);
        assert_eq!(transmissions(4, 10), 8);
        assert_eq!(transmissions(4, 10_000), 20);
        let mut q = News::default();
        let (a, b, c) = (7, 3, 9);
        q.add(a, 3);
        assert_eq!(q.take(8), [a]);
        q.add(b, 3);
        // b has been sent less than a: it leads.
        assert_eq!(q.take(1), [b]);
        // Sent equally often: the newer change first.
        assert_eq!(q.take(8), [b, a]);
        assert_eq!(q.take(8), [b, a]);
        assert!(q.is_empty(), "three transmissions each, then gone");
        q.add(c, 2);
        q.add(c, 5);
        assert_eq!(q.len(), 1, "a newer change replaces the older");
        for i in 0..(CAP + 10) {
            q.add(100 + i as Id, 4);
        }
        assert_eq!(q.len(), CAP);
    }
}
