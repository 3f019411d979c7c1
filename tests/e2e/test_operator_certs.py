"""Certificates the operator does not issue itself: `tls.source: certManager` (without cert-manager
the condition says `CertManagerMissing`; with its API served the operator applies a cert-manager
`Certificate` and serves the Secret cert-manager writes) and `tls.source: secretRef` (a
certificate that expires within 30 days gives one Warning Event `CertificateExpiringSoon`).

cert-manager's controller cannot run here (no container runtime): its API is served by a
stand-in CRD (fixtures/cert-manager-certificate-crd.standin.yaml) and the test plays
cert-manager by writing the TLS Secret and the Certificate's status itself."""

from __future__ import annotations

import base64
import datetime
import ftplib
import hashlib
import ipaddress
import json
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import HERE
from test_operator_ftps import _reconciles, server_manifest

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("rbac_guard")]

STAND_IN_CRD = HERE / "fixtures" / "cert-manager-certificate-crd.standin.yaml"
CRD_NAME = "certificates.cert-manager.io"


def _issue(names: list[str], days: float) -> tuple[bytes, bytes, bytes, bytes]:
    """A CA and a server certificate for `names` valid for `days`: (ca, cert, key) PEM and the
    certificate's DER."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "e2e stand-in issuer")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return (ca.public_bytes(pem), cert.public_bytes(pem), key_pem,
            cert.public_bytes(serialization.Encoding.DER))


def _tls_secret(name: str, ca: bytes, cert: bytes, key: bytes) -> dict:
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": {"sluice.dev/referable": "true"}},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(cert), "tls.key": b64(key), "ca.crt": b64(ca)}}


def _conditions(cluster, ns: str, name: str) -> dict[str, dict]:
    fts = cluster.kubectl_json("get", "fts", name, "-n", ns)
    return {c["type"]: c for c in (fts.get("status") or {}).get("conditions", [])}


def _wait_reason(cluster, ns: str, name: str, type_: str, reason: str, timeout: float = 90) -> dict:
    def reached():
        c = _conditions(cluster, ns, name).get(type_)
        return c if c and c["reason"] == reason else None
    return cluster.wait_for(reached, timeout, f"{type_} of fts/{name} to have reason {reason}")


def _events(cluster, ns: str, name: str, reason: str) -> list[dict]:
    items = cluster.kubectl_json("get", "events.events.k8s.io", "-n", ns)["items"]
    return [e for e in items if e.get("reason") == reason
            and (e.get("regarding") or {}).get("name") == name]


def _served_der(kubelet, ns: str, pod: str, ca: bytes, tmp_path) -> bytes:
    """The certificate a real FTPS client (ftplib, AUTH TLS) verifies against `ca`."""
    ca_file = tmp_path / "served-ca.crt"
    ca_file.write_bytes(ca)
    ftp = ftplib.FTP_TLS(context=ssl.create_default_context(cafile=str(ca_file)), timeout=20)
    try:
        ftp.connect("127.0.0.1", kubelet.ports(pod, ns)["ftps"])
        ftp.auth()
        return ftp.sock.getpeercert(binary_form=True)
    finally:
        ftp.close()


def _cert_manager_api_served(cluster) -> bool:
    return cluster.kubectl("get", "--raw", "/apis/cert-manager.io/v1", check=False).returncode == 0


def _cert_manager_server(name: str) -> dict:
    manifest = server_manifest(name)
    manifest["spec"]["tls"].update({
        "source": "certManager",
        "issuerRef": {"name": "e2e-issuer", "kind": "ClusterIssuer"},
        "duration": "720h",
    })
    return manifest


def test_cert_manager_missing_is_reported(crds, operator, namespace):
    cluster = crds
    cluster.kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=true", timeout=90)
    cluster.wait_for(lambda: not _cert_manager_api_served(cluster), 60,
                     "cert-manager.io/v1 to leave discovery")
    cluster.apply(_cert_manager_server("cm-missing"), "-n", namespace)
    cert = _wait_reason(cluster, namespace, "cm-missing", "CertificateReady", "CertManagerMissing")
    assert cert["status"] == "False"
    assert "install cert-manager" in cert["message"], cert
    ready = _conditions(cluster, namespace, "cm-missing")["Ready"]
    assert ready["status"] == "False" and "CertManagerMissing" not in ready["reason"], ready
    assert "install cert-manager" in ready["message"]
    events = cluster.wait_for(lambda: _events(cluster, namespace, "cm-missing", "CertManagerMissing"),
                              30, "a CertManagerMissing event")
    assert events[0]["type"] == "Warning"


def test_cert_manager_certificate_is_created_and_its_secret_served(crds, operator, kubelet,
                                                                   namespace, tmp_path):
    cluster, name = crds, "cm-files"
    cluster.kubectl("apply", "-f", str(STAND_IN_CRD))
    try:
        cluster.wait_for(
            lambda: cluster.kubectl("wait", "--for=condition=Established", "--timeout=20s",
                                    f"crd/{CRD_NAME}", check=False).returncode == 0,
            60, "the stand-in Certificate CRD to be Established")
        cluster.wait_for(lambda: _cert_manager_api_served(cluster), 60,
                         "cert-manager.io/v1 in discovery")
        cluster.apply(_cert_manager_server(name), "-n", namespace)
        cluster.wait_for(lambda: cluster.exists(CRD_NAME, name, "-n", namespace), 90,
                         "the operator to create the Certificate")
        certificate = cluster.kubectl_json("get", CRD_NAME, name, "-n", namespace)
        spec = certificate["spec"]
        assert spec["secretName"] == f"{name}-tls"
        assert spec["issuerRef"] == {"name": "e2e-issuer", "kind": "ClusterIssuer",
                                     "group": "cert-manager.io"}
        assert spec["duration"] == "720h"
        assert spec["privateKey"]["algorithm"] == "ECDSA"
        # Only the names the spec lists (an ACME issuer refuses in-cluster names and IPs);
        # spec.tls.automaticNames adds the Service names.
        assert spec["dnsNames"] == ["ftp.example.com"], spec
        assert spec["ipAddresses"] == ["127.0.0.1"]
        uid = cluster.kubectl_json("get", "fts", name, "-n", namespace)["metadata"]["uid"]
        assert [(o["kind"], o["uid"], o.get("controller"))
                for o in certificate["metadata"]["ownerReferences"]] == \
            [("FileTransferServer", uid, True)]
        pending = _wait_reason(cluster, namespace, name, "CertificateReady", "CertificatePending")
        assert pending["status"] == "False" and f"{name}-tls" in pending["message"], pending

        # Play cert-manager: the Certificate's status, then the Secret it issues into.
        renewal = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=40)) \
            .replace(microsecond=0)
        renewal_text = renewal.strftime("%Y-%m-%dT%H:%M:%SZ")
        cluster.kubectl("patch", CRD_NAME, name, "-n", namespace, "--subresource=status",
                        "--type=merge", "-p", json.dumps({"status": {
                            "renewalTime": renewal_text,
                            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                                            "message": "Certificate is up to date"}]}}))
        ca, cert, key, der = _issue(spec["dnsNames"] + spec["ipAddresses"], days=60)
        cluster.apply(_tls_secret(spec["secretName"], ca, cert, key), "-n", namespace)

        proc = cluster.kubectl("wait", "--for=condition=Ready", f"fts/{name}", "-n", namespace,
                               "--timeout=120s", check=False, timeout=130)
        assert proc.returncode == 0, (proc.stderr, _conditions(cluster, namespace, name))
        conditions = _conditions(cluster, namespace, name)
        assert conditions["CertificateReady"]["status"] == "True"
        assert conditions["CertificateReady"]["reason"] == "Valid", conditions
        status = cluster.kubectl_json("get", "fts", name, "-n", namespace)["status"]
        assert status["certificateSha256"].replace(":", "").lower() == hashlib.sha256(der).hexdigest()
        assert status["certificateRenewal"].startswith(renewal_text[:19].replace("Z", "")), status
        # A real FTPS client sees exactly the certificate "cert-manager" issued.
        assert _served_der(kubelet, namespace, f"{name}-0", ca, tmp_path) == der

        # Back to the operator's own CA: its Certificate goes (cert-manager would otherwise keep
        # writing the Secret) and the operator's certificate replaces cert-manager's.
        cluster.kubectl("patch", "fts", name, "-n", namespace, "--type=json", "-p", json.dumps([
            {"op": "replace", "path": "/spec/tls/source", "value": "generated"},
            {"op": "remove", "path": "/spec/tls/issuerRef"}]))
        cluster.wait_for(lambda: not cluster.exists(CRD_NAME, name, "-n", namespace), 60,
                         "the operator to delete its Certificate")

        def operator_issued():
            secret = cluster.kubectl_json("get", "secret", f"{name}-tls", "-n", namespace)
            own_ca = base64.b64decode(secret["data"]["ca.crt"])
            served = _served_der(kubelet, namespace, f"{name}-0", own_ca, tmp_path)
            return served if served != der else None
        cluster.wait_for(operator_issued, 90, "the operator's own certificate to be served")
        assert _conditions(cluster, namespace, name)["CertificateReady"]["reason"] == "Issued"
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=false", check=False)


def test_secret_ref_certificate_expiring_soon_warns_once(crds, operator, kubelet, namespace,
                                                         tmp_path):
    cluster, name = crds, "expiring"
    ca, cert, key, der = _issue(["partner.example.com", "127.0.0.1"], days=10)
    manifest = server_manifest(name)
    manifest["spec"]["tls"] = {"source": "secretRef", "secretName": "partner-cert",
                               "dnsNames": ["partner.example.com"], "ipAddresses": ["127.0.0.1"]}
    cluster.apply([_tls_secret("partner-cert", ca, cert, key), manifest], "-n", namespace)
    # Still serving: an expiring certificate works until it expires.
    proc = cluster.kubectl("wait", "--for=condition=Ready", f"fts/{name}", "-n", namespace,
                           "--timeout=120s", check=False, timeout=130)
    assert proc.returncode == 0, (proc.stderr, _conditions(cluster, namespace, name))
    cert_condition = _wait_reason(cluster, namespace, name, "CertificateReady",
                                  "CertificateExpiringSoon")
    assert cert_condition["status"] == "True"
    assert "less than 30 days" in cert_condition["message"], cert_condition
    assert "CertificateReady" in _conditions(cluster, namespace, name)["Ready"]["message"]
    assert _served_der(kubelet, namespace, f"{name}-0", ca, tmp_path) == der
    events = cluster.wait_for(lambda: _events(cluster, namespace, name, "CertificateExpiringSoon"),
                              30, "a CertificateExpiringSoon event")
    assert [e["type"] for e in events] == ["Warning"]
    assert "partner-cert" in events[0]["note"]

    # More reconciles (a label change) publish no second event: events on transitions only.
    before = _reconciles(operator)
    cluster.kubectl("label", "fts", name, "-n", namespace, "e2e.sluice.dev/poke=1")
    cluster.wait_for(lambda: _reconciles(operator) > before, 30, "another reconcile")
    time.sleep(2)
    events = _events(cluster, namespace, name, "CertificateExpiringSoon")
    assert len(events) == 1 and not events[0].get("series"), events
    not_after = x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
    metric = [line for line in operator.metrics().splitlines()
              if line.startswith("sluice_operator_certificate_expiry_timestamp_seconds{")
              and f'namespace="{namespace}"' in line]
    assert metric and float(metric[0].rsplit(" ", 1)[1]) == not_after, metric
