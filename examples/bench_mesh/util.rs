//! Helpers shared by the sections: certificates, statistics, ports and processes.

use std::path::{Path, PathBuf};

use quicmesh::{IssueOptions, MeshCa, Role, TlsPaths};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A throwaway mesh CA in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: MeshCa,
}

impl Pki {
    pub fn new() -> Result<Self, Error> {
        let dir = tempfile::tempdir()?;
        let ca = MeshCa::generate("bench.quicmesh", 2)?;
        ca.write(dir.path(), false)?;
        Ok(Pki { dir, ca })
    }

    pub fn tls(&self, role: Role, name: &str) -> Result<TlsPaths, Error> {
        self.tls_with(IssueOptions::new(role, name))
    }

    /// A certificate with extra options (DNS names for TLS over TCP, say).
    pub fn tls_with(&self, opts: IssueOptions) -> Result<TlsPaths, Error> {
        let (role, name) = (opts.role, opts.name.clone());
        let files = self.ca.issue(&opts)?.write(self.dir.path(), role, &name, true)?;
        Ok(TlsPaths::new(self.dir.path().join("ca.crt"), files.cert, files.key))
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Percentiles of latency samples (µs) and the request rate.
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub rps: f64,
}

impl Latency {
    /// From unsorted samples in µs taken over `secs` seconds.
    pub fn from_samples(mut all: Vec<f64>, secs: f64) -> Result<Self, Error> {
        if all.is_empty() {
            return Err("no samples".into());
        }
        all.sort_by(f64::total_cmp);
        let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        Ok(Latency {
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            rps: all.len() as f64 / secs,
        })
    }
}

pub fn free_tcp_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn rss_of(pid: u32) -> Result<u64, Error> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = statm.split_whitespace().nth(1).ok_or("statm")?.parse()?;
    Ok(pages * 4096)
}

/// Resident bytes of quinn's receive buffer in a node process. It is one allocation per
/// endpoint of `max_udp_payload` x 64 (GRO segments) x 32 (datagrams per `recvmmsg`), zeroed
/// lazily, whose pages become resident as bursts of datagrams arrive. It belongs to the
/// endpoint, not to a connection, but a burst of handshakes touches more of it; the
/// per-connection figures show it apart. Found in `/proc/PID/smaps` by its size.
pub fn recv_buffer_rss(pid: u32, max_udp_payload: u16) -> Result<u64, Error> {
    let kib = u64::from(max_udp_payload) * 64 * 32 / 1024;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (mut size, mut rss) = (0u64, 0u64);
    let field = |line: &str, name: &str| -> Option<u64> {
        line.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse().ok()
    };
    for line in smaps.lines() {
        if let Some(v) = field(line, "Size:") {
            size = v;
        } else if let Some(v) = field(line, "Rss:") {
            // The allocation plus malloc's header, rounded up to pages.
            if (kib..=kib + 8).contains(&size) {
                rss += v;
            }
        }
    }
    Ok(rss * 1024)
}

/// CPU time of `pid` so far (user + system), in seconds.
pub fn cpu_secs(pid: u32) -> Result<f64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("/proc/PID/stat without a command")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| -> Result<u64, Error> { Ok(f.get(i).ok_or("/proc/PID/stat too short")?.parse()?) };
    // Clock ticks of 1/100 s (USER_HZ on Linux).
    Ok((get(11)? + get(12)?) as f64 / 100.0)
}

/// The `quicmesh` binary next to this example.
pub fn node_binary() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("quicmesh"))
        .ok_or("no binary dir")?;
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("{} not built; run cargo build --release --bin quicmesh", bin.display()).into())
    }
}
