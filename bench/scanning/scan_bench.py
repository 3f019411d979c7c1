#!/usr/bin/env python3
"""The throughput cost of malware scanning (issue 19): the time to upload an --size file
(default 1 GiB) over FTPS (curl) and SFTP (OpenSSH sftp) to sluice-server without scanning
and with scanning through a real clamd, with clamd's own time reported apart:

- `plain`: the upload without `scanning` (client's last byte -> 226 / close status);
- `scanned`: the same upload with `scanning` (one more full read of the file, streamed to
  clamd, before the rename);
- `clamd part`: what the server's `sluice_scan_duration_seconds` histogram recorded for it
  (connect, stream, verdict);
- `clamd alone`: an INSTREAM of the same file sent straight to clamd from this script, without
  Sluice (what clamd costs by itself on this machine).

clamd runs with the one-signature test database of tests/server/clamd.py unless --database
names a real one (e.g. /var/lib/clamav after freshclam): with the test database the numbers
are the cost of the pipeline (read, stream, clamd's parsing), with a real one also of its
signature matching. clamd's StreamMaxLength, MaxFileSize and MaxScanSize are set above --size
(above MaxFileSize clamd would answer OK without scanning).

Not run in CI. Run as root on Debian 12 with clamav-daemon, curl, sshpass and openssh-client:

    cargo build --release -p sluice-server
    python3 bench/scanning/scan_bench.py                 # 1 GiB, best of 2 runs, ~3-5 minutes
    python3 bench/scanning/scan_bench.py --size 64M      # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "server"))
sys.path.insert(0, str(REPO / "bench"))
from benchlib import pick_binary, parse_size, write_payload  # noqa: E402


def scan_seconds(srv) -> float:
    status, text = srv.http_get("/metrics")
    for line in text.splitlines():
        if line.startswith("sluice_scan_duration_seconds_sum"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def upload_ftps(srv, path: Path, name: str) -> float:
    started = time.monotonic()
    result = srv.curl("-T", str(path), path=f"/{name}", timeout=1800)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"curl failed: {result.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def upload_sftp(srv, path: Path, name: str) -> float:
    command = [
        "sshpass", "-e", "sftp", "-o", f"UserKnownHostsFile={srv.known_hosts}", "-o", "BatchMode=no",
        "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
        "-b", "-", "-P", str(srv.sftp_port), "alice@127.0.0.1",
    ]
    started = time.monotonic()
    result = subprocess.run(command, input=f"put {path} /{name}\n", capture_output=True, text=True,
                            timeout=1800, env={**os.environ, "SSHPASS": srv.passwords["alice"]})
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"sftp failed: {result.stderr[-500:]}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-bin", help="sluice-server binary (default: release, else debug build)")
    ap.add_argument("--size", default="1G", help="upload size, e.g. 1G (default), 256M")
    ap.add_argument("--runs", type=int, default=2, help="runs per protocol and mode (best kept)")
    ap.add_argument("--database", type=Path, help="clamd signature directory (default: the test database)")
    ap.add_argument("--workdir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
                    help="where the server's data, quarantine and the test file live (default /dev/shm)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    binary = pick_binary(args.server_bin)
    os.environ["SLUICE_SERVER_BIN"] = str(binary)  # read by conftest.server_binary()
    import conftest  # noqa: E402 - after SLUICE_SERVER_BIN
    from clamd import Clamd  # noqa: E402

    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="sluice-scan-bench-", dir=args.workdir))
    payload = work / "payload.bin"
    write_payload(payload, size)
    cert = conftest.make_cert(work / "pki")
    clamd = Clamd(work / "clamd", database=args.database, limit_bytes=min(size + (1 << 20), (4 << 30) - 1))
    clamd.start(timeout=600)
    rows = []
    try:
        reply, _ = clamd.instream(payload)
        if b"OK" not in reply:
            sys.exit(f"clamd did not pass the random payload: {reply!r}")
        alone = min(clamd.instream(payload)[1] for _ in range(args.runs))
        for mode in ("plain", "scanned"):
            extra = {}
            if mode == "scanned":
                extra = {"scanning": {"clamd": clamd.tcp, "quarantineDir": str(work / f"quarantine-{mode}"),
                                      "maxFileBytes": min(size + 1, (4 << 30) - 1), "timeoutSeconds": 3600}}
            srv = conftest.SluiceServer(work / mode, cert, [conftest.SluiceServer.user("alice")], extra)
            srv.start()
            try:
                for protocol, upload in (("ftps", upload_ftps), ("sftp", upload_sftp)):
                    best, clamd_part = None, 0.0
                    for run in range(args.runs):
                        before = scan_seconds(srv)
                        seconds = upload(srv, payload, f"{protocol}-{run}.bin")
                        part = scan_seconds(srv) - before
                        (srv.home() / f"{protocol}-{run}.bin").unlink()
                        if best is None or seconds < best:
                            best, clamd_part = seconds, part
                    rows.append({"protocol": protocol, "mode": mode, "seconds": best, "clamd_seconds": clamd_part})
            finally:
                srv.stop()
    finally:
        clamd.stop()

    mib = size / (1 << 20)
    print(f"\nsluice-server {binary}; {mib:.0f} MiB per upload, best of {args.runs}; "
          f"database: {args.database or 'test (1 signature)'}; load {os.getloadavg()[0]:.2f}")
    print(f"clamd alone (INSTREAM from this script): {alone:.2f} s, {mib / alone:.0f} MiB/s\n")
    print("| protocol | plain s | plain MiB/s | scanned s | scanned MiB/s | clamd part s | scanned / plain |")
    print("|---|---|---|---|---|---|---|")
    for protocol in ("ftps", "sftp"):
        plain = next(r for r in rows if r["protocol"] == protocol and r["mode"] == "plain")
        scanned = next(r for r in rows if r["protocol"] == protocol and r["mode"] == "scanned")
        print(f"| {protocol} | {plain['seconds']:.2f} | {mib / plain['seconds']:.0f} | {scanned['seconds']:.2f} | "
              f"{mib / scanned['seconds']:.0f} | {scanned['clamd_seconds']:.2f} | "
              f"{scanned['seconds'] / plain['seconds']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"binary": str(binary), "size": size, "clamd_alone": alone,
                                               "rows": rows}, indent=1))
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
