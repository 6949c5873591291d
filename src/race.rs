//! Racing connection attempts, happy-eyeballs style (RFC 8305 §5): start the first
//! candidate; start the next when the stagger passes with no winner, or at once when an
//! attempt fails; keep the first that succeeds and drop the rest.
//!
//! A client whose first entry node crashed but is still in DNS then pays the stagger, not the
//! whole connect timeout, while a healthy first entry is still the one used (it answers
//! within a round trip, long before the stagger).

use std::future::Future;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};

/// How long an entry node's handshake gets before the next entry is tried alongside it.
/// RFC 8305 recommends 250 ms; a handshake on a LAN or in a region takes a few.
pub const ENTRY_STAGGER: Duration = Duration::from_millis(250);

/// Runs `attempt` over `candidates` in order, staggered by `stagger`, and returns the first
/// success with its candidate; or, if every attempt failed, each candidate's error in the
/// order they failed. Attempts still running when one succeeds are dropped (cancelled).
pub async fn race<C, T, E, F, Fut>(candidates: Vec<C>, stagger: Duration, mut attempt: F) -> Result<(C, T), Vec<(C, E)>>
where
    C: Clone,
    F: FnMut(C) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut waiting = candidates.into_iter();
    let mut running = FuturesUnordered::new();
    let mut failures = Vec::new();
    let mut start = |c: C, running: &mut FuturesUnordered<_>| {
        let fut = attempt(c.clone());
        running.push(async move { (c, fut.await) });
    };
    loop {
        if running.is_empty() {
            match waiting.next() {
                Some(c) => start(c, &mut running),
                None => return Err(failures),
            }
        }
        let more = !waiting.as_slice().is_empty();
        tokio::select! {
            Some((c, result)) = running.next() => match result {
                Ok(t) => return Ok((c, t)),
                Err(e) => {
                    failures.push((c, e));
                    // A fast failure (refused, unresolvable) moves on without waiting.
                    if let Some(c) = waiting.next() {
                        start(c, &mut running);
                    }
                }
            },
            () = tokio::time::sleep(stagger), if more => {
                if let Some(c) = waiting.next() {
                    start(c, &mut running);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::Instant;

    use super::*;

    /// An attempt that succeeds or fails after `after`, or never answers.
    #[derive(Clone, Copy, Debug)]
    enum Plan {
        Ok(u64),
        Fail(u64),
        Silent,
    }

    async fn attempt(plan: Plan) -> Result<&'static str, &'static str> {
        match plan {
            Plan::Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok("up")
            }
            Plan::Fail(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Err("refused")
            }
            Plan::Silent => std::future::pending().await,
        }
    }

    /// Runs a race on paused time; returns the index of the winner and the virtual time taken.
    async fn run(plans: &[Plan]) -> (Result<usize, Vec<usize>>, Duration, usize) {
        let started = AtomicUsize::new(0);
        let t0 = Instant::now();
        let list: Vec<(usize, Plan)> = plans.iter().copied().enumerate().collect();
        let r = race(list, ENTRY_STAGGER, |(_, p)| {
            started.fetch_add(1, Ordering::Relaxed);
            attempt(p)
        })
        .await;
        let took = Instant::now().duration_since(t0);
        let r = r
            .map(|((i, _), _)| i)
            .map_err(|f| f.into_iter().map(|((i, _), _)| i).collect());
        (r, took, started.load(Ordering::Relaxed))
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_first_candidate_costs_the_stagger_not_its_timeout() {
        let (r, took, started) = run(&[Plan::Silent, Plan::Ok(3)]).await;
        assert_eq!(r, Ok(1));
        assert_eq!(took, ENTRY_STAGGER + Duration::from_millis(3));
        assert_eq!(started, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_first_candidate_wins_alone() {
        let (r, took, started) = run(&[Plan::Ok(2), Plan::Ok(1), Plan::Ok(1)]).await;
        assert_eq!(r, Ok(0));
        assert_eq!(took, Duration::from_millis(2));
        assert_eq!(started, 1, "the others were never dialled");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_failure_moves_on_at_once() {
        let (r, took, _) = run(&[Plan::Fail(1), Plan::Fail(2), Plan::Ok(3)]).await;
        assert_eq!(r, Ok(2));
        assert_eq!(took, Duration::from_millis(6));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_candidate_still_wins_if_it_answers_first() {
        // The first answers at 300 ms; the second, started at 250 ms, would take 100 more.
        let (r, took, started) = run(&[Plan::Ok(300), Plan::Ok(100)]).await;
        assert_eq!(r, Ok(0));
        assert_eq!(took, Duration::from_millis(300));
        assert_eq!(started, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn when_all_fail_every_error_is_returned_in_the_order_they_failed() {
        let (r, took, _) = run(&[Plan::Fail(5), Plan::Fail(1)]).await;
        assert_eq!((r, took), (Err(vec![0, 1]), Duration::from_millis(6)));
        // The second starts at the stagger and fails before the first does.
        let (r, took, _) = run(&[Plan::Fail(300), Plan::Fail(10)]).await;
        assert_eq!((r, took), (Err(vec![1, 0]), Duration::from_millis(300)));
    }
}
