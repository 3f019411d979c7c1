#!/usr/bin/env bash
# Fetch the peer FTPS servers (vsftpd, ProFTPD + mod_tls, Pure-FTPd) as Debian
# packages and unpack them into a private cache dir WITHOUT installing them
# system-wide (the three packages conflict with each other as ftp-server
# providers, and installing them would start system daemons).
#
# What this script does change on the system (all needed to run the peers):
#   * apt-get install of the shared libraries the peers link against
#     (libwrap0, libsodium23, libhiredis0.14, libmemcached11, ...): normal
#     library packages, no daemons;
#   * creates the unprivileged system user `benchftp` (no login shell) that
#     owns the benchmark data and that vsftpd/ProFTPD/Pure-FTPd sessions run as;
#   * writes /etc/pam.d/sluice-bench-ftp (a plain pam_unix stack) that vsftpd
#     uses for authentication (vsftpd on Debian is built with PAM only);
#   * creates /var/run/vsftpd/empty (vsftpd's secure_chroot_dir).
#
# Usage: bench/setup_peers.sh [CACHE_DIR]   (default ~/.cache/sluice/peers)
# Idempotent: re-running re-uses downloaded .deb files.
set -euo pipefail

CACHE="${1:-${SLUICE_PEERS_DIR:-$HOME/.cache/sluice/peers}}"
DEBS="$CACHE/debs"
mkdir -p "$DEBS"

export DEBIAN_FRONTEND=noninteractive

# Debian 12 (bookworm) package names. ProFTPD 1.3.8 moved mod_tls (and
# mod_sftp) out of proftpd-core into proftpd-mod-crypto; on older releases
# mod_tls.so is in proftpd-basic / proftpd-core and proftpd-mod-crypto does
# not exist, so it is optional here.
declare -A PEER_PKGS=(
  [vsftpd]="vsftpd"
  [proftpd]="proftpd-core proftpd-mod-crypto?"
  [pureftpd]="pure-ftpd"
)

if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ]; then
  apt-get update -qq
fi

have_pkg() { apt-cache show "$1" >/dev/null 2>&1; }

all_pkgs=()
for peer in "${!PEER_PKGS[@]}"; do
  for p in ${PEER_PKGS[$peer]}; do
    opt=0
    case "$p" in *\?) p="${p%\?}"; opt=1 ;; esac
    if have_pkg "$p"; then
      all_pkgs+=("$p")
    elif [ "$opt" = 1 ]; then
      echo "note: optional package $p not available, skipping" >&2
    else
      echo "error: package $p not found (apt-get update?)" >&2; exit 1
    fi
  done
done

# Download (not install) the peer packages.
( cd "$DEBS" && for p in "${all_pkgs[@]}"; do
    ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download -q -o APT::Sandbox::User=root "$p"
  done )

# Shared-library dependencies: install the lib* packages they depend on the
# normal way (these are plain libraries; the ftp-server packages themselves
# are never installed).
libs=$(apt-cache depends "${all_pkgs[@]}" 2>/dev/null \
  | awk '$1=="Depends:" || $1=="PreDepends:" {print $2}' \
  | grep -E '^lib' | grep -vE '^<' | sort -u \
  | grep -vE '^(libpam-runtime)$' || true)
missing=()
for l in $libs; do
  dpkg-query -W -f='${Status}' "$l" 2>/dev/null | grep -q 'install ok installed' || missing+=("$l")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing shared libraries: ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Unpack each peer into its own dir.
for peer in "${!PEER_PKGS[@]}"; do
  dest="$CACHE/$peer"
  rm -rf "$dest"; mkdir -p "$dest"
  for p in ${PEER_PKGS[$peer]}; do
    p="${p%\?}"
    deb=$(ls "$DEBS/${p}"_*.deb 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$deb" ] || continue
    dpkg-deb -x "$deb" "$dest"
    dpkg-deb -f "$deb" Package Version >> "$dest/VERSIONS"
  done
done

# Check that every binary/module resolves its libraries.
bad=0
for f in "$CACHE"/vsftpd/usr/sbin/vsftpd "$CACHE"/proftpd/usr/sbin/proftpd \
         "$CACHE"/proftpd/usr/lib/proftpd/mod_tls.so \
         "$CACHE"/pureftpd/usr/sbin/pure-ftpd "$CACHE"/pureftpd/usr/bin/pure-pw; do
  if [ ! -e "$f" ]; then echo "missing: $f" >&2; bad=1; continue; fi
  if ldd "$f" | grep -q 'not found'; then
    echo "unresolved libraries in $f:" >&2; ldd "$f" | grep 'not found' >&2; bad=1
  fi
done

# System bits the peers need to run.
# vsftpd chdir()s to the passwd home before applying local_root, so the home
# must exist (an empty root-owned dir).
BENCH_HOME=/var/lib/sluice-bench-ftp
mkdir -p "$BENCH_HOME" && chmod 0755 "$BENCH_HOME"
if ! id benchftp >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir "$BENCH_HOME" --shell /usr/sbin/nologin benchftp
elif [ ! -d "$(getent passwd benchftp | cut -d: -f6)" ]; then
  usermod --home "$BENCH_HOME" benchftp
fi
mkdir -p /var/run/vsftpd/empty && chmod 0755 /var/run/vsftpd/empty
if [ ! -e /etc/pam.d/sluice-bench-ftp ]; then
  cat > /etc/pam.d/sluice-bench-ftp <<'EOF'
# Written by sluice bench/setup_peers.sh for the vsftpd benchmark peer.
auth     required pam_unix.so
account  required pam_unix.so
session  required pam_unix.so
EOF
fi

echo "peers unpacked under $CACHE:"
cat "$CACHE"/*/VERSIONS | paste - - | sed 's/Package: //; s/Version: //'
exit $bad
