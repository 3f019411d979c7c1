"""TOTP (RFC 6238) second factor with real clients: FTPS `PASS <password><code>` (Python ftplib),
SFTP keyboard-interactive after the first factor (OpenSSH sftp, paramiko); a code is accepted
once across both protocols, replays and wrong codes are refused and audited."""

from __future__ import annotations

import base64
import ftplib
import hashlib
import hmac
import os
import struct
import re
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from conftest import keygen

PASSWORD = "correct horse battery staple 42"
SECRET = base64.b32encode(b"sluice-totp-test-secret!").decode()  # 192 bits


def totp(secret: str, at: float | None = None, digits: int = 6, period: int = 30) -> str:
    """RFC 6238 with HMAC-SHA-1, written out here so the test does not share code with the server."""
    key = base64.b32decode(secret)
    counter = int((time.time() if at is None else at) // period)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** digits).zfill(digits)


def test_rfc6238_helper_matches_the_rfc():
    # RFC 6238 Appendix B, SHA-1, 8 digits.
    secret = base64.b32encode(b"12345678901234567890").decode()
    assert totp(secret, 59, 8) == "94287082"
    assert totp(secret, 1111111109, 8) == "07081804"



@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    return keygen(tmp_path_factory.mktemp("totpkeys") / "id")


@pytest.fixture
def srv(make_server, user_entry, key):
    public = Path(str(key) + ".pub").read_text().strip()
    return make_server(users=[
        user_entry("alice", sshAuthorizedKeys=[public], totp={"secret": SECRET}),
        user_entry("bob", password="bob's long password 7"),
    ])


def login(srv, user: str, password: str) -> str:
    ftp = srv.ftp(None)
    try:
        return ftp.login(user, password)
    finally:
        ftp.close()


def refused(srv, user: str, password: str) -> str:
    with pytest.raises(ftplib.error_perm) as info:
        login(srv, user, password)
    return str(info.value)


def test_ftps_password_plus_code_once_then_replay_refused(srv):
    code = totp(SECRET)
    srv.passwords["alice"] = PASSWORD + code
    proc = srv.curl()  # curl --user alice:<password><code>
    assert proc.returncode == 0, proc.stderr
    ok = srv.wait_event("login", protocol="ftps", user="alice", result="success")
    assert ok["method"] == "password+totp"
    # The same code again: refused, audited as a replay, counted as a failed login.
    assert refused(srv, "alice", PASSWORD + code).startswith("530")
    assert srv.wait_event("login", protocol="ftps", result="failure", reason="totp replayed")["attempt"] == 1
    # A wrong code, the password alone, a wrong password with a good code: refused.
    wrong = str((int(code) + 1) % 1_000_000).zfill(6)
    assert refused(srv, "alice", PASSWORD + wrong).startswith("530")
    srv.wait_event("login", protocol="ftps", result="failure", reason="totp invalid")
    assert refused(srv, "alice", PASSWORD).startswith("530")
    next_code = totp(SECRET, time.time() + 30)
    assert refused(srv, "alice", "not the password" + next_code).startswith("530")
    srv.wait_event("login", protocol="ftps", result="failure", user="alice", reason="invalid credentials")
    # The next step's code (inside the one-step skew window) is still unused: accepted (lftp).
    srv.passwords["alice"] = PASSWORD + next_code
    proc = srv.lftp("cls /")
    assert proc.returncode == 0, proc.stderr
    assert len(srv.events("login", protocol="ftps", user="alice", result="success")) == 2
    # A user without TOTP logs in with the password alone.
    assert login(srv, "bob", "bob's long password 7").startswith("230")
    # Neither the secret nor any code reaches the audit log or the operational log.
    # Codes are checked as whole numbers: six digits turn up by chance inside the nanoseconds of
    # a timestamp (a CI run failed that way).
    text = "\n".join(srv.audit_lines()) + srv.stderr()
    assert SECRET not in text
    for one_code in (code, wrong, next_code):
        assert not re.search(rf"(?<!\d){one_code}(?!\d)", text), one_code


def test_failed_codes_feed_the_ban_engine(make_server, user_entry):
    srv = make_server(users=[user_entry("alice", totp={"secret": SECRET})],
                      config={"bans": {"threshold": 2, "windowSeconds": 60}})
    for _ in range(2):
        with pytest.raises(ftplib.error_perm):
            login(srv, "alice", PASSWORD + "000000")
    srv.wait_event("ban", scope="ip")


def _askpass_env(directory: Path, answer: str) -> dict:
    script = directory / "askpass-code.sh"
    script.write_text("#!/bin/sh\nprintf '%s\\n' '" + answer + "'\n")
    script.chmod(0o700)
    return {**os.environ, "SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}


def openssh_sftp(srv, key: Path, code: str) -> subprocess.CompletedProcess:
    cmd = ["sftp", "-o", f"UserKnownHostsFile={srv.known_hosts}", "-o", "StrictHostKeyChecking=yes",
           "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "ConnectTimeout=10",
           "-i", str(key), "-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1",
           "-o", "PreferredAuthentications=publickey,keyboard-interactive",
           "-b", "-", "-P", str(srv.sftp_port), "alice@127.0.0.1"]
    return subprocess.run(cmd, input="ls\n", capture_output=True, text=True, timeout=60,
                          env=_askpass_env(srv.root, code))


def test_sftp_publickey_then_code_with_openssh(srv, key):
    code = totp(SECRET)
    proc = openssh_sftp(srv, key, code)
    assert proc.returncode == 0, proc.stderr
    partial = srv.wait_event("login", protocol="sftp", result="partial", user="alice")
    assert partial["method"] == "publickey" and partial["remaining"] == ["keyboard-interactive"]
    assert srv.wait_event("login", protocol="sftp", result="success", user="alice")["method"] == "publickey+totp"
    # The key alone is not enough, and the same code is not accepted twice.
    proc = openssh_sftp(srv, key, code)
    assert proc.returncode != 0
    srv.wait_event("login", protocol="sftp", result="failure", user="alice", reason="totp replayed")


def paramiko_two_factor(srv, key: Path, code: str) -> paramiko.Transport:
    """Plain paramiko: publickey, then keyboard-interactive on the same connection (paramiko
    sends a second `ssh-userauth` service request before it; patches/README.md)."""
    t = paramiko.Transport(("127.0.0.1", srv.sftp_port))
    t.start_client(timeout=10)
    remaining = t.auth_publickey("alice", paramiko.Ed25519Key(filename=str(key)))
    assert remaining == ["keyboard-interactive"]
    prompts_seen = []

    def answer(title, instructions, prompts):
        prompts_seen.extend(p for p, _ in prompts)
        return [code] * len(prompts)

    try:
        t.auth_interactive("alice", answer)
    finally:
        assert prompts_seen == ["Verification code: "]
    return t


def test_sftp_code_with_paramiko_and_replay_across_protocols(srv, key):
    code = totp(SECRET)
    t = paramiko_two_factor(srv, key, code)
    try:
        assert t.is_authenticated()
        sftp = paramiko.SFTPClient.from_transport(t)
        assert sftp.listdir(".") == []
    finally:
        t.close()
    # The code SFTP accepted is refused on FTPS (same user, same process).
    assert refused(srv, "alice", PASSWORD + code).startswith("530")
    srv.wait_event("login", protocol="ftps", result="failure", reason="totp replayed")
    # A wrong code over SFTP: refused and audited.
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_two_factor(srv, key, "123").close()
    srv.wait_event("login", protocol="sftp", result="failure", reason="totp invalid")


def test_a_code_used_on_another_replica_is_a_replay_here(make_server, user_entry, tmp_path):
    """Replay records cross replicas through the operator's `/bans` sync: this pod reports the
    steps it accepted (`totpSteps`), and a step another replica accepted (`PUT /bans/peers`)
    makes that code, and older ones, a replay here."""
    from test_ban_sync import TOKEN, call

    token = tmp_path / "ban-sync-token"
    token.write_text(TOKEN + "\n")
    srv = make_server(users=[user_entry("alice", totp={"secret": SECRET})],
                      config={"bans": {"sync": {"tokenFile": str(token)}}})
    now = time.time()
    step = int(now // 30)
    assert login(srv, "alice", PASSWORD + totp(SECRET, now)).startswith("230")
    status, report = call(srv, "GET", "/bans")
    assert status == 200
    assert report["totpSteps"] == [{"username": "alice", "step": step}], report
    assert report["peerTotpSteps"] == []

    # Another replica accepted the next step's code: it is a replay here, never having been used.
    next_code = totp(SECRET, now + 30)
    status, body = call(srv, "PUT", "/bans/peers",
                        {"bans": [], "totpSteps": [{"username": "alice", "step": step + 1}]})
    assert status == 200 and body["totpSteps"] == 1, body
    assert refused(srv, "alice", PASSWORD + next_code).startswith("530")
    srv.wait_event("login", protocol="ftps", user="alice", result="failure", reason="totp replayed")
    _, report = call(srv, "GET", "/bans")
    assert report["peerTotpSteps"] == [{"username": "alice", "step": step + 1}]
    assert report["totpSteps"] == [{"username": "alice", "step": step}], "imports are not re-exported"
    # Without the import the same code is fresh here.
    assert call(srv, "PUT", "/bans/peers", {"bans": [], "totpSteps": []})[0] == 200
    assert login(srv, "alice", PASSWORD + next_code).startswith("230")
