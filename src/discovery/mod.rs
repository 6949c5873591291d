//! Finding nodes through DNS SRV records.
//!
//! `discovery = ["srv:_quicmesh._udp.mesh.example"]` in a node's or client's configuration
//! names SRV records to look up (with [hickory-resolver], through `[dns]` name servers or the
//! system's). Each record's target and port is a node's address. Nodes dial every address
//! found (an address is only a hint: the certificate on the other end says who it is);
//! clients pick their entry node in RFC 2782 order (priority, then weight).
//!
//! The pure parts ([`Watch`], [`rfc2782_order`]) hold the schedule and the last good answer:
//! names are looked up again when their TTL runs out (within `[dns] min_refresh` and
//! `max_refresh`), failures are retried with backoff, and the last good answer is served
//! while DNS is down. [`ZoneServer`] is a small authoritative server for the demo and tests.
//!
//! [hickory-resolver]: https://docs.rs/hickory-resolver

mod driver;
mod name;
mod order;
mod resolve;
mod settings;
mod watch;
mod zone;

pub use driver::Discovery;
pub use name::{SrvName, SrvNameError};
pub use order::{rfc2782_order, Endpoint};
pub use resolve::{Answer, DiscoveryError, LookupError, SrvResolver};
pub use settings::{DnsConfig, DnsTransport, NameServer};
pub use watch::{Diff, Step, Watch, WatchStatus};
pub use zone::{Fault, SrvEntry, Zone, ZoneServer};
