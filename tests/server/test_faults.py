"""Faults (issue 8 item 4): a killed server, a full disk, vanishing clients and a graceful
SIGTERM drain, each against the real sluice-server with real clients (ftplib, paramiko)."""

from __future__ import annotations

import ftplib
import io
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

TEMP_PREFIX = ".sluice-upload-"
CHUNK = 64 * 1024


class SlowReader(io.RawIOBase):
    """A file object for ftplib.storbinary that hands out `chunks` chunks with a pause between
    them (a slow client), and sets `started` after the first few."""

    def __init__(self, chunks: int, pause: float, byte: bytes = b"s"):
        self.left = chunks
        self.pause = pause
        self.byte = byte
        self.sent = 0
        self.started = threading.Event()

    def readable(self):
        return True

    def read(self, size=-1):
        if self.left <= 0:
            return b""
        if self.sent >= 3:
            self.started.set()
        if self.sent:
            time.sleep(self.pause)
        self.left -= 1
        self.sent += 1
        return self.byte * CHUNK


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"{TEMP_PREFIX}*")]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def sftp_client(srv, user: str = "alice") -> tuple[paramiko.Transport, paramiko.SFTPClient]:
    t = paramiko.Transport(("127.0.0.1", srv.sftp_port))
    t.banner_timeout = 10
    t.start_client(timeout=10)
    t.auth_password(user, srv.passwords[user])
    return t, paramiko.SFTPClient.from_transport(t)


def gauge(srv, name: str) -> float:
    status, body = srv.http_get("/metrics")
    assert status == 200
    match = re.search(rf"^{name} (\S+)$", body, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def rst_close(sock) -> None:
    """Vanish: a TCP reset (SO_LINGER 0), no QUIT, no TLS close_notify."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


# --------------------------------------------------------------------------------------------
# 1. SIGKILL mid-upload (atomic uploads)
# --------------------------------------------------------------------------------------------


def test_sigkill_mid_upload_leaves_no_truncated_file_and_restarts_clean(make_server):
    srv = make_server()
    home = srv.make_home()
    old = b"previous version\n"
    (home / "report.csv").write_bytes(old)

    # FTPS: a slow STOR over an existing file; SFTP: a slow write to a new file.
    ftp = srv.ftp()
    reader = SlowReader(chunks=400, pause=0.05)
    ftp_result: dict = {}

    def ftps_upload():
        try:
            ftp_result["reply"] = ftp.storbinary("STOR report.csv", reader, blocksize=CHUNK)
        except Exception as exc:  # noqa: BLE001 - the server dies under it
            ftp_result["error"] = exc

    thread = threading.Thread(target=ftps_upload, daemon=True)
    thread.start()
    t, sftp = sftp_client(srv)
    remote = sftp.open("new.bin", "wb")
    for _ in range(8):
        remote.write(b"n" * 32768)
    remote.flush()
    assert reader.started.wait(10), "the FTPS upload did not start"
    # Both uploads are streaming into temporary files when the process is killed.
    wait_for(lambda: len(temp_files(home)) == 2 and all(p.stat().st_size > 0 for p in temp_files(home)),
             10, "two temporary upload files with data")
    srv.stopped = True  # the kill is the test, not a crash
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    thread.join(10)
    t.close()
    assert "reply" not in ftp_result, ftp_result

    # The final names: the old version untouched, no truncated new file.
    assert (home / "report.csv").read_bytes() == old
    assert not (home / "new.bin").exists()
    leftover = temp_files(home)
    assert len(leftover) == 2

    # Restart: the leftovers of this host are removed, never listed, and uploads work again.
    srv.start()
    wait_for(lambda: not temp_files(home), 10, "the start-up sweep of dead temporary files")
    ftp = srv.ftp()
    names = ftp.nlst()
    assert sorted(names) == ["report.csv"], names
    ftp.upload("report.csv", b"new version\n")
    assert ftp.download("report.csv") == b"new version\n"
    ftp.quit()
    t, sftp = sftp_client(srv)
    assert sorted(sftp.listdir(".")) == ["report.csv"]
    with sftp.open("new.bin", "wb") as f:
        f.write(b"complete")
    assert sftp.open("new.bin").read() == b"complete"
    t.close()
    srv.wait_event("server_start", after=1)


def test_temporary_files_of_other_hosts_are_hidden_and_kept(make_server):
    """A replica sharing the volume may be uploading: its temporary files survive our start-up,
    and users never see them."""
    srv = make_server(start=False)
    home = srv.make_home()
    other = home / f"{TEMP_PREFIX}other-replica-0123456789abcdef"
    other.write_bytes(b"in progress elsewhere")
    srv.start()
    ftp = srv.ftp()
    assert ftp.nlst() == []
    ftp.quit()
    t, sftp = sftp_client(srv)
    assert sftp.listdir(".") == []
    t.close()
    time.sleep(0.5)
    assert other.exists()


# --------------------------------------------------------------------------------------------
# 2. ENOSPC during an upload
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs. Mounting needs root (CAP_SYS_ADMIN); without it the test is skipped, as
    no unprivileged substitute produces a real ENOSPC from the kernel."""
    mounted: list[Path] = []

    def mount(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_disk_full_gives_452_and_ssh_fx_failure_removes_partial_and_keeps_serving(make_server, small_fs):
    srv = make_server(start=False)
    home = small_fs(srv.home())
    srv.start()
    big = os.urandom(3 * 1024 * 1024)  # more than the 2 MiB filesystem holds

    ftp = srv.ftp()
    with pytest.raises(ftplib.error_temp) as info:
        ftp.upload("big.bin", big)
    assert str(info.value).startswith("452"), info.value
    assert "insufficient storage" in str(info.value)
    assert list(home.iterdir()) == [], "the partial upload was left behind"
    srv.wait_event("transfer", direction="upload", result="failed", protocol="ftps")
    # The same session and the server keep serving.
    ftp.upload("small.txt", b"still fine\n")
    assert ftp.download("small.txt") == b"still fine\n"
    ftp.quit()

    t, sftp = sftp_client(srv)
    # Unpipelined writes, so each WRITE's status reaches the client (paramiko's putfo pipelines
    # and its close() swallows errors).
    remote = sftp.open("big-sftp.bin", "wb")
    with pytest.raises(IOError) as info:
        for offset in range(0, len(big), 32768):
            remote.write(big[offset:offset + 32768])
            remote.flush()
    assert "No space left on device" in str(info.value), info.value
    remote.close()
    srv.wait_event("transfer", direction="upload", result="failed", protocol="sftp")
    assert sorted(p.name for p in home.iterdir()) == ["small.txt"]
    with sftp.open("after.txt", "wb") as f:
        f.write(b"ok")
    assert sftp.open("after.txt").read() == b"ok"
    t.close()
    # Non-atomic uploads: the new partial file is removed too.
    config = dict(srv.config, uploads={"atomic": False})
    srv.reload_config(config)
    ftp = srv.ftp()
    with pytest.raises(ftplib.error_temp) as info:
        ftp.upload("big2.bin", big)
    assert str(info.value).startswith("452")
    assert sorted(p.name for p in home.iterdir()) == ["after.txt", "small.txt"]
    ftp.quit()
    assert srv.alive()


# --------------------------------------------------------------------------------------------
# 3. Clients vanishing mid-transfer
# --------------------------------------------------------------------------------------------


def test_vanishing_clients_free_session_slots_and_passive_ports(make_server):
    srv = make_server(start=False)
    start = srv.passive_range[0]
    srv.write_config(dict(srv.config,
                          passive={"portStart": start, "portEnd": start + 1},
                          limits=dict(srv.config["limits"], maxSessions=2, maxSessionsPerIp=2)))
    srv.start()
    home = srv.make_home()
    (home / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))

    # Two clients fill both session slots, start downloads (one passive port each) and vanish
    # mid-transfer: one with a TCP reset, one closing its sockets without QUIT.
    clients = [srv.ftp(), srv.ftp()]
    conns = []
    for ftp in clients:
        conn = ftp.transfercmd("RETR big.bin")
        assert len(conn.recv(CHUNK)) > 0
        conns.append(conn)
    assert gauge(srv, "sluice_sessions_active") == 2
    # (ftplib's reply file holds a reference to the socket: close it first, or the socket's
    # close() would not close the connection.)
    rst_close(conns[0])
    clients[0].file.close()
    rst_close(clients[0].sock)
    conns[1].close()
    clients[1].file.close()
    clients[1].sock.close()

    wait_for(lambda: gauge(srv, "sluice_sessions_active") == 0, 15, "sessions_active back to 0")
    # New clients get both session slots and both passive ports at once.
    a, b = srv.ftp(), srv.ftp()
    assert a.sendcmd("PASV").startswith("227")
    assert b.sendcmd("PASV").startswith("227")
    a.quit()
    b.quit()
    a, b = srv.ftp(), srv.ftp()
    results: dict = {}

    def fetch(name, client):
        results[name] = len(client.download("big.bin"))

    threads = [threading.Thread(target=fetch, args=(n, c)) for n, c in (("a", a), ("b", b))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert results == {"a": 8 * 1024 * 1024, "b": 8 * 1024 * 1024}
    a.quit()
    b.quit()

    # SFTP: a client reset mid-download frees its slot too.
    wait_for(lambda: gauge(srv, "sluice_sessions_active") == 0, 10, "sessions_active back to 0")
    t, sftp = sftp_client(srv)
    remote = sftp.open("big.bin", "rb")
    assert len(remote.read(CHUNK)) == CHUNK
    rst_close(t.sock)
    t.close()
    wait_for(lambda: gauge(srv, "sluice_sessions_active") == 0, 15, "sessions_active back to 0 after SFTP")
    t1, s1 = sftp_client(srv)
    t2, s2 = sftp_client(srv)
    assert s1.stat("big.bin").st_size == s2.stat("big.bin").st_size == 8 * 1024 * 1024
    t1.close()
    t2.close()
    disconnects = srv.events("disconnect")
    assert len(disconnects) >= 5


# --------------------------------------------------------------------------------------------
# 4. SIGTERM drains
# --------------------------------------------------------------------------------------------


def test_sigterm_drains_refuses_new_logins_finishes_transfers_and_exits_0(make_server):
    srv = make_server(config={"timeouts": {"shutdownGraceSeconds": 20}})
    home = srv.make_home()
    ftp_busy = srv.ftp()
    ftp_idle = srv.ftp()
    t_busy, sftp_busy = sftp_client(srv)
    t_idle, _ = sftp_client(srv)

    reader = SlowReader(chunks=40, pause=0.05, byte=b"f")  # ~2 s
    results: dict = {}

    def ftps_upload():
        try:
            results["ftps"] = ftp_busy.storbinary("STOR drained.bin", reader, blocksize=CHUNK)
        except Exception as exc:  # noqa: BLE001
            results["ftps"] = exc

    def sftp_upload():
        try:
            with sftp_busy.open("drained-sftp.bin", "wb") as f:
                for _ in range(40):
                    f.write(b"p" * CHUNK)
                    time.sleep(0.05)
            results["sftp"] = "closed"
        except Exception as exc:  # noqa: BLE001
            results["sftp"] = exc

    threads = [threading.Thread(target=ftps_upload), threading.Thread(target=sftp_upload)]
    for th in threads:
        th.start()
    assert reader.started.wait(10)
    wait_for(lambda: len(temp_files(home)) == 2, 10, "both uploads streaming")
    srv.stopped = True
    term_at = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)

    # Readiness turns false at once, so Kubernetes stops routing new connections here.
    wait_for(lambda: srv.http_get("/readyz", timeout=1)[0] == 503, 2, "/readyz unready")
    # New logins are refused: FTPS with 421, SFTP by closing the connection.
    sock, f, greeting = srv.plain_control()
    assert greeting.startswith("421"), greeting
    sock.close()
    with pytest.raises((paramiko.SSHException, EOFError, OSError)):
        sftp_client(srv)
    # Idle sessions are told 421 / disconnected.
    with pytest.raises(ftplib.error_temp) as info:
        ftp_idle.voidcmd("NOOP")
    assert str(info.value).startswith("421")
    wait_for(lambda: not t_idle.is_active(), 5, "the idle SFTP session disconnected")
    # Running transfers finish, completely.
    for th in threads:
        th.join(30)
    assert str(results.get("ftps", "")).startswith("226"), results
    assert results.get("sftp") == "closed", results
    assert (home / "drained.bin").read_bytes() == b"f" * CHUNK * 40
    assert (home / "drained-sftp.bin").read_bytes() == b"p" * CHUNK * 40
    # ... and the process exits 0 once they are done, well before the grace period ends.
    assert srv.proc.wait(15) == 0
    assert time.monotonic() - term_at < 15
    t_busy.close()
    srv.wait_event("drain_start")
    stop = srv.wait_event("server_stop")
    assert stop["sessions_left"] == 0
    assert srv.events("disconnect", reason="server shutting down")


def test_sigterm_grace_period_ends_stalled_transfers(make_server):
    srv = make_server(config={"timeouts": {"shutdownGraceSeconds": 2}})
    home = srv.make_home()
    ftp = srv.ftp()
    reader = SlowReader(chunks=1000, pause=0.2)
    thread = threading.Thread(target=lambda: _swallow(ftp.storbinary, "STOR stalled.bin", reader, CHUNK),
                              daemon=True)
    thread.start()
    assert reader.started.wait(10)
    srv.stopped = True
    term_at = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(15) == 0
    elapsed = time.monotonic() - term_at
    assert 1.5 < elapsed < 6, elapsed
    assert not (home / "stalled.bin").exists()
    stop = srv.wait_event("server_stop")
    assert stop["sessions_left"] == 1


def _swallow(fn, *args):
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - the server goes away under the client
        pass
