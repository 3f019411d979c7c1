"""Issue 15: `exposure: NodePort` that works for FTPS. Each passive port is exposed on the node
port of the same number (what PASV advertises), the control port on the node port the spec
asks for, and the real API server accepts and allocates them; pod settings reach the pods.

No kube-proxy runs here, so nothing forwards node ports: the test asserts what the API server
stored and that the pod serves a login (through the process kubelet's port map)."""

from __future__ import annotations

import uuid

import pytest
import yaml

from test_operator_ftps import Ftps, strong_password, user_manifests

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("rbac_guard")]

NAME = "nodeport"
PASSIVE = (31200, 31202)
PRIORITY = "sluice-e2e-transfer"


def _manifest() -> dict:
    return {
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FileTransferServer",
        "metadata": {"name": NAME},
        "spec": {
            "protocols": ["ftpsExplicit"],
            "passive": {"portStart": PASSIVE[0], "portEnd": PASSIVE[1],
                        "advertisedAddress": "127.0.0.1"},
            "storage": {"size": "1Gi"},
            "tls": {"ipAddresses": ["127.0.0.1"]},
            "exposure": {"serviceType": "NodePort", "nodePorts": {"ftpsExplicit": 31221}},
            "pod": {"labels": {"traffic.sidecar.istio.io/excludeInboundPorts": "all"},
                    "annotations": {"sidecar.istio.io/inject": "false"},
                    "priorityClassName": PRIORITY},
        },
    }


def test_node_port_server_exposes_passive_ports_on_their_own_numbers(crds, operator, kubelet, tmp_path):
    cluster = crds
    ns = f"e2e-nodeport-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    cluster.apply({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                   "metadata": {"name": PRIORITY}, "value": 1000})
    try:
        cluster.apply(_manifest(), "-n", ns)
        proc = cluster.kubectl("wait", "--for=condition=Ready", f"fts/{NAME}", "-n", ns,
                               "--timeout=120s", check=False, timeout=130)
        assert proc.returncode == 0, proc.stderr + cluster.kubectl(
            "get", "fts", NAME, "-n", ns, "-o", "jsonpath={.status}", check=False).stdout
        service = cluster.kubectl_json("get", "service", NAME, "-n", ns)
        assert service["spec"]["type"] == "NodePort"
        node_ports = {p["name"]: p.get("nodePort") for p in service["spec"]["ports"]}
        assert node_ports["ftps"] == 31221, node_ports
        for port in range(PASSIVE[0], PASSIVE[1] + 1):
            assert node_ports[f"pasv-{port}"] == port, node_ports
        config = yaml.safe_load(cluster.kubectl_json("get", "configmap", f"{NAME}-config", "-n", ns)
                                ["data"]["server.yaml"])
        assert config["passive"]["advertisedAddress"] == "127.0.0.1", config["passive"]

        template = cluster.kubectl_json("get", "statefulset", NAME, "-n", ns)["spec"]["template"]
        assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        assert template["metadata"]["labels"]["traffic.sidecar.istio.io/excludeInboundPorts"] == "all"
        assert template["spec"]["priorityClassName"] == PRIORITY
        requests = template["spec"]["containers"][0]["resources"]["requests"]
        assert requests == {"cpu": "100m", "memory": "128Mi"}, requests

        password = strong_password()
        cluster.apply(user_manifests("nodeuser", password, server=NAME), "-n", ns)
        Ftps(cluster, kubelet, ns, NAME, tmp_path).wait_login("nodeuser", password)
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "priorityclass", PRIORITY, "--wait=false", check=False)
