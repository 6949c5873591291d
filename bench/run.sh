#!/usr/bin/env bash
# Runs the end-to-end benchmarks on loopback and writes docs/benchmarks.md.
#   bench/run.sh            # 1 GiB per throughput run, 5 runs, 3 s per latency cell
#   QM_MIB=256 QM_RUNS=3 QM_DURATION=1s bench/run.sh   # quicker
# Then the criterion micro-benchmarks (benches/micro.rs), summarised as a table.
# Installs HAProxy and iperf3 from the Debian packages if they are missing (needs root for that).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in haproxy iperf3; do
    if ! command -v "$tool" >/dev/null; then
        if [ "$(id -u)" = 0 ]; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y "$tool" >/dev/null
        else
            echo "$tool is not installed and this is not root: its rows (HAProxy) or column (iperf3) will be missing" >&2
        fi
    fi
done
cargo build --release --bin quicmesh --example bench_mesh
out=docs/benchmarks.md
tmp=$(mktemp)
target/release/examples/bench_mesh --mib "${QM_MIB:-1024}" --runs "${QM_RUNS:-5}" --duration "${QM_DURATION:-3s}" >"$tmp"
micro=$(mktemp)
cargo bench --bench micro -- --output-format bencher 2>/dev/null | grep '^test ' >"$micro"
{
    echo "# Benchmarks"
    echo
    echo "Written by \`bench/run.sh\` on $(date -u +%Y-%m-%d). Everything runs on loopback on one machine:"
    echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB,"
    echo "$(uname -sr), $(rustc --version)."
    echo "Command: \`target/release/examples/bench_mesh --mib ${QM_MIB:-1024} --runs ${QM_RUNS:-5} --duration ${QM_DURATION:-3s}\`."
    echo "Client, nodes, backends and HAProxy share the same cores, so every path pays for all"
    echo "of its hops' CPU; ratios are to baselines measured in the same run."
    echo
    cat "$tmp"
    echo "### Micro-benchmarks (criterion, \`cargo bench --bench micro\`)"
    echo
    echo "| benchmark | time per iteration |"
    echo "|---|---|"
    # bencher format: test NAME ... bench: N ns/iter (+/- M)
    sed -E 's/^test (.*) \.\.\. bench: +([0-9,]+) ns\/iter \(\+\/- ([0-9,]+)\)$/| \1 | \2 ns (± \3) |/' "$micro"
    echo
    if [ -f docs/benchmarks-notes.md ]; then cat docs/benchmarks-notes.md; fi
} >"$out"
rm -f "$tmp" "$micro"
echo "wrote $out" >&2
