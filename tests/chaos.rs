//! The chaos soak, short: the real node binary under many faults at once, with a fixed seed
//! and then a random one (printed, so a failure can be replayed with
//! `cargo run --release --features testkit --example chaos -- --seed S --duration 40s`).
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use quicmesh::chaos::{run, ChaosOptions};

fn node_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_quicmesh"))
}

async fn soak(seed: u64) {
    let opts = ChaosOptions::new(seed, Duration::from_secs(40), node_bin());
    println!("chaos: seed {seed}");
    let report = run(&opts)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: the soak could not run: {e}"));
    println!("{report}");
    assert!(report.passed(), "seed {seed}: invariants broken:\n{report}");
    // The soak must have done what it says: faults struck and traffic flowed through them.
    let carried: usize = report.faults.values().map(|(_, c)| c).sum();
    assert!(carried >= 10, "only {carried} faults carried out");
    assert!(report.calls.ok >= 500, "only {} calls succeeded", report.calls.ok);
    assert!(
        report.streams.ok >= 5,
        "only {} long streams completed",
        report.streams.ok
    );
}

// One test, both seeds in turn: two soaks at once would only fight over the two cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_faults_at_once_break_no_invariant_with_a_fixed_and_a_random_seed() {
    soak(19).await;
    use rand::{Rng, SeedableRng};
    let seed = rand::rngs::SmallRng::from_os_rng().random();
    soak(seed).await;
}
