#!/usr/bin/env bash
# Installs the client matrix's pinned client libraries into ~/.cache/sluice/clients (once per
# pin: each install lives in a directory named after a digest of its pin files) and prints
# where they are as KEY=VALUE lines for tests/server/test_client_matrix.py:
#   JAVA_CP   Commons Net + JSch jars (Maven Central via mvn, pom.xml)
#   NODE_DIR  node_modules with basic-ftp and ssh2-sftp-client (npm ci, package-lock.json)
#   GO_BIN    the Go helper built with jlaffaye/ftp, pkg/sftp, x/crypto (go.mod, go.sum)
# Needs java (17+), mvn, node/npm, go (>= the go.mod directive); tests/run installs the Debian
# packages when missing. Progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${SLUICE_CLIENTS_CACHE:-$HOME/.cache/sluice/clients}"
mkdir -p "$cache"
digest() { cat "$@" | sha256sum | cut -c1-16; }

# --- Java ------------------------------------------------------------------------------------
java_dir="$cache/java-$(digest "$here/java/pom.xml")"
if [ ! -f "$java_dir/.done" ]; then
    echo "tests/clients/install.sh: fetching Java clients into $java_dir" >&2
    rm -rf "$java_dir"
    mvn -B -q -f "$here/java/pom.xml" -Dmaven.repo.local="$cache/m2" \
        dependency:copy-dependencies -DoutputDirectory="$java_dir" >&2
    touch "$java_dir/.done"
fi
echo "JAVA_CP=$(find "$java_dir" -name '*.jar' | sort | paste -sd:)"

# --- Node ------------------------------------------------------------------------------------
node_dir="$cache/node-$(digest "$here/node/package.json" "$here/node/package-lock.json")"
if [ ! -f "$node_dir/.done" ]; then
    echo "tests/clients/install.sh: installing Node clients into $node_dir" >&2
    rm -rf "$node_dir"
    mkdir -p "$node_dir"
    cp "$here/node/package.json" "$here/node/package-lock.json" "$node_dir/"
    # --ignore-scripts: no native add-ons (ssh2's optional crypto binding); pure JavaScript.
    (cd "$node_dir" && npm ci --ignore-scripts --no-audit --no-fund --cache "$cache/npm-cache" >&2)
    touch "$node_dir/.done"
fi
echo "NODE_DIR=$node_dir"

# --- Go --------------------------------------------------------------------------------------
go_dir="$cache/go-$(digest "$here/go/go.mod" "$here/go/go.sum" "$here/go/main.go")"
if [ ! -x "$go_dir/matrix" ]; then
    echo "tests/clients/install.sh: building the Go clients into $go_dir" >&2
    mkdir -p "$go_dir"
    (
        cd "$here/go"
        export GOMODCACHE="${SLUICE_GOMODCACHE:-$HOME/.cache/sluice/go/mod}"
        export GOCACHE="${SLUICE_GOCACHE:-$HOME/.cache/sluice/go/build}"
        export GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 GOTOOLCHAIN=local
        go build -trimpath -o "$go_dir/matrix.tmp" . >&2
    )
    mv "$go_dir/matrix.tmp" "$go_dir/matrix"
fi
echo "GO_BIN=$go_dir/matrix"
