#!/usr/bin/env bash
# Builds tests/gitops/kstatus (a few lines around sigs.k8s.io/cli-utils' kstatus, pinned in its
# go.mod, from the Go module proxy) into a cache outside the repository, once, and prints the
# binary's path. The cache key is the cli-utils version and a digest of the program's sources, so
# an edit rebuilds it; a second run takes milliseconds. Same layout as
# tests/observability/install-promtool.sh.
set -euo pipefail
src="$(cd "$(dirname "$0")/kstatus" && pwd)"
version="$(awk '$1 == "sigs.k8s.io/cli-utils" && $2 ~ /^v/ { print $2; exit }' "$src/go.mod")"
[ -n "$version" ] || { echo "install-kstatus: no sigs.k8s.io/cli-utils version in $src/go.mod" >&2; exit 1; }
digest="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-12)"
BIN_DIR="${SLUICE_KSTATUS_CACHE:-$HOME/.cache/sluice/kstatus}/$version-$digest"
if [ ! -x "$BIN_DIR/kstatus" ]; then
    command -v go >/dev/null 2>&1 || { echo "install-kstatus: 'go' not found" >&2; exit 1; }
    mkdir -p "$BIN_DIR"
    echo "install-kstatus: building kstatus (cli-utils $version) with $(go version)" >&2
    (cd "$src" && GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN="${GOTOOLCHAIN:-local}" CGO_ENABLED=0 \
        GOMODCACHE="${SLUICE_GOMODCACHE:-$HOME/.cache/sluice/go/mod}" \
        GOCACHE="${SLUICE_GOCACHE:-$HOME/.cache/sluice/go/build}" \
        go build -trimpath -o "$BIN_DIR/kstatus.tmp" . >&2)
    mv "$BIN_DIR/kstatus.tmp" "$BIN_DIR/kstatus"
fi
echo "$BIN_DIR/kstatus"
