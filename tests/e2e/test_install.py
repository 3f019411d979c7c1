"""Install like users do: the Helm chart (rendered by the real helm) is applied to the real API
server, and every manifest in examples/ is accepted by it (CRD schema and CEL rules included)
and reconciled by the operator."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
import yaml

from chart import KUBE_VERSION, helm_binary
from conftest import REPO

pytestmark = [pytest.mark.timeout(300)]


def test_chart_installs_into_the_api_server(crds):
    cluster = crds
    ns = f"sluice-system-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        rendered = subprocess.run(
            [helm_binary(), "template", "sluice", str(REPO / "charts" / "sluice"), "--namespace", ns,
             "--kube-version", KUBE_VERSION, "--include-crds"],
            capture_output=True, text=True, check=True, timeout=120).stdout
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        kinds = {d["kind"] for d in docs}
        assert {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "ServiceAccount",
                "Deployment", "Service"} <= kinds, kinds
        out = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                              input=rendered).stdout
        assert "deployment.apps/sluice-operator serverside-applied" in out, out
        deployment = cluster.kubectl_json("get", "deployment", "sluice-operator", "-n", ns)
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        # The ServiceAccount may do what the operator needs and nothing more.
        can = lambda *args: cluster.kubectl(  # noqa: E731
            "auth", "can-i", *args, f"--as=system:serviceaccount:{ns}:{sa}", check=False).stdout.strip()
        assert can("patch", "filetransferservers.sluice.dev", "--subresource=status", "-A") == "yes"
        assert can("patch", "filetransferservers.sluice.dev", "-A") == "no"
        assert can("create", "statefulsets", "-n", "default") == "yes"
        assert can("delete", "secrets", "-n", "default") == "no"
        assert can("create", "pods", "-n", "default") == "no"
        # cert-manager Certificates: applied, and deleted when a server's source changes;
        # cert-manager's presence comes from discovery, not from reading CRDs.
        # `kubectl auth can-i` cannot name a resource the server does not serve (cert-manager
        # is not installed here): ask the authorizer with a SubjectAccessReview instead.
        def allowed(verb: str, group: str, resource: str, namespace: str = "") -> bool:
            review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                      "spec": {"user": f"system:serviceaccount:{ns}:{sa}",
                               "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}",
                                          "system:authenticated"],
                               "resourceAttributes": {"verb": verb, "group": group,
                                                      "resource": resource,
                                                      "namespace": namespace}}}
            out = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review)).stdout
            return json.loads(out)["status"].get("allowed", False)
        assert allowed("patch", "cert-manager.io", "certificates", "default")
        assert allowed("create", "cert-manager.io", "certificates", "default")
        assert not allowed("list", "cert-manager.io", "certificates", "default")
        assert not allowed("update", "cert-manager.io", "certificates", "default")
        assert not allowed("get", "apiextensions.k8s.io", "customresourcedefinitions")
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", "sluice-operator", check=False)


def test_every_example_is_accepted_and_reconciled(crds, operator):
    cluster = crds
    cluster.kubectl("create", "namespace", "transfer", check=False)
    try:
        for path in sorted((REPO / "examples").glob("*.yaml")):
            out = cluster.kubectl("apply", "-f", str(path)).stdout
            assert "created" in out or "configured" in out or "unchanged" in out, (path, out)
        for server in ["partners", "sftp-partners"]:
            cluster.wait_for(
                lambda: cluster.kubectl("get", "statefulset", server, "-n", "transfer",
                                        check=False).returncode == 0 or None,
                60, f"the operator to create the StatefulSet of {server}")
        users = cluster.kubectl_json("get", "tu", "-n", "transfer")["items"]
        assert {u["spec"]["username"] for u in users} >= {"acme", "globex", "initech"}
    finally:
        cluster.kubectl("delete", "namespace", "transfer", "--wait=false", check=False)
