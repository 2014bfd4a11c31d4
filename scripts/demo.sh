#!/usr/bin/env bash
# The flannel-rs demo: a 3-host cluster in network namespaces on this machine.
#
#   scripts/demo.sh                  build, start, show leases, ping every pod pair,
#                                    run a short iperf3, print a summary, tear down
#   scripts/demo.sh --keep           leave the cluster up and print how to use it
#   scripts/demo.sh --down           tear down a cluster left by --keep
#   scripts/demo.sh --backend vxlan  another backend (udp, vxlan, host-gw); default udp
#
# Layout (all inside namespaces this script creates; nothing touches the host's
# own network):
#   fldemo-fab   bridge br0 192.0.2.254/24 + etcd (Debian etcd-server)
#   fldemo-hN    eth0 192.0.2.N/24, flanneld, pods' bridge cni0
#   fldemo-pN    a pod, created by our `flannel` CNI plugin (bridge + host-local)
# Needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
P=fldemo
STATE=/tmp/$P
HOSTS=3
NETWORK=10.5.0.0/16
MODE=run
BACKEND=udp
while [ $# -gt 0 ]; do
    case "$1" in
        --keep | --down) MODE=$1 ;;
        --backend) BACKEND=${2:?--backend needs a type}; shift ;;
        --backend=*) BACKEND=${1#--backend=} ;;
        *) echo "usage: $0 [--keep | --down] [--backend udp|vxlan|host-gw]"; exit 2 ;;
    esac
    shift
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

down() {
    for pidfile in "$STATE"/*.pid; do
        [ -e "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$P-" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$STATE"
}

if [ "$MODE" = "--down" ]; then
    down
    say "demo cluster removed"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "demo.sh needs root (network namespaces)"; exit 1; }

# --- install and build -------------------------------------------------------
. "$ROOT/scripts/packages.sh"
. "$ROOT/scripts/lib.sh"
install_for build cluster
say "building flanneld and the flannel CNI plugin (release)"
quietly "cargo build" cargo build --release --bins --locked
BIN=$ROOT/target/release

# --- cluster -----------------------------------------------------------------
down
mkdir -p "$STATE"
if [ "$MODE" != "--keep" ]; then trap down EXIT; fi

say "fabric: bridge + etcd in $P-fab"
ip netns add $P-fab
ip -n $P-fab link set lo up
ip -n $P-fab link add br0 type bridge forward_delay 0
ip -n $P-fab addr add 192.0.2.254/24 dev br0
ip -n $P-fab link set br0 up
ip netns exec $P-fab etcd --name demo --data-dir "$STATE/etcd" \
    --listen-client-urls http://192.0.2.254:2379 --advertise-client-urls http://192.0.2.254:2379 \
    --listen-peer-urls http://192.0.2.254:2380 --initial-advertise-peer-urls http://192.0.2.254:2380 \
    --initial-cluster demo=http://192.0.2.254:2380 >"$STATE/etcd.log" 2>&1 &
echo $! >"$STATE/etcd.pid"
disown
ctl() { ip netns exec $P-fab env ETCDCTL_API=3 etcdctl --endpoints http://192.0.2.254:2379 "$@"; }
for _ in $(seq 50); do ctl endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
ctl put /coreos.com/network/config "{\"Network\":\"$NETWORK\",\"Backend\":{\"Type\":\"$BACKEND\"}}" >/dev/null

for i in $(seq 1 $HOSTS); do
    h=$P-h$i
    ip netns add "$h"
    ip -n "$h" link set lo up
    ip -n "$h" link add eth0 type veth peer name vh$i netns $P-fab
    ip -n $P-fab link set vh$i master br0 up
    ip -n "$h" addr add 192.0.2.$i/24 dev eth0
    ip -n "$h" link set eth0 up
    ip netns exec "$h" sysctl -qw net.ipv4.ip_forward=1
    mkdir -p "$STATE/h$i"
    ip netns exec "$h" "$BIN/flanneld" --etcd-endpoints http://192.0.2.254:2379 --iface eth0 \
        --healthz-ip 127.0.0.1 --healthz-port 8471 \
        --subnet-file "$STATE/h$i/subnet.env" >"$STATE/h$i/flanneld.log" 2>&1 &
    echo $! >"$STATE/h$i.pid"
    disown
done
say "started flanneld ($BACKEND backend) in $HOSTS host namespaces"
for i in $(seq 1 $HOSTS); do
    for _ in $(seq 100); do [ -s "$STATE/h$i/subnet.env" ] && break; sleep 0.1; done
    [ -s "$STATE/h$i/subnet.env" ] || { echo "host $i got no lease:"; cat "$STATE/h$i/flanneld.log"; exit 1; }
done

say "leases in etcd (flannelctl leases)"
ip netns exec $P-fab "$BIN/flannelctl" --etcd-endpoints http://192.0.2.254:2379 leases | sed 's/^/    /'

say "pods, created by our flannel CNI plugin (delegating to bridge + host-local)"
declare -a POD_IP
for i in $(seq 1 $HOSTS); do
    pod=$P-p$i
    ip netns add "$pod"
    conf="{\"cniVersion\":\"1.0.0\",\"name\":\"demo\",\"type\":\"flannel\",
           \"subnetFile\":\"$STATE/h$i/subnet.env\",\"dataDir\":\"$STATE/h$i/cni\",
           \"ipam\":{\"dataDir\":\"$STATE/h$i/ipam\"},
           \"delegate\":{\"isDefaultGateway\":true,\"ipMasq\":false}}"
    result=$(echo "$conf" | ip netns exec "$P-h$i" env CNI_COMMAND=ADD CNI_CONTAINERID="$pod" \
        CNI_NETNS=/var/run/netns/$pod CNI_IFNAME=eth0 CNI_PATH="$BIN:/usr/lib/cni" "$BIN/flannel" 2>>"$STATE/h$i/cni.log")
    POD_IP[$i]=$(echo "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])')
    echo "    pod $i: ${POD_IP[$i]} on host $i ($(grep FLANNEL_SUBNET "$STATE/h$i/subnet.env"))"
done

say "pod-to-pod ping, every pair"
ok=0; total=0
for i in $(seq 1 $HOSTS); do
    for j in $(seq 1 $HOSTS); do
        [ "$i" = "$j" ] && continue
        total=$((total + 1))
        if ip netns exec $P-p$i ping -c 3 -i 0.2 -W 2 -q "${POD_IP[$j]}" >/dev/null 2>&1; then
            ok=$((ok + 1)); echo "    pod $i -> pod $j (${POD_IP[$j]}): ok"
        else
            echo "    pod $i -> pod $j (${POD_IP[$j]}): FAILED"
        fi
    done
done

# iperf3 -c for 3 s from namespace $1 to address $2 (server in namespace $3): Gbit/s.
iperf() {
    ip netns exec "$3" iperf3 -s -1 -D >/dev/null 2>&1 || true
    sleep 0.5
    ip netns exec "$1" iperf3 -c "$2" -t 3 -J 2>/dev/null |
        python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))' ||
        echo "?"
}
say "iperf3, 3 seconds: pod 1 -> pod 2 over the $BACKEND backend, and host 1 -> host 2 over the plain underlay"
gbps=$(iperf $P-p1 "${POD_IP[2]}" $P-p2)
echo "    overlay ($BACKEND): $gbps Gbit/s"
underlay=$(iperf $P-h1 192.0.2.2 $P-h2)
echo "    underlay (veth + bridge): $underlay Gbit/s"

say "host 1 as its operator sees it (flannelctl status, from the health server's /status)"
ip netns exec $P-h1 "$BIN/flannelctl" --healthz-port 8471 status | sed 's/^/    /'

say "summary"
echo "    backend: $BACKEND, hosts: $HOSTS, leases: $(ctl get --prefix /coreos.com/network/subnets --keys-only | grep -c subnets)"
echo "    pod-to-pod pings: $ok/$total ok"
echo "    iperf3 pod 1 -> pod 2: $gbps Gbit/s (underlay host 1 -> host 2: $underlay Gbit/s)"

if [ "$MODE" = "--keep" ]; then
    say "cluster left running"
    echo "    enter a pod:   ip netns exec $P-p1 bash"
    echo "    enter a host:  ip netns exec $P-h1 bash   (logs: $STATE/h1/flanneld.log)"
    echo "    leases:        ip netns exec $P-fab $BIN/flannelctl --etcd-endpoints http://192.0.2.254:2379 leases"
    echo "    a node:        ip netns exec $P-h1 $BIN/flannelctl --healthz-port 8471 status   (metrics: GET 127.0.0.1:8471/metrics there)"
    echo "    take it down:  scripts/demo.sh --down"
fi
[ "$ok" = "$total" ]
