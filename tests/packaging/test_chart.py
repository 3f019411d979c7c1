"""The Helm chart: `helm lint`, `helm template` with default and non-default values, the
rendered manifests validated against the Kubernetes OpenAPI schemas (kubernetes-validate), and
the properties users rely on (restricted pod security, one replica with Recreate, least
privilege RBAC, no `latest` image)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sluice"
K8S_VERSION = "1.33.0"


@pytest.fixture(scope="session")
def helm() -> str:
    path = os.environ.get("SLUICE_HELM") or shutil.which("helm")
    if not path:
        result = subprocess.run([str(ROOT / "tests/packaging/install-helm.sh")], capture_output=True,
                                text=True, timeout=1500)
        assert result.returncode == 0, result.stderr
        path = result.stdout.strip().splitlines()[-1]
    return path


def render(helm: str, *values: str) -> list[dict]:
    args = [helm, "template", "sluice", str(CHART), "--namespace", "sluice-system", "--kube-version", K8S_VERSION]
    for value in values:
        args += ["--set", value]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("values", [[], ["serviceMonitor.enabled=true", "serverPodMonitor.enabled=true",
                                         "prometheusRule.enabled=true", "grafanaDashboard.enabled=true"]],
                         ids=["defaults", "monitoring"])
def test_lint(helm, values):
    args = [arg for value in values for arg in ("--set", value)]
    result = subprocess.run([helm, "lint", "--strict", "--kube-version", K8S_VERSION, str(CHART), *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_rejects_bad_values(helm):
    result = subprocess.run([helm, "template", "x", str(CHART), "--kube-version", K8S_VERSION, "--set", "rbacScope=everything"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "rbacScope" in result.stderr
    result = subprocess.run([helm, "template", "x", str(CHART), "--kube-version", K8S_VERSION, "--set", "image.tag=latest"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0


@pytest.mark.parametrize("values", [[], ["rbacScope=namespace", "serviceMonitor.enabled=true",
                                         "serverPodMonitor.enabled=true", "prometheusRule.enabled=true",
                                         "grafanaDashboard.enabled=true"]],
                         ids=["defaults", "namespaced"])
def test_rendered_manifests_are_valid_kubernetes(helm, values):
    import kubernetes_validate

    docs = render(helm, *values)
    assert {"Deployment", "ServiceAccount", "Service"} <= {d["kind"] for d in docs}
    for doc in docs:
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # ServiceMonitor, PodMonitor, PrometheusRule: CRDs of the Prometheus Operator
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_operator_pod_is_restricted_and_single(helm):
    deployment = by_kind(render(helm), "Deployment")[0]
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert not container["image"].endswith(":latest")
    assert container["image"].endswith(":0.1.0")


def test_rbac_is_least_privilege(helm):
    docs = render(helm)
    role = by_kind(docs, "ClusterRole")[0]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        assert "escalate" not in rule["verbs"] and "bind" not in rule["verbs"]
    crd_rules = [r for r in role["rules"] if "sluice.dev" in r["apiGroups"]]
    writes = {v for r in crd_rules for v in r["verbs"] if v in ("patch", "update", "create", "delete")}
    spec_writers = [r for r in crd_rules if writes & set(r["verbs"])]
    assert all(all(res.endswith("/status") for res in r["resources"]) for r in spec_writers), \
        "the operator may write only the status of its custom resources"
    namespaced = render(helm, "rbacScope=namespace")
    assert not by_kind(namespaced, "ClusterRole")
    assert by_kind(namespaced, "Role")[0]["metadata"]["namespace"] == "sluice-system"


def test_chart_crds_are_the_generated_ones():
    for generated in (ROOT / "crds").glob("*.yaml"):
        assert (CHART / "crds" / generated.name).read_text() == generated.read_text()
