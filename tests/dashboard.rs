//! The web dashboard in a real browser: a 3-node mesh with live traffic, `/ui` loaded in headless
//! Chromium, and the DOM checked for three Alive members, the connections between them and a
//! non-zero request rate; then the node goes away behind a proxy and the page must say so.
//! Saves `target/dashboard.png` (the README's screenshot is a copy of one).
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, http, Pki};
use quicmesh::{Echo, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The headless browser: `$QUICMESH_CHROMIUM`, else the first of the usual names on PATH.
fn chromium() -> String {
    if let Ok(c) = std::env::var("QUICMESH_CHROMIUM") {
        return c;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return name.to_owned();
        }
    }
    panic!("no headless browser: install Debian's `chromium` (apt-get install chromium; .ci/run does) or set QUICMESH_CHROMIUM");
}

/// Runs the browser on `url` with `extra` flags; virtual time lets the page's 2 s polls run
/// quickly (it advances only while no request is pending). Returns stdout.
async fn browse(url: &str, budget_ms: u32, extra: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        &format!("--user-data-dir={}", profile.path().display()),
        &format!("--virtual-time-budget={budget_ms}"),
    ])
    .args(extra)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("the browser finished within 90 s")
        .expect("the browser starts");
    assert!(
        out.status.success(),
        "{} failed ({}): {}",
        chromium(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An HTTP forwarder in front of the admin listener that serves `allow` dashboard polls and
/// then refuses everything, as a stopped node would. One request per connection.
async fn cutting_proxy(admin: SocketAddr, allow: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let polls = Arc::new(AtomicUsize::new(0));
    let seen = polls.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let polls = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_owned();
                let path = line.split(' ').nth(1).unwrap_or("/").to_owned();
                if path == "/v1/dashboard" && polls.fetch_add(1, Ordering::SeqCst) >= allow {
                    return; // closed without an answer: the node is gone
                }
                let (code, body) = http(admin, "GET", &path).await;
                let kind = if path.starts_with("/ui") {
                    "text/html; charset=utf-8"
                } else {
                    "application/json"
                };
                let resp = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, polls)
}

/// The status line and headers of a GET, as the admin listener sends them.
async fn raw_head(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_mesh_live_in_a_browser_and_says_when_the_node_is_gone() {
    common::init_logs();
    let pki = Pki::new();
    let mut nodes: Vec<Node> = Vec::new();
    // A node named like an Object.prototype member: names come from the mesh, and the page
    // must not trip over one (it did: `hist["constructor"]` is a function).
    for name in ["a", "b", "constructor"] {
        let mut cfg = pki.node_config(name);
        if name == "a" {
            cfg.admin.listen = "127.0.0.1:0".into();
        }
        cfg.peers = nodes.iter().map(|n| n.local_addr().to_string()).collect();
        nodes.push(Node::builder(cfg).handler("echo", Echo).start().await.unwrap());
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    eventually(Duration::from_secs(10), "mesh formed", || {
        common::sees_all(&refs, &["echo"])
            && refs
                .iter()
                .all(|n| n.peers().iter().filter(|p| p.connected).count() == 2)
    })
    .await;
    let admin = nodes[0].admin_addr().unwrap();

    // Traffic through node a for as long as the test runs.
    let client = pki.client("web", &nodes[0]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = client.call("echo", "x").await;
            }
        })
    };

    // The JSON the page reads: three members, the three links between them, three views.
    let (code, body) = http(admin, "GET", "/v1/dashboard").await;
    assert_eq!(code, 200, "{body}");
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["members"].as_array().unwrap().len(), 3, "{d}");
    assert_eq!(d["links"].as_array().unwrap().len(), 3, "{d}");
    assert_eq!(d["views"].as_array().unwrap().len(), 3, "{d}");
    let (code, _) = http(admin, "POST", "/v1/dashboard").await;
    assert_eq!(code, 405);
    let head = raw_head(admin, "/ui").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/html"), "{head}");

    let (proxy, _) = cutting_proxy(admin, usize::MAX).await;
    let url = format!("http://{proxy}/ui");
    let dom = browse(&url, 12_000, &["--dump-dom".to_owned()]).await;
    assert_eq!(
        dom.matches("data-status=\"Alive\"").count(),
        3,
        "three Alive members:\n{dom}"
    );
    assert!(dom.contains("data-live=\"yes\""), "the page says it is live:\n{dom}");
    assert!(
        dom.matches("class=\"link\"").count() >= 3,
        "the graph draws the connections:\n{dom}"
    );
    // The highest rate over the polls the page made (one interval may see no call).
    let peak = dom
        .split("data-service=\"echo\"")
        .nth(1)
        .and_then(|r| r.split("data-peak=\"").nth(1))
        .and_then(|r| r.split('"').next())
        .and_then(|r| r.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no echo rate row:\n{dom}"));
    assert!(peak > 0.0, "echo's request rate is non-zero, got {peak}:\n{dom}");
    assert!(
        !dom.contains("class=\"show\""),
        "no banner while the node answers:\n{dom}"
    );

    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &url,
        12_000,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,1050".to_owned(),
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("the browser wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot");

    // The node goes away after three polls: the page keeps the last figures and says so.
    let (cut, polls) = cutting_proxy(admin, 3).await;
    let dom = browse(&format!("http://{cut}/ui"), 12_000, &["--dump-dom".to_owned()]).await;
    assert!(polls.load(Ordering::SeqCst) > 3, "the page kept polling after the cut");
    assert!(dom.contains("data-live=\"no\""), "{dom}");
    assert!(
        dom.contains("The node is not answering"),
        "the page says the node is gone:\n{dom}"
    );
    assert_eq!(
        dom.matches("data-status=\"Alive\"").count(),
        3,
        "the last figures stay:\n{dom}"
    );

    stop.store(true, Ordering::Relaxed);
    let _ = traffic.await;
    for n in &nodes {
        n.shutdown().await;
    }
}
