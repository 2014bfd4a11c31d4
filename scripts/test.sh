#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine, builds the
# tests once, and runs the whole suite. The README's test command.
#
#   scripts/test.sh            # everything
#   scripts/test.sh NAME       # only tests whose name contains NAME
#
# With CI=true every privileged capability is required: a test that would skip
# fails instead (see tests/common/mod.rs, FLANNEL_TEST_REQUIRE).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/packages.sh
install_missing etcd:etcd-server etcdctl:etcd-client protoc:protobuf-compiler ip:iproute2 \
    openssl:openssl iptables:iptables nft:nftables iperf3:iperf3 ping:iputils-ping \
    /usr/lib/cni/bridge:containernetworking-plugins

# moto, the EC2 API emulator tests/aws_vpc.rs runs against, in a venv of its own.
if [ ! -x .venv/bin/moto_server ]; then
    echo "==> installing moto[server] into .venv"
    if ! python3 -m venv .venv >/dev/null 2>&1; then
        # Debian's python3 lacks ensurepip until python3-venv is installed.
        rm -rf .venv
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
        python3 -m venv .venv
    fi
    .venv/bin/pip install -q 'moto[server]>=5,<6'
fi
export MOTO_SERVER="$PWD/.venv/bin/moto_server"

if [ "${CI:-}" = "true" ]; then
    export FLANNEL_TEST_REQUIRE="${FLANNEL_TEST_REQUIRE:-all}"
fi

echo "==> building tests"
cargo build --all-targets --locked 2>&1 | tail -3
if [ -f fuzz/Cargo.toml ]; then
    echo "==> building fuzz targets (stable; the fuzzer itself runs via scripts/fuzz.sh)"
    cargo build --manifest-path fuzz/Cargo.toml 2>&1 | tail -3
fi

echo "==> building benches (release; run them with scripts/bench.sh)"
cargo bench --no-run --locked 2>&1 | tail -3

echo "==> running tests"
log=$(mktemp)
set +e
# --nocapture: a skipped test's `SKIP ...` line must be visible, never a silent pass.
cargo test --all-targets --locked -- --nocapture "${@}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
skips=$(grep -c '^SKIP ' "$log" || true)
echo "==> skipped tests: $skips"
grep '^SKIP ' "$log" || true
rm -f "$log"
exit "$status"
