#!/usr/bin/env bash
# Builds promtool from the Go module proxy into a cache outside the repository (once), and
# prints the binary's path. Pinned version (the Go module version v0.X.Y of Prometheus 3.X.Y);
# a second run takes milliseconds. Same layout as tests/packaging/install-helm.sh.
set -euo pipefail
VERSION="v0.316.0"
BIN_DIR="${SLUICE_PROMTOOL_CACHE:-$HOME/.cache/sluice/promtool-$VERSION}"
if [ ! -x "$BIN_DIR/promtool" ]; then
    mkdir -p "$BIN_DIR"
    echo "install-promtool: building promtool $VERSION with $(go version)" >&2
    GOFLAGS=-mod=mod GOBIN="$BIN_DIR" \
        GOMODCACHE="${SLUICE_GOMODCACHE:-$HOME/.cache/sluice/go/mod}" \
        GOCACHE="${SLUICE_GOCACHE:-$HOME/.cache/sluice/go/build}" \
        go install -ldflags "-X github.com/prometheus/common/version.Version=$VERSION" \
        "github.com/prometheus/prometheus/cmd/promtool@$VERSION" >&2
fi
echo "$BIN_DIR/promtool"
