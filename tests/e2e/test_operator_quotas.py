"""Issue 19 through the operator: a TransferUser's `spec.quota` and `spec.retention` reach the
server's users.yaml (maxBytes as a quantity converted to bytes), the upload that crosses the
quota fails with 552 and publishes nothing, the usage reaches `status.quota` with a Warning
Event at `warnAtPercent`, the server pod runs retention as ordinal 0, and the API server
rejects invalid quotas and rules with the CRD's CEL messages."""

from __future__ import annotations

import uuid

import pytest

from test_operator_password_aging import _events
from test_operator_ftps import SERVER, Ftps, server_manifest, strong_password, user_manifests

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("rbac_guard")]

CURL_DISK_FULL = 70


def _quota(cluster, ns: str, name: str) -> dict:
    return (cluster.kubectl_json("get", "tu", name, "-n", ns).get("status") or {}).get("quota") or {}


@pytest.mark.parametrize("field,value,message", [
    ("quota", {"maxBytes": "0"}, "spec.quota.maxBytes must be a positive number"),
    ("quota", {"maxBytes": "1.5Gi"}, "spec.quota.maxBytes must be a positive number"),
    ("quota", {"maxBytes": -1}, "spec.quota.maxBytes must be a positive number"),
    ("quota", {"warnAtPercent": 80}, "spec.quota: set maxBytes, maxFiles or both"),
    ("quota", {"maxFiles": 0}, "spec.quota.maxFiles must be greater than 0"),
    ("retention", [{"path": "../x", "maxAge": "1d"}], "must not contain '..'"),
    ("retention", [{"path": "out", "maxAge": "1 day"}], "must be an age such as 30d"),
    ("retention", [{"path": "out"}], "set maxAge, afterDownload: true, or both"),
])
def test_invalid_quotas_and_rules_are_refused_by_the_api_server(crds, namespace, field, value, message):
    _, user = user_manifests("carol", strong_password())
    user["spec"][field] = value
    proc = crds.apply(user, "-n", namespace, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_quota_reaches_the_server_and_stops_the_upload_that_crosses_it(crds, operator, kubelet, tmp_path):
    cluster = crds
    ns = f"e2e-quota-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        cluster.apply(server_manifest(), "-n", ns)
        password = strong_password()
        secret, user = user_manifests("alice", password)
        user["spec"]["quota"] = {"maxBytes": "1Mi", "maxFiles": 10}
        user["spec"]["retention"] = [{"path": "outbox/", "maxAge": "30d"}]
        cluster.apply([secret, user], "-n", ns)
        proc = cluster.kubectl("wait", "--for=condition=Ready", f"fts/{SERVER}", "-n", ns,
                               "--timeout=120s", check=False, timeout=130)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        ftps = Ftps(cluster, kubelet, ns, SERVER, tmp_path)
        ftps.wait_login("alice", password)
        first = tmp_path / "first.bin"
        first.write_bytes(b"a" * 600 * 1024)
        assert ftps.upload("alice", password, first, "first.bin").returncode == 0
        second = tmp_path / "second.bin"
        second.write_bytes(b"b" * 600 * 1024)
        refused = ftps.upload("alice", password, second, "second.bin")
        # 552: curl's CURLE_REMOTE_DISK_FULL.
        assert refused.returncode == CURL_DISK_FULL, (refused.returncode, refused.stderr)
        assert "Exceeded storage allocation" in refused.stderr
        listing = ftps.curl("alice", password, "/", "--list-only")
        assert listing.stdout.split() == ["first.bin"], listing.stdout
        events = ftps.audit_events()
        exceeded = [e for e in events if e.get("event") == "quota_exceeded"]
        assert exceeded and exceeded[0]["max_bytes"] == 1 << 20, exceeded
        # 600 KiB of 1 MiB: the status shows the usage the pod reports.
        cluster.wait_for(lambda: _quota(cluster, ns, "alice").get("usedBytes") == 600 * 1024, 90,
                         "status.quota.usedBytes of alice")
        assert not _events(cluster, ns, "QuotaThreshold")
        # 850 KiB: past warnAtPercent (80): the status follows and a Warning Event is recorded.
        third = tmp_path / "third.bin"
        third.write_bytes(b"c" * 250 * 1024)
        assert ftps.upload("alice", password, third, "third.bin").returncode == 0
        quota = cluster.wait_for(lambda: (q := _quota(cluster, ns, "alice")).get("percent", 0) >= 80 and q,
                                 90, "status.quota.percent of alice past 80")
        assert quota["usedBytes"] == 850 * 1024 and quota["usedFiles"] == 2, quota
        (event,) = cluster.wait_for(lambda: _events(cluster, ns, "QuotaThreshold"), 30, "a QuotaThreshold event")
        assert event["type"] == "Warning" and event["involvedObject"]["name"] == "alice", event
        assert "83%" in event["message"], event
        # The pod is <server>-0: it runs retention (the operator renders replica: ordinalZero).
        config = cluster.kubectl_json("get", "configmap", f"{SERVER}-config", "-n", ns)
        assert "ordinalZero" in str(config.get("data")), config.get("data")
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
