#!/usr/bin/env bash
# Runs one cargo-fuzz target for a time budget (default 60 s each target).
#   scripts/fuzz.sh [TARGET] [SECONDS]
# cargo-fuzz needs nightly features; on a stable toolchain RUSTC_BOOTSTRAP=1
# unlocks them. New inputs land in fuzz/corpus/<target>.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=${1:-"net_conf lease_json subnet_env packet offload"}
secs=${2:-60}
for t in $targets; do
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$secs"
done
