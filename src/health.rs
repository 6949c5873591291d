//! Active health checks of a service's backend, with HAProxy's meanings: a passing backend is
//! marked critical after `fall` failed checks in a row, a critical one passing again after
//! `rise` passed checks in a row. Pure: the driver probes and feeds the results in.
//!
//! A backend starts passing, so a node serves at once; a dead backend is critical after
//! `fall` intervals.

#![deny(clippy::disallowed_methods)]

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a backend is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// `"tcp"`: a TCP connect succeeds. `"http"`: `GET path` answers 2xx or 3xx.
    pub kind: CheckKind,
    /// The path of an `http` check. Default `"/"`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Time between checks. Default `"2s"`.
    #[serde(default = "default_interval", with = "crate::config::duration_str")]
    pub interval: Duration,
    /// A check not done within this fails. Default `"1s"`.
    #[serde(default = "default_timeout", with = "crate::config::duration_str")]
    pub timeout: Duration,
    /// Passed checks in a row that bring a critical backend back. Default 2.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failed checks in a row that make a passing backend critical. Default 3.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

/// The kind of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// Connect.
    Tcp,
    /// GET a path.
    Http,
}

fn default_path() -> String {
    "/".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

impl CheckConfig {
    /// Checks the values; `key` is where the check is configured.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        if self.interval < Duration::from_millis(10) {
            return Err(format!("{key}.interval: at least 10ms"));
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return Err(format!(
                "{key}.timeout: more than 0 and at most interval ({:?})",
                self.interval
            ));
        }
        if self.rise == 0 || self.fall == 0 {
            return Err(format!("{key}.rise and {key}.fall: at least 1"));
        }
        if self.kind == CheckKind::Http && !self.path.starts_with('/') {
            return Err(format!("{key}.path: {:?} must start with '/'", self.path));
        }
        Ok(())
    }
}

/// A backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Serving: offered to the mesh.
    Passing,
    /// Failing its checks: not offered, no stream is sent to it.
    Critical,
}

/// The rise/fall state machine of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checker {
    rise: u32,
    fall: u32,
    health: Health,
    /// Results in a row that disagree with `health`.
    streak: u32,
    /// Changes of health so far.
    pub transitions: u64,
}

impl Checker {
    /// A passing backend with the thresholds of `cfg`.
    pub fn new(cfg: &CheckConfig) -> Self {
        Checker {
            rise: cfg.rise,
            fall: cfg.fall,
            health: Health::Passing,
            streak: 0,
            transitions: 0,
        }
    }

    /// The backend's health now.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Takes one check's result; returns the new health if it changed.
    pub fn observe(&mut self, passed: bool) -> Option<Health> {
        let agrees = passed == (self.health == Health::Passing);
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = match self.health {
            Health::Passing => self.fall,
            Health::Critical => self.rise,
        };
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.transitions += 1;
        self.health = match self.health {
            Health::Passing => Health::Critical,
            Health::Critical => Health::Passing,
        };
        Some(self.health)
    }
}

/// Whether an HTTP status line (`HTTP/1.1 204 No Content`) is a pass: 2xx or 3xx.
pub fn http_passes(status_line: &str) -> bool {
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| (200..400).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rise: u32, fall: u32) -> CheckConfig {
        CheckConfig {
            kind: CheckKind::Tcp,
            path: "/".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise,
            fall,
        }
    }

    #[test]
    fn fall_failures_in_a_row_make_it_critical_and_rise_passes_bring_it_back() {
        let mut c = Checker::new(&cfg(2, 3));
        assert_eq!(c.health(), Health::Passing);
        // Two failures, then a pass: the streak resets.
        assert_eq!(
            [c.observe(false), c.observe(false), c.observe(true)],
            [None, None, None]
        );
        assert_eq!([c.observe(false), c.observe(false)], [None, None]);
        assert_eq!(c.observe(false), Some(Health::Critical));
        assert_eq!(c.observe(false), None);
        assert_eq!([c.observe(true), c.observe(false), c.observe(true)], [None, None, None]);
        assert_eq!(c.observe(true), Some(Health::Passing));
        assert_eq!(c.transitions, 2);
    }

    #[test]
    fn http_status_and_config_checks() {
        assert!(http_passes("HTTP/1.1 200 OK") && http_passes("HTTP/1.0 302 Found"));
        assert!(!http_passes("HTTP/1.1 500 Oops") && !http_passes("garbage"));
        assert!(cfg(1, 1).validate("services.a.check").is_ok());
        assert!(cfg(0, 1).validate("k").unwrap_err().contains("k.rise"));
        let mut slow = cfg(1, 1);
        slow.timeout = Duration::from_secs(2);
        assert!(slow.validate("k").unwrap_err().contains("k.timeout"));
        let http: CheckConfig = toml::from_str("kind = \"http\"\npath = \"/healthz\"\n").unwrap();
        assert_eq!((http.interval, http.rise, http.fall), (Duration::from_secs(2), 2, 3));
        assert!(toml::from_str::<CheckConfig>("kind = \"icmp\"\n").is_err());
    }
}
