#!/usr/bin/env bash
# Builds the end-to-end control plane from source with Go, from the Go module proxy:
#   kube-apiserver, kube-controller-manager, kubectl  (k8s.io/kubernetes, pinned in k8s/go.mod)
#   etcd                                              (go.etcd.io/etcd/server/v3 etcdmain)
# into ${SLUICE_K8S_CACHE:-~/.cache/sluice/k8s}/<k8s-version>-etcd<etcd-version>/bin/.
# Skips the build when all four binaries are already there. Prints the bin directory last
# on stdout; `--print-bin-dir` prints it without building.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
mod="$here/k8s"

gomod_version() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$mod/go.mod"; }
k8s_version="$(gomod_version k8s.io/kubernetes)"
etcd_version="$(gomod_version go.etcd.io/etcd/server/v3)"
[ -n "$k8s_version" ] && [ -n "$etcd_version" ] || { echo "build-k8s.sh: cannot read versions from $mod/go.mod" >&2; exit 1; }

cache="${SLUICE_K8S_CACHE:-$HOME/.cache/sluice/k8s}"
bin="$cache/${k8s_version}-etcd${etcd_version}/bin"
bins=(etcd kube-apiserver kube-controller-manager kubectl)

if [ "${1:-}" = "--print-bin-dir" ]; then
    echo "$bin"
    exit 0
fi

have_all() { local b; for b in "${bins[@]}"; do [ -x "$bin/$b" ] || return 1; done; }
if have_all; then
    echo "build-k8s.sh: up to date: $bin (kubernetes $k8s_version, etcd $etcd_version)" >&2
    echo "$bin"
    exit 0
fi

command -v go >/dev/null 2>&1 || { echo "build-k8s.sh: 'go' not found (need Go >= 1.24)" >&2; exit 1; }

export GOFLAGS="-mod=mod -buildvcs=false"
export GOMODCACHE="${SLUICE_GOMODCACHE:-$HOME/.cache/sluice/go/mod}"
export GOCACHE="${SLUICE_GOCACHE:-$HOME/.cache/sluice/go/build}"
export CGO_ENABLED=0
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
mkdir -p "$GOMODCACHE" "$GOCACHE"

# What hack/lib/version.sh would stamp, so `kubectl version` and /version report the release.
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

t0=$(date +%s)
cd "$mod"
echo "build-k8s.sh: downloading modules into $GOMODCACHE ..." >&2
go mod download
t1=$(date +%s)
echo "build-k8s.sh: modules ready in $((t1 - t0))s; building kubernetes $k8s_version + etcd $etcd_version (this takes a while) ..." >&2

tmp="$bin.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
go build -trimpath -ldflags="$ldflags" -o "$tmp/" \
    ./cmd/etcd \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl
t2=$(date +%s)
mkdir -p "$bin"
for b in "${bins[@]}"; do mv -f "$tmp/$b" "$bin/$b"; done
echo "build-k8s.sh: built in $((t2 - t1))s (total $((t2 - t0))s) -> $bin" >&2
ls -l "$bin" >&2
echo "$bin"
