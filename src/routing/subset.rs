//! Deterministic subsetting: which servers of a service each caller routes to, so that past a
//! few dozen servers a caller holds links to a bounded subset of them, every server has about
//! as many callers as any other, and a member joining or leaving moves few links. Pure: the
//! callers and servers are passed in as integer ids (a hash of each name), no clock, no rng.
//!
//! ## How a subset is chosen
//! Rendezvous hashing with bounded loads. Each caller ranks every server by `score(caller,
//! server)` (a keyed hash: each caller prefers different servers, and a server keeps its rank
//! when others come and go). The callers, taken in the order of their ids, each take the first
//! `size` servers in their own ranking that have fewer than `cap` callers so far, with `cap` the
//! mean (callers × size / servers) plus 10%, at least the mean rounded up. So no server has more
//! than 1.1× the mean number of callers (Google's deterministic subsetting gets even counts by
//! shuffling servers per round of callers, but a join then reshuffles every later round; Finagle's
//! aperture places callers and servers on a ring by rank, and a join slides every caller's
//! window). Here a join changes only the links that rank it first, plus the short chain of
//! callers a fuller server passes on to their next choice: measured in the tests below.
//!
//! Every node sees the same members through gossip, so each computes the same assignment and
//! needs nobody's agreement; while views differ (a join still spreading) subsets differ for a few
//! rounds, which costs a link or two, not correctness.
//!
//! ## Widening under load
//! [`Aperture`] adds servers beyond the subset, in the caller's own ranking, while the caller's
//! in-flight streams per subset server stay above [`Aperture::HIGH`], and drops them again below
//! [`Aperture::LOW`] (Finagle's aperture load band), one server per [`Aperture::STEP`].

#![deny(clippy::disallowed_methods)]

use std::time::Duration;

/// Servers a caller routes a service over by default (`routing.subset_size`).
pub const DEFAULT_SUBSET: usize = 12;

/// How far above the mean a server's caller count may go.
const SLACK: f64 = 0.1;

/// Rank of `server` for `caller`: a splitmix64 finish of the two ids, so that a caller's
/// ranking of servers is independent of every other caller's.
pub fn score(caller: u64, server: u64) -> u64 {
    let mut z = caller ^ server.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Most callers any server takes when `callers` callers each take `size` of `servers`.
pub fn cap(callers: usize, servers: usize, size: usize) -> usize {
    if servers == 0 {
        return 0;
    }
    let size = size.min(servers);
    let mean = (callers * size) as f64 / servers as f64;
    ((mean * (1.0 + SLACK)).floor() as usize).max(mean.ceil() as usize)
}

/// `caller`'s ranking of `servers`: indexes into `servers`, best first.
pub fn ranking(caller: u64, servers: &[u64]) -> Vec<usize> {
    let mut order: Vec<(u64, usize)> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (score(caller, *s), i))
        .collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    order.into_iter().map(|(_, i)| i).collect()
}

/// The subsets of every caller: `result[i]` is `callers[i]`'s, as indexes into `servers` in
/// that caller's order of preference. Callers or servers listed twice count once each time.
pub fn assign(callers: &[u64], servers: &[u64], size: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); callers.len()];
    assign_until(callers, servers, size, |i, subset| {
        out[i] = subset;
        true
    });
    out
}

/// The subset of `me` (which should be among `callers`; it is taken as one more caller if
/// not), as indexes into `servers`, best first. All servers when there are at most `size`.
pub fn subset_of(me: u64, callers: &[u64], servers: &[u64], size: usize) -> Vec<usize> {
    if servers.len() <= size {
        return ranking(me, servers);
    }
    let mut all: Vec<u64> = callers.to_vec();
    if !all.contains(&me) {
        all.push(me);
    }
    let mut mine = Vec::new();
    assign_until(&all, servers, size, |i, subset| {
        if all[i] == me {
            mine = subset;
            return false;
        }
        true
    });
    mine
}

/// `subset` widened by `extra` more servers: the next ones in `me`'s own ranking.
pub fn widen(me: u64, servers: &[u64], subset: &[usize], extra: usize) -> Vec<usize> {
    let mut out = subset.to_vec();
    if extra == 0 {
        return out;
    }
    let more = ranking(me, servers)
        .into_iter()
        .filter(|i| !subset.contains(i))
        .take(extra);
    out.extend(more);
    out
}

/// Runs the assignment in caller-id order, handing each caller's subset (by its index in
/// `callers`) to `each` until it returns false. O(callers × servers).
fn assign_until(callers: &[u64], servers: &[u64], size: usize, mut each: impl FnMut(usize, Vec<usize>) -> bool) {
    let n = servers.len();
    let size = size.min(n);
    let cap = cap(callers.len(), n, size);
    let mut order: Vec<usize> = (0..callers.len()).collect();
    order.sort_unstable_by_key(|i| (callers[*i], *i));
    let mut taken = vec![0usize; n];
    let mut scores: Vec<(u64, usize)> = Vec::with_capacity(n);
    for i in order {
        let c = callers[i];
        scores.clear();
        scores.extend(servers.iter().enumerate().map(|(j, s)| (score(c, *s), j)));
        // Most callers find room among their first few choices: sort only those, and the
        // rest if they do not.
        let head = (size * 2 + 8).min(n);
        if head < n {
            scores.select_nth_unstable_by(head - 1, |a, b| b.cmp(a));
        }
        scores[..head].sort_unstable_by(|a, b| b.cmp(a));
        let mut mine = Vec::with_capacity(size);
        let mut sorted_all = head == n;
        let mut k = 0;
        while mine.len() < size {
            if k == head && !sorted_all {
                scores[head..].sort_unstable_by(|a, b| b.cmp(a));
                sorted_all = true;
            }
            let Some(&(_, j)) = scores.get(k) else { break };
            if taken[j] < cap {
                taken[j] += 1;
                mine.push(j);
            }
            k += 1;
        }
        if !each(i, mine) {
            return;
        }
    }
}

/// Widening of one caller's subset of one service under load: how many servers beyond it.
#[derive(Debug, Clone, Default)]
pub struct Aperture {
    extra: usize,
    changed_at: Option<Duration>,
}

impl Aperture {
    /// In-flight streams per server above which the subset widens.
    pub const HIGH: f64 = 2.0;
    /// ... and below which it narrows again.
    pub const LOW: f64 = 0.5;
    /// At most one step per this long, so a burst does not open every server at once.
    pub const STEP: Duration = Duration::from_secs(1);

    /// Servers beyond the subset now.
    pub fn extra(&self) -> usize {
        self.extra
    }

    /// Takes the caller's in-flight streams to the servers of its widened subset, `inflight`
    /// over `servers` of them, at `now`; widens by one (up to `max_extra`) or narrows by one.
    /// Returns the servers beyond the subset.
    pub fn update(&mut self, inflight: u64, servers: usize, now: Duration, max_extra: usize) -> usize {
        if self.extra > max_extra {
            // Servers went away: no waiting for a step.
            self.extra = max_extra;
        }
        let load = inflight as f64 / servers.max(1) as f64;
        let want = if load > Self::HIGH && self.extra < max_extra {
            self.extra + 1
        } else if load < Self::LOW && self.extra > 0 {
            self.extra - 1
        } else {
            return self.extra;
        };
        if self.changed_at.is_none_or(|at| now.saturating_sub(at) >= Self::STEP) {
            self.extra = want;
            self.changed_at = Some(now);
        }
        self.extra
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(prefix: &str, n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| crate::routing::fnv1a(format!("{prefix}-{i}").as_bytes()))
            .collect()
    }

    fn counts(subsets: &[Vec<usize>], servers: usize) -> Vec<usize> {
        let mut c = vec![0; servers];
        for s in subsets {
            for j in s {
                c[*j] += 1;
            }
        }
        c
    }

    fn max_over_mean(c: &[usize]) -> f64 {
        let mean = c.iter().sum::<usize>() as f64 / c.len() as f64;
        *c.iter().max().unwrap_or(&0) as f64 / mean
    }

    /// Links (caller, server id) of an assignment.
    fn links(callers: &[u64], servers: &[u64], subsets: &[Vec<usize>]) -> std::collections::BTreeSet<(u64, u64)> {
        callers
            .iter()
            .zip(subsets)
            .flat_map(|(c, s)| s.iter().map(move |j| (*c, servers[*j])))
            .collect()
    }

    #[test]
    fn every_caller_gets_size_distinct_servers_and_servers_are_balanced() {
        for (callers, servers) in [(1000, 100), (1000, 1000), (300, 40), (10, 1000)] {
            let (c, s) = (ids("c", callers), ids("s", servers));
            let a = assign(&c, &s, DEFAULT_SUBSET);
            for sub in &a {
                let mut d = sub.clone();
                d.sort_unstable();
                d.dedup();
                assert_eq!(d.len(), DEFAULT_SUBSET, "{callers}x{servers}");
            }
            let k = counts(&a, servers);
            assert!(*k.iter().max().unwrap_or(&0) <= cap(callers, servers, DEFAULT_SUBSET));
            if callers * DEFAULT_SUBSET >= 10 * servers {
                let r = max_over_mean(&k);
                assert!(r <= 1.1, "{callers} callers over {servers} servers: max/mean {r:.3}");
            }
        }
    }

    #[test]
    fn rendezvous_alone_would_not_be_balanced() {
        // What the cap buys: the plain top-12 of each caller's ranking.
        let (c, s) = (ids("c", 1000), ids("s", 1000));
        let plain: Vec<Vec<usize>> = c.iter().map(|c| ranking(*c, &s)[..12].to_vec()).collect();
        assert!(max_over_mean(&counts(&plain, 1000)) > 1.5);
        assert!(max_over_mean(&counts(&assign(&c, &s, 12), 1000)) <= 1.1);
    }

    #[test]
    fn with_few_servers_every_caller_takes_them_all() {
        let (c, s) = (ids("c", 50), ids("s", 12));
        let mine = subset_of(c[3], &c, &s, 12);
        let mut sorted = mine.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..12).collect::<Vec<_>>());
        assert!(subset_of(c[3], &c, &[], 12).is_empty());
    }

    #[test]
    fn subset_of_agrees_with_the_whole_assignment_and_takes_in_a_missing_caller() {
        let (c, s) = (ids("c", 200), ids("s", 60));
        let all = assign(&c, &s, 12);
        for i in [0, 17, 199] {
            assert_eq!(subset_of(c[i], &c, &s, 12), all[i]);
        }
        let stranger = crate::routing::fnv1a(b"stranger");
        let mut with = c.clone();
        with.push(stranger);
        assert_eq!(subset_of(stranger, &c, &s, 12), assign(&with, &s, 12)[200]);
    }

    /// Fraction of the links of `before` that are gone in `after`.
    fn moved(before: &std::collections::BTreeSet<(u64, u64)>, after: &std::collections::BTreeSet<(u64, u64)>) -> f64 {
        before.difference(after).count() as f64 / before.len() as f64
    }

    #[test]
    fn one_join_or_leave_moves_few_links() {
        // N = 1,000 members, each a caller; a service on 100 or on all 1,000 of them.
        let d = DEFAULT_SUBSET;
        for servers in [100, 1000] {
            let c = ids("n", 1000);
            let s: Vec<u64> = c[..servers].to_vec();
            let base = links(&c, &s, &assign(&c, &s, d));
            let bound = 2.0 * d as f64 / 1000.0;
            let mut worst: f64 = 0.0;
            for j in 0..20 {
                // A caller joins; a server joins (as a member, so a caller too); a server leaves.
                let newcomer = crate::routing::fnv1a(format!("new-{j}").as_bytes());
                let mut c2 = c.clone();
                c2.push(newcomer);
                worst = worst.max(moved(&base, &links(&c2, &s, &assign(&c2, &s, d))));
                let mut s2 = s.clone();
                s2.push(newcomer);
                worst = worst.max(moved(&base, &links(&c2, &s2, &assign(&c2, &s2, d))));
                let mut s3 = s.clone();
                s3.remove(j * 3);
                let after = links(&c, &s3, &assign(&c, &s3, d));
                // The leaver's own links go with it; count the others.
                let gone = s[j * 3];
                let kept: std::collections::BTreeSet<_> = base.iter().filter(|l| l.1 != gone).copied().collect();
                worst = worst.max(moved(&kept, &after));
            }
            assert!(
                worst <= bound,
                "{servers} servers: worst join/leave moved {worst:.4} of the links (bound {bound:.4})"
            );
        }
    }

    #[test]
    fn widening_takes_the_next_servers_in_the_callers_own_ranking() {
        let (c, s) = (ids("c", 100), ids("s", 40));
        let base = subset_of(c[0], &c, &s, 12);
        let wide = widen(c[0], &s, &base, 3);
        assert_eq!(&wide[..12], &base[..]);
        assert_eq!(wide.len(), 15);
        let own: Vec<usize> = ranking(c[0], &s)
            .into_iter()
            .filter(|i| !base.contains(i))
            .take(3)
            .collect();
        assert_eq!(&wide[12..], &own[..]);
        assert_eq!(widen(c[0], &s, &base, 100).len(), 40);
    }

    #[test]
    fn the_aperture_widens_under_load_one_step_at_a_time_and_narrows_when_it_passes() {
        let mut a = Aperture::default();
        let s = Duration::from_secs;
        assert_eq!(a.update(12, 12, s(0), 10), 0, "1 per server: inside the band");
        assert_eq!(a.update(40, 12, s(1), 10), 1);
        assert_eq!(
            a.update(40, 13, Duration::from_millis(1500), 10),
            1,
            "one step per second"
        );
        assert_eq!(a.update(40, 13, s(2), 10), 2);
        for t in 3..20 {
            a.update(1000, 14, s(t), 4);
        }
        assert_eq!(a.extra(), 4, "never past max_extra");
        assert_eq!(a.update(1000, 16, s(20), 2), 2, "servers went away: clamped at once");
        assert_eq!(a.update(0, 14, s(21), 2), 1);
        assert_eq!(a.update(0, 13, s(22), 2), 0);
        assert_eq!(a.update(0, 12, s(23), 2), 0);
    }
}
