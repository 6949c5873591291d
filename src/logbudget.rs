//! A token bucket for log lines: every rejected stream is worth an info line, but a flood of
//! bad streams must not become a flood of lines. Lines beyond the budget are counted, and the
//! next line that is let through says how many were held back. Pure: time is passed in.

#![deny(clippy::disallowed_methods)]

use std::time::Duration;

/// The budget: `per_sec` lines a second on average, bursts up to `burst`.
#[derive(Debug, Clone)]
pub(crate) struct LogBudget {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
    suppressed: u64,
}

impl LogBudget {
    /// A full bucket.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        LogBudget {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Duration::ZERO,
            suppressed: 0,
        }
    }

    /// At `now`: `Some(n)` if a line may be logged, `n` being the lines held back since the
    /// last one let through; `None` if this one must be held back.
    pub fn take(&mut self, now: Duration) -> Option<u64> {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_holds_back_then_reports_what_it_held_back() {
        let mut b = LogBudget::new(10, 5);
        let t0 = Duration::from_secs(100);
        let let_through = (0..100).filter(|_| b.take(t0).is_some()).count();
        assert_eq!(let_through, 5);
        // 100 ms later one token has come back; that line reports the 95 held back.
        assert_eq!(b.take(t0 + Duration::from_millis(100)), Some(95));
        assert_eq!(b.take(t0 + Duration::from_millis(100)), None);
    }

    #[test]
    fn a_steady_trickle_below_the_rate_is_never_held_back() {
        let mut b = LogBudget::new(10, 5);
        for i in 0..1000u64 {
            assert_eq!(b.take(Duration::from_millis(200 * i)), Some(0));
        }
    }

    #[test]
    fn a_flood_is_limited_to_the_rate() {
        let mut b = LogBudget::new(10, 20);
        // 10,000 lines over 10 s: at most the burst plus 10 a second get through.
        let through = (0..10_000u64)
            .filter(|i| b.take(Duration::from_millis(*i)).is_some())
            .count();
        assert!(through <= 20 + 100 + 1, "{through}");
        assert!(through >= 100, "{through}");
    }
}
