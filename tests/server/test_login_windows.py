"""Login time windows (issue 7): logins outside every window are refused with a clear reason and
not counted towards bans; an open session ends at its window's edge (FTPS 421, SSH disconnect);
a hot reload that changes the windows applies to open sessions. Real clients: Python ftplib,
paramiko and OpenSSH sftp against the real binary.

Windows are whole minutes (HH:MM), so to have an edge a few seconds after a login the server
runs with its test-only clock offset (SLUICE_TEST_ONLY_CLOCK_OFFSET_SECONDS): its window clock
is shifted so that a minute boundary falls ~10 s after the start."""

from __future__ import annotations

import ftplib
import os
import re
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paramiko
import pytest

from conftest import keygen

OFFSET_ENV = "SLUICE_TEST_ONLY_CLOCK_OFFSET_SECONDS"
CLOSED = "login window closed, session ended"
BANS = {
    "bans": {"threshold": 3, "windowSeconds": 60, "baseBanSeconds": 30, "maxBanSeconds": 60},
    "limits": {"maxAuthAttempts": 10, "authFailureDelayMs": 10},
}



@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    return keygen(tmp_path_factory.mktemp("windowkeys") / "alice")


def pub(key: Path) -> str:
    return Path(str(key) + ".pub").read_text().strip()


class ShiftedClock:
    """The server's window clock: real time + offset, with a minute boundary `edge` ahead."""

    def __init__(self, seconds_to_edge: float):
        now = time.time()
        # The next-but-one minute boundary, and an offset that puts it `seconds_to_edge` ahead.
        boundary = (int(now) // 60 + 2) * 60
        self.offset = int(round(boundary - seconds_to_edge - now))
        self.edge_real = boundary - self.offset  # real (unshifted) time of the edge
        self.edge = datetime.fromtimestamp(boundary, timezone.utc)

    def hhmm(self, minutes_from_edge: int) -> str:
        return (self.edge + timedelta(minutes=minutes_from_edge)).strftime("%H:%M")

    def window(self, start: int, end: int) -> dict:
        """A window from `start` to `end` minutes relative to the edge, every day, UTC."""
        return {"from": self.hhmm(start), "to": self.hhmm(end), "timeZone": "UTC"}


@pytest.fixture
def clock(monkeypatch) -> ShiftedClock:
    shifted = ShiftedClock(seconds_to_edge=10)
    monkeypatch.setenv(OFFSET_ENV, str(shifted.offset))
    return shifted


def paramiko_transport(srv) -> paramiko.Transport:
    t = paramiko.Transport(("127.0.0.1", srv.sftp_port))
    t.banner_timeout = 10
    t.start_client(timeout=10)
    return t


def sftp_batch_waiting(srv, key: Path) -> subprocess.Popen:
    """OpenSSH sftp logged in by key, waiting on its (open) batch input."""
    cmd = ["sftp", "-o", f"UserKnownHostsFile={srv.known_hosts}", "-o", "StrictHostKeyChecking=yes",
           "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "PasswordAuthentication=no",
           "-i", str(key), "-b", "-", "-P", str(srv.sftp_port), "alice@127.0.0.1"]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_unsolicited_reply(ftp, timeout: float) -> str:
    """The next reply the server sends without a command (the 421 at the window's edge)."""
    ftp.sock.settimeout(timeout)
    try:
        return ftp.getresp()
    except ftplib.error_temp as exc:
        return str(exc)


def test_logins_outside_every_window_are_refused_with_the_reason_and_not_banned(make_server, user_entry,
                                                                                clock, key):
    # alice's only window opens 5 minutes after the edge (about 5 minutes from now).
    srv = make_server(
        users=[
            user_entry("alice", sshAuthorizedKeys=[pub(key)], loginWindows=[clock.window(5, 10)]),
            user_entry("bob", password="bob's long password 7"),
        ],
        config=BANS,
    )
    ftp = srv.ftp(None)
    with pytest.raises(ftplib.error_perm) as refused:
        ftp.login("alice", srv.passwords["alice"])
    text = str(refused.value)
    assert text.startswith("530 login not allowed at this time (window"), text
    assert clock.hhmm(5) in text  # the next opening, in the server's (shifted) clock
    event = srv.wait_event("login", protocol="ftps", user="alice", result="failure")
    assert event["reason"] == "outside login window"
    assert event["next_open"].startswith((clock.edge + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"))
    # More refused logins than the ban threshold (3): they are not guessing attempts.
    for _ in range(3):
        with pytest.raises(ftplib.error_perm):
            ftp.login("alice", srv.passwords["alice"])
    ftp.close()
    # SFTP, key and password: an authentication failure with the audited reason.
    t = paramiko_transport(srv)
    with pytest.raises(paramiko.AuthenticationException):
        t.auth_publickey("alice", paramiko.Ed25519Key(filename=str(key)))
    t.close()
    t = paramiko_transport(srv)
    with pytest.raises(paramiko.AuthenticationException):
        t.auth_password("alice", srv.passwords["alice"])
    t.close()
    sftp = [e for e in srv.events("login", protocol="sftp", user="alice", result="failure")]
    deadline = time.monotonic() + 10
    while len(sftp) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        sftp = srv.events("login", protocol="sftp", user="alice", result="failure")
    assert [e["reason"] for e in sftp] == ["outside login window"] * 2
    assert {e["method"] for e in sftp} == {"publickey", "password"}
    # Six refusals from 127.0.0.1, threshold 3: no ban, bob and the banner are still served.
    assert srv.events("ban") == []
    bob = srv.ftp("bob")
    assert bob.voidcmd("NOOP").startswith("200")
    bob.quit()
    # A wrong password outside the window is still a plain failure (no hint about the window).
    ftp = srv.ftp(None)
    with pytest.raises(ftplib.error_perm) as wrong:
        ftp.login("alice", "not the password")
    assert "login incorrect" in str(wrong.value)
    ftp.close()


def test_sessions_end_at_the_window_edge_after_an_inflight_transfer(make_server, user_entry, monkeypatch,
                                                                     key):
    # The window opened a minute ago and closes at the edge, ~25 s from now: time for the
    # logins below (argon2id in a debug build on a loaded machine can take seconds each).
    clock = ShiftedClock(seconds_to_edge=25)
    monkeypatch.setenv(OFFSET_ENV, str(clock.offset))
    srv = make_server(users=[user_entry("alice", sshAuthorizedKeys=[pub(key)],
                                       loginWindows=[clock.window(-1, 0)])])
    home = srv.make_home("alice")
    (home / "big.bin").write_bytes(os.urandom(48 * 1024 * 1024))
    idle = srv.ftp("alice")
    busy = srv.ftp("alice")
    sftp = sftp_batch_waiting(srv, key)
    srv.wait_event("login", protocol="sftp", user="alice", result="success", timeout=15)
    assert idle.voidcmd("NOOP").startswith("200")
    assert time.time() < clock.edge_real - 2, "the set-up took longer than the window"
    # A download in flight across the edge: the client does not read until after the edge.
    busy.voidcmd("TYPE I")
    data = busy.transfercmd("RETR big.bin")
    # The idle FTPS session gets the 421 at the edge, unasked.
    reply = wait_unsolicited_reply(idle, timeout=45)
    cut_after = time.time() - clock.edge_real
    assert reply.startswith("421 " + CLOSED), reply
    assert -0.5 <= cut_after <= 5, f"cut {cut_after:.1f}s after the edge"
    # OpenSSH sftp is disconnected with the description (its ssh prints it; the next batch
    # command then fails).
    srv.wait_event("session_ended", protocol="sftp", user="alice")
    try:
        _, err = sftp.communicate(input="ls\n", timeout=15)
    finally:
        if sftp.poll() is None:
            sftp.kill()
    assert sftp.returncode != 0
    assert CLOSED in err, err
    # The in-flight download is allowed to finish; then that session ends too.
    time.sleep(1)
    received = 0
    while chunk := data.recv(1 << 20):
        received += len(chunk)
    data.close()
    assert received == 48 * 1024 * 1024
    busy.sock.settimeout(15)
    assert busy.getresp().startswith("226")
    # It was still in flight at the edge: it ended after it, complete.
    done = srv.wait_event("transfer", protocol="ftps", path="/big.bin")
    assert done["result"] == "ok" and done["bytes"] == 48 * 1024 * 1024, done
    iso = re.sub(r"(\.\d{1,6})\d*Z$", r"\1+00:00", done["ts"]).replace("Z", "+00:00")
    ended_at = datetime.fromisoformat(iso).timestamp()
    assert ended_at > clock.edge_real, (done["ts"], clock.edge_real)
    assert wait_unsolicited_reply(busy, timeout=15).startswith("421 " + CLOSED)
    ended = srv.wait_event("session_ended", protocol="sftp", user="alice")
    assert ended["reason"] == "login window closed"
    deadline = time.monotonic() + 10
    while len(srv.events("session_ended", protocol="ftps", reason="login window closed")) < 2:
        assert time.monotonic() < deadline, "both FTPS sessions must be audited as ended"
        time.sleep(0.1)
    # After the edge, new logins are refused.
    ftp = srv.ftp(None)
    with pytest.raises(ftplib.error_perm, match="login not allowed at this time"):
        ftp.login("alice", srv.passwords["alice"])
    ftp.close()


def test_hot_reload_of_windows_applies_to_open_sessions(make_server, user_entry, clock, key):
    alice = dict(sshAuthorizedKeys=[pub(key)])
    srv = make_server(users=[user_entry("alice", **alice), user_entry("bob", password="bob's long password 7")])
    ftp = srv.ftp("alice")
    t = paramiko_transport(srv)
    t.auth_publickey("alice", paramiko.Ed25519Key(filename=str(key)))
    sftp = paramiko.SFTPClient.from_transport(t)
    sftp.listdir("/")
    bob = srv.ftp("bob")
    # A window that is closed now (it opens in 5 minutes) ends alice's sessions at once.
    srv.reload_users([user_entry("alice", password=srv.passwords["alice"], **alice,
                                 loginWindows=[clock.window(5, 10)]),
                      user_entry("bob", password=srv.passwords["bob"])])
    reply = wait_unsolicited_reply(ftp, timeout=10)
    assert reply.startswith("421 " + CLOSED), reply
    deadline = time.monotonic() + 10
    while t.is_active() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not t.is_active(), "the SSH connection must end when its window closes by reload"
    assert srv.wait_event("session_ended", protocol="sftp", user="alice")["reason"] == "login window closed"
    # bob has no windows and keeps his session.
    assert bob.voidcmd("NOOP").startswith("200")
    # A reload that opens the window again lets alice back in.
    srv.reload_users([user_entry("alice", password=srv.passwords["alice"], **alice,
                                 loginWindows=[clock.window(-1, 5)]),
                      user_entry("bob", password=srv.passwords["bob"])])
    again = srv.ftp("alice")
    assert again.voidcmd("NOOP").startswith("200")
    again.quit()
    bob.quit()


def test_invalid_windows_are_config_errors_naming_the_field(make_server, user_entry, sluice_bin):
    srv = make_server(users=[user_entry("alice", loginWindows=[
        {"days": ["Mon", "Funday"], "from": "08:00", "to": "18:00"}])], start=False)
    out = subprocess.run([str(sluice_bin), "check-config", str(srv.config_path)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "Funday" in out.stdout + out.stderr
    srv.write_users([user_entry("alice", loginWindows=[
        {"from": "8:00", "to": "18:00", "timeZone": "Europe/Nowhere"}])])
    out = subprocess.run([str(sluice_bin), "check-config", str(srv.config_path)], capture_output=True, text=True)
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "users[0].loginWindows[0].from" in text, text
    assert "users[0].loginWindows[0].timeZone" in text, text
