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


def _render(ns: str, *values: str, release: str = "sluice") -> str:
    args = [helm_binary(), "template", release, str(REPO / "charts" / "sluice"), "--namespace", ns,
            "--kube-version", KUBE_VERSION, "--include-crds"]
    for value in values:
        args += ["--set", value]
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout


def _authorizer(cluster, ns: str, sa: str):
    def allowed(verb: str, group: str, resource: str, namespace: str = "") -> bool:
        """Asks the authorizer with a SubjectAccessReview (`kubectl auth can-i` cannot name a
        resource the server does not serve, such as cert-manager's)."""
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": {"user": f"system:serviceaccount:{ns}:{sa}",
                           "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}",
                                      "system:authenticated"],
                           "resourceAttributes": {"verb": verb, "group": group,
                                                  "resource": resource,
                                                  "namespace": namespace}}}
        out = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review)).stdout
        return json.loads(out)["status"].get("allowed", False)
    return allowed


def test_chart_installs_namespaced_by_default(crds):
    """The default install: a Role and RoleBinding in each watched namespace (here the release
    namespace and one more), nothing cluster-wide, and no right outside those namespaces."""
    cluster = crds
    ns = f"sluice-system-{uuid.uuid4().hex[:6]}"
    other = f"tenant-{uuid.uuid4().hex[:6]}"
    for name in (ns, other):
        cluster.kubectl("create", "namespace", name)
    try:
        rendered = _render(ns, f"watchNamespaces={{{ns},{other}}}")
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        kinds = {d["kind"] for d in docs}
        assert {"CustomResourceDefinition", "Role", "RoleBinding", "ServiceAccount",
                "Deployment", "Service"} <= kinds, kinds
        assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, kinds
        assert sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "Role") == sorted([ns, other])
        out = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                              input=rendered).stdout
        assert "deployment.apps/sluice-operator serverside-applied" in out, out
        deployment = cluster.kubectl_json("get", "deployment", "sluice-operator", "-n", ns)
        env = {e["name"]: e.get("value") for e in
               deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["SLUICE_WATCH_NAMESPACES"] == f"{ns},{other}"
        sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        allowed = _authorizer(cluster, ns, sa)
        for where in (ns, other):
            assert allowed("patch", "sluice.dev", "filetransferservers/status", where)
            assert allowed("create", "apps", "statefulsets", where)
            assert allowed("list", "", "secrets", where)
            assert allowed("patch", "cert-manager.io", "certificates", where)
            # Write access only to what it creates: no update or delete of Secrets.
            assert not allowed("delete", "", "secrets", where)
            assert not allowed("update", "", "secrets", where)
            assert not allowed("patch", "sluice.dev", "filetransferservers", where)
        # Nothing outside the watched namespaces, nothing cluster-wide.
        assert not allowed("get", "", "secrets", "default")
        assert not allowed("list", "", "secrets", "")
        assert not allowed("create", "apps", "statefulsets", "default")
        assert not allowed("list", "sluice.dev", "filetransferservers", "")
        assert not allowed("get", "apiextensions.k8s.io", "customresourcedefinitions")
    finally:
        for name in (ns, other):
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_chart_cluster_scope_is_an_explicit_opt_in(crds):
    cluster = crds
    ns = f"sluice-system-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        # Its own release name: the ClusterRole of the session's operator ("sluice") must stay.
        rendered = _render(ns, "rbacScope=cluster", release="optin")
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        kinds = {d["kind"] for d in docs}
        assert {"ClusterRole", "ClusterRoleBinding"} <= kinds, kinds
        assert not kinds & {"Role", "RoleBinding"}, kinds
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=rendered)
        deployment = cluster.kubectl_json("get", "deployment", "optin-operator", "-n", ns)
        env = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert "SLUICE_WATCH_NAMESPACES" not in env
        sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        allowed = _authorizer(cluster, ns, sa)
        assert allowed("patch", "sluice.dev", "filetransferservers/status", "")
        assert allowed("create", "apps", "statefulsets", "default")
        assert not allowed("delete", "", "secrets", "default")
        assert not allowed("create", "", "pods", "default")
        assert allowed("patch", "cert-manager.io", "certificates", "default")
        assert not allowed("list", "cert-manager.io", "certificates", "default")
        assert not allowed("update", "cert-manager.io", "certificates", "default")
        assert not allowed("get", "apiextensions.k8s.io", "customresourcedefinitions")
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", "optin-operator", check=False)


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
