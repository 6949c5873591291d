//! Link impairment for tests and experiments: a userspace UDP proxy that drops, delays,
//! jitters, reorders, duplicates, rate-limits or blackholes datagrams (there is no `tc netem`
//! on every machine, and a proxy needs no privileges).
//!
//! [`Link`] is the pure decision core; [`UdpProxy`] is the tokio layer that applies it.
//! `cargo run --example impair -- --help` runs one from the command line.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use quicmesh::impair::{Impairment, UdpProxy};
//! let proxy = UdpProxy::start("127.0.0.1:0".parse().unwrap(), "127.0.0.1:7400".parse().unwrap()).await?;
//! proxy.set_both(Impairment::loss(0.05));
//! // point a node's peer (or a client's entry) at proxy.local_addr()
//! # Ok(()) }
//! ```

mod model;
mod proxy;

pub use model::{DropReason, Fate, Impairment, Link};
pub use proxy::{Direction, ProxyStats, UdpProxy};
