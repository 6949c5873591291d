//! The chaos soak on the command line: 12 node processes of the release binary on loopback,
//! two clients calling them, and many faults at once for as long as asked (issue 19).
//!
//! ```text
//! cargo build --release
//! cargo run --release --features testkit --example chaos -- --duration 10m
//! cargo run --release --features testkit --example chaos -- --seed 1234 --duration 60s   # replay a plan
//! ```
//! It prints a table of faults, calls, latency, convergence and resources, and every broken
//! promise; it exits with status 1 if there was one (the node logs are kept then).
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use quicmesh::chaos::{run, ChaosOptions};
use quicmesh::config::parse_duration;

#[derive(Parser)]
#[command(about = "Many faults at once against a mesh of node processes, with its invariants checked")]
struct Args {
    /// Seed of the fault plan (a random one, printed, if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// How long faults are injected, e.g. 60s or 10m.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    duration: Duration,
    /// Node processes (at least 4).
    #[arg(long, default_value_t = 12)]
    nodes: usize,
    /// Mean time between two faults' starts, e.g. 1500ms.
    #[arg(long, value_parser = parse_duration, default_value = "1500ms")]
    mean_gap: Duration,
    /// The quicmesh binary the nodes run (default: target/release/quicmesh beside this example).
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Keep configs and node logs here (default: a temporary directory, kept only on a violation).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // target/release/examples/chaos → target/release/quicmesh
    let node_bin = args.node_bin.unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        exe.parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("quicmesh"))
            .unwrap_or_else(|| PathBuf::from("target/release/quicmesh"))
    });
    if !node_bin.is_file() {
        eprintln!(
            "chaos: no node binary at {}; build it with `cargo build --release` or pass --node-bin",
            node_bin.display()
        );
        std::process::exit(2);
    }
    if args.nodes < 4 {
        eprintln!(
            "chaos: --nodes must be at least 4 (3 seeds and one more), not {}",
            args.nodes
        );
        std::process::exit(2);
    }
    let seed = args.seed.unwrap_or_else(|| {
        use rand::{Rng, SeedableRng};
        rand::rngs::SmallRng::from_os_rng().random()
    });
    println!("chaos: seed {seed} (replay with --seed {seed})");
    let mut opts = ChaosOptions::new(seed, args.duration, node_bin);
    opts.shape.nodes = args.nodes;
    opts.shape.mean_gap = args.mean_gap;
    opts.dir = args.dir;
    match run(&opts).await {
        Ok(report) => {
            println!("{report}");
            if !report.passed() {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("chaos: {e}");
            std::process::exit(2);
        }
    }
}
