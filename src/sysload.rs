//! Host CPU and memory use, for the load table (Linux `/proc`; zero where unavailable).

/// CPU use between two samples, and memory use now.
#[derive(Debug, Default)]
pub(crate) struct SysLoad {
    last: Option<(u64, u64)>,
}

impl SysLoad {
    /// `(cpu, mem)` in thousandths.
    pub fn sample(&mut self) -> (u16, u16) {
        (self.cpu(), mem())
    }

    fn cpu(&mut self) -> u16 {
        let Some((busy, total)) = cpu_times() else { return 0 };
        let out = match self.last {
            Some((b0, t0)) if total > t0 => ((busy.saturating_sub(b0)) * 1000 / (total - t0)).min(1000) as u16,
            _ => 0,
        };
        self.last = Some((busy, total));
        out
    }
}

fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    // idle + iowait are not busy.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

fn mem() -> u16 {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(t), Some(a)) if t > 0 => (1000 - (a.min(t) * 1000 / t)) as u16,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn readings_are_in_range() {
        let mut s = super::SysLoad::default();
        let (c, m) = s.sample();
        assert!(c <= 1000 && m <= 1000);
        let (c, _) = s.sample();
        assert!(c <= 1000);
    }
}
