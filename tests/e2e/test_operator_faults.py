"""Faults around the operator (issue 8 item 4): the API server stopped for a minute, and a
certificate Secret replaced with garbage. Real kube-apiserver, the operator process, the process
kubelet running sluice-server, real FTPS clients."""

from __future__ import annotations

import base64
import datetime
import ftplib
import hashlib
import json
import os
import ssl
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
import ipaddress
import yaml

from test_operator_ftps import Ftps, server_manifest, strong_password, user_manifests

pytestmark = [pytest.mark.timeout(420)]

OUTAGE_SECONDS = float(os.environ.get("SLUICE_E2E_OUTAGE_SECONDS", "60"))
CHILD_KINDS = "statefulsets,services,configmaps,secrets,pods,networkpolicies,poddisruptionbudgets"


def children(cluster, ns: str) -> list[tuple[str, str, str]]:
    """(kind, name, uid) of every object in the namespace that the test cares about."""
    items = cluster.kubectl_json("get", CHILD_KINDS, "-n", ns)["items"]
    return sorted((i["kind"], i["metadata"]["name"], i["metadata"]["uid"]) for i in items
                  if not i["metadata"]["name"].startswith("kube-root-ca"))


def served_certificate(port: int) -> str:
    """SHA-256 of the certificate the explicit FTPS listener presents after AUTH TLS."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ftp = ftplib.FTP_TLS(context=ctx, timeout=15)
    ftp.connect("127.0.0.1", port)
    ftp.auth()
    der = ftp.sock.getpeercert(binary_form=True)
    ftp.close()
    return hashlib.sha256(der).hexdigest()


def condition(cluster, ns: str, name: str, type_: str) -> dict:
    fts = cluster.kubectl_json("get", "fts", name, "-n", ns)
    return {c["type"]: c for c in fts.get("status", {}).get("conditions", [])}.get(type_, {})


def _new_namespace(cluster, prefix: str) -> str:
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    return ns


def _wait_ready(cluster, ns: str, name: str) -> None:
    proc = cluster.kubectl("wait", "--for=condition=Ready", f"fts/{name}", "-n", ns,
                           "--timeout=120s", check=False, timeout=130)
    assert proc.returncode == 0, (proc.stdout, proc.stderr,
                                  cluster.kubectl("get", "fts,sts,pods", "-n", ns, "-o", "yaml").stdout)


# --------------------------------------------------------------------------------------------
# 5. The API server stopped for a minute
# --------------------------------------------------------------------------------------------


def users_yaml(cluster, ns: str, name: str) -> dict[str, dict]:
    """The users the operator rendered into the server's users Secret, by username."""
    secret = cluster.kubectl_json("get", "secret", f"{name}-users", "-n", ns)
    doc = yaml.safe_load(base64.b64decode(secret["data"]["users.yaml"]))
    return {u["username"]: u for u in doc.get("users") or []}


def login_soon(ftps, user: str, password: str, attempts: int = 4) -> None:
    """A few spaced attempts (failed logins count towards the server's IP ban)."""
    for _ in range(attempts):
        if ftps.curl(user, password).returncode == 0:
            return
        time.sleep(2)
    raise AssertionError(f"{user} cannot log in over FTPS")


def rbac_denials(operator, since: int, outside: tuple[float, float]) -> list[str]:
    """RBAC denials in the operator log since `since`, except in the `outside` window (epoch
    seconds): a restarted API server refuses requests for a moment until its RBAC cache has
    synced, which is not an RBAC rule missing."""
    lines = []
    for line in operator.forbidden_lines(since):
        try:
            ts = datetime.datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00"))
        except (ValueError, KeyError):
            lines.append(line)
            continue
        if not outside[0] <= ts.timestamp() <= outside[1]:
            lines.append(line)
    return lines


def test_api_server_outage_keeps_serving_and_converges_without_duplicates(
        crds, operator, kubelet, tmp_path):
    cluster = crds
    ns = _new_namespace(cluster, "e2e-outage")
    name = "outage"
    log_start = operator.offset()
    try:
        cluster.apply(server_manifest(name), "-n", ns)
        _wait_ready(cluster, ns, name)
        password = strong_password()
        cluster.apply(user_manifests("early", password, server=name), "-n", ns)
        cluster.kubectl("wait", "--for=condition=Ready", "tu/early", "-n", ns, "--timeout=60s", timeout=70)
        ftps = Ftps(cluster, kubelet, ns, name, tmp_path)
        ftps.wait_login("early", password)
        before = children(cluster, ns)
        hash_before = users_yaml(cluster, ns, name)["early"]["passwordHash"]
        pid = ftps.pid()

        cluster.stop_apiserver()
        stopped_at = time.monotonic()
        try:
            # The servers keep serving for the whole outage; the process is never restarted.
            logins = 0
            while time.monotonic() - stopped_at < OUTAGE_SECONDS:
                p = ftps.curl("early", password)
                assert p.returncode == 0, f"FTPS login failed during the outage: {p.stderr}"
                logins += 1
                assert ftps.pid() == pid
                time.sleep(5)
            assert logins >= 2
        finally:
            cluster.start_apiserver()
        restarted = time.time()
        assert operator.alive(), operator.tail()

        # Changes applied right after the restart: a new user and a rotated password.
        late_password = strong_password()
        cluster.apply(user_manifests("late", late_password, server=name), "-n", ns)
        rotated = strong_password()
        secret, _ = user_manifests("early", rotated, server=name)
        cluster.apply(secret, "-n", ns)
        # The operator reconnects and reconciles them (watched through the API, no logins
        # yet: failed logins would count towards a ban).
        cluster.wait_for(lambda: (u := users_yaml(cluster, ns, name)).get("late")
                         and u["early"]["passwordHash"] != hash_before,
                         120, "the users Secret with both changes")
        print(f"[outage] operator converged {time.time() - restarted:.1f}s after the API server was ready again")
        cluster.kubectl("wait", "--for=condition=Ready", "tu/late", "-n", ns, "--timeout=60s", timeout=70)
        login_soon(ftps, "late", late_password)
        login_soon(ftps, "early", rotated)
        assert ftps.curl("early", password).returncode != 0
        assert ftps.pid() == pid, "the server process was restarted"

        # Converged without duplicates: the same children (same UIDs), plus only the new user's
        # password Secret.
        after = children(cluster, ns)
        added = sorted(set(after) - set(before))
        assert [(k, n) for k, n, _ in added] == [("Secret", "late-password")], added
        assert set(before) <= set(after), sorted(set(before) - set(after))
        assert [n for k, n, _ in after if k == "StatefulSet"] == [name]
        assert [n for k, n, _ in after if k == "Pod"] == [f"{name}-0"]
        _wait_ready(cluster, ns, name)
        fts = cluster.kubectl_json("get", "fts", name, "-n", ns)
        assert fts["status"]["observedGeneration"] == fts["metadata"]["generation"]
        denied = rbac_denials(operator, log_start, (restarted - 1, restarted + 30))
        assert not denied, "the operator was refused by its RBAC rules:\n" + "\n".join(denied[:10])
        assert operator.alive(), operator.tail()
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# --------------------------------------------------------------------------------------------
# 6. A certificate Secret replaced with garbage
# --------------------------------------------------------------------------------------------


def self_signed(cn: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def tls_secret(name: str, crt: bytes, key: bytes) -> dict:
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "labels": {"sluice.dev/referable": "true"}},
            "data": {"tls.crt": b64(crt), "tls.key": b64(key), "ca.crt": b64(crt)}}


@pytest.mark.usefixtures("rbac_guard")
def test_garbage_certificate_secret_keeps_the_old_certificate_and_raises_the_condition(
        crds, operator, kubelet, tmp_path):
    cluster = crds
    ns = _new_namespace(cluster, "e2e-badcert")
    name = "badcert"
    try:
        crt, key = self_signed("badcert.example")
        cluster.apply(tls_secret("partner-tls", crt, key), "-n", ns)
        manifest = server_manifest(name)
        manifest["spec"]["tls"] = {"source": "secretRef", "secretName": "partner-tls"}
        cluster.apply(manifest, "-n", ns)
        _wait_ready(cluster, ns, name)
        password = strong_password()
        cluster.apply(user_manifests("acme", password, server=name), "-n", ns)
        ca = tmp_path / "ca.crt"
        ca.write_bytes(crt)
        ftps = Ftps.__new__(Ftps)  # the CA is ours, not the operator's <name>-tls Secret
        ftps.cluster, ftps.kubelet, ftps.namespace, ftps.name = cluster, kubelet, ns, name
        ftps.pod, ftps.workdir, ftps.ca = f"{name}-0", tmp_path, ca
        ftps.wait_login("acme", password)
        port = ftps.ports()["ftps"]
        good = served_certificate(port)
        assert good == hashlib.sha256(x509.load_pem_x509_certificate(crt).public_bytes(
            serialization.Encoding.DER)).hexdigest()
        pid = ftps.pid()
        rejected_before = sum(1 for e in ftps.audit_events()
                              if e.get("event") == "config_reload" and e.get("result") == "rejected")

        cluster.apply(tls_secret("partner-tls", b"garbage, not PEM\n", b"more garbage\n"), "-n", ns)

        # The operator says what is wrong, naming the Secret.
        cert_condition = cluster.wait_for(
            lambda: (c := condition(cluster, ns, name, "CertificateReady")).get("status") == "False" and c,
            60, "CertificateReady=False")
        assert "partner-tls" in cert_condition["message"], cert_condition
        assert cert_condition["reason"] == "InvalidCertificate", cert_condition
        ready = condition(cluster, ns, name, "Ready")
        assert ready.get("status") == "False", ready
        # The server saw the new files, rejected them, and keeps serving the old certificate.
        cluster.wait_for(
            lambda: sum(1 for e in ftps.audit_events()
                        if e.get("event") == "config_reload" and e.get("result") == "rejected")
            > rejected_before,
            60, "the server to reject the garbage certificate")
        assert served_certificate(port) == good
        p = ftps.curl("acme", password)
        assert p.returncode == 0, p.stderr
        assert ftps.pid() == pid, "the server process was restarted"

        # A valid certificate again: served by hot reload, and the condition clears.
        crt2, key2 = self_signed("badcert-renewed.example")
        cluster.apply(tls_secret("partner-tls", crt2, key2), "-n", ns)
        cluster.wait_for(lambda: condition(cluster, ns, name, "CertificateReady").get("status") == "True",
                         60, "CertificateReady=True again")
        cluster.wait_for(lambda: served_certificate(port) != good, 60, "the new certificate served")
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
