"""Issue 14 and the status part of issue 15 on the real API server.

The default (namespaced) chart: the operator gets a Role in the namespace it watches and nothing
else; it reads only Secrets labelled sluice.dev/referable=true, so a TransferUser pointing at an
unmarked Secret gets Ready=False with a reason that contains nothing from the Secret, and a
label-only write to a password Secret does not restart the password's aging clock.

Status that never lies (with the session's cluster-wide operator): a child the API server
refuses (a ResourceQuota forbids PodDisruptionBudgets) gives Ready=False with a reason naming
the child, Stalled=True and a Warning Event, while every other child is applied; a change of an
immutable storage field is refused at admission with a message that says what to do. The chart's
Argo CD health check (run by lua5.1) and kstatus read the live objects along the way: Degraded and
Failed while stalled, Progressing and InProgress for a spec change not yet observed and while pods
cannot start (tests/gitops).
"""

from __future__ import annotations

import json
import sys
import time
import uuid

import pytest

from conftest import REPO
from test_operator_ftps import server_manifest, strong_password

sys.path.insert(0, str(REPO / "tests" / "gitops"))
from health_checks import expect  # noqa: E402

pytestmark = [pytest.mark.timeout(300)]

MARK = {"sluice.dev/referable": "true"}


def _conditions(cluster, kind: str, name: str, ns: str) -> dict:
    obj = cluster.kubectl_json("get", kind, name, "-n", ns)
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def _user(name: str, secret: str) -> dict:
    return {"apiVersion": "sluice.dev/v1alpha1", "kind": "TransferUser", "metadata": {"name": name},
            "spec": {"serverRef": {"name": "files"}, "username": name,
                     "auth": {"passwordSecretRef": {"name": secret}},
                     "permissions": ["list", "download"]}}


def _secret(name: str, password: str, labels: dict | None) -> dict:
    metadata = {"name": name}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata,
            "stringData": {"password": password}}


# The marked user is Ready only once a pod serves it (WaitingForPods before): without the
# process kubelet this test passed only when an earlier test had started it.
@pytest.mark.usefixtures("kubelet")
def test_namespaced_install_reads_only_marked_secrets(crds, operator, tmp_path):
    from conftest import REPO, _binary
    from operator_process import Operator

    cluster = crds
    system = f"sluice-ns-{uuid.uuid4().hex[:6]}"
    watched = f"e2e-lp-{uuid.uuid4().hex[:6]}"
    other = f"e2e-lp-other-{uuid.uuid4().hex[:6]}"
    for ns in (watched, other):
        cluster.kubectl("create", "namespace", ns)
    scoped = Operator(cluster, _binary("SLUICE_OPERATOR_BIN", "sluice-operator"),
                      REPO / "charts" / "sluice", tmp_path / "scoped-operator",
                      release="scoped", namespace=system, values={"watchNamespaces": [watched]})
    kinds = sorted((d["kind"], d["metadata"].get("namespace")) for d in scoped.manifests())
    assert kinds == [("Role", watched), ("RoleBinding", watched), ("ServiceAccount", system)], kinds
    operator.stop()
    try:
        scoped.install()
        kc = scoped.kubeconfig
        # The operator's own credentials cannot read a Secret outside its namespaces.
        cluster.apply(_secret("elsewhere", "Other-Team-Secret-77", MARK), "-n", other)
        proc = cluster.kubectl("get", "secret", "elsewhere", "-n", other, kubeconfig=kc, check=False)
        assert proc.returncode != 0 and "forbidden" in proc.stderr, proc
        proc = cluster.kubectl("get", "secrets", "-A", kubeconfig=kc, check=False)
        assert proc.returncode != 0 and "forbidden" in proc.stderr, proc

        marked_password = strong_password()
        unmarked_password = "Qz!" + uuid.uuid4().hex[:14] + "X9"
        cluster.apply([server_manifest(),
                       _secret("marked", marked_password, MARK), _user("marked", "marked"),
                       _secret("unmarked", unmarked_password, None), _user("probe", "unmarked")],
                      "-n", watched)
        cluster.wait_for(lambda: _conditions(cluster, "tu", "marked", watched).get("Ready", {})
                         .get("status") == "True", 90, "the user with a marked Secret to be Ready")
        ready = cluster.wait_for(
            lambda: _conditions(cluster, "tu", "probe", watched).get("Ready"), 60,
            "the user with an unmarked Secret to get a status")
        assert (ready["status"], ready["reason"]) == ("False", "SecretNotMarked"), ready
        assert "sluice.dev/referable=true" in ready["message"], ready
        probe = json.dumps(cluster.kubectl_json("get", "tu", "probe", "-n", watched).get("status"))
        # Nothing of the value, not even a fragment, reaches the status.
        for start in range(0, len(unmarked_password) - 4):
            assert unmarked_password[start:start + 5] not in probe
        events = cluster.kubectl_json("get", "events.events.k8s.io", "-n", watched)["items"]
        assert not any(unmarked_password[:8] in (e.get("note") or "") for e in events)
        # The server of another namespace is not the scoped operator's business.
        cluster.apply(server_manifest(name="ignored"), "-n", other)

        # A label-only write keeps the password's change time; a new value changes it.
        before = cluster.kubectl_json("get", "tu", "marked", "-n", watched)["status"]
        assert before["passwordChangedAt"] and before["passwordSourceDigest"]
        offset = scoped.offset()
        cluster.kubectl("label", "secret", "marked", "-n", watched, "argocd.argoproj.io/instance=x")
        # The marked Secret's change reconciles the server (the log shows the reconcile).
        time.sleep(3)
        after = cluster.kubectl_json("get", "tu", "marked", "-n", watched)["status"]
        assert after["passwordChangedAt"] == before["passwordChangedAt"], (before, after)
        assert after["passwordSourceDigest"] == before["passwordSourceDigest"]
        time.sleep(1.1)  # change times have a resolution of one second
        cluster.apply(_secret("marked", strong_password(), MARK), "-n", watched)
        changed = cluster.wait_for(
            lambda: (s := cluster.kubectl_json("get", "tu", "marked", "-n", watched)["status"])
            ["passwordSourceDigest"] != before["passwordSourceDigest"] and s, 60,
            "a new password value to be noticed")
        assert changed["passwordChangedAt"] != before["passwordChangedAt"]
        assert not _conditions(cluster, "fts", "ignored", other), "the other namespace was reconciled"
        denied = scoped.forbidden_lines()
        assert not denied, "\n".join(denied[:10])
        assert scoped.alive(), scoped.tail()
        assert offset <= scoped.offset()
    finally:
        scoped.stop()
        operator.start()
        for ns in (watched, other):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", system, "--wait=false", check=False)


def test_a_refused_child_stalls_the_server_and_the_others_are_applied(crds, rbac_guard, namespace):
    cluster = crds
    ns = namespace
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pdb"},
             "spec": {"hard": {"count/poddisruptionbudgets.policy": "0"}}}
    # No pod can start in this namespace (whether or not a kubelet runs in this session), so
    # once the PDB is applied the server is Reconciling: pods never get ready.
    no_pods = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"},
               "spec": {"hard": {"pods": "0"}}}
    cluster.apply([quota, no_pods], "-n", ns)
    cluster.apply(server_manifest(), "-n", ns)
    # A user whose server is not there (yet): Progressing, as when both come in one sync.
    orphan = _user("orphan", "orphan")
    orphan["spec"]["serverRef"]["name"] = "not-yet"
    cluster.apply(orphan, "-n", ns)
    ready = cluster.wait_for(
        lambda: (c := _conditions(cluster, "fts", "files", ns)).get("Stalled", {}).get("status") == "True"
        and c, 90, "Stalled=True")
    assert ready["Ready"]["status"] == "False"
    assert ready["Ready"]["reason"] == "PodDisruptionBudgetNotApplied", ready["Ready"]
    assert "PodDisruptionBudget files" in ready["Ready"]["message"], ready["Ready"]
    assert ready["Stalled"]["reason"] == "PodDisruptionBudgetNotApplied"
    assert ready["Reconciling"]["status"] == "False"
    # Every other child is there.
    for kind in ("statefulset", "networkpolicy", "configmap/files-config", "secret/files-users",
                 "service/files", "service/files-headless"):
        name = [] if "/" in kind else ["files"]
        assert cluster.exists(kind, *name, "-n", ns), kind
    events = cluster.wait_for(
        lambda: [e for e in cluster.kubectl_json("get", "events.events.k8s.io", "-n", ns)["items"]
                 if e.get("reason") == "PodDisruptionBudgetNotApplied"], 30, "a Warning Event")
    assert events[0]["type"] == "Warning"
    user = cluster.wait_for(
        lambda: _conditions(cluster, "tu", "orphan", ns).get("Ready", {}).get("reason") == "ServerNotFound"
        and cluster.kubectl_json("get", "tu", "orphan", "-n", ns), 60, "ServerNotFound")
    expect(user, "user-server-not-found", "Progressing", "InProgress")
    # GitOps tools read the stalled server as failed, with the Ready message.
    stalled = cluster.kubectl_json("get", "fts", "files", "-n", ns)
    by_argocd, by_kstatus = expect(stalled, "server-stalled", "Degraded", "Failed")
    assert by_argocd.message == {c["type"]: c for c in stalled["status"]["conditions"]}["Ready"]["message"]
    assert "PodDisruptionBudget files" in by_kstatus.message, by_kstatus
    # A spec change: the object the API server returns for it carries the new generation and
    # the status of the old one, so both read it as in progress, not as still stalled.
    changed = json.loads(cluster.kubectl("patch", "fts", "files", "-n", ns, "--type=merge", "-o", "json",
                                         "-p", json.dumps({"spec": {"allowedCidrs": ["10.0.0.0/8"]}})).stdout)
    assert changed["status"]["observedGeneration"] < changed["metadata"]["generation"], changed["status"]
    by_argocd, by_kstatus = expect(changed, "server-generation-not-observed", "Progressing", "InProgress")
    assert f"generation {changed['metadata']['generation']}" in by_argocd.message, by_argocd
    # The quota lifted: the PDB is applied and the server is no longer stalled.
    cluster.kubectl("delete", "resourcequota", "no-pdb", "-n", ns)
    cluster.kubectl("annotate", "fts", "files", "-n", ns, "poke=1")
    cluster.wait_for(lambda: cluster.exists("poddisruptionbudget", "files", "-n", ns), 60, "the PDB")
    cluster.wait_for(lambda: _conditions(cluster, "fts", "files", ns)["Stalled"]["status"] == "False",
                     60, "Stalled=False")
    # Its pods cannot start (the pods quota): Reconciling, which both read as in progress.
    reconciling = cluster.kubectl_json("get", "fts", "files", "-n", ns)
    conditions = {c["type"]: c for c in reconciling["status"]["conditions"]}
    assert conditions["Reconciling"]["status"] == "True", conditions
    assert conditions["EndpointsReady"]["reason"] == "PodsNotReady", conditions
    by_argocd, _ = expect(reconciling, "server-reconciling", "Progressing", "InProgress")
    assert by_argocd.message == conditions["Ready"]["message"], by_argocd


def test_colliding_child_names_are_not_taken_over(crds, rbac_guard, namespace):
    """Server `edge` with a per-pod Service `edge-0`, then a server named `edge-0`, whose client
    Service would be `edge-0` too: the second is Stalled naming the conflict, and the first's
    Service keeps selecting its own pod."""
    cluster = crds
    ns = namespace
    first = server_manifest("edge")
    first["spec"]["protocols"] = ["sftp"]
    first["spec"]["exposure"] = {"serviceType": "ClusterIP", "perPodServices": True}
    cluster.apply(first, "-n", ns)
    cluster.wait_for(lambda: cluster.exists("service", "edge-0", "-n", ns), 60, "Service edge-0")
    second = server_manifest("edge-0")
    second["spec"]["protocols"] = ["sftp"]
    cluster.apply(second, "-n", ns)
    stalled = cluster.wait_for(
        lambda: (c := _conditions(cluster, "fts", "edge-0", ns)).get("Stalled", {}).get("status") == "True"
        and c, 90, "edge-0 Stalled=True")
    assert stalled["Ready"]["status"] == "False"
    assert stalled["Ready"]["reason"] == "ServiceNotApplied", stalled["Ready"]
    assert "it belongs to FileTransferServer edge" in stalled["Ready"]["message"], stalled["Ready"]
    assert "rename this FileTransferServer" in stalled["Ready"]["message"], stalled["Ready"]
    service = cluster.kubectl_json("get", "service", "edge-0", "-n", ns)
    assert service["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == "edge-0"
    assert [o["name"] for o in service["metadata"]["ownerReferences"]] == ["edge"]


def test_storage_changes_are_refused_at_admission_saying_what_to_do(crds, rbac_guard, namespace):
    cluster = crds
    ns = namespace
    cluster.apply(server_manifest(), "-n", ns)
    for patch, field in [({"size": "2Gi"}, "spec.storage.size"),
                         ({"storageClassName": "fast"}, "spec.storage.storageClassName"),
                         ({"existingClaim": "shared"}, "spec.storage.existingClaim")]:
        proc = cluster.kubectl("patch", "fts", "files", "-n", ns, "--type=merge", "-p",
                               json.dumps({"spec": {"storage": patch}}), check=False)
        assert proc.returncode != 0, (field, proc.stdout)
        assert f"{field} is immutable" in proc.stderr, proc.stderr
        assert "create a new FileTransferServer" in proc.stderr, proc.stderr
    # Object storage cannot be switched on later either (the claim template would change).
    proc = cluster.kubectl("patch", "fts", "files", "-n", ns, "--type=merge", "-p", json.dumps(
        {"spec": {"storage": {"objectStore": {
            "endpoint": "https://s3.example.net", "bucket": "partner-files",
            "credentialsSecretRef": {"name": "s3"}}}}}), check=False)
    assert proc.returncode != 0, proc.stdout
    assert "spec.storage.objectStore cannot be added or removed" in proc.stderr, proc.stderr
    assert "create a new FileTransferServer" in proc.stderr, proc.stderr
    # Other fields still change.
    cluster.kubectl("patch", "fts", "files", "-n", ns, "--type=merge", "-p",
                    json.dumps({"spec": {"allowedCidrs": ["10.0.0.0/8"]}}))
