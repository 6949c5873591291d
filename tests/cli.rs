//! The `quicmesh` binary, run as a user would.
#![allow(clippy::disallowed_methods)] // tests and the CLI may read the clock; see clippy.toml

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, eventually, eventually_async};
use quicmesh::{Echo, Node, NodeConfig, TlsPaths};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn certs_commands_make_files_refuse_overwrites_and_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    let _logs = common::LogsOnPanic(dir.path().to_owned());
    let d = dir.path().to_str().unwrap();
    common::cli_certs(
        dir.path(),
        "cli.test",
        &[("node", "n1"), ("node", "n2"), ("client", "cli")],
    );
    for f in ["ca.key", "node-n1.key", "client-cli.key"] {
        let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let o = run(&["certs", "init", "--trust-domain", "cli.test", "--out", d]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("already exists") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    let o = run(&["certs", "node", "Bad_Name", "--ca", d, "--out", d]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Bad_Name") && stderr(&o).contains("a-z"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "certs", "node", "n1", "--ca", d, "--out", d, "--force", "--dns", "n1.mesh", "--ip", "10.0.0.1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["certs", "client", "x", "--ca", "/nonexistent", "--out", d]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nonexistent/ca.crt"), "{}", stderr(&o));
}

#[test]
fn node_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let _logs = common::LogsOnPanic(dir.path().to_owned());
    let base = "name = \"n1\"\n[tls]\nca = \"ca.crt\"\ncert = \"c.crt\"\nkey = \"c.key\"\n";
    for (extra, key) in [
        ("[transport]\nkeepalive = \"20s\"\n", "transport.keepalive"),
        ("[transport]\nbogus = 1\n", "bogus"),
        ("[limits]\nmax_inflight = 0\n", "limits.max_inflight"),
    ] {
        let path = dir.path().join("node.toml");
        std::fs::write(&path, format!("{base}{extra}")).unwrap();
        let o = run(&["node", "--config", path.to_str().unwrap()]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(key), "{extra}: {}", stderr(&o));
    }
    // Flags override the file and go through the same checks.
    let path = dir.path().join("node.toml");
    std::fs::write(&path, base).unwrap();
    let o = run(&["node", "--config", path.to_str().unwrap(), "--peer", "nohost"]);
    assert!(stderr(&o).contains("peers[0]"), "{}", stderr(&o));
    let o = run(&[
        "node",
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:9999",
        "--print-config",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(printed.contains("listen = \"127.0.0.1:9999\""), "{printed}");
    assert!(printed.contains("keepalive = \"5s\""), "{printed}");
    // Discovery flags land in `discovery` and `dns.servers`, checked like the file's keys.
    let o = run(&[
        "node",
        "--config",
        path.to_str().unwrap(),
        "--discovery",
        "srv:_quicmesh._udp.mesh.example",
        "--dns-server",
        "10.0.0.2:5353",
        "--print-config",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(
        printed.contains("discovery = [\"srv:_quicmesh._udp.mesh.example\"]"),
        "{printed}"
    );
    assert!(printed.contains("servers = [\"10.0.0.2:5353\"]"), "{printed}");
    let o = run(&[
        "node",
        "--config",
        path.to_str().unwrap(),
        "--discovery",
        "mesh.example",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("discovery[0]") && stderr(&o).contains("srv:"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "node",
        "--config",
        path.to_str().unwrap(),
        "--dns-server",
        "ns1.example",
    ]);
    assert!(stderr(&o).contains("dns.servers[0]"), "{}", stderr(&o));
}

#[test]
fn every_printed_config_key_is_documented() {
    let o = run(&[
        "node",
        "--name",
        "n1",
        "--ca",
        "a",
        "--cert",
        "b",
        "--cert-key",
        "c",
        "--print-config",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md")).unwrap();
    let mut table = String::new();
    let mut missing = Vec::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = format!("{t}.");
        } else if let Some((key, _)) = line.split_once(" = ") {
            let full = format!("`{table}{key}`");
            if !doc.contains(&full) {
                missing.push(full);
            }
        }
    }
    assert!(missing.is_empty(), "docs/config.md lacks {missing:?}");
}

/// Runs the binary with `args`, feeding `input` on stdin.
async fn run_with_stdin(args: &[String], input: &[u8]) -> Output {
    let mut child = tokio::process::Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).await.unwrap();
    child.wait_with_output().await.unwrap()
}

fn client_flags(dir: &Path, entry: &str) -> Vec<String> {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    vec![
        "--entry".into(),
        entry.into(),
        "--ca".into(),
        p("ca.crt"),
        "--cert".into(),
        p("client-cli.crt"),
        "--cert-key".into(),
        p("client-cli.key"),
    ]
}

/// Reads the request, writes part of a reply, then aborts the stream.
struct Broken;

impl quicmesh::Handler for Broken {
    fn serve(
        &self,
        mut stream: quicmesh::ServiceStream,
        _ctx: quicmesh::RequestContext,
    ) -> quicmesh::BoxFuture<std::io::Result<()>> {
        Box::pin(async move {
            stream.read_to_end(1 << 20).await?;
            stream.write_all(b"partial").await?;
            stream.abort();
            Ok(())
        })
    }
}

#[tokio::test]
async fn call_and_forward_through_an_in_process_node() {
    let dir = tempfile::tempdir().unwrap();
    let _logs = common::LogsOnPanic(dir.path().to_owned());
    common::cli_certs(
        dir.path(),
        "cli.test",
        &[("node", "n1"), ("node", "n2"), ("client", "cli")],
    );
    let tls = TlsPaths::new(
        dir.path().join("ca.crt"),
        dir.path().join("node-n1.crt"),
        dir.path().join("node-n1.key"),
    );
    let mut cfg = NodeConfig::new("n1", tls);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin.listen = "127.0.0.1:0".into();
    let node = Node::builder(cfg)
        .handler("echo", Echo)
        .handler("broken", Broken)
        .start()
        .await
        .unwrap();
    let entry = node.local_addr().to_string();

    let mut args = vec!["call".to_owned(), "echo".into(), "-v".into()];
    args.extend(client_flags(dir.path(), &entry));
    let out = run_with_stdin(&args, b"via the cli").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"via the cli");
    assert!(stderr(&out).contains("served by n1"), "{}", stderr(&out));

    let mut args = vec!["call".to_owned(), "missing".into()];
    args.extend(client_flags(dir.path(), &entry));
    let out = tokio::process::Command::new(bin())
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("UnknownService"), "{}", stderr(&out));

    // forward: local TCP port -> mesh service. One request per connection: the bytes sent,
    // half-closed, and what came back before the end or the error.
    let forward = |service: &'static str, request: &'static [u8]| {
        let (dir, entry) = (dir.path().to_owned(), entry.clone());
        async move {
            let listen = format!("127.0.0.1:{}", common::free_tcp_port());
            let mut args = vec!["forward".to_owned(), listen.clone(), service.into()];
            args.extend(client_flags(&dir, &entry));
            let mut fwd = tokio::process::Command::new(bin())
                .args(&args)
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut sock = eventually_async(Duration::from_secs(20), &format!("forward listens on {listen}"), || {
                tokio::net::TcpStream::connect(&listen)
            })
            .await;
            if !request.is_empty() {
                sock.write_all(request).await.unwrap();
                sock.shutdown().await.unwrap();
            }
            let mut got = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(20), sock.read_to_end(&mut got))
                .await
                .expect("the forwarder neither ended nor reset the connection");
            fwd.kill().await.unwrap();
            (read, got)
        }
    };
    let (read, got) = forward("echo", b"tcp through the mesh").await;
    read.unwrap();
    assert_eq!(got, b"tcp through the mesh");
    // A reply the service cut off reaches the TCP client as a reset, never as a clean end.
    match forward("broken", b"a request").await {
        (Err(e), _) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        (Ok(n), got) => panic!("a cut-off reply ended cleanly after {n} bytes: {got:?}"),
    }
    // A service the mesh does not offer: a reset too, not an empty reply.
    let (read, _) = forward("missing", b"").await;
    assert!(read.is_err(), "an unknown service looked like an empty reply");

    // status --watch keeps printing the table until stopped.
    let mut args = vec!["status".to_owned(), "--watch".into(), "0.2".into()];
    args.extend(client_flags(dir.path(), &entry));
    let mut watch = tokio::process::Command::new(bin())
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = watch.stdout.take().unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.matches("(quicmesh ").count() < 3 {
        assert!(Instant::now() < deadline, "watch printed: {seen}");
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), out.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "watch exited early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    watch.kill().await.unwrap();

    // status --admin reads the admin endpoint's JSON: no certificate needed.
    let admin = node.admin_addr().unwrap().to_string();
    let out = run_with_stdin(&["status".into(), "--admin".into(), admin], b"").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("node n1 (quicmesh "), "{table}");
    assert!(table.contains("n1"), "{table}");
    // Pointed at something that is not an admin endpoint, it says so.
    let listen = format!("127.0.0.1:{}", common::free_tcp_port());
    let out = run_with_stdin(&["status".into(), "--admin".into(), listen.clone()], b"").await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&format!("admin {listen}")), "{}", stderr(&out));
}

#[tokio::test]
async fn two_node_processes_from_config_files() {
    let dir = tempfile::tempdir().unwrap();
    let _logs = common::LogsOnPanic(dir.path().to_owned());
    common::cli_certs(
        dir.path(),
        "cli.test",
        &[("node", "n1"), ("node", "n2"), ("client", "cli")],
    );
    let d = dir.path().display();
    let backend_addr = common::tcp_backend(|req| format!("backend got {} bytes", req.len()).into_bytes()).await;
    let ports: Vec<u16> = (0..2).map(|_| common::free_udp_port()).collect();
    let n1 = format!(
        "name = \"n1\"\nlisten = \"127.0.0.1:{}\"\n[tls]\nca = \"{d}/ca.crt\"\ncert = \"{d}/node-n1.crt\"\nkey = \"{d}/node-n1.key\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[services.count]\nbackend = \"{backend_addr}\"\n",
        ports[0]
    );
    let n2 = format!(
        "name = \"n2\"\nlisten = \"127.0.0.1:{}\"\npeers = [\"127.0.0.1:{}\"]\n[tls]\nca = \"{d}/ca.crt\"\ncert = \"{d}/node-n2.crt\"\nkey = \"{d}/node-n2.key\"\n[admin]\nlisten = \"off\"\n",
        ports[1], ports[0]
    );
    let mut procs = Vec::new();
    for (name, text) in [("n1", n1), ("n2", n2)] {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        // n1 logs JSON lines (for log shippers), n2 plain text; both to files read below.
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        let format = if name == "n1" { "json" } else { "text" };
        procs.push(
            tokio::process::Command::new(bin())
                .args(["--log-format", format, "node", "--config", path.to_str().unwrap()])
                .env("RUST_LOG", "info")
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    // Poll until the mesh answers through n2 (which must relay to n1).
    let entry = format!("127.0.0.1:{}", ports[1]);
    let mut args = vec!["call".to_owned(), "count".into(), "-v".into()];
    args.extend(client_flags(dir.path(), &entry));
    let out = eventually_async(Duration::from_secs(20), "the mesh answers through n2", || async {
        let out = run_with_stdin(&args, &[7u8; 1000]).await;
        if out.status.success() {
            Ok(out)
        } else {
            Err(stderr(&out))
        }
    })
    .await;
    assert_eq!(out.stdout, b"backend got 1000 bytes");
    assert!(stderr(&out).contains("served by n1"), "{}", stderr(&out));
    for mut p in procs {
        // SIGTERM: the node shuts down cleanly and exits 0.
        let pid = p.id().unwrap();
        Command::new("kill").arg(pid.to_string()).status().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), p.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "node exited with {status}");
    }
    let json = std::fs::read_to_string(dir.path().join("n1.log")).unwrap();
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["fields"]["message"] == "node started"), "{json}");
    assert!(lines.iter().any(|l| l["fields"]["message"] == "drained"), "{json}");
    let text = std::fs::read_to_string(dir.path().join("n2.log")).unwrap();
    assert!(
        text.contains("node started") && !text.contains('\x1b'),
        "plain text, no colour codes: {text}"
    );
}

#[test]
fn demo_runs_and_every_call_succeeds() {
    let o = run(&["demo", "--calls", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("mesh formed through DNS SRV"), "{out}");
    assert_eq!(
        out.matches("_quicmesh._udp.quicmesh.test. 5").count(),
        3,
        "three SRV records: {out}"
    );
    let entered = out.lines().find(|l| l.starts_with("20 clients")).unwrap_or_default();
    let entered = entered.split(" (").next().unwrap_or_default();
    assert!(
        !entered.contains("charlie"),
        "priority 20 unused while 10 answers: {entered}"
    );
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3
                && ["alpha", "bravo", "charlie"].contains(&cols[0])
                && ["echo", "upper", "whoami"].contains(&cols[1])
        })
        .collect();
    assert_eq!(rows.len(), 9, "{out}");
    for r in rows {
        let cols: Vec<&str> = r.split_whitespace().collect();
        assert_eq!(cols[2], "5", "{r}");
        assert_eq!(cols[3], "5", "every call ok: {r}");
    }
    assert!(out.contains("UnknownService"), "{out}");
}

/// Runs the binary with its stdout already closed by the reader, as `quicmesh … | head -0`
/// leaves it, and `input` on stdin.
async fn run_with_closed_stdout(args: &[String], input: &[u8]) -> Output {
    let mut child = tokio::process::Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.stdin.take().unwrap().write_all(input).await.unwrap();
    child.wait_with_output().await.unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn every_subcommand_exits_quietly_on_a_closed_stdout_and_ca_takes_a_file_or_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _logs = common::LogsOnPanic(dir.path().to_owned());
    let d = dir.path().to_str().unwrap();
    let ca_file = dir.path().join("ca.crt").to_str().unwrap().to_owned();
    let quiet = |o: &Output, what: &str| {
        assert!(o.status.success(), "{what}: {:?} {}", o.status, stderr(o));
        assert!(stderr(o).is_empty(), "{what} said something on stderr: {}", stderr(o));
    };
    let o = run_with_closed_stdout(&args(&["certs", "init", "--trust-domain", "cli.test", "--out", d]), b"").await;
    quiet(&o, "certs init");
    // `certs --ca` takes the CA certificate itself as well as its directory.
    let o = run_with_closed_stdout(&args(&["certs", "node", "n1", "--ca", &ca_file, "--out", d]), b"").await;
    quiet(&o, "certs node --ca FILE");
    let o = run_with_closed_stdout(&args(&["certs", "client", "cli", "--ca", d, "--out", d]), b"").await;
    quiet(&o, "certs client --ca DIR");

    let tls = TlsPaths::new(
        dir.path().join("ca.crt"),
        dir.path().join("node-n1.crt"),
        dir.path().join("node-n1.key"),
    );
    let mut cfg = NodeConfig::new("n1", tls);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin.listen = "127.0.0.1:0".into();
    let node = Node::builder(cfg).handler("echo", Echo).start().await.unwrap();
    let entry = node.local_addr().to_string();
    // `call --ca` takes the CA's directory as well as the certificate.
    let mut call = args(&["call", "echo", "--entry", &entry, "--ca", d]);
    for (flag, file) in [("--cert", "client-cli.crt"), ("--cert-key", "client-cli.key")] {
        call.push(flag.into());
        call.push(dir.path().join(file).to_str().unwrap().to_owned());
    }
    let o = run_with_closed_stdout(&call, &[b'x'; 100_000]).await;
    quiet(&o, "call with a 100 kB reply");
    let admin = node.admin_addr().unwrap().to_string();
    let o = run_with_closed_stdout(&args(&["status", "--admin", &admin]), b"").await;
    quiet(&o, "status --admin");
    node.shutdown().await;
}

#[tokio::test]
async fn a_call_whose_deadline_passes_on_the_serving_node_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let _logs = common::LogsOnPanic(dir.path().to_owned());
    common::cli_certs(
        dir.path(),
        "cli.test",
        &[("node", "n1"), ("node", "n2"), ("client", "cli")],
    );
    let tls = TlsPaths::new(
        dir.path().join("ca.crt"),
        dir.path().join("node-n1.crt"),
        dir.path().join("node-n1.key"),
    );
    let mut cfg = NodeConfig::new("n1", tls);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let slow = quicmesh::request_handler(1024, |req: bytes::Bytes, _| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(req)
    });
    let node = Node::builder(cfg).handler("slow", slow).start().await.unwrap();
    let entry = node.local_addr().to_string();
    let mut args = vec!["call".to_owned(), "slow".into(), "--timeout".into(), "200ms".into()];
    args.extend(client_flags(dir.path(), &entry));
    let out = run_with_stdin(&args, b"x").await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("deadline passed"), "{}", stderr(&out));
    // The node's own deadline (200 ms from when the request arrived) passes just after the
    // client's.
    eventually(Duration::from_secs(10), "the node counts the passed deadline", || {
        node.stats().deadlines_exceeded == 1
    })
    .await;
    node.shutdown().await;
}
