//! A UDP impairment proxy on the command line: put it between two nodes (or a client and a
//! node) to see the mesh under loss, delay, reordering, duplication, a bandwidth cap or a cut.
//!
//! ```text
//! cargo run --release --example impair -- --listen 127.0.0.1:9400 --target 127.0.0.1:7400 \
//!     --loss 0.05 --delay 50ms --jitter 20ms
//! ```
//! Then point a node's `peers` (or a client's `entries`) at 127.0.0.1:9400. It prints what it
//! forwarded and dropped each second. Type `cut` or `heal` and Enter to blackhole the link or
//! restore it.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use quicmesh::config::parse_duration;
use quicmesh::impair::{Direction, Impairment, UdpProxy};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(about = "UDP proxy that impairs the link it stands on (both directions alike)")]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Address to forward to.
    #[arg(long)]
    target: SocketAddr,
    /// Fraction of datagrams dropped (0-1).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// One-way delay, e.g. 50ms.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    delay: Duration,
    /// Delay varies by up to this much either way.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    jitter: Duration,
    /// Fraction of datagrams held back by --reorder-gap (0-1).
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// How long reordered datagrams are held back.
    #[arg(long, value_parser = parse_duration, default_value = "10ms")]
    reorder_gap: Duration,
    /// Fraction of datagrams delivered twice (0-1).
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Bandwidth cap in kilobits per second (each direction); 0 = none.
    #[arg(long, default_value_t = 0)]
    rate_kbit: u64,
    /// Longest wait in the bandwidth queue before tail drop.
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    max_queue: Duration,
    /// Start with the link cut.
    #[arg(long)]
    blackhole: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let imp = Impairment {
        loss: a.loss,
        delay: a.delay,
        jitter: a.jitter,
        reorder: a.reorder,
        reorder_gap: a.reorder_gap,
        duplicate: a.duplicate,
        rate: (a.rate_kbit > 0).then_some(a.rate_kbit * 1000 / 8),
        max_queue: a.max_queue,
        blackhole: a.blackhole,
    };
    imp.validate()?;
    let proxy = UdpProxy::start(a.listen, a.target).await?;
    proxy.set_both(imp);
    println!("impair: {} -> {} with {imp:?}", proxy.local_addr(), proxy.target());
    println!("type `cut` or `heal` + Enter to blackhole or restore the link");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (u, d) = (proxy.stats(Direction::Up), proxy.stats(Direction::Down));
                println!(
                    "up: {} delivered, {} lost, {} cut, {} queue-dropped | down: {} delivered, {} lost, {} cut, {} queue-dropped",
                    u.delivered, u.lost, u.blackholed, u.queue_dropped, d.delivered, d.lost, d.blackholed, d.queue_dropped
                );
            }
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(l)) if l.trim() == "cut" => { proxy.blackhole(true); println!("link cut"); }
                Ok(Some(l)) if l.trim() == "heal" => { proxy.blackhole(false); println!("link restored"); }
                Ok(Some(l)) => println!("unknown command {l:?}; use `cut` or `heal`"),
                Ok(None) | Err(_) => stdin_open = false,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(())
}
