#!/usr/bin/env bash
# Builds nats-server (with JetStream) from the Go module proxy into a cache outside the
# repository (once), and prints the binary's path. Pinned version; a second run takes
# milliseconds. Same layout as tests/observability/install-promtool.sh.
set -euo pipefail
VERSION="v2.15.3"
BIN_DIR="${SLUICE_NATS_CACHE:-$HOME/.cache/sluice/nats/$VERSION}"
if [ ! -x "$BIN_DIR/nats-server" ]; then
    command -v go >/dev/null 2>&1 || { echo "install-nats-server: 'go' not found" >&2; exit 1; }
    mkdir -p "$BIN_DIR"
    echo "install-nats-server: building nats-server $VERSION with $(go version)" >&2
    tmp="$BIN_DIR.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    GOFLAGS="-mod=mod -buildvcs=false" GOBIN="$tmp" CGO_ENABLED=0 \
        GOTOOLCHAIN="${GOTOOLCHAIN:-local}" \
        GOMODCACHE="${SLUICE_GOMODCACHE:-$HOME/.cache/sluice/go/mod}" \
        GOCACHE="${SLUICE_GOCACHE:-$HOME/.cache/sluice/go/build}" \
        go install -trimpath "github.com/nats-io/nats-server/v2@$VERSION" >&2
    mv -f "$tmp/nats-server" "$BIN_DIR/nats-server"
fi
echo "$BIN_DIR/nats-server"
