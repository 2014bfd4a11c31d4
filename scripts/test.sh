#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine, builds the
# tests once, and runs the whole suite. The README's test command.
#
#   scripts/test.sh                # everything
#   scripts/test.sh NAME           # only tests whose name contains NAME
#   scripts/test.sh --build-only   # install and build everything, run nothing
#                                  # (scripts/fresh-check.sh uses it in a clean root)
#
# With CI=true every privileged capability is required: a test that would skip
# fails instead (see tests/common/mod.rs, FLANNEL_TEST_REQUIRE).
set -euo pipefail
cd "$(dirname "$0")/.."

build_only=false
if [ "${1:-}" = "--build-only" ]; then
    build_only=true
    shift
fi

. scripts/packages.sh
. scripts/lib.sh
install_for build cluster test

# A venv of the tests' own Python tools: moto, the EC2 API emulator tests/aws_vpc.rs runs
# against, and prometheus-client, whose text-format parser reads /metrics in
# tests/metrics.rs.
if [ ! -x .venv/bin/moto_server ] || ! .venv/bin/python3 -c 'import prometheus_client' 2>/dev/null; then
    echo "==> installing moto[server] and prometheus-client into .venv"
    rm -rf .venv
    python3 -m venv .venv
    .venv/bin/pip install -q 'moto[server]>=5,<6' 'prometheus-client>=0.20,<1'
fi
export MOTO_SERVER="$PWD/.venv/bin/moto_server"

if [ "${CI:-}" = "true" ]; then
    export FLANNEL_TEST_REQUIRE="${FLANNEL_TEST_REQUIRE:-all}"
fi

target="${CARGO_TARGET_DIR:-$PWD/target}"

echo "==> formatting and lints (cargo fmt --check, cargo clippy -D warnings)"
# rustup's default profile has both; a minimal one does not.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null; then
        rustup component add rustfmt clippy
    else
        echo "test.sh needs cargo fmt and cargo clippy (rustup component add rustfmt clippy)" >&2
        exit 1
    fi
fi
cargo fmt --check
cargo clippy --quiet --all-targets --locked -- -D warnings

# --all-targets includes the benches (in the dev profile): they are compiled, and so kept
# building, without a second, release build; scripts/bench.sh makes that one.
echo "==> building tests and benches"
quietly "cargo build" cargo build --all-targets --locked

echo "==> building fuzz targets (stable; the fuzzer itself runs via scripts/fuzz.sh)"
# The fuzz crate is its own workspace. Seeding its lock file from ours and building
# into our target directory resolves the same versions and reuses the compiled
# dependencies, instead of a second full build with whatever versions are newest.
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
quietly "fuzz build" cargo build --manifest-path fuzz/Cargo.toml --target-dir "$target"


if $build_only; then
    echo "==> built everything (--build-only: no tests run)"
    exit 0
fi

echo "==> running tests"
log=$(mktemp)
set +e
# --nocapture: a skipped test's `SKIP ...` line must be visible, never a silent pass.
cargo test --all-targets --locked --no-fail-fast -- --nocapture "${@}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
skips=$(grep -c '^SKIP ' "$log" || true)
echo "==> skipped tests: $skips"
grep '^SKIP ' "$log" || true
rm -f "$log"
exit "$status"
