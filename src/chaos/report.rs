//! The soak's findings: faults by kind, calls by outcome and class, latency during and after
//! faults, convergence, resources before and after, and every broken promise.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::ledger::{self, Call, Outcome, Usage, Window};
use super::load::{PROTOCOL_ERROR, TOO_LARGE};
use super::nemesis::Log;
use super::schedule::Fault;
use super::ChaosOptions;

/// What [`Report::build`] reads.
pub(super) struct Inputs<'a> {
    pub opts: &'a ChaosOptions,
    pub planned: Vec<Fault>,
    pub log: Log,
    pub calls: Vec<Call>,
    pub streams: Vec<Call>,
    pub latencies: Vec<(Duration, Duration)>,
    pub faults_over: Duration,
    pub converged_at: Duration,
    pub convergence: Result<Duration, String>,
    pub names: Vec<String>,
    pub before: Vec<Usage>,
    pub after: Vec<Option<Usage>>,
    pub restarted: Vec<bool>,
    pub resurrections: Vec<String>,
    pub stuck: Vec<String>,
}

/// Calls or streams by outcome.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Came back whole.
    pub ok: usize,
    /// Failed, by class.
    pub failed: BTreeMap<String, usize>,
    /// Failed with a fault on their path at the time.
    pub explained: usize,
    /// Failed with no fault on their path: each is a violation.
    pub unexplained: usize,
    /// Clean but short replies from a node whose backend was stopped during the call.
    pub short_by_backend: usize,
}

/// The soak's findings.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed (`--seed` replays the plan).
    pub seed: u64,
    /// How long faults were injected.
    pub duration: Duration,
    /// Node processes.
    pub nodes: usize,
    /// Clients.
    pub clients: usize,
    /// Faults by kind: (planned, carried out).
    pub faults: BTreeMap<&'static str, (usize, usize)>,
    /// Faults that could not be carried out as planned: kind, and why.
    pub skipped: Vec<(&'static str, String)>,
    /// Garbage streams sent (each answered `BadHeader`).
    pub garbage_streams: u64,
    /// Request/response calls.
    pub calls: Tally,
    /// Long streams.
    pub streams: Tally,
    /// p50 and p99 of successful calls started while a fault was in force.
    pub during: (Option<Duration>, Option<Duration>),
    /// The same after the views agreed again.
    pub after: (Option<Duration>, Option<Duration>),
    /// From the end of the last fault until every node listed every node Alive.
    pub convergence: Option<Duration>,
    /// Per node: name, restarted, usage at rest before (the mesh's largest for a restarted
    /// node) and after.
    pub usage: Vec<(String, bool, Usage, Usage)>,
    /// Every broken promise, one line each; empty when the soak passed.
    pub violations: Vec<String>,
    /// Where the configs and node logs were kept, if they were.
    pub logs: Option<PathBuf>,
}

fn tally(
    calls: &[Call],
    windows: &[Window],
    settle: Duration,
    names: &[String],
    what: &str,
    violations: &mut Vec<String>,
) -> Tally {
    let mut t = Tally::default();
    for c in calls {
        match &c.outcome {
            Outcome::Ok => t.ok += 1,
            Outcome::Failed(class) => {
                *t.failed.entry(class.clone()).or_default() += 1;
                if class.contains(PROTOCOL_ERROR) || class.contains(TOO_LARGE) {
                    violations.push(format!("a {what} failed with {class} at {:.1}s", c.start.as_secs_f64()));
                }
                if ledger::explaining(c, windows, settle).is_empty() {
                    t.unexplained += 1;
                    if t.unexplained <= 10 {
                        violations.push(format!(
                            "a {what} failed with no fault on its path: {class}, {:.2}s–{:.2}s, client {}, entry {:?}, served by {:?}",
                            c.start.as_secs_f64(),
                            c.end.as_secs_f64(),
                            c.client,
                            c.entries,
                            c.replicas
                        ));
                    }
                } else {
                    t.explained += 1;
                }
            }
            Outcome::Corrupt(how) => violations.push(format!("a {what} came back corrupted: {how}")),
            Outcome::Short { served_by, got, want } => {
                if ledger::short_reply_explained(c, served_by, windows, names) {
                    t.short_by_backend += 1;
                } else {
                    violations.push(format!(
                        "a {what} came back short with no backend stopping: {got} of {want} bytes from {served_by}, {:.2}s–{:.2}s",
                        c.start.as_secs_f64(),
                        c.end.as_secs_f64()
                    ));
                }
            }
            Outcome::Hung(took) => violations.push(format!(
                "a {what} took {took:?}, past its deadline of {:?}, at {:.1}s",
                super::load::CALL_TIMEOUT,
                c.start.as_secs_f64()
            )),
        }
    }
    if t.unexplained > 10 {
        violations.push(format!(
            "... {} more {what}s failed with no fault on their path",
            t.unexplained - 10
        ));
    }
    t
}

fn p50_p99(mut xs: Vec<Duration>) -> (Option<Duration>, Option<Duration>) {
    (ledger::quantile(&mut xs, 0.5), ledger::quantile(&mut xs, 0.99))
}

impl Report {
    pub(super) fn build(x: Inputs<'_>) -> Report {
        let mut violations = x.log.violations;
        let windows = x.log.windows;
        let mut faults: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
        for f in &x.planned {
            faults.entry(f.kind.label()).or_default().0 += 1;
        }
        for w in &windows {
            faults.entry(w.kind.label()).or_default().1 += 1;
        }
        for (kind, _) in &x.log.skipped {
            if let Some(f) = faults.get_mut(kind) {
                f.1 = f.1.saturating_sub(1);
            }
        }
        let settle = x.opts.settle;
        let calls = tally(&x.calls, &windows, settle, &x.names, "call", &mut violations);
        let streams = tally(&x.streams, &windows, settle, &x.names, "stream", &mut violations);
        let faulted = |t: Duration| windows.iter().any(|w| w.start <= t && t <= w.end);
        let during = p50_p99(x.latencies.iter().filter(|(s, _)| faulted(*s)).map(|l| l.1).collect());
        let after = p50_p99(
            x.latencies
                .iter()
                .filter(|(s, _)| *s > x.converged_at)
                .map(|l| l.1)
                .collect(),
        );
        let convergence = match x.convergence {
            Ok(_) => Some(x.converged_at.saturating_sub(x.faults_over)),
            Err(e) => {
                violations.push(format!(
                    "the views did not agree within {:?} of the last fault: {e}",
                    x.opts.converge_within
                ));
                None
            }
        };
        let mut usage = Vec::new();
        for (i, name) in x.names.iter().enumerate() {
            let b = x.before[i];
            let Some(a) = x.after[i] else {
                violations.push(format!("{name}'s resources could not be read after the faults"));
                continue;
            };
            if let Err(e) = ledger::settled(&b, &a) {
                violations.push(format!("{name} did not come back down after the faults: {e}"));
            }
            usage.push((name.clone(), x.restarted[i], b, a));
        }
        violations.extend(x.resurrections);
        violations.extend(x.stuck);
        if calls.ok == 0 {
            violations.push("no call succeeded at all".into());
        }
        Report {
            seed: x.opts.seed,
            duration: x.opts.shape.duration,
            nodes: x.opts.shape.nodes,
            clients: x.opts.shape.clients,
            faults,
            skipped: x.log.skipped,
            garbage_streams: x.log.garbage_streams,
            calls,
            streams,
            during,
            after,
            convergence,
            usage,
            violations,
            logs: None,
        }
    }

    /// Whether every promise held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
}

fn median(mut xs: Vec<u64>) -> u64 {
    xs.sort_unstable();
    xs.get(xs.len() / 2).copied().unwrap_or(0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chaos soak: seed {}, {} s of faults, {} node processes, {} clients",
            self.seed,
            self.duration.as_secs(),
            self.nodes,
            self.clients
        )?;
        writeln!(f, "\n| fault | planned | carried out |\n|---|---|---|")?;
        for (kind, (p, c)) in &self.faults {
            writeln!(f, "| {kind} | {p} | {c} |")?;
        }
        writeln!(
            f,
            "garbage streams answered BadHeader: {}; faults skipped: {}",
            self.garbage_streams,
            self.skipped.len()
        )?;
        writeln!(
            f,
            "\n| traffic | ok | failed (fault on path) | failed (no fault: violation) | short: backend stopped mid-call |\n|---|---|---|---|---|"
        )?;
        for (what, t) in [("request/response calls", &self.calls), ("long streams", &self.streams)] {
            writeln!(
                f,
                "| {what} | {} | {} | {} | {} |",
                t.ok, t.explained, t.unexplained, t.short_by_backend
            )?;
        }
        writeln!(f)?;
        for (what, t) in [("calls", &self.calls), ("streams", &self.streams)] {
            if !t.failed.is_empty() {
                let by: Vec<String> = t.failed.iter().map(|(c, n)| format!("{c} {n}")).collect();
                writeln!(f, "failed {what} by class: {}", by.join(", "))?;
            }
        }
        writeln!(
            f,
            "\nlatency of successful calls: during faults p50 {} p99 {}; after p50 {} p99 {}",
            ms(self.during.0),
            ms(self.during.1),
            ms(self.after.0),
            ms(self.after.1)
        )?;
        match self.convergence {
            Some(c) => writeln!(f, "views agreed {:.2} s after the last fault ended", c.as_secs_f64())?,
            None => writeln!(f, "views did NOT agree")?,
        }
        let col = |g: &dyn Fn(&Usage) -> u64, before: bool| {
            median(
                self.usage
                    .iter()
                    .map(|(_, _, b, a)| g(if before { b } else { a }))
                    .collect(),
            )
        };
        let max = |g: &dyn Fn(&Usage) -> u64| self.usage.iter().map(|(_, _, _, a)| g(a)).max().unwrap_or(0);
        writeln!(f, "\n| per node (median; max after) | before | after |\n|---|---|---|")?;
        for (what, g) in [
            ("RSS KiB", &(|u: &Usage| u.rss_kib) as &dyn Fn(&Usage) -> u64),
            ("tokio tasks", &|u: &Usage| u.tasks),
            ("file descriptors", &|u: &Usage| u.fds),
            ("connections", &|u: &Usage| u.conns),
        ] {
            writeln!(f, "| {what} | {} | {} (max {}) |", col(g, true), col(g, false), max(g))?;
        }
        let restarted = self.usage.iter().filter(|u| u.1).count();
        writeln!(
            f,
            "\n({restarted} of {} nodes were restarted; they are judged against the mesh's largest figures before)",
            self.nodes
        )?;
        if self.violations.is_empty() {
            writeln!(f, "\nevery invariant held")?;
        } else {
            writeln!(f, "\n{} VIOLATIONS:", self.violations.len())?;
            for v in &self.violations {
                writeln!(f, "- {v}")?;
            }
        }
        if let Some(d) = &self.logs {
            writeln!(f, "node configs and logs: {}", d.display())?;
        }
        write!(f, "replay: --seed {}", self.seed)
    }
}
