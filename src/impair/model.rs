//! What happens to one datagram on an impaired link: dropped, delayed, duplicated, reordered,
//! or queued behind a bandwidth cap. Pure: the time and the rng are passed in, so every
//! decision is reproducible in a unit test.

#![deny(clippy::disallowed_methods)]

use std::time::Duration;

use rand::Rng;

/// The impairment of one direction of a link. The default is a perfect link.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairment {
    /// Fraction of datagrams dropped at random, `0.0..=1.0`.
    pub loss: f64,
    /// Fixed one-way delay added to every datagram.
    pub delay: Duration,
    /// Each datagram's delay varies uniformly by up to this much either way (never below 0).
    pub jitter: Duration,
    /// Fraction of datagrams held back by an extra [`Impairment::reorder_gap`], so later
    /// ones overtake them, `0.0..=1.0`.
    pub reorder: f64,
    /// How long a reordered datagram is held back beyond its normal delay.
    pub reorder_gap: Duration,
    /// Fraction of datagrams delivered twice, `0.0..=1.0`.
    pub duplicate: f64,
    /// Bandwidth cap in bytes per second; `None` is unlimited. Datagrams queue behind the
    /// cap and are tail-dropped once the queue holds more than [`Impairment::max_queue`].
    pub rate: Option<u64>,
    /// The longest a datagram may wait in the bandwidth queue before it is dropped instead.
    pub max_queue: Duration,
    /// Drop everything (the link is cut).
    pub blackhole: bool,
}

impl Impairment {
    /// A link that drops `loss` (0–1) of its datagrams.
    pub fn loss(loss: f64) -> Self {
        Impairment {
            loss,
            ..Self::default()
        }
    }

    /// A link that delays every datagram by `delay` ± `jitter`.
    pub fn delay(delay: Duration, jitter: Duration) -> Self {
        Impairment {
            delay,
            jitter,
            ..Self::default()
        }
    }

    /// A cut link.
    pub fn blackhole() -> Self {
        Impairment {
            blackhole: true,
            ..Self::default()
        }
    }

    /// Checks the fractions are probabilities.
    pub fn validate(&self) -> Result<(), String> {
        for (what, p) in [
            ("loss", self.loss),
            ("reorder", self.reorder),
            ("duplicate", self.duplicate),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{what} must be a fraction in 0..=1, not {p}"));
            }
        }
        if self.rate == Some(0) {
            return Err("rate must be at least 1 byte/s (leave it unset for no cap)".into());
        }
        Ok(())
    }
}

/// Why a datagram was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The link is blackholed.
    Blackhole,
    /// Random loss.
    Loss,
    /// The bandwidth queue was full.
    Queue,
}

/// The fate of one datagram.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// Not delivered.
    Dropped(DropReason),
    /// Delivered at these times (two for a duplicate), measured on the caller's clock.
    Deliver(Vec<Duration>),
}

/// One direction of an impaired link: the [`Impairment`] plus the bandwidth queue's state.
#[derive(Debug, Clone, Default)]
pub struct Link {
    imp: Impairment,
    /// When the bandwidth queue is next free (caller's clock).
    busy_until: Duration,
}

impl Link {
    /// A link with this impairment.
    pub fn new(imp: Impairment) -> Self {
        Link {
            imp,
            busy_until: Duration::ZERO,
        }
    }

    /// The current impairment.
    pub fn impairment(&self) -> Impairment {
        self.imp
    }

    /// Changes the impairment; datagrams already scheduled are not affected.
    pub fn set(&mut self, imp: Impairment) {
        self.imp = imp;
    }

    /// Decides the fate of a datagram of `len` bytes sent at `now`.
    pub fn on_datagram(&mut self, now: Duration, len: usize, rng: &mut impl Rng) -> Fate {
        let imp = self.imp;
        if imp.blackhole {
            return Fate::Dropped(DropReason::Blackhole);
        }
        if imp.loss > 0.0 && rng.random_bool(imp.loss.min(1.0)) {
            return Fate::Dropped(DropReason::Loss);
        }
        let mut depart = now;
        if let Some(rate) = imp.rate {
            let start = self.busy_until.max(now);
            if start - now > imp.max_queue {
                return Fate::Dropped(DropReason::Queue);
            }
            let serialization = Duration::from_secs_f64(len as f64 / rate.max(1) as f64);
            self.busy_until = start + serialization;
            depart = self.busy_until;
        }
        let mut at = depart + self.one_way(rng);
        if imp.reorder > 0.0 && rng.random_bool(imp.reorder.min(1.0)) {
            at += imp.reorder_gap;
        }
        let mut times = vec![at];
        if imp.duplicate > 0.0 && rng.random_bool(imp.duplicate.min(1.0)) {
            times.push(depart + self.one_way(rng));
        }
        Fate::Deliver(times)
    }

    fn one_way(&self, rng: &mut impl Rng) -> Duration {
        let (delay, jitter) = (self.imp.delay, self.imp.jitter);
        if jitter.is_zero() {
            return delay;
        }
        let j = rng.random_range(-jitter.as_secs_f64()..=jitter.as_secs_f64());
        Duration::from_secs_f64((delay.as_secs_f64() + j).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn run(imp: Impairment, n: usize) -> (usize, Vec<Duration>) {
        let mut link = Link::new(imp);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut dropped = 0;
        let mut delivered = Vec::new();
        for i in 0..n {
            match link.on_datagram(Duration::from_millis(i as u64), 1200, &mut rng) {
                Fate::Dropped(_) => dropped += 1,
                Fate::Deliver(t) => delivered.extend(t),
            }
        }
        (dropped, delivered)
    }

    #[test]
    fn a_perfect_link_delivers_everything_at_once() {
        let (dropped, times) = run(Impairment::default(), 100);
        assert_eq!(dropped, 0);
        assert_eq!(times, (0..100).map(Duration::from_millis).collect::<Vec<_>>());
    }

    #[test]
    fn loss_drops_about_the_asked_fraction() {
        for p in [0.05, 0.2] {
            let (dropped, _) = run(Impairment::loss(p), 20_000);
            let got = dropped as f64 / 20_000.0;
            assert!((got - p).abs() < 0.01, "asked {p}, dropped {got}");
        }
    }

    #[test]
    fn delay_and_jitter_stay_in_bounds_and_average_out() {
        let imp = Impairment::delay(Duration::from_millis(50), Duration::from_millis(20));
        let (_, times) = run(imp, 10_000);
        let extra: Vec<f64> = times
            .iter()
            .enumerate()
            .map(|(i, t)| t.as_secs_f64() - i as f64 / 1000.0)
            .collect();
        assert!(extra.iter().all(|e| (0.030 - 1e-9..=0.070 + 1e-9).contains(e)));
        let mean = extra.iter().sum::<f64>() / extra.len() as f64;
        assert!((mean - 0.050).abs() < 0.002, "mean one-way delay {mean}");
    }

    #[test]
    fn blackhole_drops_everything_and_lifting_it_restores_delivery() {
        let mut link = Link::new(Impairment::blackhole());
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(
            link.on_datagram(Duration::ZERO, 10, &mut rng),
            Fate::Dropped(DropReason::Blackhole)
        );
        link.set(Impairment::default());
        assert_eq!(
            link.on_datagram(Duration::ZERO, 10, &mut rng),
            Fate::Deliver(vec![Duration::ZERO])
        );
    }

    #[test]
    fn the_rate_cap_spaces_datagrams_and_tail_drops_past_the_queue() {
        // 1200-byte datagrams at 120 kB/s: 10 ms each. 20 sent at once, 50 ms of queue.
        let imp = Impairment {
            rate: Some(120_000),
            max_queue: Duration::from_millis(50),
            ..Impairment::default()
        };
        let mut link = Link::new(imp);
        let mut rng = SmallRng::seed_from_u64(1);
        let fates: Vec<Fate> = (0..20)
            .map(|_| link.on_datagram(Duration::ZERO, 1200, &mut rng))
            .collect();
        let delivered: Vec<Duration> = fates
            .iter()
            .filter_map(|f| match f {
                Fate::Deliver(t) => Some(t[0]),
                Fate::Dropped(_) => None,
            })
            .collect();
        // Starts at 0, 10, 20, 30, 40, 50 ms are within the queue bound; the rest are dropped.
        assert_eq!(delivered.len(), 6);
        for (i, t) in delivered.iter().enumerate() {
            assert_eq!(t.as_millis(), 10 * (i as u128 + 1));
        }
        assert!(fates[6..].iter().all(|f| *f == Fate::Dropped(DropReason::Queue)));
    }

    #[test]
    fn duplicates_and_reordering_happen_at_their_rates() {
        let imp = Impairment {
            duplicate: 0.1,
            reorder: 0.1,
            reorder_gap: Duration::from_millis(5),
            ..Impairment::default()
        };
        let (_, times) = run(imp, 10_000);
        let dups = times.len() - 10_000;
        assert!((800..1200).contains(&dups), "{dups} duplicates");
        let late = times.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(late > 500, "{late} datagrams overtaken");
    }

    #[test]
    fn fractions_outside_zero_to_one_are_refused() {
        assert!(Impairment::loss(1.5).validate().is_err());
        assert!(Impairment::loss(0.2).validate().is_ok());
    }
}
