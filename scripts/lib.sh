# Sourced by test.sh, demo.sh, fresh-check.sh and the package scripts: helpers shared by the project's scripts.

# quietly LABEL CMD...: runs CMD with its output in a log; prints only the last line when it
# succeeds, and the errors (or the log's end) when it fails, so a failed build says why.
quietly() {
    local label=$1 log status
    shift
    log=$(mktemp)
    set +e
    "$@" >"$log" 2>&1
    status=$?
    set -e
    if [ "$status" = 0 ]; then
        tail -1 "$log"
    else
        echo "$label failed (exit $status):" >&2
        if grep -q -E '^error' "$log"; then
            grep -E -A12 '^error' "$log" | head -60 >&2
        else
            tail -30 "$log" >&2
        fi
    fi
    rm -f "$log"
    return "$status"
}

# --- clean Debian roots (scripts/fresh-check.sh, scripts/package-test.sh) -------------------
DEBIAN_SUITE=bookworm

# The host's Debian mirror for $DEBIAN_SUITE, from its own apt sources: the first URI that
# serves the suite itself (not -updates or -security), from deb822 .sources files or
# one-line .list files.
host_mirror() {
    local f suite=$DEBIAN_SUITE
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822: stanzas separated by blank lines; pick one whose Suites has $suite.
        awk -v suite="$suite" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; ok = 0; deb = 0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^Types:/ && $i ~ /(^|[ \t])deb([ \t]|$)/) deb = 1
                    if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
                    if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
                    if ($i ~ /^Enabled:[ \t]*no/) ok = 0
                }
                if (deb && ok && uris != "") { split(uris, u, /[ \t]+/); print u[1]; exit }
            }' "$f"
    done
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk -v suite="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) while ($i !~ /\]$/) i++; if ($2 ~ /^\[/) i++; if ($(i + 1) == suite) print $i }'
    return 0
}

# apply_host_network ROOT: copies the host's network set-up into ROOT: what this machine
# needs to reach Debian's mirror, crates.io and PyPI (it is the machine's, not the
# project's). Also forbids package installs in ROOT to start daemons (policy-rc.d).
apply_host_network() {
    local root=$1 f
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    cp /etc/hosts "$root/etc/hosts"
    # apt settings about fetching (proxies, validity checks against a snapshot mirror).
    for f in /etc/apt/apt.conf.d/*; do
        [ -f "$f" ] && grep -q '^[[:space:]]*Acquire::' "$f" && cp "$f" "$root/etc/apt/apt.conf.d/"
    done
    [ -f /etc/apt/apt.conf ] && cp /etc/apt/apt.conf "$root/etc/apt/apt.conf"
    [ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
    # Extra CA certificates (e.g. an egress proxy's); ca-certificates adds them to the bundle.
    if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
        mkdir -p "$root/usr/local/share/ca-certificates"
        cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
        # (before the prerequisites are in, ca-certificates' own install picks them up)
        if [ -x "$root/usr/sbin/update-ca-certificates" ]; then
            chroot "$root" /usr/sbin/update-ca-certificates >/dev/null 2>&1
        fi
    fi
    # Package installs inside a root must not start daemons (etcd-server would).
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod +x "$root/usr/sbin/policy-rc.d"
}

# make_root_tarball TARBALL LOG PACKAGE...: a pristine Debian root as a tarball:
# `debootstrap --variant=minbase $DEBIAN_SUITE` from the host's mirror plus exactly the
# PACKAGEs (installed without recommendations), policy-rc.d removed again. Builds it in a scratch directory beside TARBALL; the log of both
# steps goes to LOG. Returns non-zero (after the log's end) when a step fails.
make_root_tarball() {
    local tarball=$1 log=$2 mirror build status=0
    shift 2
    mirror=$(host_mirror | head -1 || true)
    [ -n "$mirror" ] || { echo "no apt source for Debian $DEBIAN_SUITE in /etc/apt/sources.list{,.d}" >&2; return 1; }
    build=$(mktemp -d "$tarball.build.XXXXXX")
    echo "==> making a pristine Debian $DEBIAN_SUITE root (debootstrap from $mirror) + $*"
    if ! debootstrap --variant=minbase "$DEBIAN_SUITE" "$build" "$mirror" >"$log" 2>&1; then
        tail -20 "$log" >&2
        echo "FAIL debootstrap (log: $log)" >&2
        rm -rf "$build"
        return 1
    fi
    apply_host_network "$build"
    mount -t proc proc "$build/proc"
    chroot "$build" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $* >/dev/null && apt-get clean" \
        >>"$log" 2>&1 || status=$?
    umount "$build/proc"
    if [ "$status" != 0 ]; then
        tail -20 "$log" >&2
        echo "FAIL installing $* (log: $log)" >&2
        rm -rf "$build"
        return 1
    fi
    rm -f "$build/usr/sbin/policy-rc.d"
    tar -C "$build" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$build"
    echo "==> cached $tarball ($(du -h "$tarball" | cut -f1))"
}
