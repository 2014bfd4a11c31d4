#!/usr/bin/env bash
# The Debian package, tested as an operator uses it: in a clean Debian 12 root booted with
# systemd as PID 1 (systemd-nspawn --boot), flanneld runs under the unit as shipped.
#
#   scripts/package-test.sh            # as root; .ci/run runs it
#   scripts/package-test.sh --rebuild  # make the cached Debian root again
#   scripts/package-test.sh --keep     # leave the root, the netns and the logs afterwards
#
# Two nodes on one veth, each in a network namespace made here (never the host's network):
#  - node A: the booted container (--network-namespace-path): the package installed with
#    dpkg, etcd as a transient unit, flanneld.service;
#  - node B: the peer, the release flanneld run directly in its namespace.
# Checked, in order: dpkg -i; the CNI plugin answers VERSION from /opt/cni/bin/flannel; man
# flanneld renders; flanneld.service stays `activating` until etcd lets it write subnet.env,
# then `active` (Type=notify), flannelctl status ready on io_uring, flannel0 and the
# masquerade rules there; a ping through flannel0 to B; an upgrade (dpkg -i of a second
# package, another version) under a ping every 10 ms: none lost, same PID, new version in
# /status; systemctl reload (same PID, a new image), stop, start; a lease renewal; vxlan
# (forwarding, accept_ra written under ProtectKernelTunables); dpkg -r stops flanneld, purge
# leaves nothing of the package on disk and the lease in etcd. Every line of the unit's
# hardening is in force throughout (the test never edits the unit).
#
# The root: `debootstrap --variant=minbase` plus systemd, etcd, iproute2, iptables, man-db
# (scripts/lib.sh, as fresh-check makes its own), cached under $PACKAGE_TEST_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

rebuild=false keep=false
while [ $# -gt 0 ]; do
    case "$1" in
        --rebuild) rebuild=true ;;
        --keep) keep=true ;;
        *) echo "usage: $0 [--rebuild] [--keep]" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "package-test.sh needs root (nspawn, netns)" >&2; exit 1; }

. scripts/packages.sh
. scripts/lib.sh
install_for build cluster package package_test

CACHE=${PACKAGE_TEST_CACHE:-/var/cache/flannel-rs/package-test}
WORK=${PACKAGE_TEST_DIR:-/var/tmp/flannel-rs-package-test}
ROOT_PKGS=(systemd systemd-sysv dbus etcd-server etcd-client iproute2 iputils-ping iptables
    man-db procps)
NS_A=flpkg-a NS_B=flpkg-b
IP_A=10.77.0.1 IP_B=10.77.0.2
HEALTHZ=8471

say() { printf '==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
start_time=$(date +%s)

# --- the packages: this build, and the same build as a newer version ----------------------
say "building the packages"
deb1=$(bash scripts/package.sh --lintian --fast | tee "$WORK.package.log" | tail -1) ||
    { cat "$WORK.package.log"; fail "scripts/package.sh"; }
sed -n '/^==> lintian/,/^==> package/p' "$WORK.package.log"
deb2=$(bash scripts/package.sh --fast --deb-revision 2 --build-tag pkgtest2 | tail -1)
v1=$(dpkg-deb -f "$deb1" Version) v2=$(dpkg-deb -f "$deb2" Version)
say "packages: $deb1 ($v1), $deb2 ($v2)"
dpkg --compare-versions "$v2" gt "$v1" || fail "$v2 is not newer than $v1"

# --- the root ----------------------------------------------------------------------------
mkdir -p "$CACHE"
key=$(printf '%s ' "$DEBIAN_SUITE" "${ROOT_PKGS[@]}" | sha256sum | cut -c1-12)
TARBALL=$CACHE/debian-$DEBIAN_SUITE-boot-$key.tar
if $rebuild || [ ! -s "$TARBALL" ]; then
    make_root_tarball "$TARBALL" "$CACHE/debootstrap.log" "${ROOT_PKGS[@]}"
else
    say "Debian root: $TARBALL (cached; --rebuild makes it again)"
fi

NSPAWN_PID="" PEER_PID="" PING_PID=""
ROOT=$WORK/root
cleanup() {
    local status=$?
    set +e
    [ -n "$PING_PID" ] && kill "$PING_PID" 2>/dev/null
    [ -n "$PEER_PID" ] && { kill "$PEER_PID" 2>/dev/null; wait "$PEER_PID" 2>/dev/null; }
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        # SIGTERM asks nspawn to shut the container down cleanly; then by force.
        kill "$NSPAWN_PID"
        for _ in $(seq 50); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$NSPAWN_PID" 2>/dev/null
        wait "$NSPAWN_PID" 2>/dev/null
    fi
    if ! $keep; then
        ip netns del "$NS_A" 2>/dev/null
        ip netns del "$NS_B" 2>/dev/null
        rm -rf "$WORK" "$WORK.package.log"
    fi
    [ "$status" = 0 ] || echo "package test failed; logs were in $WORK (use --keep to keep them)" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$WORK"
mkdir -p "$ROOT" "$WORK/b"
tar -C "$ROOT" -xf "$TARBALL"
echo flpkg-a >"$ROOT/etc/hostname"
# The distribution's etcd.service is not what this test runs (see below). D-Bus and logind
# are not needed (systemctl talks to systemd over its private socket as root), and
# dbus-daemon fails to start in a container here (its inotify watch is refused), which
# would hold the boot for its 90-second timeout.
for unit in etcd.service dbus.service dbus.socket systemd-logind.service; do
    ln -sf /dev/null "$ROOT/etc/systemd/system/$unit"
done
mkdir -p "$ROOT/root/pkgs"
cp "$deb1" "$deb2" "$ROOT/root/pkgs/"
DEB1=/root/pkgs/${deb1##*/} DEB2=/root/pkgs/${deb2##*/}

# --- the two nodes' network namespaces ----------------------------------------------------
for ns in "$NS_A" "$NS_B"; do
    ip netns del "$ns" 2>/dev/null || true
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
ip link add pa netns "$NS_A" type veth peer name pb netns "$NS_B"
ip -n "$NS_A" addr add "$IP_A/24" dev pa
ip -n "$NS_B" addr add "$IP_B/24" dev pb
ip -n "$NS_A" link set pa up
ip -n "$NS_B" link set pb up

# --- boot ----------------------------------------------------------------------------------
say "booting the root with systemd (systemd-nspawn --boot) in netns $NS_A"
# - the unified cgroup hierarchy in the container, whatever the host mounts, so that systemd
#   there enforces DevicePolicy=/DeviceAllow= the way it does on a Debian 12 host (a BPF
#   device program on the unit's cgroup);
# - bpf(2) let through nspawn's own seccomp filter, which otherwise denies it to the
#   container: without it systemd cannot attach that program and DeviceAllow= would be
#   silently ignored (the daemon would pass with or without it);
# - CAP_NET_ADMIN, which nspawn keeps for --private-network but not for a network namespace
#   given by path: without it no unit in the container can create a TUN device.
# --register=no --keep-unit: the host need not run systemd or machined.
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn --boot --directory="$ROOT" --machine=flpkg-a \
    --register=no --keep-unit --network-namespace-path="/run/netns/$NS_A" \
    --capability=CAP_NET_ADMIN --system-call-filter=bpf --console=passive --quiet \
    >"$WORK/console.log" 2>&1 </dev/null &
NSPAWN_PID=$!
LEADER=""
for _ in $(seq 100); do
    LEADER=$(pgrep -P "$NSPAWN_PID" | head -1 || true)
    [ -n "$LEADER" ] && [ "$(cat "/proc/$LEADER/comm" 2>/dev/null)" = systemd ] && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$WORK/console.log"; fail "systemd-nspawn exited"; }
    sleep 0.2
done
[ "$(cat "/proc/$LEADER/comm" 2>/dev/null)" = systemd ] || fail "no systemd in the container"
# inc CMD...: runs CMD in the container (all its namespaces, its root).
inc() { nsenter --target "$LEADER" --all -- "$@"; }
incsh() { nsenter --target "$LEADER" --all -- /bin/sh -ec "$1"; }
# Until systemd's socket is up, systemctl cannot connect and prints no state.
state=""
for _ in $(seq 240); do
    state=$(inc timeout 120 systemctl is-system-running --wait 2>/dev/null || true)
    [ -n "$state" ] && break
    sleep 0.5
done
[ "$state" = running ] || { inc systemctl --failed --no-pager; fail "system state after boot: $state"; }
say "booted: PID 1 in the container is $(inc cat /proc/1/comm), system $state, $(inc systemctl --version | head -1)"

# --- install --------------------------------------------------------------------------------
say "dpkg -i $v1"
inc dpkg -i "$DEB1" >"$WORK/dpkg-i.log" 2>&1 || { cat "$WORK/dpkg-i.log"; fail "dpkg -i"; }
[ "$(inc dpkg-query -W -f='${Status} ${Version}' flannel-rs)" = "install ok installed $v1" ] ||
    fail "flannel-rs not installed"
inc systemctl is-enabled --quiet flanneld.service && fail "enabled at install (it needs etcd first)"
inc systemctl is-active --quiet flanneld.service && fail "started at install"
inc test -x /usr/bin/flanneld -a -x /usr/bin/flannelctl -a -x /usr/lib/cni/flannel ||
    fail "binaries missing"
cni=$(inc env CNI_COMMAND=VERSION /opt/cni/bin/flannel </dev/null)
echo "$cni" | grep -q '"supportedVersions"' || fail "/opt/cni/bin/flannel VERSION: $cni"
say "CNI: /opt/cni/bin/flannel -> $(inc readlink -f /opt/cni/bin/flannel) answers VERSION"
inc env MANPAGER=cat MANWIDTH=80 man flanneld 2>/dev/null | grep -q 'FLANNELD_ETCD_ENDPOINTS' ||
    fail "man flanneld does not render"
inc env MANPAGER=cat man 8 flannelctl 2>/dev/null | grep -q 'leases' || fail "man flannelctl"
inc test -f /usr/share/bash-completion/completions/flanneld || fail "no bash completion"
version=$(inc flanneld --version 2>&1)
echo "$version" | grep -Eq "^${v1%-*} \(commit [0-9a-f]{12}, build dev\)$" ||
    fail "flanneld --version: $version"
inc flannelctl --version | grep -Eq "^flannelctl ${v1%-*} \(commit [0-9a-f]{12}\)$" ||
    fail "flannelctl --version"
say "flanneld --version: $version; man pages render; bash completion present"

# The operator's configuration: /etc/default/flanneld (a conffile: kept across upgrades).
cat >>"$ROOT/etc/default/flanneld" <<EOF

# package test
FLANNELD_ETCD_ENDPOINTS="http://127.0.0.1:2379"
FLANNELD_IFACE="pa"
FLANNELD_HEALTHZ_PORT="$HEALTHZ"
FLANNELD_IP_MASQ="true"
# Renew the 24-hour lease one minute after taking it, so the test sees a renewal.
FLANNELD_SUBNET_LEASE_RENEW_MARGIN="1439"
EOF
status_json() { incsh 'set -a; . /etc/default/flanneld; exec flannelctl -o json status'; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# --- helpers: node B, the peer, run directly in its namespace -----------------------------
start_peer() {
    rm -f "$WORK/b/subnet.env"
    ip netns exec "$NS_B" "$REPO/target/release/flanneld" --etcd-endpoints="http://$IP_A:2379" \
        --iface=pb --subnet-file="$WORK/b/subnet.env" >"$WORK/b/flanneld-$1.log" 2>&1 &
    PEER_PID=$!
    for _ in $(seq 150); do [ -s "$WORK/b/subnet.env" ] && break; sleep 0.2; done
    [ -s "$WORK/b/subnet.env" ] || { tail "$WORK/b/flanneld-$1.log"; fail "peer not up"; }
}
stop_peer() { kill "$PEER_PID"; wait "$PEER_PID" || true; PEER_PID=""; }
addr_of() { inc ip -4 -o addr show dev "$1" | awk '{ split($4, a, "/"); print a[1]; exit }'; }
# ping_a ADDR WHAT: the peer pings A's ADDR through the overlay (after a few tries to warm up).
ping_a() {
    for _ in $(seq 50); do ip netns exec "$NS_B" ping -c1 -W1 "$1" >/dev/null 2>&1 && break; sleep 0.2; done
    ip netns exec "$NS_B" ping -c 5 -i 0.2 -W 2 -q "$1" >/dev/null || fail "no ping from the peer to $1 $2"
}
active_state() { inc systemctl show -p ActiveState --value flanneld.service; }
main_pid() { inc systemctl show -p MainPID --value flanneld.service; }
etcdctl_() { inc env ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 "$@"; }
net_config() {
    etcdctl_ put /coreos.com/network/config \
        "{\"Network\":\"10.99.0.0/16\",\"SubnetLen\":24,\"Backend\":{\"Type\":\"$1\"}}" >/dev/null
}

# --- notify: active only once subnet.env is written (vxlan first) -------------------------
say "systemctl enable flanneld, start it with etcd down: it must stay activating"
inc systemctl enable --quiet flanneld.service
inc systemctl start --no-block flanneld.service
sleep 4
st=$(active_state)
[ "$st" = activating ] || fail "flanneld is $st before etcd is up (Type=notify should hold it)"
inc test ! -e /run/flannel/subnet.env || fail "subnet.env written without etcd"

# etcd, inside the container (a transient unit), for both nodes.
inc systemd-run --quiet --unit=test-etcd /usr/bin/etcd --name flpkg --data-dir /var/lib/test-etcd \
    --listen-client-urls "http://$IP_A:2379,http://127.0.0.1:2379" \
    --advertise-client-urls "http://$IP_A:2379" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster flpkg=http://127.0.0.1:2380
for _ in $(seq 50); do etcdctl_ endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
net_config vxlan
for _ in $(seq 150); do [ "$(active_state)" = active ] && break; sleep 0.2; done
[ "$(active_state)" = active ] ||
    { inc journalctl -u flanneld --no-pager | tail -30; fail "flanneld not active"; }
inc test -s /run/flannel/subnet.env || fail "active without subnet.env"
say "active (running) once etcd answered, after subnet.env: $(inc cat /run/flannel/subnet.env | tr '\n' ' ')"

# --- vxlan ---------------------------------------------------------------------------------
st=$(status_json)
[ "$(echo "$st" | json 'd["ready"]')" = True ] || fail "flannelctl status: not ready: $st"
[ "$(echo "$st" | json 'd["backend"]')" = vxlan ] || fail "not vxlan: $st"
inc iptables -t nat -S | grep -q FLANNEL-POSTRTG || fail "no masquerade rules (iptables under the unit)"
start_peer vxlan
A_ADDR=$(addr_of flannel.1)
ping_a "$A_ADDR" "over vxlan"
[ "$(inc cat /proc/sys/net/ipv6/conf/flannel.1/accept_ra)" = 0 ] ||
    fail "accept_ra not written on flannel.1 (ProtectKernelTunables + ReadWritePaths)"
say "vxlan: ready; flannel.1 ($A_ADDR) answers the peer; accept_ra=0 written through ProtectKernelTunables; FLANNEL-POSTRTG in nat"
say "systemd-analyze security flanneld.service (in the container): $(inc systemd-analyze security --no-pager flanneld.service | tail -1)"

# --- udp -----------------------------------------------------------------------------------
say "udp: the network config switched, flanneld restarted"
inc systemctl stop flanneld.service
stop_peer
# flanneld leaves the vxlan device (and its routes) on a clean stop, as upstream does.
inc ip link del flannel.1 2>/dev/null || true
ip -n "$NS_B" link del flannel.1 2>/dev/null || true
net_config udp
# Two lines of the unit shown to be in force in this container, not merely accepted: the
# device policy (without DeviceAllow=/dev/net/tun the daemon cannot make its TUN device)
# and the system-call filter (without io_uring_setup the udp datapath falls back to mmsg).
dropin=$ROOT/etc/systemd/system/flanneld.service.d
mkdir -p "$dropin"
printf '[Service]\nDeviceAllow=\n' >"$dropin/probe.conf"
inc systemctl daemon-reload
inc systemctl start flanneld.service 2>/dev/null && fail "started without DeviceAllow=/dev/net/tun"
inc systemctl stop flanneld.service
printf '[Service]\nSystemCallFilter=~io_uring_setup\n' >"$dropin/probe.conf"
inc systemctl daemon-reload
inc systemctl start flanneld.service
[ "$(status_json | json 'd["datapath"]["io"]')" = mmsg ] || fail "io_uring_setup not filtered"
inc systemctl stop flanneld.service
rm -rf "$dropin"
inc systemctl daemon-reload
say "in force: without DeviceAllow= no TUN device; without io_uring_setup in the filter, mmsg"
inc systemctl start flanneld.service || { inc journalctl -u flanneld --no-pager | tail -20; fail "udp start"; }
PID1=$(main_pid)
started_at=$(date +%s)
st=$(status_json)
expires0=$(echo "$st" | json 'd["lease"]["expires_unix"]')
[ "$(echo "$st" | json 'd["ready"]')" = True ] || fail "flannelctl status: not ready: $st"
[ "$(echo "$st" | json 'd["datapath"]["io"]')" = io_uring ] ||
    fail "not on io_uring under the unit's SystemCallFilter: $st"
inc ip link show flannel0 >/dev/null || fail "no flannel0"
say "udp: PID $PID1 (in the container), ready, io=io_uring, version $(echo "$st" | json 'd["version"]'); flannel0 up"
# The sandbox is in force, seen from the daemon's own process and mount namespace.
proc_status=$(inc cat "/proc/$PID1/status")
echo "$proc_status" | grep -q '^CapBnd:[[:space:]]*0000000000003000$' ||
    fail "bounding set is not CAP_NET_ADMIN+CAP_NET_RAW: $(echo "$proc_status" | grep CapBnd)"
echo "$proc_status" | grep -q '^NoNewPrivs:[[:space:]]*1$' || fail "NoNewPrivileges not set"
echo "$proc_status" | grep -q '^Seccomp:[[:space:]]*2$' || fail "no seccomp filter"
in_unit() { inc nsenter --target "$PID1" --mount -- "$@"; }
in_unit sh -c ': >/usr/flannel-probe' 2>/dev/null && fail "ProtectSystem=strict: /usr writable"
in_unit sh -c ': >/run/flannel/probe && rm /run/flannel/probe' || fail "/run/flannel not writable"
in_unit test -e /root/pkgs && fail "ProtectHome: /root visible to the daemon"
in_unit sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward' 2>/dev/null && fail "ProtectKernelTunables: /proc/sys writable"
say "sandbox: CapBnd=NET_ADMIN+NET_RAW, NoNewPrivs, seccomp on; /usr, /proc/sys read-only, /root empty, /run/flannel writable"
start_peer udp
A_ADDR=$(addr_of flannel0)
ping_a "$A_ADDR" "over udp"
say "udp: flannel0 ($A_ADDR) answers the peer"

# --- upgrade under a 10-ms ping -------------------------------------------------------------
ip netns exec "$NS_B" ping -i 0.01 -c 2000 -W 2 -q "$A_ADDR" >"$WORK/ping-upgrade.log" 2>&1 &
PING_PID=$!
sleep 2
say "dpkg -i $v2 while the peer pings every 10 ms"
inc dpkg -i "$DEB2" >"$WORK/dpkg-upgrade.log" 2>&1 || { cat "$WORK/dpkg-upgrade.log"; fail "upgrade"; }
# The upgrade (and its reload) must have finished while the ping still runs.
kill -0 "$PING_PID" 2>/dev/null || fail "the upgrade outlasted the ping; nothing measured"
wait "$PING_PID" || true
PING_PID=""
tail -2 "$WORK/ping-upgrade.log"
grep -q ' 2000 received, 0% packet loss' "$WORK/ping-upgrade.log" ||
    fail "packets lost across the upgrade: $(grep received "$WORK/ping-upgrade.log")"
[ "$(main_pid)" = "$PID1" ] || fail "PID changed on upgrade"
[ "$(active_state)" = active ] || fail "not active after upgrade"
[ "$(inc dpkg-query -W -f='${Version}' flannel-rs)" = "$v2" ] || fail "not upgraded"
st=$(status_json)
echo "$st" | json 'd["version"]' | grep -q 'build pkgtest2' || fail "/status after upgrade: $st"
inc journalctl -u flanneld --no-pager | grep -q 'took over the udp datapath' ||
    fail "no new image took over"
say "upgrade: 0 of 2000 lost, same PID $PID1, /status says $(echo "$st" | json 'd["version"]')"

# --- reload, stop, start ----------------------------------------------------------------
takeovers() { inc journalctl -u flanneld --no-pager | grep -c 'took over the udp datapath' || true; }
before=$(takeovers)
inc systemctl reload flanneld.service
[ "$(main_pid)" = "$PID1" ] || fail "PID changed on reload"
for _ in $(seq 25); do [ "$(takeovers)" -gt "$before" ] && break; sleep 0.2; done
[ "$(takeovers)" -gt "$before" ] || fail "reload: no new image"
ip netns exec "$NS_B" ping -c 3 -i 0.2 -W 2 -q "$A_ADDR" >/dev/null || fail "no ping after reload"
say "systemctl reload: same PID, a new image took over, ping answers"

# A renewal under the unit (margin 1439 of 1440 minutes: a minute after the lease was
# taken), seen as the lease's expiry moving on.
wait_s=$((started_at + 75 - $(date +%s)))
[ "$wait_s" -gt 0 ] && { say "waiting ${wait_s}s for a lease renewal"; sleep "$wait_s"; }
for _ in $(seq 50); do
    expires=$(status_json | json 'd["lease"]["expires_unix"]')
    [ "$expires" -gt "$expires0" ] && break
    sleep 0.2
done
[ "$expires" -gt "$expires0" ] || fail "no lease renewal under the unit (expiry still $expires0)"
say "lease renewed under the unit: expiry $expires0 -> $expires"

inc systemctl stop flanneld.service
inc ip link show flannel0 >/dev/null 2>&1 && fail "flannel0 left after stop"
inc systemctl start flanneld.service
[ "$(active_state)" = active ] || fail "start"
inc ip link show flannel0 >/dev/null || fail "no flannel0 after start"
ping_a "$A_ADDR" "after start"
say "systemctl stop: flannel0 gone; start: back, ping answers"
LEASE_A=$(incsh '. /run/flannel/subnet.env; echo "$FLANNEL_SUBNET"' | sed 's/\.1\//.0-/')

# --- remove, purge -------------------------------------------------------------------------
files=$(inc dpkg-query -L flannel-rs)
inc dpkg -r flannel-rs >"$WORK/dpkg-r.log" 2>&1 || { cat "$WORK/dpkg-r.log"; fail "dpkg -r"; }
inc systemctl is-active --quiet flanneld.service && fail "still running after dpkg -r"
inc test -f /etc/default/flanneld || fail "dpkg -r removed the conffile"
inc dpkg --purge flannel-rs >"$WORK/dpkg-purge.log" 2>&1 || { cat "$WORK/dpkg-purge.log"; fail "purge"; }
left=""
for f in $files /run/flannel /opt/cni/bin/flannel /etc/alternatives/flannel-cni \
    /etc/systemd/system/multi-user.target.wants/flanneld.service \
    /var/lib/systemd/deb-systemd-helper-enabled/flanneld.service.dsh-also \
    /var/lib/systemd/deb-systemd-helper-masked/flanneld.service; do
    inc test -e "$f" -o -L "$f" || continue
    # A directory other packages own too (/usr/bin, /etc/default, ...) stays.
    [ -d "$ROOT$f" ] && [ ! -L "$ROOT$f" ] && inc dpkg-query -S "$f" >/dev/null 2>&1 && continue
    left="$left $f"
done
[ -z "$left" ] || fail "left after purge:$left"
inc ip link show flannel0 >/dev/null 2>&1 && fail "flannel0 left after purge"
etcdctl_ get --prefix --keys-only /coreos.com/network/subnets | grep -q "$LEASE_A" ||
    fail "the lease $LEASE_A is gone from etcd"
say "dpkg -r stopped it; purge left nothing on disk; the lease $LEASE_A is still in etcd"

say "package test passed in $(($(date +%s) - start_time)) s"
