"""Password aging (issue 7): past `passwords.maxAgeDays` counted from the user's
`passwordChangedAt`, password logins are refused over FTPS and SFTP with the audited reason
`PasswordExpired` while the client sees the ordinary failure; key logins keep working; a
reload of server.yaml applies the policy at once. Real clients: ftplib, paramiko, OpenSSH."""

from __future__ import annotations

import ftplib
import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paramiko
import pytest

from conftest import keygen



@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    return keygen(tmp_path_factory.mktemp("agingkeys") / "alice")


def pub(key: Path) -> str:
    return Path(str(key) + ".pub").read_text().strip()


def days_ago(days: int) -> str:
    return (datetime.now(timezone.utc) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def transport(srv) -> paramiko.Transport:
    t = paramiko.Transport(("127.0.0.1", srv.sftp_port))
    t.banner_timeout = 10
    t.start_client(timeout=10)
    return t


def run_sftp_password(srv, user: str, password: str) -> subprocess.CompletedProcess:
    cmd = ["sshpass", "-e", "sftp", "-o", f"UserKnownHostsFile={srv.known_hosts}",
           "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
           "-o", "BatchMode=no", "-o", "PubkeyAuthentication=no",
           "-o", "PreferredAuthentications=password", "-o", "NumberOfPasswordPrompts=1",
           "-b", "-", "-P", str(srv.sftp_port), f"{user}@127.0.0.1"]
    return subprocess.run(cmd, input="ls\n", capture_output=True, text=True, timeout=30,
                          env={**os.environ, "SSHPASS": password})


@pytest.fixture
def aging_server(make_server, user_entry, key):
    return make_server(
        users=[
            user_entry("alice", sshAuthorizedKeys=[pub(key)], passwordChangedAt=days_ago(31)),
            user_entry("bob", password="bob's long password 7", passwordChangedAt=days_ago(29)),
            user_entry("carol", password="carol's long password 8"),  # no change time: never ages
        ],
        config={"passwords": {"maxAgeDays": 30}},
    )


def test_expired_password_refused_over_ftps_and_sftp_with_audited_reason(aging_server, key):
    srv = aging_server
    # FTPS: the ordinary 530, no hint that the password was right.
    ftp = srv.ftp(None)
    with pytest.raises(ftplib.error_perm) as refused:
        ftp.login("alice", srv.passwords["alice"])
    assert str(refused.value) == "530 login incorrect"
    ftp.close()
    event = srv.wait_event("login", protocol="ftps", user="alice", result="failure")
    assert event["reason"] == "PasswordExpired"
    # SFTP password: paramiko and OpenSSH both fail; the audit says why.
    t = transport(srv)
    with pytest.raises(paramiko.AuthenticationException):
        t.auth_password("alice", srv.passwords["alice"])
    t.close()
    assert run_sftp_password(srv, "alice", srv.passwords["alice"]).returncode != 0
    srv.wait_event("login", protocol="sftp", user="alice", result="failure", after=1)
    reasons = [e["reason"] for e in srv.events("login", protocol="sftp", user="alice", result="failure")]
    assert reasons == ["PasswordExpired", "PasswordExpired"], reasons
    # Key logins are not affected by password aging.
    t = transport(srv)
    t.auth_publickey("alice", paramiko.Ed25519Key(filename=str(key)))
    sftp = paramiko.SFTPClient.from_transport(t)
    assert sftp.listdir("/") is not None
    t.close()
    assert srv.wait_event("login", protocol="sftp", user="alice", result="success")["method"] == "publickey"
    # A younger password and one without a change time log in fine.
    for user in ("bob", "carol"):
        ok = srv.ftp(user)
        assert ok.voidcmd("NOOP").startswith("200")
        ok.quit()
    assert run_sftp_password(srv, "bob", srv.passwords["bob"]).returncode == 0


def test_max_age_applies_on_reload_and_is_validated(aging_server, sluice_bin):
    srv = aging_server
    # Without passwords.maxAgeDays, passwords do not age: alice's password works again.
    config = dict(srv.config)
    config.pop("passwords")
    srv.reload_config(config)
    ftp = srv.ftp("alice")
    assert ftp.voidcmd("NOOP").startswith("200")
    ftp.quit()
    # A stricter policy applies to the next login at once: bob's 29-day-old password expires.
    config["passwords"] = {"maxAgeDays": 7}
    srv.reload_config(config)
    ftp = srv.ftp(None)
    with pytest.raises(ftplib.error_perm, match="530 login incorrect"):
        ftp.login("bob", srv.passwords["bob"])
    ftp.close()
    assert srv.wait_event("login", protocol="ftps", user="bob", result="failure")["reason"] == "PasswordExpired"
    # maxAgeDays 0 and a bad passwordChangedAt are configuration errors naming the field.
    config["passwords"] = {"maxAgeDays": 0}
    rejected = srv.reload_config(config, expect="rejected")
    assert "passwords.maxAgeDays" in rejected["error"]
    config["passwords"] = {"maxAgeDays": 30}
    srv.write_config(config)
    srv.write_users([dict(srv.users[0], passwordChangedAt="last tuesday")])
    out = subprocess.run([str(sluice_bin), "check-config", str(srv.config_path)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "users[0].passwordChangedAt" in out.stdout + out.stderr
