"""Per-pod passive addresses from LoadBalancer status: two replicas behind per-pod LoadBalancer
Services and no address in the spec; each pod must advertise its own Service's load balancer
address in PASV.

No cloud controller runs against this API server, so nothing ever fills in
`status.loadBalancer.ingress`: the test writes it itself (the Services' status subresource), as a
cloud provider's controller would, and checks the rendered server.yaml and EndpointsReady. (The
process kubelet runs every pod on 127.0.0.1 and so drops advertised addresses from its local
copy of server.yaml; the addresses are asserted on the ConfigMap the pods mount.)"""

from __future__ import annotations

import base64
import json
import uuid

import pytest
import yaml
from cryptography import x509

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("rbac_guard")]

NAME = "lb"
ADDRESSES = {"lb-0": "203.0.113.10", "lb-1": "203.0.113.11"}


def _manifest() -> dict:
    return {
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FileTransferServer",
        "metadata": {"name": NAME},
        "spec": {
            "protocols": ["ftpsExplicit"],
            "replicas": 2,
            "passive": {"portStart": 31100, "portEnd": 31102},
            "storage": {"existingClaim": "shared"},
            "tls": {"ipAddresses": ["127.0.0.1"]},
            "exposure": {"serviceType": "LoadBalancer", "perPodServices": True},
        },
    }


def _claim() -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "shared"},
            "spec": {"accessModes": ["ReadWriteMany"],
                     "resources": {"requests": {"storage": "1Gi"}}}}


def _endpoints(cluster, ns: str) -> dict | None:
    fts = cluster.kubectl_json("get", "fts", NAME, "-n", ns)
    return {c["type"]: c for c in (fts.get("status") or {}).get("conditions", [])}.get("EndpointsReady")


def _passive(cluster, ns: str) -> dict:
    cm = cluster.kubectl_json("get", "configmap", f"{NAME}-config", "-n", ns)
    return yaml.safe_load(cm["data"]["server.yaml"])["passive"]


def test_each_pod_advertises_its_load_balancer_address(crds, operator, kubelet):
    cluster = crds
    ns = f"e2e-lb-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        cluster.apply([_claim(), _manifest()], "-n", ns)
        for pod in ADDRESSES:
            cluster.wait_for(lambda: cluster.exists("service", pod, "-n", ns), 60,
                             f"per-pod Service {pod}")
            assert cluster.kubectl_json("get", "service", pod, "-n", ns)["spec"]["type"] == "LoadBalancer"
        # Without load balancer addresses FTPS would advertise unreachable pod addresses.
        pending = cluster.wait_for(
            lambda: (c := _endpoints(cluster, ns)) and c["reason"] == "LoadBalancerPending" and c,
            60, "EndpointsReady=False/LoadBalancerPending")
        assert pending["status"] == "False"
        assert "lb-0" in pending["message"] and "lb-1" in pending["message"], pending
        assert "advertisedAddressByHost" not in _passive(cluster, ns)

        # Play the cloud provider's controller: one load balancer address per pod Service.
        for pod, ip in ADDRESSES.items():
            cluster.kubectl("patch", "service", pod, "-n", ns, "--subresource=status",
                            "--type=merge", "-p", json.dumps(
                                {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}))
        cluster.wait_for(lambda: _passive(cluster, ns).get("advertisedAddressByHost") == ADDRESSES,
                         60, "server.yaml to advertise each pod's load balancer address")
        passive = _passive(cluster, ns)
        assert "advertisedAddress" not in passive, passive
        ready = cluster.wait_for(
            lambda: (c := _endpoints(cluster, ns)) and c["status"] == "True" and c, 120,
            "EndpointsReady=True")
        assert "lb-0=203.0.113.10" in ready["message"] and "lb-1=203.0.113.11" in ready["message"], ready
        # The certificate covers the advertised addresses too.
        secret = cluster.kubectl_json("get", "secret", f"{NAME}-tls", "-n", ns)
        cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(ADDRESSES.values()) <= {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
        cluster.kubectl("wait", "--for=condition=Ready", f"fts/{NAME}", "-n", ns,
                        "--timeout=60s", timeout=70)
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
