#!/usr/bin/env python3
"""Homes on object storage against homes on the local disk (issue 20, docs/object-storage.md):
upload and download of an --size file (default 256 MiB) over FTPS (curl) and SFTP (OpenSSH
sftp), with sluice-server's CPU time per GiB read from /proc, for

- `local`: homes under dataRoot (the default);
- `s3`: homes in a bucket of a real SeaweedFS (`weed mini`, tests/server/objectstore.py) on the
  same machine; an upload is spooled to dataRoot and published (multipart) on close, so its
  time includes the publication; the store's own CPU is reported apart.

Not run in CI. Run as root on Debian 12 with curl, sshpass, openssh-client and boto3:

    cargo build --release -p sluice-server
    tests/server/install-seaweedfs.sh                         # builds weed once (cached)
    python3 bench/objectstore/objectstore_bench.py            # 256 MiB, best of 2 runs
    python3 bench/objectstore/objectstore_bench.py --size 64M --runs 1   # quick
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
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def ftps(srv, direction: str, local: Path, name: str) -> None:
    args = ("-T", str(local)) if direction == "upload" else ("-o", str(local))
    result = srv.curl(*args, path=f"/{name}", timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"curl failed: {result.stderr.decode(errors='replace')[-500:]}")


def sftp(srv, direction: str, local: Path, name: str) -> None:
    command = [
        "sshpass", "-e", "sftp", "-o", f"UserKnownHostsFile={srv.known_hosts}", "-o", "BatchMode=no",
        "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
        "-b", "-", "-P", str(srv.sftp_port), "alice@127.0.0.1",
    ]
    line = f"put {local} /{name}\n" if direction == "upload" else f"get /{name} {local}\n"
    result = subprocess.run(command, input=line, capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "SSHPASS": srv.passwords["alice"]})
    if result.returncode != 0:
        raise RuntimeError(f"sftp failed: {result.stderr[-500:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-bin", help="sluice-server binary (default: release, else debug build)")
    ap.add_argument("--size", default="256M", help="file size, e.g. 256M (default), 1G")
    ap.add_argument("--runs", type=int, default=2, help="runs per case (best kept)")
    ap.add_argument("--workdir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
                    help="where the data, the store and the test file live (default /dev/shm)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    binary = pick_binary(args.server_bin)
    os.environ["SLUICE_SERVER_BIN"] = str(binary)  # read by conftest.server_binary()
    import conftest  # noqa: E402 - after SLUICE_SERVER_BIN
    from objectstore import SeaweedFS  # noqa: E402

    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="sluice-objectstore-bench-", dir=args.workdir))
    payload = work / "payload.bin"
    write_payload(payload, size)
    cert = conftest.make_cert(work / "pki")
    weed = SeaweedFS(work / "seaweedfs").start()
    rows = []
    try:
        for backend in ("local", "s3"):
            extra = {}
            if backend == "s3":
                extra = {"storage": weed.storage_config(work / "credentials", "bench")}
            srv = conftest.SluiceServer(work / backend, cert, [conftest.SluiceServer.user("alice")], extra)
            srv.start()
            try:
                for protocol, transfer in (("ftps", ftps), ("sftp", sftp)):
                    for direction in ("upload", "download"):
                        best = None
                        for run in range(args.runs):
                            name = f"{protocol}.bin"
                            local = payload if direction == "upload" else work / f"got-{protocol}-{run}.bin"
                            before = (time.monotonic(), cpu_seconds(srv.proc.pid), cpu_seconds(weed.proc.pid))
                            transfer(srv, direction, local, name)
                            after = (time.monotonic(), cpu_seconds(srv.proc.pid), cpu_seconds(weed.proc.pid))
                            if direction == "download":
                                if local.stat().st_size != size:
                                    raise RuntimeError(f"{protocol} download got {local.stat().st_size} bytes")
                                local.unlink()
                            row = {"backend": backend, "protocol": protocol, "direction": direction,
                                   "seconds": after[0] - before[0], "server_cpu": after[1] - before[1],
                                   "store_cpu": (after[2] - before[2]) if backend == "s3" else 0.0}
                            if best is None or row["seconds"] < best["seconds"]:
                                best = row
                        rows.append(best)
            finally:
                srv.stop()
    finally:
        weed.stop()

    mib, gib = size / (1 << 20), size / (1 << 30)
    print(f"\nsluice-server {binary}; {mib:.0f} MiB per transfer, best of {args.runs}; "
          f"store: SeaweedFS on this machine; load {os.getloadavg()[0]:.2f}\n")
    print("| protocol | direction | backend | MB/s | server CPU s/GiB | store CPU s/GiB |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['protocol']} | {row['direction']} | {row['backend']} | {size / row['seconds'] / 1e6:.0f} | "
              f"{row['server_cpu'] / gib:.2f} | {row['store_cpu'] / gib:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"binary": str(binary), "size": size, "rows": rows}, indent=1))
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
