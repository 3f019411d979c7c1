"""Objects the operator's types reject never stop the controller nor block other objects.

The real API server validates every write against the CRD schema, so such an object can only
exist when it was stored while the schema was looser: exactly what an older CRD version (or a
CRD upgrade that tightened a field) leaves behind. The test does that: it loosens the
FileTransferServer and TransferUser CRDs (spec: `x-kubernetes-preserve-unknown-fields`),
stores a server with `replicas: "two"` and a user with `disabled: "yes"`, restores the
generated CRDs, and then checks that the broken objects get `Ready=False`/`InvalidSpec` naming
the field, while a valid server and user next to them become Ready."""

from __future__ import annotations

import copy
import json
import uuid

import pytest

from test_operator_ftps import Ftps, server_manifest, strong_password, user_manifests

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("rbac_guard")]

CRDS = ("filetransferservers.sluice.dev", "transferusers.sluice.dev")


def _replace_schema(cluster, crd: str, loose: bool, original: dict | None = None) -> dict:
    """Replaces the CRD's schema (loose, or `original`'s); returns the live CRD before."""
    live = cluster.kubectl_json("get", "crd", crd)
    updated = copy.deepcopy(live)
    for i, version in enumerate(updated["spec"]["versions"]):
        if loose:
            props = version["schema"]["openAPIV3Schema"]["properties"]
            props["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        else:
            version["schema"] = original["spec"]["versions"][i]["schema"]
    updated.pop("status", None)
    # `replace` with the live resourceVersion: CRDs allow no unconditional update.
    cluster.kubectl("replace", "-f", "-", input=json.dumps(updated))
    return live


def _ready(cluster, kind: str, name: str, ns: str) -> dict | None:
    obj = cluster.kubectl_json("get", kind, name, "-n", ns)
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}.get("Ready")


def test_objects_the_types_reject_are_reported_and_block_nothing(crds, operator, kubelet, tmp_path):
    cluster = crds
    ns = f"e2e-bad-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    broken_server = server_manifest("broken")
    broken_server["spec"]["replicas"] = "two"
    _, broken_user = user_manifests("sloppy", strong_password(), server="good")
    broken_user["spec"]["disabled"] = "yes"
    originals = {}
    try:
        for crd in CRDS:
            originals[crd] = _replace_schema(cluster, crd, loose=True)
        # The API server picks up a new schema asynchronously: retry until it is accepted.
        for obj in (broken_server, broken_user):
            cluster.wait_for(lambda: cluster.apply(obj, "-n", ns, check=False).returncode == 0,
                             60, f"{obj['kind']} with a wrong field type to be stored")
    finally:
        for crd, original in originals.items():
            _replace_schema(cluster, crd, loose=False, original=original)
    # The generated schema is back: the same object is refused now.
    probe = copy.deepcopy(broken_server)
    probe["metadata"]["name"] = "probe"
    cluster.wait_for(lambda: cluster.apply(probe, "-n", ns, check=False).returncode != 0, 60,
                     "the restored schema to refuse replicas: \"two\"")
    try:
        ready = cluster.wait_for(
            lambda: (r := _ready(cluster, "fts", "broken", ns)) and r["reason"] == "InvalidSpec" and r,
            60, "fts/broken to be reported InvalidSpec")
        assert ready["status"] == "False"
        assert ready["message"].startswith("spec.replicas: invalid type"), ready
        user_ready = cluster.wait_for(
            lambda: (r := _ready(cluster, "tu", "sloppy", ns)) and r["reason"] == "InvalidSpec" and r,
            60, "tu/sloppy to be reported InvalidSpec")
        assert user_ready["message"].startswith("spec.disabled: invalid type"), user_ready
        events = cluster.kubectl_json("get", "events.events.k8s.io", "-n", ns)["items"]
        assert any(e["reason"] == "InvalidSpec" and e["regarding"]["name"] == "broken"
                   and e["type"] == "Warning" for e in events), events

        # Valid objects next to them: the controller is not blocked.
        cluster.apply(server_manifest("good"), "-n", ns)
        password = strong_password()
        cluster.apply(user_manifests("fine", password, server="good"), "-n", ns)
        proc = cluster.kubectl("wait", "--for=condition=Ready", "fts/good", "tu/fine", "-n", ns,
                               "--timeout=120s", check=False, timeout=130)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        Ftps(cluster, kubelet, ns, "good", tmp_path).wait_login("fine", password)
        assert not cluster.exists("statefulset", "broken", "-n", ns)
        assert operator.alive()
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
