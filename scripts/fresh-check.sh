#!/usr/bin/env bash
# The clean-room check: proves the README's two set-up commands on a fresh Debian 12.
#
#   scripts/fresh-check.sh               # demo + test suite's install and build steps
#   scripts/fresh-check.sh --full        # ... and the whole test suite in the clean root
#   scripts/fresh-check.sh --rebuild     # build the pristine root again (new download)
#   scripts/fresh-check.sh --keep        # leave the run directories for inspection
#   scripts/fresh-check.sh --only demo   # one command only (demo or test)
#
# What it does, as root:
#  1. A pristine root: `debootstrap --variant=minbase bookworm` from the mirror the host's
#     own apt sources name (read at run time), plus exactly the README's prerequisites
#     (build-essential, git, ca-certificates, python3). Cached as a tarball under
#     $FRESH_CHECK_CACHE; --rebuild makes it again.
#  2. For each command, a fresh copy of that root with the host's *network* set-up (resolver
#     and hosts files, extra CA certificates, apt acquire/proxy settings, pip's certificate
#     setting, proxy variables): what any machine needs to reach the registries, never a
#     project prerequisite. The host's Rust toolchain is mounted read-only; CARGO_HOME is
#     inside the root, so every crate downloads afresh. The repository's committed HEAD is
#     cloned into it (uncommitted changes are not part of the check).
#  3. The command runs the way the README says, with CI=true, in a private mount namespace
#     (its own /proc, /sys, /dev, /dev/pts, and fresh tmpfs on /run and /tmp), chrooted.
#     Afterwards every process started is killed by PID, everything mounted is unmounted,
#     and the copy is removed, also when the command fails or this script is interrupted.
#  4. The last lines are one per command: `ok` with its time, or FAIL with the first error.
#
# The commands: `scripts/demo.sh`, and `scripts/test.sh --build-only` (installs and builds
# everything the suite needs; the suite itself runs once in the work tree, under .ci/run, to
# keep CI inside its time budget). `--full` runs `scripts/test.sh` entire instead.
set -euo pipefail
# Bash reads a script as it runs: run from a copy, so that editing this file during the
# half hour a check takes cannot derail it.
if [ -z "${FRESH_CHECK_RUNNING_COPY:-}" ]; then
    repo=$(cd "$(dirname "$0")/.." && pwd)
    copy=$(mktemp /tmp/fresh-check.XXXXXX.sh)
    cp "$0" "$copy"
    FRESH_CHECK_RUNNING_COPY=$copy FRESH_CHECK_REPO=$repo exec bash "$copy" "$@"
fi
trap 'rm -f "$FRESH_CHECK_RUNNING_COPY"' EXIT
REPO=$FRESH_CHECK_REPO
cd "$REPO"

PREREQS=(build-essential git ca-certificates python3) # the README's prerequisites
CACHE=${FRESH_CHECK_CACHE:-/var/cache/flannel-rs/fresh-check}
WORK=${FRESH_CHECK_DIR:-/var/tmp/flannel-rs-fresh-check}
TIMEOUT=${FRESH_CHECK_TIMEOUT:-2400} # seconds per command

rebuild=false keep=false full=false only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rebuild) rebuild=true ;;
        --keep) keep=true ;;
        --full) full=true ;;
        --only) only=${2:?--only needs demo or test}; shift ;;
        *) echo "usage: $0 [--rebuild] [--keep] [--full] [--only demo|test]" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "fresh-check.sh needs root (debootstrap, chroot, mounts)" >&2; exit 1; }

. scripts/packages.sh
. scripts/lib.sh
install_for fresh_check
SUITE=$DEBIAN_SUITE

say() { printf '==> %s\n' "$*"; }

# --- the pristine root, cached --------------------------------------------------------
key=$(printf '%s ' "$SUITE" "${PREREQS[@]}" | sha256sum | cut -c1-12)
TARBALL=$CACHE/debian-$SUITE-minbase-$key.tar
mkdir -p "$CACHE" "$WORK"

# Processes whose root directory is $1 (so started inside it by us).
procs_in_root() {
    local root p
    root=$(readlink -f "$1")
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && echo "${p#/proc/}"
    done
    return 0
}

# Kills everything started in root $1 and unmounts whatever is mounted below it.
teardown_root() {
    local root=$1 pids mnt
    for _ in 1 2 3 4 5; do
        pids=$(procs_in_root "$root")
        [ -z "$pids" ] && break
        # shellcheck disable=SC2086
        kill -9 $pids 2>/dev/null || true
        sleep 0.2
    done
    # Deepest first. A private mount namespace took most of them with it; this is the rest.
    for mnt in $(awk -v r="$(readlink -f "$root")" '$5 == r || index($5, r "/") == 1 { print $5 }' \
        /proc/self/mountinfo | sort -r); do
        umount -l "$mnt" 2>/dev/null || true
    done
}

if $rebuild || [ ! -s "$TARBALL" ]; then
    make_root_tarball "$TARBALL" "$WORK/debootstrap.log" "${PREREQS[@]}"
else
    say "pristine root: $TARBALL (cached; --rebuild makes it again)"
fi

# --- the toolchain, read-only ---------------------------------------------------------
SYSROOT=$(rustc --print sysroot)
[ -x "$SYSROOT/bin/cargo" ] || { echo "no cargo in the host toolchain $SYSROOT" >&2; exit 1; }
say "toolchain: $("$SYSROOT/bin/rustc" --version) (from $SYSROOT, read-only)"

HEAD=$(git -C "$REPO" rev-parse HEAD)
say "checking commit $(git -C "$REPO" log -1 --format='%h %s' "$HEAD" | cut -c1-72)"
[ -z "$(git -C "$REPO" status --porcelain --untracked-files=no)" ] ||
    say "note: uncommitted changes in the work tree are not part of this check"

RESULTS=()
CURRENT_ROOT=""
on_exit() {
    rm -f "$FRESH_CHECK_RUNNING_COPY"
    if [ -n "$CURRENT_ROOT" ]; then
        teardown_root "$CURRENT_ROOT"
        $keep || rm -rf "$(dirname "$CURRENT_ROOT")"
    fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# run_in_fresh_root NAME COMMAND...: a fresh copy of the pristine root runs COMMAND in the
# clone. Records one result line.
run_in_fresh_root() {
    local name=$1 cmd=$2 dir root log start status secs reason
    dir=$WORK/run-$name
    root=$dir/root
    log=$dir/log
    rm -rf "$dir"
    mkdir -p "$root"
    CURRENT_ROOT=$root
    tar -C "$root" -xf "$TARBALL"
    apply_host_network "$root"
    mkdir -p "$root/opt/rust" "$root/root"
    git clone --quiet --no-hardlinks "$REPO" "$root/root/flannel-rs"
    git -C "$root/root/flannel-rs" checkout --quiet --detach "$HEAD"

    say "$name: $cmd (log: $log)"
    start=$(date +%s)
    set +e
    # A private mount namespace: the mounts below (and the network namespaces the command
    # binds under /run/netns) belong to it and go away with its last process.
    setsid unshare --mount --propagation private -- /bin/sh -ec '
        root=$1; sysroot=$2; shift 2
        # The root a mount point of its own: `ip netns add` makes "/" a slave mount, which a
        # plain directory as chroot cannot be.
        mount --bind "$root" "$root"
        mount -t proc proc "$root/proc"
        mount -t sysfs sysfs "$root/sys"
        mount --rbind /dev "$root/dev" # with /dev/pts, /dev/shm and /dev/net/tun
        mount -t tmpfs tmpfs "$root/run"
        mount -t tmpfs tmpfs "$root/tmp"
        mount --bind "$sysroot" "$root/opt/rust"
        mount -o remount,bind,ro "$root/opt/rust"
        exec chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 CI=true \
            PATH=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            CARGO_HOME=/root/.cargo ${http_proxy:+http_proxy=$http_proxy} \
            ${https_proxy:+https_proxy=$https_proxy} ${no_proxy:+no_proxy=$no_proxy} \
            timeout --kill-after=30 "$FRESH_CHECK_TIMEOUT" /bin/bash -c "cd /root/flannel-rs && $*" </dev/null
    ' sh "$root" "$SYSROOT" "$cmd" >"$log" 2>&1 &
    local pid=$!
    wait "$pid"
    status=$?
    set -e
    secs=$(($(date +%s) - start))
    # Every process it started, by PID: the session leader's group, then anything left in
    # the root.
    kill -9 -- "-$pid" 2>/dev/null || true
    teardown_root "$root"
    if [ "$status" = 0 ]; then
        RESULTS+=("ok    $name ($cmd): $((secs / 60))m$((secs % 60))s")
    else
        reason=$(first_failure "$log")
        RESULTS+=("FAIL  $name ($cmd): exit $status after $((secs / 60))m$((secs % 60))s: $reason")
        tail -25 "$log" | sed 's/^/    | /'
    fi
    $keep || rm -rf "$dir"
    CURRENT_ROOT=""
}

# The first line of a log that says what went wrong: the most telling kind found first.
first_failure() {
    local pattern line
    for pattern in '^error(\[[A-Z0-9]+\])?:' '^E: ' 'panicked at' 'command not found' \
        '^test .* FAILED|^test result: FAILED' '(Failed|failed) to|FAILED|^Error' \
        'No such file or directory'; do
        line=$(grep -m1 -E "$pattern" "$1" || true)
        [ -n "$line" ] && break
    done
    [ -n "$line" ] || line=$(grep -v '^[[:space:]]*$' "$1" | tail -1)
    echo "${line:0:300}"
}

export FRESH_CHECK_TIMEOUT=$TIMEOUT
if [ "$only" != test ]; then
    run_in_fresh_root demo "scripts/demo.sh"
fi
if [ "$only" != demo ]; then
    if $full; then
        run_in_fresh_root test "scripts/test.sh"
    else
        run_in_fresh_root test "scripts/test.sh --build-only"
    fi
fi

echo
echo "fresh-check (Debian $SUITE minbase + ${PREREQS[*]}, commit ${HEAD:0:10}):"
failed=0
for line in "${RESULTS[@]}"; do
    echo "  $line"
    [[ $line == ok* ]] || failed=1
done
exit "$failed"
