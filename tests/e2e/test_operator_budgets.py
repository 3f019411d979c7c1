"""Issue 12 on the operator's side, against the real API server: the argon2 caps in the
TransferUser CRD (CEL on `spec.auth.passwordHash`) and in the operator (a hash stored before
the rules is refused and left out of users.yaml), and the tenant budgets and connection limits
of a FileTransferServer reaching the server.yaml the pods run with."""

from __future__ import annotations

import base64
import uuid

import pytest
import yaml

from test_operator_bad_input import CRDS, _ready, _replace_schema
from test_operator_ftps import server_manifest, strong_password, user_manifests

pytestmark = [pytest.mark.timeout(300)]

SALT_AND_HASH = "c2FsdHNhbHQ$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo"
HOSTILE = f"$argon2id$v=19$m=4294967295,t=1,p=1${SALT_AND_HASH}"


def _hash_user(name: str, password_hash: str, server: str = "files") -> dict:
    return {
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "TransferUser",
        "metadata": {"name": name},
        "spec": {
            "serverRef": {"name": server},
            "username": name,
            "auth": {"passwordHash": password_hash},
            "permissions": ["list", "download"],
        },
    }


def test_the_api_server_refuses_a_password_hash_over_the_argon2_caps(crds, namespace):
    cluster = crds
    refused = cluster.apply(_hash_user("hostile", HOSTILE), "-n", namespace, check=False)
    assert refused.returncode != 0, refused.stdout
    assert "spec.auth.passwordHash" in refused.stderr, refused.stderr
    assert "at most 65536 KiB" in refused.stderr, refused.stderr
    assert not cluster.exists("tu", "hostile", "-n", namespace)
    for params, cap in [("m=19456,t=11,p=1", "at most 10"), ("m=19456,t=2,p=8", "at most 4"),
                        ("m=65536,t=3,p=1", "at most 131072")]:
        proc = cluster.apply(_hash_user("hostile", f"$argon2id$v=19${params}${SALT_AND_HASH}"),
                             "-n", namespace, check=False)
        assert proc.returncode != 0 and cap in proc.stderr, (params, proc.stderr)
    # What `sluice-server hash-password` and the operator issue is admitted.
    fine = cluster.apply(_hash_user("fine", f"$argon2id$v=19$m=19456,t=2,p=1${SALT_AND_HASH}"),
                         "-n", namespace, "--dry-run=server", check=False)
    assert fine.returncode == 0, fine.stderr


@pytest.mark.usefixtures("rbac_guard")
def test_budgets_and_connection_limits_reach_the_rendered_server_yaml(crds, operator, namespace):
    cluster = crds
    budgets = {
        "maxOpenHandlesPerConnection": 16,
        "maxOpenHandlesPerUser": 48,
        "maxFileWorkPerUser": 2,
        "maxFileWork": 32,
        "maxQueuedReplyBytes": 9437184,
        "maxPendingWriteBytes": 524288,
        "maxListingEntries": 5000,
        "maxQueuedControlLines": 8,
    }
    limits = {"newConnectionsPerSecond": 4, "newConnectionBurst": 12, "ipv6PrefixLength": 56}
    # Refused at admission, naming the field: per user above the server-wide file work.
    bad = server_manifest("bad-budgets", security={"budgets": {"maxFileWork": 2, "maxFileWorkPerUser": 3}})
    proc = cluster.apply(bad, "-n", namespace, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "spec.security.budgets.maxFileWorkPerUser must not exceed maxFileWork" in proc.stderr, proc.stderr
    low = server_manifest("low-queue", security={"budgets": {"maxQueuedReplyBytes": 1024}})
    proc = cluster.apply(low, "-n", namespace, check=False)
    assert proc.returncode != 0 and "maxQueuedReplyBytes" in proc.stderr, proc.stderr

    cluster.apply(server_manifest("budgeted", security={"budgets": budgets, "limits": limits}),
                  "-n", namespace)

    def rendered():
        if not cluster.exists("configmap", "budgeted-config", "-n", namespace):
            return None
        cm = cluster.kubectl_json("get", "configmap", "budgeted-config", "-n", namespace)
        return yaml.safe_load(cm["data"]["server.yaml"])

    config = cluster.wait_for(rendered, 120, "configmap budgeted-config with server.yaml")
    assert config["budgets"] == budgets, config["budgets"]
    for key, value in limits.items():
        assert config["limits"][key] == value, (key, config["limits"])

    # A change of the spec is rendered again.
    cluster.kubectl("patch", "fts", "budgeted", "-n", namespace, "--type=merge", "-p",
                    '{"spec":{"security":{"budgets":{"maxListingEntries":77}}}}')
    cluster.wait_for(lambda: (c := rendered()) and c["budgets"]["maxListingEntries"] == 77, 120,
                     "maxListingEntries 77 in the rendered server.yaml")
    assert operator.alive()


@pytest.mark.usefixtures("rbac_guard")
def test_a_hash_over_the_caps_stored_before_the_rules_is_refused_and_left_out(crds, operator):
    cluster = crds
    ns = f"e2e-argon-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    originals = {}
    try:
        # Store the hostile user as an older CRD (without the caps) would have.
        originals[CRDS[1]] = _replace_schema(cluster, CRDS[1], loose=True)
        cluster.wait_for(
            lambda: cluster.apply(_hash_user("hostile", HOSTILE, server="capped"), "-n", ns,
                                  check=False).returncode == 0,
            60, "the hostile TransferUser to be stored under the loose schema")
    finally:
        for crd, original in originals.items():
            _replace_schema(cluster, crd, loose=False, original=original)
    cluster.wait_for(
        lambda: cluster.apply(_hash_user("probe", HOSTILE, server="capped"), "-n", ns,
                              check=False).returncode != 0,
        60, "the restored schema to refuse the hostile hash")
    try:
        cluster.apply(server_manifest("capped"), "-n", ns)
        cluster.apply(user_manifests("fine", strong_password(), server="capped"), "-n", ns)
        ready = cluster.wait_for(
            lambda: (r := _ready(cluster, "tu", "hostile", ns)) and r["reason"] == "InvalidSpec" and r,
            120, "tu/hostile to be reported InvalidSpec")
        assert ready["status"] == "False"
        assert ready["message"].startswith("spec.auth.passwordHash: "), ready
        assert "65536 KiB" in ready["message"], ready
        cluster.wait_for(lambda: (r := _ready(cluster, "tu", "fine", ns)) and r["status"] == "True",
                         120, "tu/fine to be Ready")
        secret = cluster.kubectl_json("get", "secret", "capped-users", "-n", ns)
        users = yaml.safe_load(base64.b64decode(secret["data"]["users.yaml"]))["users"]
        names = [u["username"] for u in users]
        assert names == ["fine"], names
        assert HOSTILE not in base64.b64decode(secret["data"]["users.yaml"]).decode()
        assert operator.alive()
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
