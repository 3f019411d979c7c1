"""The verified-password cache (`passwords.verifiedCacheSeconds`, server/src/verified_cache.rs):
a password that verified is accepted again without argon2id for a while, across FTPS and SFTP,
and nothing else changes: wrong passwords, changed hashes, disabled users are refused as before.
`sluice_password_checks_total{result}` tells which logins ran argon2id."""

import ftplib

import paramiko
import pytest
import yaml

from conftest import SluiceServer

RESULTS = ("verified", "rejected", "cached")


def checks(srv) -> dict[str, float]:
    status, text = srv.http_get("/metrics")
    assert status == 200
    counts = {}
    for result in RESULTS:
        series = f'sluice_password_checks_total{{result="{result}"}} '
        lines = [line for line in text.splitlines() if line.startswith(series)]
        assert len(lines) == 1, f"no {series!r} in /metrics"
        counts[result] = float(lines[0].rsplit(" ", 1)[1])
    return counts


def delta(before: dict, after: dict) -> dict:
    return {result: after[result] - before[result] for result in RESULTS}


def login_ftps(srv, user="alice", password=None):
    ftp = srv.ftp(user, password=password)
    ftp.quit()


def login_sftp(srv, user="alice", password=None):
    transport = paramiko.Transport(("127.0.0.1", srv.sftp_port))
    transport.banner_timeout = 10
    try:
        transport.start_client(timeout=10)
        transport.auth_password(user, password or srv.passwords[user])
        paramiko.SFTPClient.from_transport(transport).listdir(".")
    finally:
        transport.close()


def stored_hash(srv, user="alice") -> str:
    users = yaml.safe_load(srv.users_path.read_text())["users"]
    return next(u["passwordHash"] for u in users if u["username"] == user)


def test_repeated_logins_run_argon2_once_on_both_protocols(server):
    start = checks(server)
    login_ftps(server)
    assert delta(start, checks(server)) == {"verified": 1, "rejected": 0, "cached": 0}
    login_ftps(server)
    login_sftp(server)
    login_ftps(server)
    assert delta(start, checks(server)) == {"verified": 1, "rejected": 0, "cached": 3}


def test_a_wrong_password_is_verified_in_full_after_a_cached_login(server):
    login_ftps(server)
    start = checks(server)
    with pytest.raises(ftplib.error_perm) as info:
        server.ftp("alice", password=server.passwords["alice"] + "x")
    assert str(info.value).startswith("530")
    with pytest.raises(paramiko.AuthenticationException):
        login_sftp(server, password="not " + server.passwords["alice"])
    assert delta(start, checks(server)) == {"verified": 0, "rejected": 2, "cached": 0}
    assert len(server.events("login", result="failure")) >= 2, "failed logins are still audited"


def test_a_changed_hash_refuses_the_cached_password(server, user_entry):
    old = server.passwords["alice"]
    login_ftps(server)
    login_ftps(server)
    server.reload_users([user_entry("alice", password="a brand new password 7")])
    start = checks(server)
    with pytest.raises(ftplib.error_perm):
        server.ftp("alice", password=old)
    assert delta(start, checks(server))["cached"] == 0
    login_ftps(server, password="a brand new password 7")


def test_a_disabled_user_with_a_cached_password_is_refused(server, user_entry):
    login_ftps(server)
    same_hash = stored_hash(server)
    server.reload_users([user_entry("alice", password=None, passwordHash=same_hash, disabled=True)])
    start = checks(server)
    with pytest.raises(ftplib.error_perm) as info:
        server.ftp("alice", password=server.passwords["alice"])
    assert str(info.value).startswith("530")
    assert delta(start, checks(server))["cached"] == 1, "the password matched from the cache..."
    refusals = server.events("login", result="failure")
    assert refusals and refusals[-1].get("reason") == "account disabled", refusals[-1:]


def test_zero_turns_the_cache_off(make_server):
    srv = make_server(users=[SluiceServer.user("alice")],
                      config={"passwords": {"verifiedCacheSeconds": 0}})
    start = checks(srv)
    for _ in range(3):
        login_ftps(srv)
    assert delta(start, checks(srv)) == {"verified": 3, "rejected": 0, "cached": 0}
