"""Soak: a mixed FTPS + SFTP workload against one real sluice-server for SOAK_SECONDS (skipped when
unset; tests/run sets 300, the documented long run is 3600), with users.yaml and the TLS
certificate hot-reloaded every SOAK_RELOAD_SECONDS (default 60) and the server's RSS and open file
descriptors sampled every SOAK_SAMPLE_SECONDS (default 5) from /proc.

What runs at the same time (threads, each bounded by the deadline):
  * FTPS worker: login (password), STOR of a random 1 B-256 KiB file, LIST, RETR with SHA-256
    check, DELE of every other file, QUIT; source 127.0.0.1;
  * SFTP worker: login (key and password, alternating), put, listdir, get with SHA-256 check,
    remove of every other file, close;
  * failed logins: a wrong FTPS or SFTP password every ~2 s for a user that does not exist, from
    rotating source addresses 127.0.1.x (so address bans never block the real workers; a banned
    address or username may answer with a closed connection instead of 530: both count as refused);
  * long-lived sessions: 5 FTPS and 5 SFTP sessions opened at the start, poked (NOOP / stat)
    every 20 s, which must survive every reload;
  * reloads: a user added/removed in users.yaml and the certificate swapped between two keys
    every SOAK_RELOAD_SECONDS; each must produce an applied `config_reload` event.

Asserted at the end (measured, never timed):
  * the server never died, wrote no panic, and every client operation succeeded;
  * memory flat: median RSS of the last quarter of samples <= 1.2 x the median of the second
    quarter + 8 MiB (the first quarter is warm-up: allocator arenas, TLS/SSH caches);
  * descriptors flat: once every client session is closed, the server's open fds come back to
    the baseline measured before the workload within 30 s (+2 slack for sessions still closing);
  * nothing lost in the audit log: `transfer` events with result ok, per protocol and direction,
    equal the transfers the clients completed (uploads, downloads, FTPS listings).
Results (samples, counts) are also written to $SOAK_REPORT (JSON) when set.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import socket
import ssl
import statistics
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

from conftest import hash_password, keygen, make_cert

SOAK_SECONDS = int(os.environ.get("SOAK_SECONDS", "0") or 0)
RELOAD_SECONDS = float(os.environ.get("SOAK_RELOAD_SECONDS", "60"))
SAMPLE_SECONDS = float(os.environ.get("SOAK_SAMPLE_SECONDS", "5"))
PAUSE_SECONDS = float(os.environ.get("SOAK_PAUSE_SECONDS", "0.2"))
MIB = 1 << 20



def proc_sample(pid: int) -> tuple[int, int]:
    """(RSS bytes, open file descriptors) of a process, from /proc."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> list[str]:
    """What the process's descriptors point to (sockets and pipes by kind only)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        out.append(target.split(":[")[0] if ":[" in target else target)
    return sorted(out)


def quarter_medians(values: list[int]) -> list[float]:
    n = len(values)
    q = max(n // 4, 1)
    return [statistics.median(values[i * q:(i + 1) * q] or values[-1:]) for i in range(4)]


def rss_is_flat(values: list[int], factor: float = 1.2, slack: int = 8 * MIB) -> bool:
    """The definition of 'memory flat' used by the soak: last-quarter median RSS within
    `factor` x the second-quarter median plus `slack` bytes."""
    quarters = quarter_medians(values)
    return quarters[3] <= factor * quarters[1] + slack


def test_rss_flatness_rule():
    """The flatness rule itself: steady growth fails, noise passes."""
    flat = [100 * MIB + random.randint(0, 4 * MIB) for _ in range(100)]
    assert rss_is_flat(flat)
    leaking = [100 * MIB + i * MIB for i in range(100)]
    assert not rss_is_flat(leaking)


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: dict[str, int] = {}
        self.errors: list[str] = []

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.ok[key] = self.ok.get(key, 0) + n

    def error(self, where: str, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{time.strftime('%H:%M:%S')} {where}: {type(exc).__name__}: {exc}")

    def get(self, key: str) -> int:
        with self.lock:
            return self.ok.get(key, 0)



def _sftp_connect(srv, user: str, *, key: Path | None = None, password: str | None = None,
                  source: str | None = None, timeout: float = 60):
    sock = socket.create_connection(("127.0.0.1", srv.sftp_port), timeout,
                                    source_address=(source, 0) if source else None)
    t = paramiko.Transport(sock)
    t.banner_timeout = timeout
    t.auth_timeout = timeout
    t.start_client(timeout=timeout)
    expected = paramiko.Ed25519Key(filename=str(srv.host_key)).asbytes()
    assert t.get_remote_server_key().asbytes() == expected
    if key is not None:
        t.auth_publickey(user, paramiko.Ed25519Key(filename=str(key)))
    else:
        t.auth_password(user, password)
    return t, paramiko.SFTPClient.from_transport(t)


class AuditTail:
    """Reads the server's audit stdout incrementally (the whole file grows to many MB in an
    hour; re-parsing it for every reload would cost more CPU than the workload)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.buffer = b""

    def new_events(self) -> list[dict]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        data = self.buffer + chunk
        lines = data.split(b"\n")
        self.buffer = lines.pop()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_reload(self, timeout: float = 60) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for event in self.new_events():
                if event.get("event") == "config_reload" and event.get("result") == "applied":
                    return event
            time.sleep(0.1)
        raise AssertionError(f"no applied config_reload within {timeout}s")


@pytest.mark.skipif(SOAK_SECONDS <= 0, reason="soak runs only with SOAK_SECONDS set (tests/run: 300)")
@pytest.mark.timeout(max(SOAK_SECONDS, 0) + 600)
def test_soak(make_server, user_entry, tmp_path):
    key = keygen(tmp_path / "bob_key", "soak")
    pub = Path(str(key) + ".pub").read_text().strip()
    users = [
        user_entry("alice"),
        user_entry("bob", password="bob's long password 7", sshAuthorizedKeys=[pub]),
    ]
    carol = user_entry("carol", password=None, passwordHash=hash_password("carol's password 99"))
    srv = make_server(users=users, config={
        "limits": {"maxSessions": 200, "maxSessionsPerIp": 50, "maxSessionsPerUser": 20},
        "timeouts": {"idleSeconds": 600},
        "reload": {"intervalMs": 500},
        "audit": {"file": None},
    })
    pid = srv.proc.pid
    # Two certificates to swap between; clients trust both.
    certs = [(srv.dir / "tls.crt").read_bytes(), (srv.dir / "tls.key").read_bytes()]
    alt_crt, alt_key = make_cert(tmp_path / "alt", cn="soak-alt.localhost")
    certs = [certs, [alt_crt.read_bytes(), alt_key.read_bytes()]]
    srv.cafile.write_bytes(certs[0][0] + certs[1][0])

    counters = Counters()
    stop = threading.Event()
    deadline = time.monotonic() + SOAK_SECONDS

    # Warm-up, then the descriptor/RSS baseline with no session open.
    warm = srv.ftp("alice")
    warm.quit()
    t, sftp = _sftp_connect(srv, "bob", key=key)
    sftp.close()
    t.close()
    time.sleep(2)
    _, fd_baseline = proc_sample(pid)
    targets_baseline = fd_targets(pid)

    def ftps_worker():
        n = 0
        while not stop.is_set() and time.monotonic() < deadline:
            n += 1
            try:
                ftp = srv.ftp("alice", timeout=60)
                try:
                    data = os.urandom(random.randint(1, 256 * 1024))
                    name = f"f{n}.bin"
                    ftp.upload(name, data)
                    counters.add("ftps upload")
                    ftp.list_lines()
                    counters.add("ftps list")
                    got = ftp.download(name)
                    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), "download differs"
                    counters.add("ftps download")
                    if n % 2:
                        ftp.delete(name)
                finally:
                    ftp.quit()
            except Exception as exc:  # noqa: BLE001 - counted and asserted at the end
                counters.error("ftps worker", exc)
                time.sleep(1)
            time.sleep(PAUSE_SECONDS)

    def sftp_worker():
        n = 0
        while not stop.is_set() and time.monotonic() < deadline:
            n += 1
            try:
                if n % 2:
                    t, sftp = _sftp_connect(srv, "bob", key=key)
                else:
                    t, sftp = _sftp_connect(srv, "bob", password="bob's long password 7")
                try:
                    data = os.urandom(random.randint(1, 256 * 1024))
                    name = f"s{n}.bin"
                    sftp.putfo(io.BytesIO(data), name)
                    counters.add("sftp upload")
                    sftp.listdir(".")
                    out = io.BytesIO()
                    sftp.getfo(name, out)
                    assert hashlib.sha256(out.getvalue()).digest() == hashlib.sha256(data).digest(), "get differs"
                    counters.add("sftp download")
                    if n % 2:
                        sftp.remove(name)
                finally:
                    sftp.close()
                    t.close()
            except Exception as exc:  # noqa: BLE001
                counters.error("sftp worker", exc)
                time.sleep(1)
            time.sleep(PAUSE_SECONDS)

    def failing_worker():
        n = 0
        while not stop.is_set() and time.monotonic() < deadline:
            n += 1
            source = f"127.0.1.{n % 250 + 1}"
            try:
                if n % 2:
                    ftp = srv.ftp(None, source=source, timeout=60)
                    try:
                        ftp.auth()
                        ftp.raw("USER intruder")
                        reply = ftp.raw("PASS not-the-password")
                        assert reply[:3] in ("530", "421"), reply
                    finally:
                        ftp.close()
                else:
                    try:
                        t, _ = _sftp_connect(srv, "intruder", password="not-the-password", source=source)
                        t.close()
                        raise AssertionError("sftp login with a wrong password succeeded")
                    except paramiko.AuthenticationException:
                        pass
                counters.add("refused login")
            except (EOFError, ConnectionError, paramiko.SSHException) as exc:
                counters.add("refused login (closed: " + type(exc).__name__ + ")")
            except Exception as exc:  # noqa: BLE001
                counters.error("failing worker", exc)
            stop.wait(2)

    # Long-lived sessions that must survive every reload.
    long_ftp = [srv.ftp("alice", timeout=60) for _ in range(5)]
    long_sftp = [_sftp_connect(srv, "bob", key=key) for _ in range(5)]

    def poke_long_lived():
        for ftp in long_ftp:
            try:
                reply = ftp.raw("NOOP")
                assert reply.startswith("200"), reply
                counters.add("long-lived poke")
            except Exception as exc:  # noqa: BLE001
                counters.error("long-lived ftps", exc)
        for _, sftp in long_sftp:
            try:
                sftp.stat(".")
                counters.add("long-lived poke")
            except Exception as exc:  # noqa: BLE001
                counters.error("long-lived sftp", exc)

    threads = [threading.Thread(target=f, daemon=True, name=f.__name__)
               for f in (ftps_worker, sftp_worker, failing_worker)]
    for th in threads:
        th.start()

    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()
    next_sample = next_poke = started
    next_reload = started + RELOAD_SECONDS
    tail = AuditTail(srv.stdout_path)
    tail.new_events()
    reloads = 0
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            assert srv.alive(), f"server died:\n{srv.stderr()}"
            if now >= next_sample:
                rss, fds = proc_sample(pid)
                samples.append((round(now - started, 1), rss, fds))
                next_sample += SAMPLE_SECONDS
            if now >= next_poke:
                poke_long_lived()
                next_poke += 20
            if now >= next_reload and now > started:
                reloads += 1
                next_reload += RELOAD_SECONDS
                tail.new_events()
                srv.write_users(users + [carol] if reloads % 2 else users)
                tail.wait_reload()
                crt, key_pem = certs[reloads % 2]
                (srv.dir / "tls.key.tmp").write_bytes(key_pem)
                (srv.dir / "tls.crt.tmp").write_bytes(crt)
                (srv.dir / "tls.key.tmp").replace(srv.dir / "tls.key")
                (srv.dir / "tls.crt.tmp").replace(srv.dir / "tls.crt")
                tail.wait_reload()
                counters.add("reload")
            time.sleep(0.2)
    finally:
        stop.set()
        for th in threads:
            th.join(120)
    poke_long_lived()
    for ftp in long_ftp:
        try:
            ftp.quit()
        except Exception as exc:  # noqa: BLE001
            counters.error("long-lived ftps quit", exc)
    for t, sftp in long_sftp:
        sftp.close()
        t.close()

    # Descriptors back to baseline once every session is gone.
    fd_deadline = time.monotonic() + 30
    while True:
        rss_end, fds_end = proc_sample(pid)
        if fds_end <= fd_baseline or time.monotonic() > fd_deadline:
            break
        time.sleep(0.5)

    targets_end = fd_targets(pid)
    extra = list(targets_end)
    for target in targets_baseline:
        if target in extra:
            extra.remove(target)
    sockets_end = [line for line in subprocess.run(["ss", "-tanp"], capture_output=True, text=True).stdout.splitlines()
                   if f"pid={pid}," in line]

    # Nothing lost in the audit log (written asynchronously: wait for it to catch up).
    expected = {
        ("ftps", "upload"): counters.get("ftps upload"),
        ("ftps", "download"): counters.get("ftps download"),
        ("ftps", "list"): counters.get("ftps list"),
        ("sftp", "upload"): counters.get("sftp upload"),
        ("sftp", "download"): counters.get("sftp download"),
    }

    def audited() -> dict:
        got = {k: 0 for k in expected}
        for e in srv.events("transfer", result="ok"):
            k = (e.get("protocol"), e.get("direction"))
            if k in got:
                got[k] += 1
        return got

    audit_deadline = time.monotonic() + 30
    while (got := audited()) != expected and time.monotonic() < audit_deadline:
        time.sleep(0.5)

    rss_values = [s[1] for s in samples]
    quarters = quarter_medians(rss_values) if rss_values else [0, 0, 0, 0]
    report = {
        "seconds": SOAK_SECONDS,
        "reload_seconds": RELOAD_SECONDS,
        "counts": dict(counters.ok),
        "errors": counters.errors,
        "audit_ok_transfers": {f"{p} {d}": n for (p, d), n in got.items()},
        "client_transfers": {f"{p} {d}": n for (p, d), n in expected.items()},
        "fd_baseline": fd_baseline,
        "fd_end": fds_end,
        "fd_extra_at_end": extra,
        "server_sockets_at_end": sockets_end,
        "fd_max": max((s[2] for s in samples), default=0),
        "rss_quarter_medians_mib": [round(q / MIB, 1) for q in quarters],
        "rss_end_mib": round(rss_end / MIB, 1),
        "rss_max_mib": round(max(rss_values, default=0) / MIB, 1),
        "samples": samples,
    }
    if os.environ.get("SOAK_REPORT"):
        Path(os.environ["SOAK_REPORT"]).write_text(json.dumps(report, indent=1))
    summary = {k: v for k, v in report.items() if k != "samples"}
    print("soak:", json.dumps(summary))

    assert srv.alive(), f"server died:\n{srv.stderr()}"
    assert "panicked" not in srv.stderr(tail=10**7), srv.stderr()
    assert not counters.errors, "client operations failed:\n" + "\n".join(counters.errors[:50])
    assert counters.get("reload") >= max(1, int(SOAK_SECONDS // RELOAD_SECONDS) - 2), summary
    assert counters.get("ftps upload") > 0 and counters.get("sftp upload") > 0, summary
    assert got == expected, f"audit transfer events {got} != client transfers {expected}"
    assert fds_end <= fd_baseline + 2, f"fds {fds_end} not back to baseline {fd_baseline}: {summary}"
    assert len(rss_values) >= 8, summary
    assert rss_is_flat(rss_values), f"RSS grew: quarter medians {report['rss_quarter_medians_mib']} MiB"
