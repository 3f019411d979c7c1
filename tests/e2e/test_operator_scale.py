"""Scaling a FileTransferServer with per-pod Services (1 → 2 → 1) and deleting it: the operator
adds and removes each pod's Service, the StatefulSet controller the pods, the process kubelet
their processes, and the garbage collector every child once the server is gone."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from test_operator_ftps import Ftps, strong_password, user_manifests

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("rbac_guard")]

NAME = "ha"


def _ha_manifest() -> dict:
    return {
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FileTransferServer",
        "metadata": {"name": NAME},
        "spec": {
            "protocols": ["ftpsExplicit"],
            "replicas": 1,
            "passive": {"portStart": 31000, "portEnd": 31002},
            "storage": {"existingClaim": "shared"},
            "tls": {"ipAddresses": ["127.0.0.1"]},
            "exposure": {"serviceType": "ClusterIP", "perPodServices": True},
        },
    }


def _claim() -> dict:
    # No provisioner runs here: the claim stays Pending, and the process kubelet gives every pod
    # that mounts it the same directory, as a ReadWriteMany volume would.
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "shared"},
            "spec": {"accessModes": ["ReadWriteMany"],
                     "resources": {"requests": {"storage": "1Gi"}}}}


def _services(cluster, ns):
    return sorted(s["metadata"]["name"] for s in cluster.kubectl_json("get", "services", "-n", ns)["items"])


def _ready_pods(cluster, ns):
    pods = cluster.kubectl_json("get", "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={NAME}")["items"]
    return sorted(p["metadata"]["name"] for p in pods
                  if not p["metadata"].get("deletionTimestamp")
                  and {c["type"]: c["status"] for c in p.get("status", {}).get("conditions", [])}.get("Ready") == "True")


def test_scale_with_per_pod_services_and_garbage_collection(crds, operator, kubelet, tmp_path):
    cluster = crds
    ns = f"e2e-ha-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        cluster.apply([_claim(), _ha_manifest()], "-n", ns)
        cluster.kubectl("wait", "--for=condition=Ready", f"fts/{NAME}", "-n", ns, "--timeout=120s",
                        timeout=130)
        assert _services(cluster, ns) == ["ha", "ha-0", "ha-headless"]
        pod_svc = cluster.kubectl_json("get", "service", "ha-0", "-n", ns)
        assert pod_svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == "ha-0"

        password = strong_password()
        cluster.apply(user_manifests("shared", password, server=NAME), "-n", ns)
        first = Ftps(cluster, kubelet, ns, NAME, tmp_path)
        first.wait_login("shared", password)
        local = tmp_path / "x.txt"
        local.write_text("one claim, two pods\n")
        assert first.upload("shared", password, local, "x.txt").returncode == 0

        # 1 → 2
        cluster.kubectl("patch", "fts", NAME, "-n", ns, "--type=merge", "-p",
                        json.dumps({"spec": {"replicas": 2}}))
        cluster.wait_for(lambda: _ready_pods(cluster, ns) == ["ha-0", "ha-1"], 90, "pods ha-0 and ha-1 ready")
        cluster.wait_for(lambda: _services(cluster, ns) == ["ha", "ha-0", "ha-1", "ha-headless"], 60,
                         "per-pod Service ha-1")
        cluster.kubectl("wait", "--for=condition=Ready", f"fts/{NAME}", "-n", ns, "--timeout=60s", timeout=70)
        second = Ftps(cluster, kubelet, ns, NAME, tmp_path)
        second.pod = "ha-1"
        second.wait_login("shared", password)
        assert second.curl("shared", password, "/x.txt").stdout == "one claim, two pods\n"
        pid_1 = kubelet.pid("ha-1", ns)

        # 2 → 1
        cluster.kubectl("patch", "fts", NAME, "-n", ns, "--type=merge", "-p",
                        json.dumps({"spec": {"replicas": 1}}))
        cluster.wait_for(lambda: _services(cluster, ns) == ["ha", "ha-0", "ha-headless"], 60,
                         "per-pod Service ha-1 to be deleted")
        cluster.wait_for(lambda: not cluster.exists("pod", "ha-1", "-n", ns), 90, "pod ha-1 to go")
        cluster.wait_for(lambda: kubelet.running("ha-1", ns) is None, 30, "ha-1's process to stop")
        with pytest.raises(ProcessLookupError):
            import os
            os.kill(pid_1, 0)
        first.wait_login("shared", password)

        # Delete the server: the garbage collector removes every child, the kubelet the process.
        pid_0 = kubelet.pid("ha-0", ns)
        assert f'server="{NAME}"' in operator.metrics() and f'namespace="{ns}"' in operator.metrics()
        cluster.kubectl("delete", "fts", NAME, "-n", ns, timeout=90)

        def collected():
            left = cluster.kubectl(
                "get", "statefulsets,services,configmaps,secrets,networkpolicies,poddisruptionbudgets,pods",
                "-n", ns, "-l", f"app.kubernetes.io/instance={NAME}", "-o", "name").stdout.split()
            return not left or None
        cluster.wait_for(collected, 120, "garbage collection of the server's children")
        # The certificate-expiry series goes with its server (alerts must not fire for it).
        cluster.wait_for(
            lambda: f'namespace="{ns}"' not in operator.metrics() or None, 60,
            "the certificate-expiry series of the deleted server to be removed")
        cluster.wait_for(lambda: kubelet.running("ha-0", ns) is None, 30, "ha-0's process to stop")
        with pytest.raises(ProcessLookupError):
            import os
            os.kill(pid_0, 0)
        tu = cluster.kubectl_json("get", "tu", "shared", "-n", ns)
        ready = {c["type"]: c for c in tu["status"]["conditions"]}["Ready"]
        assert cluster.wait_for(
            lambda: {c["type"]: c for c in cluster.kubectl_json("get", "tu", "shared", "-n", ns)
                     ["status"]["conditions"]}["Ready"]["reason"] == "ServerNotFound",
            90, "the orphaned TransferUser to report ServerNotFound")
        del ready
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.parametrize(("verb", "resource"), [
    ("create", "pods"), ("delete", "pods"), ("get", "nodes"),
    ("update", "filetransferservers.sluice.dev"), ("delete", "transferusers.sluice.dev"),
    ("create", "clusterroles.rbac.authorization.k8s.io"), ("create", "serviceaccounts/token"),
    ("impersonate", "serviceaccounts"), ("create", "customresourcedefinitions.apiextensions.k8s.io"),
])
def test_operator_service_account_has_no_more_than_it_needs(operator, verb, resource):
    """The chart's rules are least privilege: spot checks of what the operator must not do."""
    proc = operator.cluster.kubectl("auth", "can-i", verb, resource, "--all-namespaces",
                                    kubeconfig=operator.kubeconfig, check=False)
    assert proc.stdout.strip() == "no", (verb, resource, proc.stdout, proc.stderr)


def test_namespace_scoped_install_manages_its_namespace_under_a_role(crds, operator, kubelet,
                                                                      tmp_path):
    """`rbacScope: namespace`: the chart grants a Role in the release namespace only, and the
    Deployment limits the operator to that namespace; it must still bring a server up there
    without one RBAC denial. (The cluster-wide operator is stopped meanwhile.)"""
    from conftest import REPO, _binary
    from operator_process import Operator

    cluster = crds
    ns = f"e2e-scoped-{uuid.uuid4().hex[:6]}"
    scoped = Operator(cluster, _binary("SLUICE_OPERATOR_BIN", "sluice-operator"),
                      REPO / "charts" / "sluice", tmp_path / "scoped-operator",
                      release="scoped", namespace=ns, values={"rbacScope": "namespace"})
    kinds = {d["kind"] for d in scoped.manifests()}
    assert kinds == {"ServiceAccount", "Role", "RoleBinding"}
    operator.stop()
    try:
        scoped.install()
        manifest = _ha_manifest()
        manifest["spec"]["storage"] = {"size": "1Gi"}
        manifest["spec"]["exposure"]["perPodServices"] = False
        cluster.apply(manifest, "-n", ns)
        proc = cluster.kubectl("wait", "--for=condition=Ready", f"fts/{NAME}", "-n", ns,
                               "--timeout=120s", check=False, timeout=130)
        assert proc.returncode == 0, (proc.stderr, scoped.tail())
        password = strong_password()
        cluster.apply(user_manifests("scoped", password, server=NAME), "-n", ns)
        Ftps(cluster, kubelet, ns, NAME, tmp_path).wait_login("scoped", password)
        denied = scoped.forbidden_lines()
        assert not denied, "\n".join(denied[:10])
        assert scoped.alive()
    finally:
        if scoped.proc is not None and (denied_any := scoped.forbidden_lines()):
            print("\n".join(denied_any[:5]))
        scoped.stop()
        operator.start()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
