"""Fixtures for the end-to-end tests against a real Kubernetes control plane.

The control plane (etcd, kube-apiserver, kube-controller-manager, kubectl) is built from source
by tests/e2e/build-k8s.sh into ~/.cache/sluice/k8s/... ($SLUICE_K8S_CACHE). Without the binaries
the tests are skipped, unless SLUICE_E2E_REQUIRED is set: then they are built first (slow, once)
and any failure fails the run. $SLUICE_K8S_BIN_DIR points at prebuilt binaries elsewhere.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from cluster import BINARIES, Cluster  # noqa: E402

BUILD_SCRIPT = HERE / "build-k8s.sh"


def _required() -> bool:
    return os.environ.get("SLUICE_E2E_REQUIRED", "") not in ("", "0", "false", "no")


def pinned_version(module: str) -> str:
    """The version of `module` required in tests/e2e/k8s/go.mod."""
    text = (HERE / "k8s" / "go.mod").read_text()
    m = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.M)
    if not m:
        raise RuntimeError(f"{module} not required in {HERE / 'k8s' / 'go.mod'}")
    return m.group(1)


def k8s_bin_dir() -> Path:
    env = os.environ.get("SLUICE_K8S_BIN_DIR")
    if env:
        return Path(env)
    out = subprocess.run([str(BUILD_SCRIPT), "--print-bin-dir"], check=True,
                         capture_output=True, text=True).stdout
    return Path(out.strip())


def _missing(bin_dir: Path) -> list[str]:
    return [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]


def pytest_sessionstart(session):
    # Building takes many minutes: do it here, outside any per-test timeout.
    if _required() and not os.environ.get("SLUICE_K8S_BIN_DIR") and _missing(k8s_bin_dir()):
        subprocess.run([str(BUILD_SCRIPT)], check=True, stdout=sys.stderr)


@pytest.fixture(scope="session")
def k8s_bin() -> Path:
    bin_dir = k8s_bin_dir()
    missing = _missing(bin_dir)
    if missing:
        msg = (f"Kubernetes control-plane binaries missing in {bin_dir}: {', '.join(missing)}; "
               "build them with tests/e2e/build-k8s.sh (or run tests/e2e/run)")
        if _required():
            pytest.fail(msg + " [SLUICE_E2E_REQUIRED is set]")
        pytest.skip(msg)
    return bin_dir


@pytest.fixture(scope="session")
def cluster(k8s_bin, request):
    c = Cluster(k8s_bin)
    c.start()
    print(f"\n[cluster] control plane at {c.server} up in {c.startup_seconds:.1f}s ({c.workdir})")
    yield c
    if request.session.testsfailed:
        print("\n" + c.log_tails())
        c.mark_failed()
    c.stop()


@pytest.fixture(scope="session")
def crds(cluster):
    """The Sluice CRDs from crds/, applied and Established."""
    cluster.kubectl("apply", "-f", str(REPO / "crds"))
    # `kubectl wait` fails outright ("status.conditions accessor error") when it reads a CRD
    # before the apiextensions controller has written any status: retry until it succeeds.
    cluster.wait_for(
        lambda: cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                                "crd/filetransferservers.sluice.dev", "crd/transferusers.sluice.dev",
                                check=False).returncode == 0,
        60, "the Sluice CRDs to be Established")
    return cluster


@pytest.fixture
def namespace(cluster):
    """A fresh namespace (with its `default` ServiceAccount) per test."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.wait_for(
        lambda: cluster.exists("serviceaccount", "default", "-n", name), 60,
        f"serviceaccount {name}/default",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# --------------------------------------------------------------------------------------------
# The operator (under the chart's RBAC) and the process kubelet running the server pods
# --------------------------------------------------------------------------------------------


def _binary(env: str, name: str) -> Path:
    path = Path(os.environ.get(env) or REPO / "target" / "debug" / name).resolve()
    if not os.access(path, os.X_OK):
        msg = f"{path} missing: cargo build -p sluice-operator -p sluice-server (or set {env})"
        if _required():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def operator(crds, request):
    """`sluice-operator run` as a process, authenticated as the chart's ServiceAccount and
    authorised only by the chart's RBAC rules (rendered from charts/sluice/templates), with
    `rbacScope: cluster`."""
    from operator_process import Operator

    # Tests create a namespace each, so this operator runs with the chart's cluster-wide opt-in;
    # test_operator_least_privilege.py runs the default, namespaced install.
    op = Operator(crds, _binary("SLUICE_OPERATOR_BIN", "sluice-operator"), REPO / "charts" / "sluice",
                  crds.workdir / "operator", values={"rbacScope": "cluster"})
    op.install()
    yield op
    op.stop()
    if request.session.testsfailed:
        print(f"\n===== operator log {op.log} (tail) =====\n{op.tail(80)}")


@pytest.fixture(scope="session")
def kubelet(cluster, request):
    """The test-only process kubelet (see kubelet.py): runs sluice-server Pods as processes."""
    from kubelet import ProcessKubelet

    k = ProcessKubelet(cluster, _binary("SLUICE_SERVER_BIN", "sluice-server"),
                       cluster.workdir / "kubelet").start()
    yield k
    k.stop()
    if request.session.testsfailed or k.errors:
        print("\n" + k.log_tails())
    if k.errors:
        print(f"\n[kubelet] {len(k.errors)} sync error(s), first:\n{k.errors[0]}")


@pytest.fixture
def rbac_guard(operator):
    """Fails the test when the API server refused the operator anything during it."""
    start = operator.offset()
    yield operator
    denied = operator.forbidden_lines(start)
    assert not denied, "the operator was refused by its RBAC rules:\n" + "\n".join(denied[:10])
    assert operator.alive(), f"the operator exited:\n{operator.tail()}"
