"""Time-based certificate renewal: a generated certificate with a short lifetime (`duration:
90s`) is renewed by the operator at 2/3 of its lifetime without anything else changing; the
process kubelet swaps the TLS Secret volume; the same server process shows the new certificate
to a new `openssl s_client -starttls ftp` handshake while a session opened before keeps
working."""

from __future__ import annotations

import hashlib
import io
import ssl
import time
import uuid

from datetime import datetime, timezone

import pytest
from cryptography import x509

from test_operator_ftps import (
    Ftps, _ResumingFTP, _served_certificate, server_manifest, strong_password, user_manifests,
)

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("rbac_guard")]

NAME = "renewing"


def test_short_lived_certificate_is_renewed_on_time(crds, operator, kubelet, tmp_path):
    cluster = crds
    ns = f"e2e-renew-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        manifest = server_manifest(NAME)
        manifest["spec"]["passive"] = {"portStart": 30010, "portEnd": 30012}
        manifest["spec"]["tls"]["duration"] = "90s"
        cluster.apply(manifest, "-n", ns)
        proc = cluster.kubectl("wait", "--for=condition=Ready", f"fts/{NAME}", "-n", ns,
                               "--timeout=120s", check=False, timeout=130)
        assert proc.returncode == 0, proc.stderr
        server = Ftps(cluster, kubelet, ns, NAME, tmp_path)
        password = strong_password()
        cluster.apply(user_manifests("renewer", password, server=NAME), "-n", ns)
        server.wait_login("renewer", password)
        pid = server.pid()
        port = server.ports()["ftps"]
        first = _served_certificate(port, server.ca)
        first_cert = x509.load_der_x509_certificate(first)
        lifetime = first_cert.not_valid_after_utc - first_cert.not_valid_before_utc
        assert lifetime.total_seconds() <= 150, lifetime  # 90 s plus one minute of clock skew
        status = cluster.kubectl_json("get", "fts", NAME, "-n", ns)["status"]
        renewal = datetime.fromisoformat(status["certificateRenewal"].replace("Z", "+00:00"))
        # Renewal is planned at 2/3 of the lifetime.
        expected = first_cert.not_valid_before_utc + lifetime * 2 / 3
        assert abs((renewal - expected).total_seconds()) <= 2, (renewal, expected)

        ctx = ssl.create_default_context(cafile=str(server.ca))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        session = _ResumingFTP(context=ctx, timeout=20)
        session.connect("127.0.0.1", port)
        session.login("renewer", password)
        session.prot_p()
        session.storbinary("STOR before.txt", io.BytesIO(b"before\n"))

        def renewed():
            der = _served_certificate(port, server.ca)
            return der if der != first else None
        second = cluster.wait_for(renewed, 150, "the renewed certificate on new handshakes", interval=2)
        renewed_at = datetime.now(timezone.utc)
        assert renewed_at >= renewal, "renewed before the planned time"
        second_cert = x509.load_der_x509_certificate(second)
        assert second_cert.not_valid_after_utc > first_cert.not_valid_after_utc
        names = lambda c: sorted(c.extensions.get_extension_for_class(  # noqa: E731
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
        assert names(second_cert) == names(first_cert)
        assert server.pid() == pid, "the server was restarted instead of reloading its certificate"
        session.storbinary("STOR after.txt", io.BytesIO(b"after\n"))
        assert sorted(session.nlst()) == ["after.txt", "before.txt"]
        session.quit()
        cluster.wait_for(
            lambda: cluster.kubectl_json("get", "fts", NAME, "-n", ns)["status"]["certificateSha256"]
            .replace(":", "").lower() == hashlib.sha256(second).hexdigest() or None,
            30, "status.certificateSha256 to show the renewed certificate")
        # Issuing is announced by a Normal Event (the recorder folds the renewal into the same
        # Event's series); the server's first CA is no rotation.
        events = cluster.wait_for(
            lambda: (e := [x for x in cluster.kubectl_json("get", "events.events.k8s.io", "-n", ns)["items"]
                           if x.get("regarding", {}).get("name") == NAME])
            and any(x.get("reason") == "CertificateIssued" for x in e) and e,
            30, "a CertificateIssued Event")
        issued = [x for x in events if x.get("reason") == "CertificateIssued"]
        assert all(x["type"] == "Normal" and "valid until" in x["note"] for x in issued), issued
        assert not any(x.get("reason") == "CARotated" for x in events), events
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
