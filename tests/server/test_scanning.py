"""Malware scanning before publication (issue 19, hardening item H23) with a real clamd
(Debian's clamav-daemon) and a signature database the test writes itself (no freshclam, no
network): the EICAR test string is refused over FTPS and SFTP with the reason in the reply,
never appears under its name and lands in quarantine with an audit and a file event; a clean
file is published; a stopped or hung clamd refuses uploads (fail closed) unless the
`onScannerError: allow` opt-in is set, which start-up warns about; scanning with non-atomic
uploads is refused by `check-config`.
"""

from __future__ import annotations

import ftplib
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

from clamd import EICAR, SIGNATURE, Clamd, free_port
from conftest import server_binary, sha256_hex

@pytest.fixture(scope="module")
def clamd(tmp_path_factory):
    daemon = Clamd(tmp_path_factory.mktemp("clamd")).start()
    yield daemon
    daemon.stop()


@pytest.fixture
def own_clamd(tmp_path):
    daemon = Clamd(tmp_path / "own-clamd").start()
    yield daemon
    daemon.stop()


def scanning_config(tmp_path: Path, clamd_address: str, **extra) -> dict:
    """server.yaml overrides: scanning through `clamd_address`, and file events into an outbox
    the test reads (its webhook never answers, so every event stays there)."""
    secret = tmp_path / "hook-secret"
    secret.write_text("not-used\n")
    return {
        "scanning": {"clamd": clamd_address, "quarantineDir": str(tmp_path / "quarantine"), **extra},
        "events": {
            "outboxDir": str(tmp_path / "outbox"),
            "webhooks": [{
                "name": "nobody", "url": f"https://127.0.0.1:{free_port()}/hook",
                "caFile": "ca.crt", "secretFile": str(secret), "maxAttempts": 1000,
            }],
        },
    }


def outbox_events(tmp_path: Path) -> list[dict]:
    events = []
    for segment in sorted((tmp_path / "outbox").glob("segment-*.jsonl")):
        for line in segment.read_text().splitlines():
            if line.strip():
                events.append(json.loads(line)["event"])
    return events


def quarantined(tmp_path: Path) -> list[Path]:
    directory = tmp_path / "quarantine"
    return sorted(directory.iterdir()) if directory.exists() else []


def sftp_client(srv, user: str = "alice"):
    t = paramiko.Transport(("127.0.0.1", srv.sftp_port))
    t.banner_timeout = 10
    t.connect(username=user, password=srv.passwords[user])
    return t, paramiko.SFTPClient.from_transport(t)


def upload_and_close(sftp: paramiko.SFTPClient, path: str, data: bytes) -> IOError | None:
    """Uploads `data` and sends CLOSE itself: paramiko's own close() swallows the error
    status that carries the refusal. Returns the error (None when the close succeeded)."""
    f = sftp.open(path, "wb")
    f.write(data)
    f.flush()
    f._closed = True  # the CLOSE below is the only one
    try:
        sftp._request(paramiko.sftp.CMD_CLOSE, f.handle)
    except IOError as error:
        return error
    return None


def metric(srv, name: str) -> float:
    status, text = srv.http_get("/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def home_names(srv) -> list[str]:
    home = srv.home("alice")
    return sorted(p.name for p in home.iterdir()) if home.exists() else []


def test_eicar_over_ftps_is_refused_quarantined_audited_and_a_clean_file_is_published(
        make_server, clamd, tmp_path):
    srv = make_server(config=scanning_config(tmp_path, clamd.tcp))
    clean = os.urandom(300_000) + b"perfectly clean"
    with srv.ftp() as ftp:
        assert ftp.upload("/clean.bin", clean).startswith("226")
        with pytest.raises(ftplib.error_perm) as refused:
            ftp.upload("/eicar.com", EICAR)
        reply = str(refused.value)
        assert reply.startswith("550"), reply
        assert f"infected: {SIGNATURE}" in reply, reply
        # The session goes on.
        assert ftp.upload("/after.txt", b"still fine").startswith("226")
    # Never published under its name; nothing of it left in the home (no temporary file).
    assert home_names(srv) == ["after.txt", "clean.bin"]
    assert (srv.home() / "clean.bin").read_bytes() == clean
    # In quarantine, outside every home, with its bytes.
    files = quarantined(tmp_path)
    assert len(files) == 1 and files[0].read_bytes() == EICAR
    assert files[0].name.endswith("-alice-eicar.com"), files[0].name
    assert oct(files[0].parent.stat().st_mode & 0o777) == "0o700"
    rejected = srv.wait_event("upload_rejected")
    assert rejected["reason"] == "infected"
    assert rejected["signature"] == SIGNATURE
    assert rejected["path"] == "/eicar.com"
    assert rejected["disposition"] == "quarantined"
    assert rejected["quarantine_file"] == files[0].name
    assert rejected["sha256"] == sha256_hex(EICAR) and rejected["size"] == len(EICAR)
    assert rejected["protocol"] == "ftps" and rejected["user"] == "alice"
    failed = [e for e in srv.events("transfer", direction="upload") if e["path"] == "/eicar.com"]
    assert failed and failed[0]["result"] == "failed" and SIGNATURE in failed[0]["error"]
    ok = [e for e in srv.events("transfer", direction="upload") if e["path"] == "/clean.bin"]
    assert ok[0]["result"] == "ok" and ok[0]["scan"] == "clean"
    # The file event says the same; no "uploaded" event for the infected file.
    events = outbox_events(tmp_path)
    refused_events = [e for e in events if e["type"] == "dev.sluice.upload.refused"]
    assert len(refused_events) == 1
    data = refused_events[0]["data"]
    assert data["reason"] == "infected" and data["signature"] == SIGNATURE
    assert data["path"] == "/eicar.com" and data["sha256"] == sha256_hex(EICAR)
    uploaded = sorted(e["data"]["path"] for e in events if e["type"] == "dev.sluice.file.uploaded")
    assert uploaded == ["/after.txt", "/clean.bin"]
    assert metric(srv, 'sluice_scans_total{result="infected"}') == 1
    assert metric(srv, 'sluice_scans_total{result="clean"}') == 2
    assert metric(srv, "sluice_scan_duration_seconds_count") == 3


def test_ftps_curl_sees_the_reason_and_appends_are_refused(make_server, clamd, tmp_path):
    srv = make_server(config=scanning_config(tmp_path, clamd.tcp))
    eicar = tmp_path / "eicar.txt"
    eicar.write_bytes(EICAR)
    result = srv.curl("-v", "-T", str(eicar), path="/curl-eicar.txt")
    assert result.returncode != 0
    said = result.stderr.decode(errors="replace")
    assert f"< 550 upload refused: infected: {SIGNATURE}" in said, said[-3000:]
    assert "curl-eicar.txt" not in home_names(srv)
    with srv.ftp() as ftp:
        assert ftp.upload("/base.txt", b"base").startswith("226")
        # APPE and REST+STOR would write into the published file before any scan.
        with pytest.raises(ftplib.error_perm) as appended:
            ftp.upload("/base.txt", b"more", cmd="APPE")
        assert "scanning" in str(appended.value)
    assert (srv.home() / "base.txt").read_bytes() == b"base"


def test_eicar_over_sftp_through_a_unix_socket_is_refused_with_the_reason(
        make_server, clamd, tmp_path):
    srv = make_server(config=scanning_config(tmp_path, clamd.unix))
    t, sftp = sftp_client(srv)
    try:
        with sftp.open("/clean.txt", "wb") as f:
            f.write(b"nothing to see" * 1000)
        refused = upload_and_close(sftp, "/virus.txt", EICAR)
        assert f"infected: {SIGNATURE}" in str(refused), refused
        # Append and read-write opens are refused while uploads are scanned.
        with pytest.raises(IOError) as appended:
            sftp.open("/clean.txt", "ab")
        assert "scanned" in str(appended.value)
        assert sftp.listdir("/") == ["clean.txt"]
    finally:
        t.close()
    assert home_names(srv) == ["clean.txt"]
    files = quarantined(tmp_path)
    assert len(files) == 1 and files[0].read_bytes() == EICAR
    rejected = srv.wait_event("upload_rejected")
    assert rejected["protocol"] == "sftp" and rejected["reason"] == "infected"
    assert rejected["signature"] == SIGNATURE and rejected["disposition"] == "quarantined"
    refused_events = [e for e in outbox_events(tmp_path) if e["type"] == "dev.sluice.upload.refused"]
    assert [e["data"]["signature"] for e in refused_events] == [SIGNATURE]


def test_openssh_sftp_put_of_eicar_fails(make_server, clamd, tmp_path):
    srv = make_server(config=scanning_config(tmp_path, clamd.tcp))
    eicar = tmp_path / "eicar.com"
    eicar.write_bytes(EICAR)
    result = subprocess.run(
        ["sshpass", "-e", "sftp", "-o", f"UserKnownHostsFile={srv.known_hosts}", "-o", "BatchMode=no",
         "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
         "-o", "NumberOfPasswordPrompts=1", "-b", "-", "-P", str(srv.sftp_port), "alice@127.0.0.1"],
        input=f"put {eicar} /eicar.com\n", capture_output=True, text=True, timeout=60,
        env={**os.environ, "SSHPASS": srv.passwords["alice"]},
    )
    assert result.returncode != 0, result.stdout + result.stderr
    # OpenSSH prints the status code of the refused close, not its message (paramiko shows
    # the message: test_eicar_over_sftp_through_a_unix_socket_is_refused_with_the_reason).
    assert "close remote: Failure" in result.stderr, result.stderr
    assert "eicar.com" not in home_names(srv)
    assert len(quarantined(tmp_path)) == 1
    assert srv.wait_event("upload_rejected")["reason"] == "infected"


def test_on_infected_delete_leaves_nothing(make_server, clamd, tmp_path):
    srv = make_server(config=scanning_config(tmp_path, clamd.tcp, onInfected="delete"))
    with srv.ftp() as ftp:
        with pytest.raises(ftplib.error_perm):
            ftp.upload("/eicar.com", EICAR)
    assert home_names(srv) == []
    assert quarantined(tmp_path) == []
    rejected = srv.wait_event("upload_rejected")
    assert rejected["disposition"] == "deleted" and "quarantine_file" not in rejected


def test_a_refused_upload_gives_back_its_quota_charge(make_server, clamd, tmp_path, user_entry):
    """Quotas charge an upload while it is written (issue 19): one the scanner refuses is not in
    the home any more (quarantine is outside it), so nothing of it may stay charged."""
    srv = make_server(
        users=[user_entry("alice", quota={"maxBytes": 1000, "maxFiles": 1})],
        config=scanning_config(tmp_path, clamd.tcp))
    with srv.ftp() as ftp:
        for n in range(3):
            with pytest.raises(ftplib.error_perm, match="^550"):
                ftp.upload(f"/eicar-{n}.com", EICAR)
    t, sftp = sftp_client(srv)
    try:
        for n in range(3):
            assert upload_and_close(sftp, f"/eicar-sftp-{n}.com", EICAR) is not None
    finally:
        t.close()
    assert home_names(srv) == []
    assert len(quarantined(tmp_path)) == 6
    # The whole quota (bytes and the one file) is still free.
    with srv.ftp() as ftp:
        assert ftp.upload("/full.bin", os.urandom(1000)).startswith("226")
        with pytest.raises(ftplib.error_perm, match="^552"):
            ftp.upload("/over.bin", b"z")
    assert home_names(srv) == ["full.bin"]


def test_a_file_above_max_file_bytes_is_refused_and_not_sent(make_server, clamd, tmp_path):
    srv = make_server(config=scanning_config(tmp_path, clamd.tcp, maxFileBytes=1000))
    with srv.ftp() as ftp:
        assert ftp.upload("/small.txt", b"x" * 1000).startswith("226")
        with pytest.raises(ftplib.error_perm) as refused:
            ftp.upload("/big.bin", b"y" * 1001)
        assert "too large to scan" in str(refused.value) and "maxFileBytes" in str(refused.value)
    assert home_names(srv) == ["small.txt"]
    assert quarantined(tmp_path) == []
    rejected = srv.wait_event("upload_rejected")
    assert rejected["reason"] == "too_large" and rejected["limit"] == 1000
    assert metric(srv, 'sluice_scans_total{result="too_large"}') == 1


def test_a_stopped_or_hung_clamd_fails_closed(make_server, own_clamd, tmp_path):
    srv = make_server(config=scanning_config(tmp_path, own_clamd.tcp, timeoutSeconds=2))
    with srv.ftp() as ftp:
        assert ftp.upload("/before.txt", b"scanned while clamd runs").startswith("226")
    own_clamd.stop()
    with srv.ftp() as ftp:
        with pytest.raises(ftplib.error_temp) as refused:
            ftp.upload("/during.txt", b"clamd is down")
        assert str(refused.value).startswith("451")
        assert "virus scanner unavailable" in str(refused.value)
    t, sftp = sftp_client(srv)
    try:
        refused = upload_and_close(sftp, "/during-sftp.txt", b"clamd is still down")
        assert "virus scanner unavailable" in str(refused), refused
    finally:
        t.close()
    assert home_names(srv) == ["before.txt"]
    # Kept in quarantine for a later look, not lost and not published.
    kept = sorted(p.read_bytes() for p in quarantined(tmp_path))
    assert kept == [b"clamd is down", b"clamd is still down"]
    rejected = srv.events("upload_rejected")
    assert [e["reason"] for e in rejected] == ["scanner_unavailable"] * 2
    assert "cannot reach clamd" in rejected[0]["error"]
    assert metric(srv, 'sluice_scans_total{result="scanner_error"}') == 2

    # A clamd that accepts and never answers: the timeout refuses the upload too.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        hung.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(hung.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        config = json.loads(json.dumps(srv.config))
        config["scanning"]["clamd"] = f"tcp://127.0.0.1:{hung.getsockname()[1]}"
        srv.reload_config(config)
        with srv.ftp() as ftp:
            started = time.monotonic()
            with pytest.raises(ftplib.error_temp) as timed_out:
                ftp.upload("/hung.txt", b"nobody answers")
            assert time.monotonic() - started < 15
            assert str(timed_out.value).startswith("451")
        assert "hung.txt" not in home_names(srv)
        last = srv.events("upload_rejected")[-1]
        assert last["reason"] == "scanner_unavailable" and "timeoutSeconds" in last["error"]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        hung.close()


def test_on_scanner_error_allow_is_an_opt_in_warned_at_start(make_server, tmp_path):
    dead = f"tcp://127.0.0.1:{free_port()}"
    srv = make_server(config=scanning_config(tmp_path, dead, onScannerError="allow"))
    stderr = srv.stderr()
    assert "insecure opt-in enabled" in stderr and "scanning.onScannerError is allow" in stderr, stderr
    with srv.ftp() as ftp:
        assert ftp.upload("/unscanned.txt", b"published without a verdict").startswith("226")
    assert home_names(srv) == ["unscanned.txt"]
    ok = [e for e in srv.events("transfer", direction="upload") if e["path"] == "/unscanned.txt"]
    assert ok[0]["result"] == "ok" and ok[0]["scan"] == "scanner_error_allowed"


def check_config(srv) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(server_binary()), "check-config", str(srv.config_path)],
        capture_output=True, text=True, timeout=30,
    )


def test_check_config_refuses_scanning_with_non_atomic_uploads_and_a_quarantine_in_data_root(
        make_server, tmp_path):
    srv = make_server(config=scanning_config(tmp_path, "tcp://127.0.0.1:3310"), start=False)
    assert check_config(srv).returncode == 0, check_config(srv).stderr
    config = json.loads(json.dumps(srv.config))
    config["uploads"]["atomic"] = False
    srv.write_config(config)
    result = check_config(srv)
    assert result.returncode == 1
    assert "uploads.atomic: must be true when scanning is set" in result.stderr, result.stderr
    config["uploads"]["atomic"] = True
    config["scanning"]["quarantineDir"] = str(srv.data_root / "quarantine")
    config["scanning"]["clamd"] = "127.0.0.1:3310"
    srv.write_config(config)
    result = check_config(srv)
    assert result.returncode == 1
    assert "scanning.quarantineDir: must be outside dataRoot" in result.stderr, result.stderr
    assert "scanning.clamd: " in result.stderr and "tcp://host:port" in result.stderr
    # Compared resolved too: a relative dataRoot that holds an absolute quarantineDir.
    config["scanning"]["clamd"] = "unix:/run/clamav/clamd.sock"
    config["dataRoot"] = "data"
    config["scanning"]["quarantineDir"] = str(srv.dir / "data" / "quarantine")
    srv.write_config(config)
    result = check_config(srv)
    assert result.returncode == 1
    assert "scanning.quarantineDir: " in result.stderr and "must be outside dataRoot" in result.stderr
