#!/usr/bin/env bash
# Builds the Debian package: flannel-rs_<version>_<arch>.deb and its debug symbols,
# flannel-rs-dbgsym_<version>_<arch>.ddeb, and says where they are.
#
#   scripts/package.sh                   # target/debian/flannel-rs_0.1.0-1_amd64.deb
#   scripts/package.sh --lintian         # ... and check it with lintian (fails on an error
#                                        # or warning not overridden in the package)
#   scripts/package.sh --fast            # lighter compression (tests)
#   scripts/package.sh --deb-revision 2 --build-tag upgrade-test
#                                        # the same build as another version (tests)
#
# What goes in it is [package.metadata.deb] in Cargo.toml; cargo-deb (installed here, at a
# pinned version, under target/tools) makes the package from it:
#  - the release binaries, stripped; their debug info in the -dbgsym package;
#  - dist/flanneld.service and dist/flanneld.tmpfile, dist/debian/ (maintainer scripts,
#    copyright, changelog);
#  - man pages, bash completion and /etc/default/flanneld, generated from the clap
#    definitions by examples/package-assets.rs into target/package-assets.
#
# --build-tag TAG writes TAG into the build tag of the packaged flanneld (the fixed-size
# static daemon::restart::version reads), so a package test gets a second package whose
# daemon reports another version without a second release build.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0

revision="" build_tag="" lintian=false fast=false
while [ $# -gt 0 ]; do
    case "$1" in
        --deb-revision) revision=${2:?--deb-revision needs a value}; shift ;;
        --build-tag) build_tag=${2:?--build-tag needs a value}; shift ;;
        --lintian) lintian=true ;;
        --fast) fast=true ;;
        *) echo "usage: $0 [--lintian] [--fast] [--deb-revision N] [--build-tag TAG]" >&2; exit 2 ;;
    esac
    shift
done

. scripts/packages.sh
. scripts/lib.sh
install_for build package

target="${CARGO_TARGET_DIR:-$PWD/target}"
tools="$PWD/target/tools"
cargo_deb="$tools/bin/cargo-deb"
if ! "$cargo_deb" --version 2>/dev/null | grep -qF " $CARGO_DEB_VERSION"; then
    echo "==> installing cargo-deb $CARGO_DEB_VERSION into $tools"
    quietly "cargo install cargo-deb" nice -n 10 cargo install cargo-deb --locked \
        --version "$CARGO_DEB_VERSION" --root "$tools"
fi

echo "==> building the release binaries"
quietly "cargo build --release" nice -n 10 cargo build --release --locked \
    --bin flanneld --bin flannelctl --bin flannel

echo "==> generating man pages, bash completion and /etc/default/flanneld from clap"
quietly "package-assets" nice -n 10 cargo run --quiet --locked --example package-assets -- \
    "$PWD/target/package-assets"

# cargo-deb takes the binaries from <target dir>/release; a staging target dir holds copies,
# so a --build-tag never touches the build's own files.
stage="$PWD/target/package-stage"
rm -rf "$stage"
mkdir -p "$stage/release"
for bin in flanneld flannelctl flannel; do
    cp "$target/release/$bin" "$stage/release/$bin"
done
if [ -n "$build_tag" ]; then
    python3 - "$stage/release/flanneld" "$build_tag" <<'EOF'
import sys
path, tag = sys.argv[1], sys.argv[2]
marker = b"FLANNEL_RS_BUILD_TAG="
data = bytearray(open(path, "rb").read())
at = data.find(marker + b"dev\0")
if at < 0 or data.find(marker, at + 1) >= 0:
    sys.exit("expected exactly one build tag 'dev' in " + path)
new = marker + tag.encode()
if len(new) >= 48:
    sys.exit("build tag too long: " + tag)
data[at:at + 48] = new + b"\0" * (48 - len(new))
open(path, "wb").write(data)
EOF
fi

out="$PWD/target/debian"
mkdir -p "$out"
args=(deb --no-build --dbgsym --output "$out")
[ -n "$revision" ] && args+=(--deb-revision "$revision")
$fast && args+=(--fast)
echo "==> making the package (cargo-deb $CARGO_DEB_VERSION)"
log=$(mktemp)
if ! CARGO_TARGET_DIR="$stage" "$cargo_deb" "${args[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
fi
grep -i warn "$log" >&2 || true
deb=$(grep -E '\.deb$' "$log" | tail -1 | awk '{ print $NF }')
rm -f "$log"
[ -f "$deb" ] || { echo "cargo-deb named no .deb" >&2; exit 1; }
dbgsym=$(ls "${deb%/*}/flannel-rs-dbgsym_$(dpkg-deb -f "$deb" Version)_"*.ddeb 2>/dev/null || true)

if $lintian; then
    echo "==> lintian"
    # Tags the package keeps on purpose are overridden in dist/debian/lintian-overrides,
    # each with why; the informational ones left are listed (see that file for them too).
    lintian --display-info --fail-on error,warning "$deb" ||
        { echo "lintian: errors or warnings" >&2; exit 1; }
fi

echo "==> package: $deb ($(du -h "$deb" | cut -f1))"
[ -n "$dbgsym" ] && echo "==> debug symbols: $dbgsym ($(du -h "$dbgsym" | cut -f1))"
echo "$deb"
