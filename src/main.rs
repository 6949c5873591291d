//! The `quicmesh` command line.
#![allow(clippy::disallowed_methods)] // tests and the CLI may read the clock; see clippy.toml

mod demo;
mod node_flags;
mod services_cmd;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use demo::DemoOptions;
use node_flags::{node_config, NodeArgs};
use quicmesh::config::parse_duration;
use quicmesh::{issue_leaf, CaFiles, CallOptions, Client, ClientConfig, IssueOptions, MeshCa, Node, Role, TlsPaths};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "quicmesh", version, about = "A service mesh on QUIC with mTLS identities")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: text, or json (one object per line, for log shippers).
    /// The level filter is RUST_LOG (default: info for `node`, warn otherwise).
    #[arg(long, global = true, env = "QUICMESH_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Threads that do the work (default: 1 for `forward`, one per CPU otherwise). With 1
    /// everything runs on one thread and no hand-off between threads sits on a request's path:
    /// on a host whose cores are busy with other work, a node is faster so
    /// (docs/benchmarks.md, the sidecar path).
    #[arg(long, global = true, env = "QUICMESH_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
}

#[derive(Subcommand)]
enum Command {
    /// Make the mesh CA and issue node and client certificates.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Run a node.
    Node(Box<NodeArgs>),
    /// Call a service once: stdin is the request, stdout the reply.
    Call(CallArgs),
    /// Forward local TCP connections to a mesh service.
    Forward(ForwardArgs),
    /// Print a node's view of the mesh: members, status, incarnation, services, load, RTT.
    Status(StatusArgs),
    /// Run a local 3-node mesh with certificates and live traffic, and print what happened.
    Demo(DemoArgs),
    /// Register, renew, deregister or list a node's services at run time (admin listener).
    #[command(subcommand)]
    Services(services_cmd::ServicesCmd),
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Refresh every SECS seconds (default 2) until Ctrl-C.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<f64>,
    /// Read the node's admin HTTP `/status` at HOST:PORT instead of asking through the mesh
    /// (no client certificate needed; the admin port is usually loopback-only). This is the
    /// default, at 127.0.0.1:7480 (a node's default `admin.listen`), when no --entry,
    /// --discovery or --client-config says where the mesh is.
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<String>,
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Make a new CA (`ca.crt`, `ca.key`) for a trust domain.
    Init {
        /// The trust domain, e.g. mesh.example.
        #[arg(long)]
        trust_domain: String,
        /// Directory to write into.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate (`node-NAME.crt`, `node-NAME.key`).
    Node {
        /// Node name, [a-z0-9-]{1,63}.
        name: String,
        #[command(flatten)]
        common: IssueArgs,
        /// DNS names for the certificate (repeatable). Default: localhost.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// IP addresses for the certificate (repeatable). Default: 127.0.0.1.
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
    },
    /// Issue a client certificate (`client-NAME.crt`, `client-NAME.key`).
    Client {
        /// Client name, [a-z0-9-]{1,63}.
        name: String,
        #[command(flatten)]
        common: IssueArgs,
    },
    /// Write a certificate revocation list naming the given certificates (`crl.pem`); point
    /// nodes' `tls.crl` at it. The list replaces any earlier one, so name every revoked
    /// certificate each time.
    Revoke {
        /// Certificate files to revoke (PEM).
        #[arg(required = true)]
        certs: Vec<PathBuf>,
        /// The CA: a directory holding ca.crt and ca.key, or ca.crt itself (its key beside it).
        #[arg(long, default_value = "certs")]
        ca: PathBuf,
        /// File to write.
        #[arg(long, default_value = "certs/crl.pem")]
        out: PathBuf,
        /// Days until the list must be renewed (its nextUpdate).
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Why the certificates are revoked, recorded in the list.
        #[arg(long, value_enum, default_value_t = Reason::KeyCompromise)]
        reason: Reason,
    },
}

/// `certs revoke --reason`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Reason {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
}

impl From<Reason> for quicmesh::RevokeReason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Unspecified => quicmesh::RevokeReason::Unspecified,
            Reason::KeyCompromise => quicmesh::RevokeReason::KeyCompromise,
            Reason::AffiliationChanged => quicmesh::RevokeReason::AffiliationChanged,
            Reason::Superseded => quicmesh::RevokeReason::Superseded,
            Reason::CessationOfOperation => quicmesh::RevokeReason::CessationOfOperation,
        }
    }
}

#[derive(Args)]
struct IssueArgs {
    /// The CA: a directory holding ca.crt and ca.key, or ca.crt itself (its key beside it).
    #[arg(long, default_value = "certs")]
    ca: PathBuf,
    /// Directory to write into.
    #[arg(long, default_value = "certs")]
    out: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct ClientArgs {
    /// Client configuration file (TOML); the flags below override it.
    #[arg(long)]
    client_config: Option<PathBuf>,
    /// Entry node host:port (repeatable; raced in order: the next starts after 250 ms or when
    /// one fails, and the first to answer is used).
    #[arg(long = "entry", env = "QUICMESH_ENTRY", value_delimiter = ',')]
    entries: Vec<String>,
    /// SRV name to find entry nodes by, srv:NAME (repeatable; tried before --entry, in RFC 2782
    /// priority and weight order).
    #[arg(long = "discovery", env = "QUICMESH_DISCOVERY", value_delimiter = ',')]
    discovery: Vec<String>,
    /// Name server for discovery, IP[:PORT] (repeatable; default: the system's).
    #[arg(long = "dns-server", env = "QUICMESH_DNS_SERVER", value_delimiter = ',')]
    dns_servers: Vec<String>,
    /// CA certificate, or the directory holding ca.crt.
    #[arg(long, env = "QUICMESH_CA")]
    ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long, env = "QUICMESH_CERT")]
    cert: Option<PathBuf>,
    /// Client private key.
    #[arg(long, env = "QUICMESH_CERT_KEY")]
    cert_key: Option<PathBuf>,
}

impl ClientArgs {
    /// Whether anything says where the mesh is (else `status` reads the local node).
    fn names_an_entry(&self) -> bool {
        self.client_config.is_some() || !self.entries.is_empty() || !self.discovery.is_empty()
    }
}

/// Route from the client: fetch the load table from the entry node and connect straight to
/// the node that should serve (P2C), skipping the relay hop.
#[derive(Args)]
struct RouteArgs {
    /// Route from the client (P2C over the entry node's load table), skipping the relay hop.
    #[arg(long)]
    direct: bool,
}

#[derive(Args)]
struct CallArgs {
    /// Service name.
    service: String,
    /// Routing key (for consistent hashing).
    #[arg(long)]
    key: Option<String>,
    /// Give up after this long, e.g. 2s.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Print the serving node and latency on stderr.
    #[arg(long, short)]
    verbose: bool,
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    route: RouteArgs,
}

#[derive(Args)]
struct ForwardArgs {
    /// Local TCP address to listen on, e.g. 127.0.0.1:8080.
    listen: String,
    /// Service to forward to.
    service: String,
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    route: RouteArgs,
}

#[derive(Args)]
struct DemoArgs {
    /// Calls per entry node and service.
    #[arg(long, default_value_t = 50)]
    calls: usize,
    /// Keep the mesh running after the report, until Ctrl-C.
    #[arg(long)]
    serve: bool,
}

fn init_logging(default: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().with_current_span(true).with_span_list(false).init();
    } else {
        // Colour codes only help a terminal; in files and journals they are noise.
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Writes to stdout. A reader that went away (`quicmesh status | head -1`) ends the program
/// quietly, as for any Unix filter, instead of the panic `println!` gives.
fn out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`out`].
macro_rules! say {
    ($($arg:tt)*) => { out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` through [`out`].
macro_rules! say_raw {
    ($($arg:tt)*) => { out(format_args!($($arg)*)) };
}

/// Whether `e` is a write to a closed stdout (the reader exited), which is not a failure.
fn is_broken_pipe(e: &BoxError) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Node(_) => "info",
        _ => "warn",
    };
    init_logging(default_log, cli.log_format == "json");
    // A sidecar shares its host with the services it fronts: one thread by default, as
    // linkerd2-proxy does. On the sidecar benchmark a forwarder on one thread is as fast as
    // on one per CPU (docs/benchmarks.md) and takes one core at most.
    let threads = cli.threads.or(match cli.command {
        Command::Forward(_) => Some(1),
        _ => None,
    });
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Command) -> Result<(), BoxError> {
    match cmd {
        Command::Certs(c) => certs(c),
        Command::Node(a) => node(*a).await,
        Command::Call(a) => call(a).await,
        Command::Forward(a) => forward(a).await,
        Command::Status(a) => status(a).await,
        Command::Services(c) => services_cmd::run(c, |line| say!("{line}")).await,
        Command::Demo(a) => {
            let demo = demo::run(DemoOptions { calls: a.calls }).await?;
            say!("{}", demo.report);
            if a.serve {
                say!("{}", demo.serve_hint());
                let _ = tokio::signal::ctrl_c().await;
            }
            demo.stop().await;
            Ok(())
        }
    }
}

fn certs(cmd: CertsCmd) -> Result<(), BoxError> {
    match cmd {
        CertsCmd::Init {
            trust_domain,
            out,
            days,
            force,
        } => {
            let ca = MeshCa::generate(&trust_domain, days)?;
            let files = ca.write(&out, force)?;
            say!(
                "CA for trust domain {trust_domain:?}: {} (distribute) and {} (keep secret, mode 0600)",
                files.cert.display(),
                files.key.display()
            );
        }
        CertsCmd::Node { name, common, dns, ips } => {
            let mut opts = IssueOptions::new(Role::Node, &name);
            opts.days = common.days;
            if !dns.is_empty() {
                opts.dns = dns;
            }
            if !ips.is_empty() {
                opts.ips = ips;
            }
            let files = issue_leaf(&common.ca, &common.out, &opts, common.force)?;
            say!("node {name}: {} and {}", files.cert.display(), files.key.display());
        }
        CertsCmd::Client { name, common } => {
            let mut opts = IssueOptions::new(Role::Client, &name);
            opts.days = common.days;
            let files = issue_leaf(&common.ca, &common.out, &opts, common.force)?;
            say!("client {name}: {} and {}", files.cert.display(), files.key.display());
        }
        CertsCmd::Revoke {
            certs,
            ca,
            out,
            days,
            reason,
        } => {
            let ca = MeshCa::load(&quicmesh::CaFiles::locate(&ca))?;
            let pems = certs
                .iter()
                .map(|p| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display())))
                .collect::<Result<Vec<_>, _>>()?;
            let crl = ca.revoke_for(&pems, days, reason.into())?;
            // Written beside and renamed, so a node reloading it never reads half a file.
            let tmp = out.with_extension("pem.tmp");
            std::fs::write(&tmp, crl).map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &out).map_err(|e| format!("{}: {e}", out.display()))?;
            say!(
                "{} revokes {} certificate(s); nodes with tls.crl pointing at it pick it up within tls.reload",
                out.display(),
                certs.len()
            );
        }
    }
    Ok(())
}

async fn node(a: NodeArgs) -> Result<(), BoxError> {
    if let Some(node_flags::NodeAction::Reload { admin }) = &a.action {
        return reload(&admin.admin).await;
    }
    let cfg = node_config(&a)?;
    if a.print_config {
        say_raw!("{}", cfg.to_toml());
        return Ok(());
    }
    let grace = cfg.drain.grace;
    // A reload re-reads the file and merges the same flags over it, as at start.
    let args = a.clone();
    let node = Node::builder(cfg)
        .reload_from(move || node_config(&args).map_err(|e| e.to_string()))
        .start()
        .await?;
    loop {
        tokio::select! {
            () = wait_for_signal() => break,
            () = wait_for_hangup() => {
                // Logged by the node, with what changed or why it was refused.
                let _ = node.reload();
            }
        }
    }
    info!(?grace, "signal received; draining (a second signal stops at once)");
    tokio::select! {
        _ = node.drain(grace) => {}
        () = wait_for_signal() => {
            warn!("second signal; stopping without waiting for streams in flight");
            node.shutdown().await;
        }
    }
    Ok(())
}

/// Waits for SIGHUP (never, where there is none).
async fn wait_for_hangup() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            hup.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await;
}

/// `quicmesh node reload`: asks the local node to re-read its configuration.
async fn reload(admin: &str) -> Result<(), BoxError> {
    let (code, body) = services_cmd::admin_request(admin, "POST", "/v1/reload", None).await?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("admin {admin}/v1/reload: unreadable answer: {e}"))?;
    if code != 200 {
        let why = v["error"].as_str().unwrap_or(body.trim());
        return Err(format!("reload refused (the running configuration stays): {why}").into());
    }
    let list = |k: &str| {
        let names: Vec<&str> = v[k]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        if names.is_empty() {
            "-".to_owned()
        } else {
            names.join(", ")
        }
    };
    say!(
        "reloaded: added {}; changed {}; removed {}",
        list("added"),
        list("changed"),
        list("removed")
    );
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                return;
            }
            Err(e) => warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn client_config(a: &ClientArgs, route: Option<&RouteArgs>) -> Result<ClientConfig, BoxError> {
    let mut cfg = match &a.client_config {
        Some(p) => ClientConfig::load(p)?,
        None => {
            let need = |v: &Option<PathBuf>, flag: &str| {
                v.clone().ok_or_else(|| {
                    format!("missing {flag} (or --client-config, or the QUICMESH_* environment variables)")
                })
            };
            let tls = TlsPaths::new(
                CaFiles::cert_at(&need(&a.ca, "--ca")?),
                need(&a.cert, "--cert")?,
                need(&a.cert_key, "--cert-key")?,
            );
            ClientConfig::new(tls, Vec::new())
        }
    };
    if let Some(v) = &a.ca {
        cfg.tls.ca = CaFiles::cert_at(v);
    }
    if let Some(v) = &a.cert {
        cfg.tls.cert = v.clone();
    }
    if let Some(v) = &a.cert_key {
        cfg.tls.key = v.clone();
    }
    if !a.entries.is_empty() {
        cfg.entries = a.entries.clone();
    }
    if !a.discovery.is_empty() {
        cfg.discovery = a.discovery.clone();
    }
    if !a.dns_servers.is_empty() {
        cfg.dns.servers = a.dns_servers.clone();
    }
    if route.is_some_and(|r| r.direct) {
        cfg.routing.direct = true;
    }
    cfg.validate()?;
    Ok(cfg)
}

async fn call(a: CallArgs) -> Result<(), BoxError> {
    let client = Client::connect(client_config(&a.client, Some(&a.route))?).await?;
    let mut body = Vec::new();
    tokio::io::stdin().read_to_end(&mut body).await?;
    let opts = CallOptions {
        key: a.key.map(|k| k.into_bytes().into()),
        timeout: a.timeout,
    };
    let t0 = Instant::now();
    let reply = client.request(&a.service, body, &opts).await;
    let elapsed = t0.elapsed();
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            // Close even on failure, so the node need not wait out the idle timeout for us.
            client.close().await;
            return Err(e.into());
        }
    };
    let mut out = tokio::io::stdout();
    out.write_all(&reply.body).await?;
    out.flush().await?;
    if a.verbose {
        eprintln!(
            "served by {} in {:.2} ms",
            reply.served_by,
            elapsed.as_secs_f64() * 1000.0
        );
    }
    client.close().await;
    Ok(())
}

async fn forward(a: ForwardArgs) -> Result<(), BoxError> {
    let client = Client::connect(client_config(&a.client, Some(&a.route))?).await?;
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
    eprintln!("forwarding {} -> mesh service {:?}", listener.local_addr()?, a.service);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => r?,
            () = wait_for_signal() => break,
        };
        let client = client.clone();
        let service = a.service.clone();
        tokio::spawn(async move {
            match client.open(&service).await {
                Ok(stream) => {
                    if let Err(e) = stream.splice_tcp(tcp).await {
                        warn!(%peer, error = %e, "forwarded connection failed");
                    }
                }
                Err(e) => {
                    warn!(%peer, error = %e, "cannot open a stream to the service");
                    // A reset, not a FIN: the client must not read "no service" as an empty reply.
                    let _ = tcp.set_zero_linger();
                }
            }
        });
    }
    client.close().await;
    Ok(())
}

async fn status(a: StatusArgs) -> Result<(), BoxError> {
    let every = match a.watch {
        Some(secs) if !(secs.is_finite() && secs >= 0.1) => return Err("--watch: give at least 0.1 seconds".into()),
        Some(secs) => Some(Duration::from_secs_f64(secs)),
        None => None,
    };
    // Where to ask: the admin listener named, else the mesh if an entry is named, else the
    // local node's admin listener at its default address.
    let local_default = a.admin.is_none() && !a.client.names_an_entry();
    let admin = match (&a.admin, local_default) {
        (Some(addr), _) => Some(addr.clone()),
        (None, true) => Some(quicmesh::config::AdminConfig::default().listen),
        (None, false) => None,
    };
    let client = match &admin {
        Some(_) => None,
        None => Some(Client::connect(client_config(&a.client, None)?).await?),
    };
    let result = loop {
        let fetched = match (&client, &admin) {
            (Some(c), _) => c.status().await.map_err(BoxError::from),
            (None, Some(addr)) => http_status(addr).await.map_err(|e| {
                if local_default {
                    format!(
                        "{e}\nno node's admin listener answers at {addr} (the default admin.listen); run this on a host with a node, pass --admin HOST:PORT, or ask through the mesh with --entry HOST:PORT and --ca/--cert/--cert-key"
                    )
                    .into()
                } else {
                    e
                }
            }),
            (None, None) => Err("no client and no --admin".into()),
        };
        let report = match fetched {
            Ok(r) => r,
            Err(e) if every.is_some() => {
                // Watching: a node restarting is worth seeing, not a reason to quit.
                say!("{}: {e}", render_time());
                tokio::time::sleep(every.unwrap_or_default()).await;
                continue;
            }
            Err(e) => break Err(e),
        };
        if every.is_some() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            say_raw!("\x1b[2J\x1b[H");
        }
        say!("node {} (quicmesh {})", report.node, report.version);
        say_raw!("{}", quicmesh::render_status(&report));
        let Some(every) = every else { break Ok(()) };
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => break Ok(()),
        }
    };
    if let Some(c) = client {
        c.close().await;
    }
    result
}

/// GETs `/status` from a node's admin endpoint (plain HTTP/1.1, loopback or a trusted network).
async fn http_status(addr: &str) -> Result<quicmesh::protocol::StatusReport, BoxError> {
    let (code, body) = services_cmd::admin_request(addr, "GET", "/status", None).await?;
    if code != 200 {
        return Err(format!("admin {addr}/status answered {code}; is this a quicmesh admin address?").into());
    }
    serde_json::from_str(&body).map_err(|e| format!("admin {addr}/status: unreadable JSON: {e}").into())
}

fn render_time() -> String {
    let secs = quicmesh::unix_time().as_secs();
    format!("{:02}:{:02}:{:02} UTC", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}
