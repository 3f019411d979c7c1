"""The Argo CD health checks of the chart (charts/sluice/files/argocd/*.lua) under a real Lua 5.1
interpreter, and kstatus (sigs.k8s.io/cli-utils), on objects captured from the end-to-end suite
on a real API server (fixtures/, see fixtures/README.md) and on every condition reason the
operator writes. No cluster needed; the end-to-end tests run the same checks on live objects."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from health_checks import (FIXTURES, HARNESS, ROOT, SCRIPTS, argocd, kstatus,  # noqa: E402
                           lua_binary, lua_literal)

# Fixture → (Argo CD health, kstatus status), as the end-to-end test that captured it asserted.
EXPECTED = {
    "server-healthy": ("Healthy", "Current"),
    "server-stalled": ("Degraded", "Failed"),
    "server-generation-not-observed": ("Progressing", "InProgress"),
    "server-reconciling": ("Progressing", "InProgress"),
    "user-ready": ("Healthy", "Current"),
    # A refused TransferUser is Stalled: kstatus reads it as Failed.
    "user-refused": ("Degraded", "Failed"),
    "user-server-not-found": ("Progressing", "InProgress"),
    "user-disabled": ("Suspended", "InProgress"),
}

# What a Ready=False reason means for Argo CD, per kind (docs/gitops.md has the table and why).
# Every reason of src/conditions.rs is either here or in NOT_IN_READY, so a new reason fails
# this test until someone decides what Argo CD shows for it.
SERVER_READY_FALSE = {
    "NotReady": "Progressing",
    "ObjectStoreSecretNotFound": "Progressing",
    "InvalidSpec": "Degraded",
    **{f"{child}NotApplied": "Degraded" for child in (
        "ConfigMap", "UsersSecret", "SshHostKey", "Service", "StatefulSet", "NetworkPolicy",
        "PodDisruptionBudget")},
}
USER_READY_FALSE = {
    "InvalidSpec": "Degraded",
    "PasswordPolicyViolation": "Degraded",
    "PasswordExpired": "Degraded",
    "SecretNotMarked": "Degraded",
    "SecretKeyMissing": "Degraded",
    "DuplicateUsername": "Degraded",
    "Expired": "Degraded",
    "UsersNotApplied": "Degraded",
    "NotSupportedOnObjectStorage": "Degraded",
    "Disabled": "Suspended",
    "SecretNotFound": "Progressing",
    "ServerNotFound": "Progressing",
    "HashingFailed": "Progressing",
    "WaitingForPods": "Progressing",
}
READY_TRUE = {"FileTransferServer": {"Ready"}, "TransferUser": {"Provisioned", "PasswordExpiresSoon"}}
# Reasons of other conditions (CertificateReady, EndpointsReady, UsersSynced, EventsDelivering, Stalled,
# Reconciling) and of Events only.
NOT_IN_READY = {
    "Issued", "Valid", "CertificateExpiringSoon", "CertificatePending", "CertManagerMissing",
    "InvalidCertificate", "NamesNotCovered", "CARotated", "CertificateIssued", "PodsReady",
    "PodsNotReady", "LoadBalancerPending", "Rendered", "Applied", "Progressing", "Reconciled",
    "ReconcileError", "QuotaThreshold", "SinksDelivering", "SinkFailing", "SinkHealthUnknown",
}


def _fixtures() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))}


def _conditions(obj: dict) -> dict:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def test_every_captured_fixture_is_checked():
    assert set(_fixtures()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_captured_objects(name):
    obj = _fixtures()[name]
    by_argocd, by_kstatus = argocd(obj), kstatus(obj)
    assert (by_argocd.status, by_kstatus.status) == EXPECTED[name], (by_argocd, by_kstatus)
    ready = _conditions(obj).get("Ready")
    if obj["status"].get("observedGeneration") == obj["metadata"]["generation"]:
        # Argo CD shows the Ready condition's message.
        assert by_argocd.message == ready["message"], by_argocd
    else:
        assert by_argocd.message.startswith(
            f"Waiting for the operator to observe generation {obj['metadata']['generation']}"), by_argocd


def _reasons() -> set[str]:
    source = (ROOT / "src" / "conditions.rs").read_text()
    body = source[source.index("impl Reason {"):]
    body = body[:body.index("\n}\n")]
    return set(re.findall(r'=> "([A-Za-z]+)"', body))


def test_every_reason_of_the_operator_is_classified():
    reasons = _reasons()
    assert len(reasons) > 30, reasons
    classified = (set(SERVER_READY_FALSE) | set(USER_READY_FALSE) | READY_TRUE["FileTransferServer"]
                  | READY_TRUE["TransferUser"] | NOT_IN_READY)
    assert reasons - classified == set(), "decide what Argo CD shows for these (docs/gitops.md)"
    assert classified - reasons == set(), "reasons the operator no longer writes"


def _with_ready(template: str, status: str, reason: str) -> dict:
    obj = copy.deepcopy(_fixtures()[template])
    conditions = obj["status"]["conditions"]
    ready = next(c for c in conditions if c["type"] == "Ready")
    ready.update(status=status, reason=reason, message=f"message of {reason}")
    # Without the kstatus conditions, so that only the Ready reason decides (an operator
    # older than Stalled/Reconciling, or a user, which has neither).
    obj["status"]["conditions"] = [c for c in conditions if c["type"] not in ("Stalled", "Reconciling")]
    return obj


@pytest.mark.parametrize(("kind", "template", "table"), [
    ("FileTransferServer", "server-healthy", SERVER_READY_FALSE),
    ("TransferUser", "user-ready", USER_READY_FALSE),
])
def test_ready_false_reasons(kind, template, table):
    for reason, expected in table.items():
        health = argocd(_with_ready(template, "False", reason))
        assert (reason, health.status, health.message) == (reason, expected, f"message of {reason}")
    unknown = argocd(_with_ready(template, "False", "SomethingNew"))
    assert unknown.status == "Progressing", unknown
    for reason in READY_TRUE[kind]:
        assert argocd(_with_ready(template, "True", reason)).status == "Healthy", reason
    assert argocd(_with_ready(template, "Unknown", "Starting")).status == "Progressing"


@pytest.mark.parametrize("template", ["server-healthy", "user-ready"])
def test_an_object_the_operator_has_not_seen_yet(template):
    obj = copy.deepcopy(_fixtures()[template])
    del obj["status"]
    health = argocd(obj)
    assert health == type(health)("Progressing", "Waiting for the operator to write a status")
    # kstatus reads an object without any status as Current (nothing says otherwise): only the
    # Argo CD check waits for the operator here (docs/gitops.md).
    assert kstatus(obj).status == "Current"
    obj["status"] = {"observedGeneration": obj["metadata"]["generation"], "conditions": []}
    assert argocd(obj).status == "Progressing"


def test_a_server_stalled_and_ready_false_without_a_stalled_reason_is_degraded():
    # Stalled=True wins over Reconciling and any Ready reason (a certificate that cannot be
    # issued leaves Ready=False NotReady with Stalled=True).
    obj = _with_ready("server-healthy", "False", "NotReady")
    obj["status"]["conditions"].append({"type": "Stalled", "status": "True", "reason": "CertManagerMissing",
                                        "message": "cert-manager is not installed"})
    assert (argocd(obj).status, kstatus(obj).status) == ("Degraded", "Failed")


def test_a_deleted_server_is_not_argo_cds_to_judge_but_kstatus_says_terminating():
    obj = copy.deepcopy(_fixtures()["server-healthy"])
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert kstatus(obj).status == "Terminating"
    # Argo CD shows deletion itself; the check still reports what the status says.
    assert argocd(obj).status == "Healthy"


def _run(tmp_path: Path, script: str, obj: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "probe.lua"
    path.write_text(script + "\n")
    return subprocess.run([lua_binary(), str(HARNESS), str(path)], input=lua_literal(obj),
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("body", ['return {status = string.upper("Healthy")}',
                                  'local s = "Healthy"; return {status = s:upper()}',
                                  'return {status = math.floor(1)}', 'return {status = io.read()}'])
def test_the_harness_runs_scripts_as_argo_cd_does(tmp_path, body):
    """Argo CD opens only base, table and a safe os for argocd-cm scripts: a script that uses
    the string, math or io library, or a string method, fails here as it would there."""
    proc = _run(tmp_path, body, {})
    assert proc.returncode == 3, proc
    assert "health script failed" in proc.stderr and "value" in proc.stderr, proc.stderr


def test_lua_literal_keeps_every_string_and_number(tmp_path):
    # "\n1" and "é1": a byte escape followed by a digit (a kubectl last-applied annotation has them).
    obj = {"a": "quote \" backslash \\ newline \n1 é1 🎉", "n": 3, "f": 0.5, "t": True, "z": None,
           "l": [1, {"k": []}]}
    proc = _run(tmp_path, 'local o = obj; return {status = "Healthy", message = o.a .. "|" .. tostring(o.n) '
                '.. "|" .. tostring(o.f) .. "|" .. tostring(o.t) .. "|" .. tostring(o.z) .. "|" .. tostring(#o.l)}',
                obj)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n", 1)[1] == 'quote " backslash \\ newline \n1 é1 🎉|3|0.5|true|nil|2'


def _yaml_blocks(markdown: str) -> list[dict]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", markdown, re.S)]


def test_the_docs_carry_the_scripts_verbatim(tmp_path):
    docs = (ROOT / "docs" / "gitops.md").read_text()
    scripts = {f"resource.customizations.health.sluice.dev_{kind}": (SCRIPTS / f"{kind}.lua").read_text()
               for kind in ("FileTransferServer", "TransferUser")}
    (argocd_cm,) = [b for b in _yaml_blocks(docs) if b.get("metadata", {}).get("name") == "argocd-cm"]
    assert argocd_cm["data"] == scripts
    # The shell snippet that writes values for the Argo CD Helm chart (configs.cm).
    (snippet,) = re.findall(r"```sh\n(\{ echo 'configs:'.*?)```", docs, re.S)
    subprocess.run(["bash", "-c", snippet.replace("argocd-values-sluice.yaml", str(tmp_path / "v.yaml"))],
                   cwd=ROOT, check=True)
    values = yaml.safe_load((tmp_path / "v.yaml").read_text())
    assert values == {"configs": {"cm": scripts}}
