# Every Debian package a project script installs, named once, keyed by what needs it.
# Sourced by test.sh, demo.sh, bench.sh and fresh-check.sh.
#
#   install_for build cluster test     # install what those needs are missing
#
# Prerequisites the README asks for are not here: Debian 12, build-essential, git,
# ca-certificates, python3 and a Rust toolchain. Everything else is.
#
# A package counts as present when dpkg says it is installed, not when some command
# of that name is on PATH: the old check ("is protoc on PATH?") passed on a machine
# that had protoc but not the .proto files the build needs, and CI stayed green.

# --- what needs what -----------------------------------------------------------
# The build. etcd-client's build script compiles etcd's gRPC API from .proto files
# with protoc at build time (prost-build has no pure-Rust mode, and no maintained
# crate ships the etcd v3 API pre-generated). Those files import protobuf's
# well-known types (google/protobuf/descriptor.proto, struct.proto), which Debian
# ships in libprotobuf-dev, only a *recommendation* of protobuf-compiler.
# Considered and rejected: protoc-bin-vendored (a crate with protoc and the includes)
# cannot reach a dependency's build script without a machine-specific path in
# .cargo/config.toml; committing Google's .proto files into this repository would
# pin them to one protoc by hand. Two Debian packages from the same source, kept in
# step by apt, are the smallest dependable footprint.
PKGS_build=(protobuf-compiler libprotobuf-dev)

# A cluster in network namespaces (demo, netns tests, throughput bench): iproute2
# builds it, etcd (server and etcdctl) is the store, ping and iperf3 make traffic,
# iptables for the masquerade rules flanneld installs, the CNI reference plugins
# (bridge, host-local) that our CNI plugin delegates to, procps for kill/sysctl.
PKGS_cluster=(iproute2 etcd-server etcd-client iputils-ping iperf3 iptables
    containernetworking-plugins procps)

# The test suite on top of a cluster: nft for the nftables masquerade tests,
# openssl for the etcd TLS certificates, python3-venv for the venv that holds moto
# (the EC2 emulator of tests/aws_vpc.rs; Debian's python3 has no ensurepip without it).
PKGS_test=(nftables openssl python3-venv)

# The throughput bench, on top of a cluster: sockperf for back-to-back UDP
# request/response latency (sockperf ping-pong) beside ping's 10-ms samples.
PKGS_bench=(sockperf)

# scripts/fresh-check.sh: builds a minimal Debian root.
PKGS_fresh_check=(debootstrap)

# scripts/package.sh: cargo-deb (installed by the script with cargo) reads shared-library
# dependencies with dpkg-shlibdeps (dpkg-dev) and strips with binutils' objcopy; lintian
# checks the result.
PKGS_package=(dpkg-dev binutils lintian)

# scripts/package-test.sh: boots a clean Debian root with systemd as PID 1
# (systemd-nspawn, from systemd-container), made with debootstrap as fresh-check makes its
# own.
PKGS_package_test=(systemd-container debootstrap)

# --- installing ---------------------------------------------------------------
# Installs the packages of the given needs that dpkg does not list as installed.
install_for() {
    local need pkg missing=()
    for need in "$@"; do
        local -n list="PKGS_${need//-/_}"
        for pkg in "${list[@]}"; do
            dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' ||
                missing+=("$pkg")
        done
        unset -n list
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages: ${missing[*]} (run as root to install them)" >&2
        return 1
    fi
    echo "==> installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
