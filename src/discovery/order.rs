//! What an SRV answer resolves to, and the order RFC 2782 says to try it in.

#![deny(clippy::disallowed_methods)]

use std::net::SocketAddr;

use rand::Rng;

/// One address an SRV record leads to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// SRV priority: lower is tried first.
    pub priority: u16,
    /// SRV weight: the share of picks within a priority.
    pub weight: u16,
    /// The record's target host name.
    pub target: String,
    /// One address of the target, with the record's port.
    pub addr: SocketAddr,
}

/// Orders `endpoints` as RFC 2782 asks a client to try them: by ascending priority, and within
/// one priority by a weighted random draw without replacement.
///
/// The RFC's draw is uniform over `0..=sum`, which gives the first record one extra chance in
/// `sum + 1` (weights 3:1 come out 3:2). The draw here is over `0..sum`, so shares are exactly
/// proportional to weight, and weight-0 records come after every weighted one of their
/// priority (in random order among themselves).
pub fn rfc2782_order<R: Rng + ?Sized>(endpoints: &[Endpoint], rng: &mut R) -> Vec<Endpoint> {
    let mut sorted: Vec<&Endpoint> = endpoints.iter().collect();
    sorted.sort_by_key(|e| e.priority);
    let mut out = Vec::with_capacity(sorted.len());
    let mut rest = sorted.as_slice();
    while let Some(first) = rest.first() {
        let n = rest.iter().take_while(|e| e.priority == first.priority).count();
        let (group, tail) = rest.split_at(n);
        let mut group: Vec<&Endpoint> = group.to_vec();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|e| u32::from(e.weight)).sum();
            let pick = if total == 0 {
                rng.random_range(0..group.len())
            } else {
                let draw = rng.random_range(0..total);
                let mut running = 0u32;
                group
                    .iter()
                    .position(|e| {
                        running += u32::from(e.weight);
                        running > draw
                    })
                    .unwrap_or(0)
            };
            out.push(group.remove(pick).clone());
        }
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::BTreeMap;

    fn ep(priority: u16, weight: u16, port: u16) -> Endpoint {
        Endpoint {
            priority,
            weight,
            target: format!("n{port}.mesh."),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn lower_priority_always_comes_first() {
        let eps = [ep(20, 100, 1), ep(10, 1, 2), ep(10, 0, 3), ep(30, 5, 4), ep(20, 0, 5)];
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let order = rfc2782_order(&eps, &mut rng);
            assert_eq!(order.len(), eps.len());
            let prios: Vec<u16> = order.iter().map(|e| e.priority).collect();
            assert!(prios.windows(2).all(|w| w[0] <= w[1]), "{prios:?}");
        }
    }

    #[test]
    fn weights_share_the_first_pick() {
        let eps = [ep(10, 60, 1), ep(10, 30, 2), ep(10, 10, 3), ep(10, 0, 4)];
        let mut rng = StdRng::seed_from_u64(11);
        let mut first: BTreeMap<u16, u32> = BTreeMap::new();
        let n = 20_000;
        for _ in 0..n {
            *first.entry(rfc2782_order(&eps, &mut rng)[0].addr.port()).or_default() += 1;
        }
        for (port, weight) in [(1, 0.6), (2, 0.3), (3, 0.1)] {
            let share = f64::from(first[&port]) / f64::from(n);
            assert!((share - weight).abs() < 0.015, "port {port}: {share}");
        }
        assert_eq!(first.get(&4), None, "weight 0 goes after the weighted records");
    }

    #[test]
    fn three_to_one_is_three_to_one() {
        let eps = [ep(10, 3, 1), ep(10, 1, 2)];
        let mut rng = StdRng::seed_from_u64(5);
        let n = 10_000;
        let a = (0..n)
            .filter(|_| rfc2782_order(&eps, &mut rng)[0].addr.port() == 1)
            .count();
        assert!((a as f64 / f64::from(n) - 0.75).abs() < 0.02, "{a}");
    }

    #[test]
    fn all_zero_weights_still_order_everyone() {
        let eps = [ep(1, 0, 1), ep(1, 0, 2), ep(1, 0, 3)];
        let mut rng = StdRng::seed_from_u64(3);
        let mut order = rfc2782_order(&eps, &mut rng);
        order.sort();
        assert_eq!(order, eps.to_vec());
        assert!(rfc2782_order(&[], &mut rng).is_empty());
    }
}
