"""Hot reload of users.yaml, server.yaml and the certificate: valid changes apply without a
restart, invalid ones are rejected and the previous configuration keeps serving."""

import ftplib
import shutil
import ssl
import time

import pytest

from conftest import make_cert

ALL = ["list", "download", "upload", "overwrite", "delete", "rename", "mkdir", "rmdir"]


def _gone(ftp, timeout=8):
    """The session must end: a 421 reply or a closed connection within `timeout`."""
    deadline = time.monotonic() + timeout
    ftp.sock.settimeout(timeout)
    while time.monotonic() < deadline:
        try:
            reply = ftp.raw("NOOP")
        except (EOFError, ConnectionError, ssl.SSLError, OSError):
            return "closed"
        if reply.startswith("421"):
            return reply
        assert reply.startswith("200"), reply
        time.sleep(0.2)
    raise AssertionError("session of a removed user is still open")


def test_removed_user_session_ends_and_login_fails(server, user_entry):
    bob = server.ftp("bob")
    alice = server.ftp("alice")
    event = server.reload_users([user_entry("alice")])
    assert event["result"] == "applied"
    _gone(bob)
    with pytest.raises(ftplib.error_perm) as info:
        server.ftp("bob", password=server.passwords["bob"])
    assert str(info.value).startswith("530")
    # Other sessions are not dropped by a reload.
    assert alice.raw("NOOP").startswith("200")
    assert alice.pwd() == "/"
    alice.quit()


def test_disabled_user_session_ends(server, user_entry):
    bob = server.ftp("bob")
    server.reload_users([user_entry("alice"), user_entry("bob", password=server.passwords["bob"], disabled=True)])
    _gone(bob)


def test_permission_change_applies_to_next_command(server, user_entry):
    (server.make_home("alice") / "f.txt").write_bytes(b"data")
    ftp = server.ftp("alice")
    assert ftp.download("f.txt") == b"data"
    bob = user_entry("bob", password=server.passwords["bob"])
    server.reload_users([user_entry("alice", permissions=[p for p in ALL if p not in ("download", "mkdir")]), bob])
    with pytest.raises(ftplib.error_perm) as info:
        ftp.download("f.txt")
    assert str(info.value).startswith("550")
    with pytest.raises(ftplib.error_perm):
        ftp.mkd("d")
    server.reload_users([user_entry("alice"), bob])
    assert ftp.download("f.txt") == b"data"
    ftp.mkd("d")
    ftp.quit()


def test_new_user_can_log_in_after_reload(server, user_entry):
    with pytest.raises(ftplib.error_perm):
        server.ftp("carol", password="carol's password 99")
    server.reload_users([user_entry("alice"), user_entry("carol", password="carol's password 99")])
    ftp = server.ftp("carol")
    ftp.quit()


def test_password_change_applies(server, user_entry):
    server.reload_users([user_entry("alice", password="a brand new password 1")])
    with pytest.raises(ftplib.error_perm):
        server.ftp("alice", password="correct horse battery staple 42")
    ftp = server.ftp("alice", password="a brand new password 1")
    ftp.quit()


@pytest.mark.parametrize("bad", ["unknown-field", "bad-hash", "not-yaml", "bad-kind"])
def test_invalid_users_file_is_rejected_and_old_config_keeps_serving(server, bad):
    session = server.ftp("alice")
    text = server.users_path.read_text()
    raw = {
        "unknown-field": text + "bogusTopLevel: true\n",
        "bad-hash": text.replace("$argon2id$", "$argon2i$", 1),
        "not-yaml": "users: [ {username: alice, \n",
        "bad-kind": text.replace("kind: UserList", "kind: Users"),
    }[bad]
    event = server.reload_users(raw_text=raw, expect="rejected")
    assert event.get("error"), event
    assert "users.yaml" in event["error"] or bad == "not-yaml", event
    assert session.raw("NOOP").startswith("200")
    again = server.ftp("alice")
    again.quit()
    other = server.ftp("bob")
    other.quit()
    assert server.http_get("/readyz")[0] == 200
    session.quit()


def test_invalid_server_config_is_rejected(server):
    ftp = server.ftp("alice")
    raw = server.config_path.read_text().replace("maxSessions: 200", "maxSessions: 0")
    assert raw != server.config_path.read_text()
    event = server.reload_config(raw_text=raw, expect="rejected")
    assert "limits.maxSessions" in event.get("error", ""), event
    assert ftp.raw("NOOP").startswith("200")
    again = server.ftp("alice")
    again.quit()
    ftp.quit()


def test_server_config_change_applies(server):
    """A valid server.yaml change (fewer auth attempts) applies to new sessions."""
    cfg = dict(server.config)
    cfg["limits"] = dict(cfg["limits"], maxAuthAttempts=1)
    server.reload_config(cfg)
    ftp = server.ftp(None)
    ftp.auth()
    ftp.raw("USER alice")
    first = ftp.raw("PASS wrong wrong wrong")
    assert first[:3] in ("530", "421"), first
    if first.startswith("421"):
        return
    try:
        reply = ftp.raw("USER alice")
        assert reply.startswith("421"), reply
    except (EOFError, ConnectionError, ssl.SSLError, OSError):
        pass


def test_certificate_rotation_without_dropping_sessions(server, tmp_path):
    old_der = server.ftp(None)
    old_der.auth()
    old_cert = old_der.sock.getpeercert(binary_form=True)
    session = server.ftp("alice")
    new_crt, new_key = make_cert(tmp_path / "new", cn="rotated.localhost")
    # Clients must trust both during the swap.
    server.cafile.write_text(server.cafile.read_text() + new_crt.read_text())
    before = len(server.events("config_reload", result="applied"))
    shutil.copy(new_key, server.dir / "tls.key.tmp")
    shutil.copy(new_crt, server.dir / "tls.crt.tmp")
    (server.dir / "tls.key.tmp").replace(server.dir / "tls.key")
    (server.dir / "tls.crt.tmp").replace(server.dir / "tls.crt")
    deadline = time.monotonic() + 10
    while True:
        probe = server.ftp(None)
        probe.auth()
        cert = probe.sock.getpeercert(binary_form=True)
        probe.close()
        if cert != old_cert:
            break
        assert time.monotonic() < deadline, "new certificate not served within 10s"
        time.sleep(0.2)
    assert cert == ssl.PEM_cert_to_DER_cert(new_crt.read_text())
    server.wait_event("config_reload", after=before, result="applied")
    # The session opened before the swap is still alive, and still transfers (its data
    # connections resume the old session).
    assert session.raw("NOOP").startswith("200")
    session.upload("after-rotation.txt", b"ok")
    assert session.download("after-rotation.txt") == b"ok"
    session.quit()
    fresh = server.ftp("alice", implicit=True)
    assert fresh.sock.getpeercert(binary_form=True) == cert
    fresh.quit()


def test_broken_certificate_is_rejected_and_old_one_keeps_serving(server):
    first = server.ftp(None)
    first.auth()
    old_cert = first.sock.getpeercert(binary_form=True)
    first.close()
    tmp = server.dir / "tls.crt.tmp"
    tmp.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    before = len(server.events("config_reload", result="rejected"))
    tmp.replace(server.dir / "tls.crt")
    server.wait_event("config_reload", after=before, result="rejected")
    ftp = server.ftp("alice")
    assert ftp.sock.getpeercert(binary_form=True) == old_cert
    ftp.quit()


def test_loaded_reports_the_digest_of_the_users_file_being_served(server, user_entry):
    """GET /loaded (the operator's TransferUser readiness): the SHA-256 of the users file the
    running snapshot came from; an invalid file does not change it, a valid one does."""
    import hashlib
    import json

    def loaded() -> dict:
        status, body = server.http_get("/loaded")
        assert status == 200
        return json.loads(body)["usersFiles"]

    name = server.users_path.name
    before = loaded()
    assert before == {name: hashlib.sha256(server.users_path.read_bytes()).hexdigest()}
    assert "alice" not in json.dumps(before)
    good = server.users_path.read_text()
    server.reload_users(raw_text=good + "bogusTopLevel: true\n", expect="rejected")
    assert loaded() == before
    server.reload_users([*server.users, user_entry("carol")])
    after = loaded()
    assert after[name] == hashlib.sha256(server.users_path.read_bytes()).hexdigest()
    assert after != before
