"""Quotas (issue 19, docs/quotas-and-retention.md): enforced during the write with real clients.

The upload that crosses `quota.maxBytes` stops at the quota and publishes nothing (FTPS `552`
naming the quota, SFTP `SSH_FX_FAILURE` with a message naming it); the usage survives a restart
because it is scanned from the disk; an overwrite frees the replaced file; deletes and renames
free; `maxFiles` counts files; the threshold and the refusals are audited; the usage is a metric.
"""

from __future__ import annotations

import ftplib
import io
import json
import socket

import pytest

KIB = 1024


def visible(home) -> list[str]:
    return sorted(p.name for p in home.iterdir()) if home.exists() else []


@pytest.fixture
def quota_server(make_server, user_entry):
    return make_server(users=[
        user_entry("alice", quota={"maxBytes": "1Mi", "maxFiles": 5, "warnAtPercent": 80}),
        user_entry("bob", password="bob's long password 7"),  # no quota
    ])


def test_ftps_upload_crossing_the_quota_fails_at_the_quota_and_publishes_nothing(quota_server):
    srv = quota_server
    ftp = srv.ftp("alice")
    ftp.upload("/first.bin", b"a" * (600 * KIB))
    # 600 KiB used; 500 KiB more would cross 1 MiB.
    with pytest.raises(ftplib.error_perm) as refused:
        ftp.upload("/second.bin", b"b" * (500 * KIB))
    text = str(refused.value)
    assert text.startswith("552"), text
    assert "quota.maxBytes" in text and "1048576" in text, text
    ftp.quit()
    home = srv.home("alice")
    assert visible(home) == ["first.bin"], visible(home)  # no temporary, no partial file
    event = srv.wait_event("quota_exceeded", user="alice")
    assert event["limit"] == "maxBytes" and event["path"] == "/second.bin"
    assert event["max_bytes"] == 1 << 20
    failed = srv.wait_event("transfer", user="alice", direction="upload", result="failed")
    assert "quota" in failed["error"]
    # A smaller file that fits is still accepted, up to the byte.
    ftp = srv.ftp("alice")
    ftp.upload("/fits.bin", b"c" * ((1 << 20) - 600 * KIB))
    with pytest.raises(ftplib.error_perm, match="^552"):
        ftp.upload("/one-more-byte.bin", b"d")
    ftp.quit()
    assert visible(home) == ["first.bin", "fits.bin"]
    # Another user without a quota is not affected.
    other = srv.ftp("bob")
    other.upload("/big.bin", b"e" * (2 << 20))
    other.quit()


def test_sftp_write_crossing_the_quota_fails_with_a_message_naming_it(quota_server):
    srv = quota_server
    t, sftp = srv.sftp()
    sftp.putfo(io.BytesIO(b"a" * (700 * KIB)), "/first.bin")
    # Unpipelined writes: the WRITE that would cross the quota is answered with the failure.
    f = sftp.open("/second.bin", "wb")
    with pytest.raises(IOError) as refused:
        f.write(b"b" * (400 * KIB))
        f.flush()
    assert "quota.maxBytes" in str(refused.value), str(refused.value)
    f.close()
    # Pipelined (paramiko's putfo drops the status of pipelined WRITEs and of CLOSE): the
    # upload still fails because nothing was published; its size check finds no file.
    with pytest.raises(IOError):
        sftp.putfo(io.BytesIO(b"b" * (400 * KIB)), "/third.bin")
    t.close()
    assert visible(srv.home("alice")) == ["first.bin"]
    event = srv.wait_event("quota_exceeded", user="alice", protocol="sftp")
    assert event["limit"] == "maxBytes"


def test_uploads_stopped_by_the_quota_are_refused_events_never_uploaded_ones(make_server, user_entry, tmp_path):
    """File events (docs/events.md): an upload the quota stopped, over FTPS and SFTP, is one
    `dev.sluice.upload.refused` event with reason `quota`, and no `uploaded` event."""
    secret = tmp_path / "hook-secret"
    secret.write_text("a webhook secret that is long enough\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nobody = probe.getsockname()[1]
    srv = make_server(users=[user_entry("alice", quota={"maxBytes": "1Mi"})], config={"events": {
        "outboxDir": str(tmp_path / "outbox"),
        # Nobody listens: the events stay in the outbox, where the test reads them.
        "webhooks": [{"name": "nobody", "url": f"https://127.0.0.1:{nobody}/hook", "caFile": "ca.crt",
                      "secretFile": str(secret), "maxAttempts": 1000}],
    }})
    ftp = srv.ftp("alice")
    ftp.upload("/first.bin", b"a" * (700 * KIB))
    with pytest.raises(ftplib.error_perm, match="^552"):
        ftp.upload("/over-ftps.bin", b"b" * (500 * KIB))
    ftp.quit()
    t, sftp = srv.sftp()
    f = sftp.open("/over-sftp.bin", "wb")
    with pytest.raises(IOError):
        f.write(b"c" * (400 * KIB))
        f.flush()
    f.close()
    t.close()

    def outbox() -> list[dict]:
        found = []
        for segment in sorted((tmp_path / "outbox").glob("segment-*.jsonl")):
            found += [json.loads(line)["event"] for line in segment.read_text().splitlines() if line.strip()]
        return found

    events = outbox()
    uploaded = sorted(e["data"]["path"] for e in events if e["type"] == "dev.sluice.file.uploaded")
    assert uploaded == ["/first.bin"], events
    refused = {e["data"]["path"]: e["data"] for e in events if e["type"] == "dev.sluice.upload.refused"}
    assert set(refused) == {"/over-ftps.bin", "/over-sftp.bin"}, events
    for data in refused.values():
        assert data["reason"] == "quota", data
    assert refused["/over-sftp.bin"]["protocol"] == "sftp"


def test_usage_survives_a_restart_and_overwrite_delete_rename_free_space(quota_server):
    srv = quota_server
    ftp = srv.ftp("alice")
    ftp.upload("/a.bin", b"a" * (800 * KIB))
    ftp.quit()
    srv.stop()
    srv.start()
    # After the restart the 800 KiB on disk still count.
    ftp = srv.ftp("alice")
    with pytest.raises(ftplib.error_perm, match="^552"):
        ftp.upload("/b.bin", b"b" * (300 * KIB))
    # Overwriting a.bin with 1000 KiB fits: the replaced file is credited.
    ftp.upload("/a.bin", b"A" * (1000 * KIB))
    assert srv.home("alice").joinpath("a.bin").stat().st_size == 1000 * KIB
    with pytest.raises(ftplib.error_perm, match="^552"):
        ftp.upload("/b.bin", b"b" * (100 * KIB))
    # A rename keeps the usage; a delete frees it.
    ftp.rename("/a.bin", "/renamed.bin")
    with pytest.raises(ftplib.error_perm, match="^552"):
        ftp.upload("/b.bin", b"b" * (100 * KIB))
    ftp.delete("/renamed.bin")
    ftp.upload("/b.bin", b"b" * (900 * KIB))
    ftp.quit()
    # Over SFTP too: an overwrite frees the old size.
    t, sftp = srv.sftp()
    sftp.putfo(io.BytesIO(b"B" * (1000 * KIB)), "/b.bin")
    with pytest.raises(IOError):
        sftp.putfo(io.BytesIO(b"c" * (100 * KIB)), "/c.bin")
    sftp.remove("/b.bin")
    sftp.putfo(io.BytesIO(b"c" * (100 * KIB)), "/c.bin")
    t.close()
    assert visible(srv.home("alice")) == ["c.bin"]


def test_appends_are_charged_and_max_files_counts_files(quota_server):
    srv = quota_server
    ftp = srv.ftp("alice")
    ftp.upload("/log.txt", b"x" * (900 * KIB))
    with pytest.raises(ftplib.error_perm, match="^552"):
        ftp.upload("/log.txt", b"y" * (200 * KIB), cmd="APPE")
    # The append stopped before the quota: the file never holds more than the quota allows.
    assert srv.home("alice").joinpath("log.txt").stat().st_size <= 1 << 20
    ftp.delete("/log.txt")
    for n in range(5):
        ftp.upload(f"/f{n}", b"z")
    with pytest.raises(ftplib.error_perm) as refused:
        ftp.upload("/f5", b"z")
    assert str(refused.value).startswith("552") and "quota.maxFiles" in str(refused.value)
    # Overwriting one of the five is not a new file.
    ftp.upload("/f0", b"zz")
    ftp.quit()
    assert srv.wait_event("quota_exceeded", user="alice", limit="maxFiles")


def test_threshold_is_audited_once_and_usage_is_a_metric(quota_server):
    srv = quota_server
    ftp = srv.ftp("alice")
    ftp.upload("/small.bin", b"a" * (500 * KIB))
    assert not srv.events("quota_threshold")
    ftp.upload("/more.bin", b"b" * (350 * KIB))  # 850 KiB: 83 % of 1 MiB
    event = srv.wait_event("quota_threshold", user="alice")
    assert event["percent"] >= 80 and event["warn_at_percent"] == 80
    assert event["used_bytes"] == 850 * KIB and event["max_bytes"] == 1 << 20
    ftp.upload("/tiny.bin", b"c")
    ftp.quit()
    assert len(srv.events("quota_threshold")) == 1  # once per crossing, not per upload
    assert "quota threshold reached" in srv.stderr() + srv.stdout_path.read_text()
    status, metrics = srv.http_get("/metrics")
    assert status == 200
    assert f'sluice_quota_used_bytes{{user="alice"}} {850 * KIB + 1}' in metrics, metrics
    assert 'sluice_quota_max_bytes{user="alice"} 1048576' in metrics
    assert 'sluice_quota_used_files{user="alice"} 3' in metrics


def test_invalid_quotas_are_refused_naming_the_field(quota_server, user_entry):
    srv = quota_server
    rejected = srv.reload_users([user_entry("alice", quota={"maxBytes": "10 apples"})], expect="rejected")
    assert "10 apples" in rejected["error"]
    rejected = srv.reload_users([user_entry("alice", quota={"maxBytes": 0, "warnAtPercent": 120})],
                                expect="rejected")
    assert "users[0].quota.maxBytes" in rejected["error"]
    assert "users[0].quota.warnAtPercent" in rejected["error"]


def test_sftp_setstat_and_sparse_writes_are_charged(quota_server):
    srv = quota_server
    t, sftp = srv.sftp()
    sftp.putfo(io.BytesIO(b"a" * 1024), "/small.bin")
    # Growing a file by SETSTAT size (a hole costs nothing on disk but counts) is refused...
    with pytest.raises(IOError) as refused:
        sftp.truncate("/small.bin", 2 << 20)
    assert "quota.maxBytes" in str(refused.value), str(refused.value)
    assert srv.home("alice").joinpath("small.bin").stat().st_size == 1024
    # ...shrinking it frees space, and a WRITE far beyond the end is charged for the hole.
    sftp.truncate("/small.bin", 0)
    f = sftp.open("/sparse.bin", "wb")
    with pytest.raises(IOError, match="quota.maxBytes"):
        f.seek(4 << 20)
        f.write(b"x")
        f.flush()
    f.close()
    t.close()
    assert not srv.home("alice").joinpath("sparse.bin").exists()
