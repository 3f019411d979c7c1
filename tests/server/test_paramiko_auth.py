"""paramiko as scripts call it: a key the server does not know, then the password, on one
connection. paramiko sends a new `ssh-userauth` service request before every method; russh
0.65.1 ignored the repeated one and paramiko waited for its auth timeout
(patches/russh-repeated-service-request.patch). The attempt limit must still hold."""

from __future__ import annotations

import io
import time
from pathlib import Path

import paramiko
import pytest

from conftest import keygen

# paramiko's own default auth_timeout is 30 s; a hang shows as a time near that.
AUTH_TIMEOUT = 30
WELL_UNDER = AUTH_TIMEOUT // 2


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("paramiko-keys")
    return {"alice": keygen(d / "alice"), "unknown": keygen(d / "unknown")}


def pub(key: Path) -> str:
    return Path(str(key) + ".pub").read_text().strip()


@pytest.fixture
def srv(make_server, user_entry, keys):
    return make_server(users=[user_entry("alice", sshAuthorizedKeys=[pub(keys["alice"])])])


def client(srv) -> paramiko.SSHClient:
    c = paramiko.SSHClient()
    c.load_host_keys(str(srv.known_hosts))
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    return c


def test_unknown_key_then_password_logs_in_at_once(srv, keys):
    c = client(srv)
    started = time.monotonic()
    try:
        # What Airflow's SFTP hook and countless scripts do: a key_filename that this server
        # does not accept, then the password on the same connection.
        c.connect("127.0.0.1", port=srv.sftp_port, username="alice", password=srv.passwords["alice"],
                  key_filename=str(keys["unknown"]), look_for_keys=False, allow_agent=False,
                  timeout=10, auth_timeout=AUTH_TIMEOUT, banner_timeout=10)
        elapsed = time.monotonic() - started
        sftp = c.open_sftp()
        sftp.putfo(io.BytesIO(b"after a refused key"), "upload.txt")
        assert sftp.listdir(".") == ["upload.txt"]
    finally:
        c.close()
    print(f"login took {elapsed:.2f}s")
    assert elapsed < WELL_UNDER, f"login took {elapsed:.1f}s (paramiko's auth timeout is {AUTH_TIMEOUT}s)"
    methods = [(e["result"], e.get("method")) for e in srv.events("login", protocol="sftp")]
    assert methods[-1] == ("success", "password"), methods
    # The refused key was audited: paramiko offers it unsigned first (a publickey_offer, no
    # failed login) or signs it at once (a publickey login failure).
    refused = srv.events("publickey_offer", protocol="sftp", result="refused")
    assert refused or ("failure", "publickey") in methods, methods


def test_password_after_refused_key_on_one_transport(srv, keys):
    """The raw sequence: publickey refused (first service request), password accepted (second)."""
    t = paramiko.Transport(("127.0.0.1", srv.sftp_port))
    try:
        t.start_client(timeout=10)
        with pytest.raises(paramiko.AuthenticationException):
            t.auth_publickey("alice", paramiko.Ed25519Key(filename=str(keys["unknown"])))
        started = time.monotonic()
        assert t.auth_password("alice", srv.passwords["alice"]) == []
        assert time.monotonic() - started < WELL_UNDER
        assert t.is_authenticated()
    finally:
        t.close()


def test_repeated_service_requests_do_not_reset_the_attempt_limit(srv, keys):
    """Each paramiko attempt opens with a service request; the per-connection limit
    (limits.maxAuthAttempts: 3 in these tests) still ends the connection."""
    limit = srv.config["limits"]["maxAuthAttempts"]
    t = paramiko.Transport(("127.0.0.1", srv.sftp_port))
    refused = 0
    ended = False
    try:
        t.start_client(timeout=10)
        t.auth_timeout = WELL_UNDER
        for _ in range(limit * 3):
            try:
                t.auth_password("alice", "not the password at all")
            except paramiko.BadAuthenticationType:
                refused += 1
            except paramiko.AuthenticationException:
                refused += 1
            except (paramiko.SSHException, EOFError, OSError):
                ended = True
                break
            if not t.is_active():
                ended = True
                break
    finally:
        t.close()
    assert ended, f"the server answered {refused} failed attempts without ending the connection"
    # The attempt after the last allowed one meets the closed connection (paramiko reports
    # that as an authentication failure too), so at most limit + 1 calls returned.
    assert refused <= limit + 1, f"{refused} attempts refused, limit is {limit}"
    failures = srv.events("login", protocol="sftp", result="failure")
    assert len(failures) == limit, failures
