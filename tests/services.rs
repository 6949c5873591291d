//! Services registered at run time with leases (issue 16, part 1), on real node processes
//! through the CLI and the admin API.
#![allow(clippy::disallowed_methods)] // tests and the CLI may read the clock; see clippy.toml

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{bin, eventually_async, http};

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn node(dir: &Path, name: &str, port: u16, admin: &str, extra: &[String]) -> tokio::process::Child {
    let p = |f: String| dir.join(f).to_str().unwrap().to_owned();
    tokio::process::Command::new(bin())
        .args([
            "node",
            "--name",
            name,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin",
            admin,
        ])
        .args(["--ca", &p("ca.crt".into())])
        .args([
            "--cert",
            &p(format!("node-{name}.crt")),
            "--cert-key",
            &p(format!("node-{name}.key")),
        ])
        .args(extra)
        .env("RUST_LOG", "quicmesh=info")
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// `quicmesh call SERVICE` through `entry`: Ok(reply, stderr) or Err(stderr).
async fn call(dir: &Path, entry: u16, service: &str, body: &str) -> Result<(String, String), String> {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    let args: Vec<String> = [
        service.to_owned(),
        "-v".into(),
        "--entry".into(),
        format!("127.0.0.1:{entry}"),
        "--ca".into(),
        p("ca.crt"),
        "--cert".into(),
        p("client-cli.crt"),
        "--cert-key".into(),
        p("client-cli.key"),
    ]
    .into();
    common::cli_call(&args, body).await
}

/// The JSON rows of `GET /v1/services`.
async fn listed(admin: &str) -> Vec<serde_json::Value> {
    let (code, body) = http(admin, "GET", "/v1/services").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A PUT with a JSON body to the admin listener: (status, body).
async fn put(admin: &str, path: &str, body: &str) -> (u16, String) {
    common::http_with_body(admin, "PUT", path, body).await
}

/// A service registered on b with a 2 s lease is called through a; when nobody renews it, it
/// disappears from b and a answers UnknownService. `--heartbeat` keeps a lease alive and
/// deregisters on SIGTERM. Bad registrations get a 4xx that names what is wrong, and change
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_service_is_served_until_its_lease_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let _logs = common::LogsOnPanic(dir.path().to_owned());
    common::cli_certs(
        dir.path(),
        "svc.test",
        &[("node", "a"), ("node", "b"), ("client", "cli")],
    );
    let backend = common::tcp_backend(|req| [b"echo: ".as_slice(), &req].concat()).await;
    let (pa, pb) = (common::free_udp_port(), common::free_udp_port());
    let admin_b = format!("127.0.0.1:{}", common::free_tcp_port());
    let _b = node(
        dir.path(),
        "b",
        pb,
        &admin_b,
        &["--service".into(), format!("static={backend}")],
    );
    let _a = node(
        dir.path(),
        "a",
        pa,
        "off",
        &["--peer".into(), format!("127.0.0.1:{pb}")],
    );
    eventually_async(Duration::from_secs(20), "b's admin listener", || async {
        tokio::net::TcpStream::connect(&admin_b).await.map(|_| ())
    })
    .await;

    let o = run(&[
        "services",
        "register",
        "echo",
        "--backend",
        &backend.to_string(),
        "--ttl",
        "2s",
        "--admin",
        &admin_b,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("echo: added"), "{}", text(&o.stdout));
    let (reply, err) = eventually_async(Duration::from_secs(20), "echo through a", || {
        call(dir.path(), pa, "echo", "hi")
    })
    .await;
    assert_eq!(reply, "echo: hi");
    assert!(err.contains("served by b"), "{err}");
    let o = run(&["services", "list", "--admin", &admin_b]);
    let table = text(&o.stdout);
    println!("{table}");
    assert!(
        table.contains("echo") && table.contains("api") && table.contains(" 2s "),
        "{table}"
    );
    assert!(table.contains("static") && table.contains("config"), "{table}");

    // Nobody renews: the lease runs out, b stops serving it, and a learns by gossip.
    let err = eventually_async(Duration::from_secs(20), "echo gone at a", || async {
        match call(dir.path(), pa, "echo", "hi").await {
            Err(e) if e.contains("UnknownService") => Ok(e),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    println!("after the lease: {err}");
    assert!(!listed(&admin_b).await.iter().any(|r| r["name"] == "echo"));
    let log = std::fs::read_to_string(dir.path().join("b.log")).unwrap();
    assert!(log.contains("service lease expired"), "{log}");
    let o = run(&["services", "renew", "echo", "--admin", &admin_b]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("is not registered here"),
        "{}",
        text(&o.stderr)
    );

    // --heartbeat keeps renewing (the time left goes back up), and deregisters on SIGTERM.
    let mut beat = tokio::process::Command::new(bin())
        .args([
            "services",
            "register",
            "beat",
            "--backend",
            &backend.to_string(),
            "--ttl",
            "1500ms",
        ])
        .args(["--heartbeat", "--admin", &admin_b])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let left = |rows: &[serde_json::Value]| {
        rows.iter()
            .find(|r| r["name"] == "beat")
            .and_then(|r| quicmesh::config::parse_duration(r["expires_in"].as_str()?).ok())
            .map(|d| d.as_millis() as u64)
    };
    let low = std::cell::Cell::new(u64::MAX);
    let low = &low;
    let admin = admin_b.as_str();
    eventually_async(Duration::from_secs(20), "a renewal seen", || async move {
        let now = left(&listed(admin).await);
        match now {
            Some(ms) if ms > low.get() => Ok(()),
            Some(ms) => {
                low.set(low.get().min(ms));
                Err(format!("{ms} ms left"))
            }
            None => Err("not registered yet".into()),
        }
    })
    .await;
    Command::new("kill")
        .arg(beat.id().unwrap().to_string())
        .status()
        .unwrap();
    assert!(beat.wait().await.unwrap().success());
    assert_eq!(left(&listed(&admin_b).await), None, "deregistered on SIGTERM");

    // Bad input: a 4xx naming the problem; nothing registered changes.
    let before = listed(&admin_b).await;
    let b = backend.to_string();
    for (path, body, code, want) in [
        (
            "/v1/services/x",
            format!(r#"{{"backend":"{b}","ttl":"0s"}}"#),
            400,
            "ttl",
        ),
        (
            "/v1/services/x",
            format!(r#"{{"backend":"{b}","ttl":"5"}}"#),
            400,
            "no unit",
        ),
        (
            "/v1/services/x",
            r#"{"backend":"nohost","ttl":"5s"}"#.into(),
            400,
            "backend",
        ),
        (
            "/v1/services/Bad_Name",
            format!(r#"{{"backend":"{b}","ttl":"5s"}}"#),
            400,
            "Bad_Name",
        ),
        (
            "/v1/services/x",
            format!(r#"{{"backend":"{b}","ttl":"5s","weight":1}}"#),
            400,
            "weight",
        ),
        ("/v1/services/x", "not json".into(), 400, "expected JSON"),
        (
            "/v1/services/x",
            format!(r#"{{"backend":"{b}","ttl":"5s","allow":["spiffe://other.test/client/x"]}}"#),
            400,
            "outside this node's trust domain",
        ),
        (
            "/v1/services/static",
            format!(r#"{{"backend":"{b}","ttl":"5s"}}"#),
            409,
            "configuration",
        ),
        ("/v1/services/x/renew", String::new(), 404, "not registered"),
        ("/v1/services/x/y/z", String::new(), 404, "no such resource"),
    ] {
        let (got, answer) = put(&admin_b, path, &body).await;
        assert_eq!(got, code, "{path} {body}: {answer}");
        assert!(answer.contains(want), "{path} {body}: {answer}");
    }
    let (got, answer) = http(&admin_b, "DELETE", "/v1/services/nothing").await;
    assert_eq!(got, 404, "{answer}");
    assert_eq!(listed(&admin_b).await, before);
    // The node kept serving throughout.
    let (reply, _) = call(dir.path(), pa, "static", "still").await.unwrap();
    assert_eq!(reply, "echo: still");
}

/// A node process re-reads its config file on SIGHUP and on `quicmesh node reload`: services
/// added and removed take effect without a restart; a file that does not parse, or that
/// changes a key fixed at start, is refused whole with the reason, and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_changes_services_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let _logs = common::LogsOnPanic(dir.path().to_owned());
    common::cli_certs(
        dir.path(),
        "svc.test",
        &[("node", "a"), ("node", "b"), ("client", "cli")],
    );
    let one = common::tcp_backend(|req| [b"one: ".as_slice(), &req].concat()).await;
    let two = common::tcp_backend(|req| [b"two: ".as_slice(), &req].concat()).await;
    let port = common::free_udp_port();
    let admin = format!("127.0.0.1:{}", common::free_tcp_port());
    let d = dir.path().display();
    let config = |listen: u16, services: &str| {
        format!(
            "name = \"b\"\nlisten = \"127.0.0.1:{listen}\"\n[tls]\nca = \"{d}/ca.crt\"\ncert = \"{d}/node-b.crt\"\nkey = \"{d}/node-b.key\"\n[admin]\nlisten = \"{admin}\"\n{services}"
        )
    };
    let file = dir.path().join("b.toml");
    std::fs::write(&file, config(port, &format!("[services.one]\nbackend = \"{one}\"\n"))).unwrap();
    let mut b = tokio::process::Command::new(bin())
        .args(["node", "--config", file.to_str().unwrap()])
        .env("RUST_LOG", "quicmesh=info")
        .stderr(std::fs::File::create(dir.path().join("b.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (reply, _) = eventually_async(Duration::from_secs(20), "one served", || {
        call(dir.path(), port, "one", "x")
    })
    .await;
    assert_eq!(reply, "one: x");

    // SIGHUP with `one` removed and `two` added.
    std::fs::write(&file, config(port, &format!("[services.two]\nbackend = \"{two}\"\n"))).unwrap();
    Command::new("kill")
        .args(["-HUP", &b.id().unwrap().to_string()])
        .status()
        .unwrap();
    let (reply, _) = eventually_async(Duration::from_secs(20), "two served", || {
        call(dir.path(), port, "two", "y")
    })
    .await;
    assert_eq!(reply, "two: y");
    let gone = call(dir.path(), port, "one", "x").await.unwrap_err();
    assert!(gone.contains("UnknownService"), "{gone}");

    // A key fixed at start: refused by name, through the CLI; `two` still served.
    std::fs::write(
        &file,
        config(port + 1, &format!("[services.two]\nbackend = \"{two}\"\n")),
    )
    .unwrap();
    let o = run(&["node", "reload", "--admin", &admin]);
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(e.contains("cannot change while the node runs: listen"), "{e}");
    // A file that does not parse: refused with the file and the position.
    std::fs::write(&file, "name = \"b\"\n[services.three\n").unwrap();
    let o = run(&["node", "reload", "--admin", &admin]);
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(e.contains("b.toml") && e.contains("reload refused"), "{e}");
    Command::new("kill")
        .args(["-HUP", &b.id().unwrap().to_string()])
        .status()
        .unwrap();
    let log = eventually_async(Duration::from_secs(10), "the SIGHUP refusal logged", || async {
        let log = std::fs::read_to_string(dir.path().join("b.log")).unwrap();
        if log.matches("configuration reload refused").count() >= 3 {
            Ok(log)
        } else {
            Err(log)
        }
    })
    .await;
    assert!(log.contains("configuration reloaded"), "{log}");
    let (reply, _) = call(dir.path(), port, "two", "z").await.unwrap();
    assert_eq!(reply, "two: z");
    // Back to a good file: the CLI reports what changed.
    std::fs::write(
        &file,
        config(
            port,
            &format!("[services.two]\nbackend = \"{two}\"\n[services.one]\nbackend = \"{one}\"\n"),
        ),
    )
    .unwrap();
    let o = run(&["node", "reload", "--admin", &admin]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "reloaded: added one; changed -; removed -\n");
    Command::new("kill").arg(b.id().unwrap().to_string()).status().unwrap();
    assert!(b.wait().await.unwrap().success());
}

/// A TCP backend that can be stopped (its port closed) and started again on the same port.
struct Backend {
    addr: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
    tag: &'static str,
}

impl Backend {
    async fn start(tag: &'static str, addr: std::net::SocketAddr) -> Backend {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    if s.read_to_end(&mut buf).await.is_ok() {
                        let _ = s.write_all(format!("{tag}: ").as_bytes()).await;
                        let _ = s.write_all(&buf).await;
                    }
                });
            }
        });
        Backend {
            addr,
            task: Some(task),
            tag,
        }
    }

    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The health of `service` in `GET /v1/services` at `admin`.
async fn health_of(admin: &str, service: &str) -> Option<String> {
    listed(admin)
        .await
        .into_iter()
        .find(|r| r["name"] == service)
        .and_then(|r| r["health"].as_str().map(str::to_owned))
}

/// Two nodes serve `web` from their own backends; b's backend is health-checked. When it
/// dies, b marks it critical after `fall` checks and stops offering `web`: from then on every
/// call goes to a. When it comes back, b offers `web` again after `rise` checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_fails_its_checks_gets_no_calls_until_it_passes_again() {
    let dir = tempfile::tempdir().unwrap();
    let _logs = common::LogsOnPanic(dir.path().to_owned());
    common::cli_certs(
        dir.path(),
        "svc.test",
        &[("node", "a"), ("node", "b"), ("client", "cli")],
    );
    let back_a = Backend::start("A", "127.0.0.1:0".parse().unwrap()).await;
    let mut back_b = Backend::start("B", "127.0.0.1:0".parse().unwrap()).await;
    let (pa, pb) = (common::free_udp_port(), common::free_udp_port());
    let admin_b = format!("127.0.0.1:{}", common::free_tcp_port());
    let check = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for kv in [
            "services.web.check.kind=tcp",
            "services.web.check.interval=100ms",
            "services.web.check.timeout=100ms",
            "services.web.check.fall=2",
            "services.web.check.rise=2",
        ] {
            v.extend(["--set".to_owned(), kv.to_owned()]);
        }
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let _b = node(
        dir.path(),
        "b",
        pb,
        &admin_b,
        &check(&["--service", &format!("web={}", back_b.addr)]),
    );
    let _a = node(
        dir.path(),
        "a",
        pa,
        "off",
        &[
            "--peer".into(),
            format!("127.0.0.1:{pb}"),
            "--service".into(),
            format!("web={}", back_a.addr),
            "--set".into(),
            "routing.strategy=round_robin".into(),
        ],
    );
    // Both serve, through a (round-robin alternates them).
    eventually_async(Duration::from_secs(30), "b serves web through a", || async {
        let (reply, _) = call(dir.path(), pa, "web", "x").await?;
        if reply == "B: x" {
            Ok(())
        } else {
            Err(reply)
        }
    })
    .await;
    assert_eq!(health_of(&admin_b, "web").await.as_deref(), Some("passing"));

    back_b.stop();
    eventually_async(Duration::from_secs(20), "b's web critical", || async {
        match health_of(&admin_b, "web").await.as_deref() {
            Some("critical") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // a learns by gossip that b no longer offers web; after that, no call goes to b.
    eventually_async(Duration::from_secs(20), "a routes around b", || async {
        let (reply, err) = call(dir.path(), pa, "web", "y").await?;
        if err.contains("served by a") {
            Ok(())
        } else {
            Err(format!("{reply} {err}"))
        }
    })
    .await;
    for i in 0..10 {
        let (reply, err) = call(dir.path(), pa, "web", &format!("z{i}")).await.unwrap();
        assert_eq!(reply, format!("A: z{i}"), "{err}");
    }
    let (_, metrics) = http(&admin_b, "GET", "/metrics").await;
    assert_eq!(
        common::sample(&metrics, "quicmesh_service_healthy{service=\"web\"}"),
        Some(0.0),
        "{metrics}"
    );
    let log = std::fs::read_to_string(dir.path().join("b.log")).unwrap();
    assert!(log.contains("backend failed 2 checks in a row: critical"), "{log}");

    // Back on the same port: passing after `rise`, and b gets calls again.
    let _back_b = Backend::start(back_b.tag, back_b.addr).await;
    eventually_async(Duration::from_secs(30), "b serves web again", || async {
        let (reply, _) = call(dir.path(), pa, "web", "w").await?;
        if reply == "B: w" {
            Ok(())
        } else {
            Err(reply)
        }
    })
    .await;
    assert_eq!(health_of(&admin_b, "web").await.as_deref(), Some("passing"));
    let log = std::fs::read_to_string(dir.path().join("b.log")).unwrap();
    assert!(log.contains("passed 2 checks in a row: passing"), "{log}");
    drop(back_a);
}
