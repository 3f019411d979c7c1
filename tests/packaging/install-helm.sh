#!/usr/bin/env bash
# Builds helm from the Go module proxy into a cache outside the repository (once), and prints
# the binary's path. Pinned version; a second run takes milliseconds.
set -euo pipefail
VERSION="v3.17.3"
BIN_DIR="${SLUICE_HELM_CACHE:-$HOME/.cache/sluice/helm-$VERSION}"
if [ ! -x "$BIN_DIR/helm" ]; then
    mkdir -p "$BIN_DIR"
    echo "install-helm: building helm $VERSION with $(go version)" >&2
    GOFLAGS=-mod=mod GOBIN="$BIN_DIR" \
        GOMODCACHE="${SLUICE_GOMODCACHE:-$HOME/.cache/sluice/go/mod}" \
        GOCACHE="${SLUICE_GOCACHE:-$HOME/.cache/sluice/go/build}" \
        go install "helm.sh/helm/v3/cmd/helm@$VERSION" >&2
fi
echo "$BIN_DIR/helm"
