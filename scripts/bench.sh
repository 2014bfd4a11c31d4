#!/usr/bin/env bash
# Runs every benchmark: the criterion micro-benches (short measurement times for 2-core
# machines) and the end-to-end netns throughput bench (root; skips with a message otherwise),
# then prints where the results are.
#
#   scripts/bench.sh                    # everything
#   FLANNEL_BENCH_RUNS=5 FLANNEL_BENCH_SECS=10 scripts/bench.sh   # longer throughput runs
#   FLANNEL_BENCH_MODES=udp,udp-mmsg scripts/bench.sh             # a subset (vxlan always runs)
#
# The throughput bench needs root and a namespace cluster (scripts/packages.sh); as root, this
# script installs what is missing (without root the bench says so and skips).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
    . scripts/packages.sh
    install_for build cluster bench
fi
target="${CARGO_TARGET_DIR:-$PWD/target}"

echo "==> criterion micro-benches"
cargo bench --locked --bench datapath -- --warm-up-time 0.5 --measurement-time 1 2>&1 \
    | grep -Ev '^(Benchmarking|Gnuplot|$)' || true

echo "==> end-to-end throughput (netns testbed)"
cargo bench --locked --bench throughput

echo
echo "==> results"
echo "  criterion:   $target/criterion/"
echo "  throughput:  $target/bench/throughput.md (table), throughput.json, throughput.svg (plot)"
