"""Retention (issue 19, docs/quotas-and-retention.md) with real clients and the server's
test-only clock offset (SLUICE_TEST_ONLY_CLOCK_OFFSET_SECONDS, as the login-window tests use):
files older than a rule's `maxAge` are deleted with an audit event per deletion, a file that a
transfer holds open is not; `afterDownload` deletes after a complete download only; with
`replica: ordinalZero` only the replica whose host name ends in `-0` deletes.
"""

from __future__ import annotations

import ftplib
import io
import os
import time

import pytest

OFFSET_ENV = "SLUICE_TEST_ONLY_CLOCK_OFFSET_SECONDS"
DAY = 86_400


def wait_passes(srv, count: int, timeout: float = 30) -> dict:
    return srv.wait_event("retention_pass", timeout=timeout, after=count - 1)


@pytest.fixture
def retention_server(make_server, user_entry):
    return make_server(
        users=[user_entry("alice", retention=[
            {"path": "outbox/", "maxAge": "30d"},
            {"path": "inbox", "afterDownload": True},
        ])],
        config={"retention": {"intervalSeconds": 2}},
    )


def upload_files(srv, names: list[str]) -> None:
    ftp = srv.ftp("alice")
    for directory in ("outbox", "inbox", "keep"):
        try:
            ftp.mkd(directory)
        except ftplib.error_perm:
            pass
    for name in names:
        ftp.upload(name, b"payload of " + name.encode())
    ftp.quit()


def test_old_files_are_deleted_and_audited_but_not_one_held_open(retention_server, monkeypatch):
    srv = retention_server
    upload_files(srv, ["/outbox/old.csv", "/outbox/busy.csv", "/keep/other.csv"])
    # Fresh files survive passes at the real clock.
    wait_passes(srv, 2)
    assert not srv.events("retention_deleted")
    # 31 days later (the server's clock), the files under outbox/ are due. busy.csv is dated
    # into the future until a client holds it open, so no pass can take it before that.
    home = srv.home("alice")
    future = time.time() + 10 * DAY
    os.utime(home / "outbox/busy.csv", (future, future))
    srv.stop()
    monkeypatch.setenv(OFFSET_ENV, str(31 * DAY))
    monkeypatch.setenv("HOSTNAME", "retention-test")
    srv.start()
    t, sftp = srv.sftp()
    handle = sftp.open("/outbox/busy.csv", "r")
    now = time.time()
    os.utime(home / "outbox/busy.csv", (now, now))  # due from now on, but held open
    passes_before = len(srv.events("retention_pass"))
    wait_passes(srv, passes_before + 2)
    assert not (home / "outbox/old.csv").exists()
    assert (home / "outbox/busy.csv").exists(), "a file held open was deleted"
    assert (home / "keep/other.csv").exists(), "a file no rule covers was deleted"
    event = srv.wait_event("retention_deleted", path="/outbox/old.csv")
    assert event["user"] == "alice" and event["reason"] == "max_age"
    assert event["max_age"] == "30d" and event["age_seconds"] >= 30 * DAY
    assert event["size"] == len(b"payload of /outbox/old.csv")
    # Once closed, the next pass deletes it.
    assert handle.read() == b"payload of /outbox/busy.csv"
    handle.close()
    srv.wait_event("retention_deleted", path="/outbox/busy.csv", timeout=15)
    assert not (home / "outbox/busy.csv").exists()
    t.close()
    _, metrics = srv.http_get("/metrics")
    assert 'sluice_retention_deleted_total{reason="max_age"} 2' in metrics


def test_a_file_being_uploaded_is_not_deleted(retention_server, monkeypatch):
    srv = retention_server
    upload_files(srv, ["/outbox/growing.log"])
    # Dated into the future until the client has it open (no pass can take it before that).
    path = srv.home("alice") / "outbox/growing.log"
    future = time.time() + 10 * DAY
    os.utime(path, (future, future))
    srv.stop()
    monkeypatch.setenv(OFFSET_ENV, str(31 * DAY))
    srv.start()
    # An append in place (SFTP APPEND writes the file itself) keeps the file busy: it is due
    # (its write just set its mtime, 31 days old at the server's clock) but not deleted while
    # the client is still writing to it.
    t, sftp = srv.sftp()
    f = sftp.open("/outbox/growing.log", "a")
    f.write(b"more")
    f.flush()
    before = len(srv.events("retention_pass"))
    wait_passes(srv, before + 2)
    assert srv.home("alice").joinpath("outbox/growing.log").exists()
    f.close()
    t.close()
    # Once nothing holds it, the file is due (the shifted clock is 31 days ahead of its mtime).
    srv.wait_event("retention_deleted", path="/outbox/growing.log", timeout=15)


def test_after_download_deletes_only_after_a_complete_download(retention_server):
    srv = retention_server
    upload_files(srv, ["/inbox/report.csv", "/inbox/other.csv"])
    home = srv.home("alice")
    ftp = srv.ftp("alice")
    # A partial download (REST past the start) does not count.
    assert ftp.download("/inbox/report.csv", rest=3) == b"payload of /inbox/report.csv"[3:]
    assert (home / "inbox/report.csv").exists()
    # A complete one does: the file is gone once the client has it.
    assert ftp.download("/inbox/report.csv") == b"payload of /inbox/report.csv"
    ftp.quit()
    event = srv.wait_event("retention_deleted", path="/inbox/report.csv")
    assert event["reason"] == "after_download" and event["protocol"] == "ftps"
    assert not (home / "inbox/report.csv").exists()
    # Over SFTP: a complete get deletes; an opened-and-closed handle that read nothing does not.
    t, sftp = srv.sftp()
    sftp.open("/inbox/other.csv", "r").close()
    assert (home / "inbox/other.csv").exists()
    buf = io.BytesIO()
    sftp.getfo("/inbox/other.csv", buf)
    assert buf.getvalue() == b"payload of /inbox/other.csv"
    t.close()
    srv.wait_event("retention_deleted", path="/inbox/other.csv", protocol="sftp")
    assert not (home / "inbox/other.csv").exists()


@pytest.mark.parametrize("host,deletes", [("sluice-1", False), ("sluice-0", True)])
def test_only_ordinal_zero_runs_retention_when_configured(make_server, user_entry, monkeypatch, host, deletes):
    monkeypatch.setenv("HOSTNAME", host)
    srv = make_server(
        users=[user_entry("alice", retention=[{"path": "/", "maxAge": "1h"}])],
        config={"retention": {"intervalSeconds": 1, "replica": "ordinalZero"}},
        start=False,
    )
    home = srv.make_home("alice")
    (home / "stale.txt").write_bytes(b"x")
    old = time.time() - 2 * 3600
    os.utime(home / "stale.txt", (old, old))
    srv.start()
    if deletes:
        srv.wait_event("retention_deleted", path="/stale.txt")
        assert not (home / "stale.txt").exists()
    else:
        time.sleep(2.5)
        assert not srv.events("retention_pass")
        assert (home / "stale.txt").exists()


def test_invalid_rules_are_refused_naming_the_field(retention_server, user_entry):
    srv = retention_server
    rejected = srv.reload_users([user_entry("alice", retention=[{"path": "../up", "maxAge": "soon"}])],
                                expect="rejected")
    assert "users[0].retention[0].path" in rejected["error"]
    assert "users[0].retention[0].maxAge" in rejected["error"]


def test_retention_deletions_free_quota(make_server, user_entry, monkeypatch):
    srv = make_server(
        users=[user_entry("alice", quota={"maxBytes": "1Mi"},
                          retention=[{"path": "outbox", "maxAge": "30d"}])],
        config={"retention": {"intervalSeconds": 1}},
    )
    ftp = srv.ftp("alice")
    ftp.mkd("outbox")
    ftp.upload("/outbox/old.bin", b"o" * (900 * 1024))
    with pytest.raises(ftplib.error_perm, match="^552"):
        ftp.upload("/new.bin", b"n" * (200 * 1024))
    ftp.quit()
    srv.stop()
    monkeypatch.setenv(OFFSET_ENV, str(31 * DAY))
    srv.start()
    ftp = srv.ftp("alice")  # the login scans the home: old.bin still counts
    srv.wait_event("retention_deleted", path="/outbox/old.bin")
    # The deletion freed the 900 KiB in this process's usage at once (no rescan needed).
    ftp.upload("/new.bin", b"n" * (200 * 1024))
    ftp.quit()
