"""Issue 19 through the operator: a FileTransferServer with `spec.scanning` pointing at a real
clamd (Debian's, with the one-signature test database of tests/server/clamd.py) is rendered
into the server.yaml and the pod's quarantine volume; over FTPS the EICAR test file is refused
with its signature and lands in the quarantine volume, a clean file is published."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

from conftest import REPO
from test_operator_ftps import Ftps, server_manifest, strong_password, user_manifests

sys.path.append(str(REPO / "tests" / "server"))
from clamd import EICAR, SIGNATURE, Clamd  # noqa: E402

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("rbac_guard")]

SERVER = "scanned"
POD = f"{SERVER}-0"


@pytest.fixture(scope="module")
def clamd(tmp_path_factory):
    daemon = Clamd(tmp_path_factory.mktemp("clamd")).start()
    yield daemon
    daemon.stop()


def test_eicar_is_refused_and_quarantined_through_the_operator(crds, operator, kubelet, clamd, tmp_path):
    cluster = crds
    ns = f"e2e-scan-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        # Neither an address nor a sidecar: refused by the API server with the CEL message.
        refused = cluster.apply(server_manifest(SERVER, scanning={"onInfected": "delete"}), "-n", ns,
                                check=False)
        assert refused.returncode != 0 and "exactly one of clamd" in refused.stderr, refused.stderr
        cluster.apply(server_manifest(SERVER, scanning={"clamd": clamd.tcp, "timeoutSeconds": 30}), "-n", ns)
        proc = cluster.kubectl("wait", "--for=condition=Ready", f"fts/{SERVER}", "-n", ns,
                               "--timeout=120s", check=False, timeout=130)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        config = cluster.kubectl_json("get", "configmap", f"{SERVER}-config", "-n", ns)["data"]["server.yaml"]
        assert f"clamd: {clamd.tcp}" in config and "quarantineDir: /var/lib/sluice/quarantine" in config
        ftps = Ftps(cluster, kubelet, ns, SERVER, tmp_path)
        password = strong_password()
        cluster.apply(user_manifests("acme", password, server=SERVER), "-n", ns)
        cluster.kubectl("wait", "--for=condition=Ready", "tu/acme", "-n", ns, "--timeout=60s", timeout=70)
        ftps.wait_login("acme", password)

        clean = tmp_path / "clean.bin"
        clean.write_bytes(os.urandom(100_000))
        up = ftps.upload("acme", password, clean, "clean.bin")
        assert up.returncode == 0, up.stderr
        eicar = tmp_path / "eicar.com"
        eicar.write_bytes(EICAR)
        refused = ftps.curl("acme", password, "/eicar.com", "-v", "-T", str(eicar))
        assert refused.returncode != 0
        assert f"< 550 upload refused: infected: {SIGNATURE}" in refused.stderr, refused.stderr[-2000:]

        home = kubelet.volume_dir(POD, "data", ns) / "homes" / "acme"
        assert sorted(p.name for p in home.iterdir()) == ["clean.bin"]
        quarantine = kubelet.volume_dir(POD, "quarantine", ns)
        kept = list(quarantine.iterdir())
        assert len(kept) == 1 and kept[0].read_bytes() == EICAR, kept
        rejected = cluster.wait_for(
            lambda: [e for e in ftps.audit_events() if e.get("event") == "upload_rejected"] or None,
            20, "the upload_rejected audit event")
        assert rejected[0]["signature"] == SIGNATURE and rejected[0]["user"] == "acme"
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
