#!/usr/bin/env bash
# Builds SeaweedFS's `weed` (master, volume, filer and S3 gateway in one binary: `weed mini`)
# from the Go module proxy into a cache outside the repository (once), and prints the binary's
# path. It is the real S3-compatible server the object-storage tests run against
# (tests/server/objectstore.py, docs/object-storage.md).
#
# SeaweedFS publishes no semver tags on its module path, so a pinned pseudo-version; its go.mod
# has a `replace` line, which `go install pkg@version` refuses, so the module's source is
# copied out of the module cache and built as the main module with its own go.mod and go.sum.
# First build: ~10 minutes on 4 cores (and ~1.5 GB of module cache); later runs take
# milliseconds. Same cache layout as tests/observability/install-promtool.sh.
set -euo pipefail
VERSION="v0.0.0-20261109003541-7506e5f91cd6"
MODULE="github.com/seaweedfs/seaweedfs"
BIN_DIR="${SLUICE_SEAWEEDFS_CACHE:-$HOME/.cache/sluice/seaweedfs-$VERSION}"
export GOMODCACHE="${SLUICE_GOMODCACHE:-$HOME/.cache/sluice/go/mod}"
export GOCACHE="${SLUICE_GOCACHE:-$HOME/.cache/sluice/go/build}"
export GOFLAGS=-mod=mod
if [ ! -x "$BIN_DIR/weed" ]; then
    mkdir -p "$BIN_DIR"
    echo "install-seaweedfs: building weed $VERSION with $(go version)" >&2
    source_dir="$(go mod download -json "$MODULE@$VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    if [ -z "$source_dir" ] || [ ! -d "$source_dir" ]; then
        echo "install-seaweedfs: $MODULE@$VERSION was not downloaded" >&2
        exit 1
    fi
    work="$(mktemp -d)"
    trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
    cp -r "$source_dir/." "$work/"
    chmod -R u+w "$work"
    (cd "$work" && go build -trimpath -o "$BIN_DIR/weed.partial" ./weed) >&2
    mv "$BIN_DIR/weed.partial" "$BIN_DIR/weed"
fi
echo "$BIN_DIR/weed"
