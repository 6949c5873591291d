//! A small authoritative DNS server for one zone, held in memory and changed at run time.
//!
//! `quicmesh demo` publishes its nodes' SRV records with it, and the tests use it as the real
//! DNS server discovery talks to (over real UDP and TCP sockets): records can be added and
//! removed while it runs, and faults (SERVFAIL, REFUSED, silence) switched on and off. For a
//! production zone use your DNS server (see `deploy/` for dnsmasq and Kubernetes).
//!
//! It answers SRV queries with the targets' A/AAAA records in the additional section, A and
//! AAAA queries, NODATA for names that exist with other types, NXDOMAIN for the rest of its
//! zone and REFUSED outside it. Messages are parsed and built by hickory-proto.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tracing::debug;

/// A fault the server can be told to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer every query with SERVFAIL.
    ServFail,
    /// Answer every query with REFUSED.
    Refused,
    /// Answer nothing (UDP queries are dropped, TCP connections closed): looks like a timeout.
    Silent,
}

/// One SRV record of the zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvEntry {
    /// Priority (lower first).
    pub priority: u16,
    /// Weight within a priority.
    pub weight: u16,
    /// Target port.
    pub port: u16,
    /// Target host name (fully qualified, lower case).
    pub target: String,
}

#[derive(Debug, Default)]
struct ZoneData {
    ttl: u32,
    no_glue: bool,
    fault: Option<Fault>,
    srv: BTreeMap<String, Vec<SrvEntry>>,
    hosts: BTreeMap<String, Vec<IpAddr>>,
}

/// The records of one zone; shared by the server's sockets and changed at any time.
#[derive(Debug)]
pub struct Zone {
    origin: String,
    data: Mutex<ZoneData>,
    queries: AtomicU64,
}

/// Lower case with a trailing dot: how the zone keys its names.
fn fqdn(name: &str) -> String {
    let mut s = name.to_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

impl Zone {
    /// An empty zone for `origin` (e.g. `mesh.test`) whose records carry `ttl` seconds.
    pub fn new(origin: &str, ttl: u32) -> Arc<Self> {
        Arc::new(Zone {
            origin: fqdn(origin),
            data: Mutex::new(ZoneData {
                ttl,
                ..ZoneData::default()
            }),
            queries: AtomicU64::new(0),
        })
    }

    fn data(&self) -> MutexGuard<'_, ZoneData> {
        self.data.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The zone's origin, fully qualified.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Publishes a node: an SRV record at `srv_name` pointing at `target`, and `target`'s
    /// address record. Names are relative to nothing: give them in full.
    pub fn add_srv(&self, srv_name: &str, priority: u16, weight: u16, target: &str, addr: SocketAddr) {
        let target = fqdn(target);
        let mut d = self.data();
        let entry = SrvEntry {
            priority,
            weight,
            port: addr.port(),
            target: target.clone(),
        };
        let records = d.srv.entry(fqdn(srv_name)).or_default();
        if !records.contains(&entry) {
            records.push(entry);
        }
        let ips = d.hosts.entry(target).or_default();
        if !ips.contains(&addr.ip()) {
            ips.push(addr.ip());
        }
    }

    /// Removes the SRV records at `srv_name` that point at `target` (its address records stay,
    /// as they would in a real zone edited by hand).
    pub fn remove_srv(&self, srv_name: &str, target: &str) {
        let target = fqdn(target);
        let mut d = self.data();
        if let Some(records) = d.srv.get_mut(&fqdn(srv_name)) {
            records.retain(|e| e.target != target);
        }
    }

    /// The SRV records at `srv_name`.
    pub fn srv(&self, srv_name: &str) -> Vec<SrvEntry> {
        self.data().srv.get(&fqdn(srv_name)).cloned().unwrap_or_default()
    }

    /// Removes a host's address records.
    pub fn remove_host(&self, host: &str) {
        self.data().hosts.remove(&fqdn(host));
    }

    /// Whether SRV answers carry the targets' addresses in their additional section (the
    /// default); without, resolvers must look each target up.
    pub fn set_glue(&self, on: bool) {
        self.data().no_glue = !on;
    }

    /// Sets the TTL of every record served from now on.
    pub fn set_ttl(&self, ttl: u32) {
        self.data().ttl = ttl;
    }

    /// Starts (or, with `None`, stops) simulating a fault.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.data().fault = fault;
    }

    /// Queries received so far (over UDP and TCP).
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// The answer to `request`, or `None` to stay silent.
    fn answer(&self, request: &Message) -> Option<Message> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let d = self.data();
        if d.fault == Some(Fault::Silent) {
            return None;
        }
        let mut resp = Message::response(request.metadata.id, request.metadata.op_code);
        resp.metadata.recursion_desired = request.metadata.recursion_desired;
        resp.add_queries(request.queries.iter().cloned());
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            resp.set_edns(edns);
        }
        let code = match (d.fault, request.metadata.op_code, request.queries.as_slice()) {
            (Some(Fault::ServFail), ..) => ResponseCode::ServFail,
            (Some(Fault::Refused), ..) => ResponseCode::Refused,
            (_, OpCode::Query, [q]) => {
                let qname = q.name().to_lowercase().to_ascii();
                let qname = fqdn(&qname);
                let origin = &self.origin;
                if !(qname == *origin || qname.ends_with(&format!(".{origin}"))) {
                    ResponseCode::Refused
                } else {
                    resp.metadata.authoritative = true;
                    self.fill(&d, &qname, q.query_type(), &mut resp)
                }
            }
            (_, OpCode::Query, _) => ResponseCode::FormErr,
            _ => ResponseCode::NotImp,
        };
        resp.metadata.response_code = code;
        Some(resp)
    }

    fn fill(&self, d: &ZoneData, qname: &str, qtype: RecordType, resp: &mut Message) -> ResponseCode {
        let Ok(owner) = Name::from_ascii(qname) else {
            return ResponseCode::FormErr;
        };
        let host_records = |name: &str, owner: &Name, want: Option<RecordType>| -> Vec<Record> {
            d.hosts
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|ip| {
                    let rdata = match ip {
                        IpAddr::V4(v4) => RData::A(A(*v4)),
                        IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                    };
                    let keep = want.is_none_or(|t| rdata.record_type() == t);
                    keep.then(|| Record::from_rdata(owner.clone(), d.ttl, rdata))
                })
                .collect()
        };
        match qtype {
            RecordType::SRV => {
                for e in d.srv.get(qname).into_iter().flatten() {
                    let Ok(target) = Name::from_ascii(&e.target) else {
                        continue;
                    };
                    let srv = SRV::new(e.priority, e.weight, e.port, target.clone());
                    resp.add_answer(Record::from_rdata(owner.clone(), d.ttl, RData::SRV(srv)));
                    if !d.no_glue {
                        resp.add_additionals(host_records(&e.target, &target, None));
                    }
                }
            }
            RecordType::A | RecordType::AAAA => {
                resp.add_answers(host_records(qname, &owner, Some(qtype)));
            }
            _ => {}
        }
        let exists = d.srv.get(qname).is_some_and(|v| !v.is_empty()) || d.hosts.contains_key(qname);
        if resp.answers.is_empty() && !exists {
            ResponseCode::NXDomain
        } else {
            ResponseCode::NoError
        }
    }

    /// Parses a query and encodes the answer; `max` is the transport's size limit.
    fn handle(&self, packet: &[u8], max: Option<usize>) -> Option<Vec<u8>> {
        let request = match Message::from_vec(packet) {
            Ok(m) if m.metadata.message_type == MessageType::Query => m,
            Ok(_) => return None,
            Err(e) => {
                debug!(error = %e, "undecodable DNS query");
                // The id is the first two bytes of any message; answer FORMERR when we have it.
                let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
        };
        let resp = self.answer(&request)?;
        let bytes = resp.to_vec().ok()?;
        let limit = match max {
            Some(_) if request.edns.is_some() => Some(usize::from(request.max_payload()).clamp(512, 1232)),
            other => other,
        };
        match limit {
            Some(l) if bytes.len() > l => resp.truncate().to_vec().ok(),
            _ => Some(bytes),
        }
    }
}

/// A running [`Zone`] server on a UDP and a TCP socket of the same address.
#[derive(Debug)]
pub struct ZoneServer {
    addr: SocketAddr,
    zone: Arc<Zone>,
    tasks: Vec<JoinHandle<()>>,
}

impl ZoneServer {
    /// Serves `zone` on `bind` (UDP and TCP; with port 0, the same free port for both).
    pub async fn start(bind: SocketAddr, zone: Arc<Zone>) -> std::io::Result<Self> {
        let mut last_err = None;
        for _ in 0..20 {
            let udp = UdpSocket::bind(bind).await?;
            let addr = udp.local_addr()?;
            match TcpListener::bind(addr).await {
                Ok(tcp) => {
                    let tasks = vec![
                        tokio::spawn(serve_udp(udp, zone.clone())),
                        tokio::spawn(serve_tcp(tcp, zone.clone())),
                    ];
                    return Ok(ZoneServer { addr, zone, tasks });
                }
                // Port 0 gave a UDP port whose TCP twin is taken; draw again.
                Err(e) if bind.port() == 0 => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("no free port for UDP and TCP")))
    }

    /// The address it serves on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The zone served.
    pub fn zone(&self) -> &Arc<Zone> {
        &self.zone
    }

    /// Stops serving and frees the sockets (a server that is down, not one that is silent).
    pub async fn stop(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for ZoneServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Zone>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            // ICMP errors from earlier replies surface here on some systems; keep serving.
            continue;
        };
        if let Some(reply) = zone.handle(&buf[..n], Some(512)) {
            let _ = socket.send_to(&reply, from).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Zone>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_tcp_conn(stream, zone.clone()));
    }
}

async fn serve_tcp_conn(mut stream: TcpStream, zone: Arc<Zone>) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut msg).await.is_err() {
            return;
        }
        let Some(reply) = zone.handle(&msg, None) else { return };
        let Ok(n) = u16::try_from(reply.len()) else { return };
        if stream.write_all(&n.to_be_bytes()).await.is_err() || stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}
