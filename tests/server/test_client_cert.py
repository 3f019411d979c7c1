"""Client-certificate logins over FTPS with real clients (curl --cert, Python ftplib with an
SSLContext): certificate-only (232 after USER), certificate plus password, and a certificate
mapped to alice that cannot open bob's account."""

from __future__ import annotations

import ftplib
import hashlib
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

PASSWORD = "correct horse battery staple 42"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A client CA and certificates for alice, bob, carol (signed by it) and mallory (self-signed)."""
    d = tmp_path_factory.mktemp("clientpki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/O=Partner/CN=Partner client CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            cwd=d)
    (d / "client.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                  "extendedKeyUsage=clientAuth\nsubjectAltName=email:${ENV::SAN}\n")
    paths = {"ca": d / "ca.crt"}
    for name in ("alice", "bob", "carol"):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/O=Partner/CN={name}", cwd=d)
        subprocess.run(["openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                        "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", "client.ext"],
                       cwd=d, check=True, capture_output=True,
                       env={"SAN": f"{name}@partner.example", "PATH": "/usr/bin:/bin"})
        paths[name] = d / f"{name}.crt"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "mallory.key", "-out", "mallory.crt", "-days", "2", "-subj", "/O=Partner/CN=alice", cwd=d)
    paths["mallory"] = d / "mallory.crt"
    return paths


def der_sha256(cert: Path) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    return hashlib.sha256(der).hexdigest()


@pytest.fixture
def srv(make_server, user_entry, pki):
    carol_fp = der_sha256(pki["carol"])
    srv = make_server(
        users=[
            user_entry("alice", ftpsAuth="certificate", clientCertificates=[{"subject": "CN=alice,O=Partner"}]),
            user_entry("bob", ftpsAuth="certificate", clientCertificates=[{"san": "bob@partner.example"}]),
            user_entry("carol", ftpsAuth="certificateAndPassword",
                       clientCertificates=[{"sha256": ":".join(carol_fp[i:i + 2] for i in range(0, 64, 2))}]),
            user_entry("dave"),
        ],
        config={"tls": {"clientCertificates": "optional", "clientCaFile": "client-ca.crt"}},
        start=False,
    )
    shutil.copy(pki["ca"], srv.dir / "client-ca.crt")
    return srv.start()


def context(srv, pki, name: str | None) -> ssl.SSLContext:
    ctx = srv.context()
    if name is not None:
        ctx.load_cert_chain(pki[name], pki[name].with_suffix(".key"))
    return ctx


def ftp_login(srv, pki, cert: str | None, user: str, password: str = "") -> str:
    ftp = srv.ftp(None, context=context(srv, pki, cert))
    try:
        return ftp.login(user, password)
    finally:
        ftp.close()


def ftp_refused(srv, pki, cert: str | None, user: str, password: str = "") -> str:
    with pytest.raises(ftplib.error_perm) as info:
        ftp_login(srv, pki, cert, user, password)
    return str(info.value)


def curl(srv, pki, cert: str, user: str, password: str = "") -> subprocess.CompletedProcess:
    cmd = ["curl", "--silent", "--show-error", "--ssl-reqd", "--cacert", str(srv.cafile),
           "--cert", str(pki[cert]), "--key", str(pki[cert].with_suffix(".key")),
           "--user", f"{user}:{password}", "--max-time", "20", f"ftp://127.0.0.1:{srv.explicit_port}/"]
    return subprocess.run(cmd, capture_output=True, timeout=30)


def test_certificate_only_login_with_curl_and_ftplib(srv, pki):
    srv.make_home("alice")
    (srv.home("alice") / "hello.txt").write_text("hi")
    proc = curl(srv, pki, "alice", "alice")
    assert proc.returncode == 0, proc.stderr
    assert b"hello.txt" in proc.stdout
    event = srv.wait_event("login", protocol="ftps", user="alice", result="success")
    assert event["method"] == "certificate"
    assert event["client_cert_sha256"] == der_sha256(pki["alice"])
    assert "CN=alice" in event["client_cert_subject"]
    # ftplib: USER is answered with 232 and no PASS is sent.
    assert ftp_login(srv, pki, "alice", "alice").startswith("232")
    # bob is mapped by his e-mail SAN.
    assert ftp_login(srv, pki, "bob", "bob").startswith("232")


def test_alice_certificate_cannot_log_in_as_bob(srv, pki):
    assert ftp_refused(srv, pki, "alice", "bob", "anything").startswith("530")
    event = srv.wait_event("login", protocol="ftps", user="bob", result="failure")
    assert event["reason"] == "client certificate not mapped"
    assert event["client_cert_sha256"] == der_sha256(pki["alice"])
    proc = curl(srv, pki, "alice", "bob")
    assert proc.returncode != 0
    # Nor as a password user with that user's correct password.
    assert ftp_refused(srv, pki, "alice", "dave", PASSWORD).startswith("530")
    srv.wait_event("login", protocol="ftps", user="dave", result="failure", reason="client certificate not mapped")
    # Without any certificate a certificate user is refused; a password user is not.
    assert ftp_refused(srv, pki, None, "alice", "anything").startswith("530")
    srv.wait_event("login", protocol="ftps", user="alice", result="failure", reason="client certificate required")
    assert ftp_login(srv, pki, None, "dave", PASSWORD).startswith("230")


def test_a_certificate_from_another_issuer_is_refused_at_the_handshake(srv, pki):
    # Self-signed with alice's subject: the TLS layer refuses it before any login.
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, ftplib.Error, OSError)):
        ftp_login(srv, pki, "mallory", "alice")
    assert not srv.events("login", user="alice", result="success")


def test_certificate_and_password_needs_both(srv, pki):
    assert ftp_login(srv, pki, "carol", "carol", PASSWORD).startswith("230")
    assert srv.wait_event("login", protocol="ftps", user="carol", result="success")["method"] == \
        "certificate+password"
    assert ftp_refused(srv, pki, "carol", "carol", "wrong password").startswith("530")
    srv.wait_event("login", protocol="ftps", user="carol", result="failure", reason="invalid credentials")
    assert ftp_refused(srv, pki, "bob", "carol", PASSWORD).startswith("530")
    srv.wait_event("login", protocol="ftps", user="carol", result="failure", reason="client certificate not mapped")
    assert ftp_refused(srv, pki, None, "carol", PASSWORD).startswith("530")
    srv.wait_event("login", protocol="ftps", user="carol", result="failure", reason="client certificate required")
    proc = curl(srv, pki, "carol", "carol", PASSWORD)
    assert proc.returncode == 0, proc.stderr


def test_certificate_only_with_totp_sends_the_code_as_pass(make_server, user_entry, pki):
    import base64
    import time

    from test_totp import totp

    secret = base64.b32encode(b"another-totp-secret-16+").decode()
    srv = make_server(
        users=[user_entry("alice", ftpsAuth="certificate", totp={"secret": secret},
                          clientCertificates=[{"subject": "CN=alice,O=Partner"}])],
        config={"tls": {"clientCertificates": "required", "clientCaFile": "client-ca.crt"}},
        start=False,
    )
    shutil.copy(pki["ca"], srv.dir / "client-ca.crt")
    srv.start()
    code = totp(secret)
    assert ftp_login(srv, pki, "alice", "alice", code).startswith("230")
    assert srv.wait_event("login", protocol="ftps", user="alice", result="success")["method"] == \
        "certificate+totp"
    assert ftp_refused(srv, pki, "alice", "alice", code).startswith("530")
    srv.wait_event("login", protocol="ftps", user="alice", result="failure", reason="totp replayed")
    assert ftp_login(srv, pki, "alice", "alice", totp(secret, time.time() + 30)).startswith("230")


def test_lftp_certificate_only(srv, pki):
    srv.make_home("alice")
    (srv.home("alice") / "from-lftp.txt").write_text("hi")
    key = pki["alice"].with_suffix(".key")
    script = "\n".join([
        "set cmd:fail-exit true", "set net:max-retries 1", "set net:timeout 10",
        "set ftp:ssl-force true", "set ftp:ssl-protect-data true", "set ftp:ssl-protect-list true",
        f"set ssl:ca-file {srv.cafile}", "set ssl:check-hostname no",
        f"set ssl:cert-file {pki['alice']}", f"set ssl:key-file {key}",
        f"open -u alice,unused ftp://127.0.0.1:{srv.explicit_port}", "cls -1 /",
    ])
    proc = subprocess.run(["lftp", "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert b"from-lftp.txt" in proc.stdout
    assert srv.wait_event("login", protocol="ftps", user="alice", result="success")["method"] == "certificate"
