//! Scenario 3: memory per idle client connection on a node process, and the mTLS handshake
//! rate.

use std::time::{Duration, Instant};

use quicmesh::{Client, ClientConfig, Role, TlsMaterial};

use crate::util::{node_binary, rss_of, Error, Pki};

/// Memory per idle client connection on a node process, and the rate of mTLS handshakes.
pub async fn run(pki: &Pki, idle: &[usize], max_streams: u32) -> Result<(), Error> {
    let tls = pki.tls(Role::Node, "lone")?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = pki.dir.path().join("lone.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"lone\"\nlisten = \"127.0.0.1:{port}\"\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n[admin]\nlisten = \"off\"\n[limits]\nmax_streams_per_client = {max_streams}\n",
            tls.ca, tls.cert, tls.key
        ),
    )?;
    let mut child = tokio::process::Command::new(node_binary()?)
        .args(["node", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("no pid")?;
    let client_tls = TlsMaterial::load(&pki.tls(Role::Client, "idle")?, Role::Client)?;
    let mut cfg = ClientConfig::new(pki.tls(Role::Client, "idle")?, vec![format!("127.0.0.1:{port}")]);
    cfg.transport.idle_timeout = Duration::from_secs(120);
    cfg.transport.keepalive = Duration::from_secs(30);
    // Wait for the node, and warm it with one connection.
    let mut first = None;
    for _ in 0..200 {
        if let Ok(c) = Client::connect_with(cfg.clone(), client_tls.clone()).await {
            first = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = first.ok_or("node did not start")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_of(pid)?;
    println!("### Connections (node process, limits.max_streams_per_client = {max_streams})\n");
    println!("| idle client connections | node RSS | memory per connection (RSS delta / connections) | mTLS handshakes per second while connecting (32 at a time) |\n|---|---|---|---|");
    println!("| 1 | {:.1} MiB | – | – |", before as f64 / 1048576.0);
    let mut clients = Vec::new();
    for &target in idle {
        let started = Instant::now();
        let made_before = clients.len();
        while clients.len() < target {
            let n = (target - clients.len()).min(32);
            let made =
                futures_util::future::join_all((0..n).map(|_| Client::connect_with(cfg.clone(), client_tls.clone())))
                    .await;
            for c in made {
                clients.push(c?);
            }
        }
        let rate = (clients.len() - made_before) as f64 / started.elapsed().as_secs_f64();
        // Let the handshakes' transient state go before reading the steady size.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_of(pid)?;
        let per = (after.saturating_sub(before)) as f64 / clients.len() as f64 / 1024.0;
        println!(
            "| {} | {:.1} MiB | **{per:.1} KiB** | {rate:.0} |",
            clients.len(),
            after as f64 / 1048576.0
        );
    }
    println!();
    futures_util::future::join_all(clients.iter().map(Client::close)).await;
    first.close().await;
    let _ = child.kill().await;
    Ok(())
}
