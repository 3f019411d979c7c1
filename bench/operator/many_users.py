#!/usr/bin/env python3
"""50,000 TransferUsers on one FileTransferServer, on the real API server (issue 14).

Starts the e2e control plane (tests/e2e/cluster.py; binaries from tests/e2e/build-k8s.sh), the
operator under the chart's RBAC (namespaced install: a Role in the benchmark's namespace), one
SFTP-only FileTransferServer, and creates N TransferUsers with an ed25519 key each in chunks.
Reports the time from the first create until the server's status counts N users with
`UsersSynced=True`, the shard count, and the operator's peak and final resident memory
(VmHWM / VmRSS). No pods run (there is no kubelet): this measures the operator and the API
server, not the servers.

    SLUICE_OPERATOR_BIN=target/release/sluice-operator python3 bench/operator/many_users.py --users 50000
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from cluster import Cluster  # noqa: E402
from operator_process import Operator  # noqa: E402

NAMESPACE = "bench"
SERVER = "bulk"


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0])
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    bin_dir = Path(subprocess.run([str(ROOT / "tests/e2e/build-k8s.sh"), "--print-bin-dir"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    operator_bin = os.environ.get("SLUICE_OPERATOR_BIN", str(ROOT / "target/release/sluice-operator"))
    cluster = Cluster(bin_dir).start()
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-users-"))
    op = None
    try:
        cluster.kubectl("apply", "-f", str(ROOT / "crds"))
        cluster.wait_for(lambda: cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                                                 "crd/transferusers.sluice.dev", check=False).returncode == 0,
                         60, "CRDs")
        cluster.kubectl("create", "namespace", NAMESPACE)
        op = Operator(cluster, operator_bin, ROOT / "charts" / "sluice", work / "operator",
                      release="sluice", namespace=NAMESPACE)
        op.install()
        key = work / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        public = key.with_suffix(".pub").read_text().strip()
        cluster.apply({"apiVersion": "sluice.dev/v1alpha1", "kind": "FileTransferServer",
                       "metadata": {"name": SERVER},
                       "spec": {"protocols": ["sftp"], "exposure": {"serviceType": "ClusterIP"},
                                "storage": {"size": "1Gi"}}}, "-n", NAMESPACE)
        started = time.monotonic()
        for start in range(0, args.users, args.chunk):
            items = [{"apiVersion": "sluice.dev/v1alpha1", "kind": "TransferUser",
                      "metadata": {"name": f"u{i:06d}"},
                      "spec": {"serverRef": {"name": SERVER}, "username": f"user{i:06d}",
                               "auth": {"sshAuthorizedKeys": [public]},
                               "permissions": ["list", "download", "upload"]}}
                     for i in range(start, min(start + args.chunk, args.users))]
            cluster.kubectl("create", "-n", NAMESPACE, "-f", "-", timeout=600,
                            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        created = time.monotonic() - started
        peak = 0

        def converged():
            nonlocal peak
            peak = max(peak, memory_kib(op.proc.pid).get("VmRSS", 0))
            status = cluster.kubectl_json("get", "fts", SERVER, "-n", NAMESPACE).get("status", {})
            synced = {c["type"]: c for c in status.get("conditions", [])}.get("UsersSynced", {})
            return (status.get("users") == args.users and synced.get("status") == "True") and synced

        synced = cluster.wait_for(converged, args.timeout, f"{args.users} users", interval=2)
        took = time.monotonic() - started
        shards = cluster.kubectl_json("get", "secrets", "-n", NAMESPACE, "-l",
                                      f"sluice.dev/users-of={SERVER}")["items"]
        memory = memory_kib(op.proc.pid)
        print(json.dumps({
            "users": args.users, "created_seconds": round(created, 1),
            "converged_seconds": round(took, 1), "shards": len(shards),
            "shard_bytes_max": max(len(s["data"]["users.yaml"]) * 3 // 4 for s in shards),
            "operator_rss_mib": round(memory["VmRSS"] / 1024, 1),
            "operator_peak_rss_mib": round(max(memory["VmHWM"], peak) / 1024, 1),
            "users_synced": synced["message"],
        }, indent=2))
        return 0
    finally:
        if op is not None:
            op.stop()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
