"""Hostile-tenant attacks and the victim's workload (issue 12), shared by
tests/server/test_isolation.py and bench/hostile/hostile_bench.py.

Every attack is an object with `start()` (returns once the attack is in place; it keeps running or
holding its resources in the background), `stop()` (releases everything it holds) and a `notes`
dict describing what the server answered. The victim's workload (`victim_ftps`, `victim_sftp`)
logs in, uploads and downloads a payload with a SHA-256 check and reports latency and MB/s.

Nothing here asserts: the test module and the bench decide what the numbers mean. The module only
needs the server object of conftest.py (`SluiceServer`): its ports, `passwords`, `home()`,
`cafile`, `known_hosts`, `proc`.
"""

from __future__ import annotations

import concurrent.futures as cf
import ftplib
import hashlib
import io
import os
import socket
import ssl
import struct
import threading
import time
import uuid
from pathlib import Path

import paramiko
import paramiko.sftp

MIB = 1 << 20
SFTP_MAX_IO = 256 * 1024 - 1024  # the server's largest READ (255 KiB)

# Source addresses: the attacker and the victim are different clients.
MALLORY_IP = "127.0.0.2"
VICTIM_IP = "127.0.0.3"


# --------------------------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return 0.0
    return 0.0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return 0


class Sampler:
    """Samples the server's RSS and descriptors every `interval` seconds in the background;
    optionally kills the server when RSS passes `kill_above_mib` (a runaway allocation must not
    take the machine down with it)."""

    def __init__(self, pid: int, interval: float = 0.1, kill_above_mib: float | None = 3072):
        self.pid = pid
        self.interval = interval
        self.kill_above = kill_above_mib
        self.peak_rss = rss_mib(pid)
        self.peak_fds = fd_count(pid)
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = rss_mib(self.pid)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_fds = max(self.peak_fds, fd_count(self.pid))
            if self.kill_above and rss > self.kill_above and not self.killed:
                self.killed = True
                try:
                    os.kill(self.pid, 9)
                except OSError:
                    pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


def ftps(srv, user: str, source: str | None = None, timeout: float = 20, password: str | None = None):
    """A logged-in explicit-FTPS client with PROT P (conftest's SluiceFTP)."""
    return srv.ftp(user, password, source=source, timeout=timeout)


def ssh_transport(srv, source: str | None = None, timeout: float = 20) -> paramiko.Transport:
    sock = socket.create_connection(("127.0.0.1", srv.sftp_port), timeout,
                                    source_address=(source, 0) if source else None)
    t = paramiko.Transport(sock)
    t.banner_timeout = timeout
    t.auth_timeout = timeout
    t.start_client(timeout=timeout)
    return t


def ssh_login(srv, user: str, source: str | None = None, timeout: float = 20,
              password: str | None = None) -> paramiko.Transport:
    """An authenticated SSH connection with no channel open yet."""
    t = ssh_transport(srv, source, timeout)
    t.auth_password(user, password if password is not None else srv.passwords[user])
    return t


def sftp_login(srv, user: str, source: str | None = None, timeout: float = 20,
               password: str | None = None) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
    t = ssh_transport(srv, source, timeout)
    t.auth_password(user, password if password is not None else srv.passwords[user])
    sftp = paramiko.SFTPClient.from_transport(t)
    sftp.get_channel().settimeout(timeout)
    return t, sftp


def close_quietly(*things) -> None:
    for thing in things:
        if thing is None:
            continue
        try:
            thing.close()
        except Exception:  # noqa: BLE001 - best effort
            pass


# --------------------------------------------------------------------------------------------
# The victim
# --------------------------------------------------------------------------------------------


def _mbps(size: int, seconds: float) -> float:
    return size / 1e6 / max(seconds, 1e-6)


def victim_ftps(srv, user: str = "victim", size: int = MIB, source: str | None = VICTIM_IP,
                timeout: float = 20) -> dict:
    """Log in over explicit FTPS, upload `size` random bytes, download them, compare SHA-256."""
    data = os.urandom(size)
    name = f"victim-{uuid.uuid4().hex[:8]}.bin"
    t0 = time.monotonic()
    ftp = ftps(srv, user, source=source, timeout=timeout)
    try:
        login = time.monotonic() - t0
        t1 = time.monotonic()
        ftp.storbinary(f"STOR {name}", io.BytesIO(data), blocksize=256 * 1024)
        up = time.monotonic() - t1
        t2 = time.monotonic()
        chunks: list[bytes] = []
        ftp.retrbinary(f"RETR {name}", chunks.append, blocksize=256 * 1024)
        down = time.monotonic() - t2
        got = b"".join(chunks)
        try:
            ftp.delete(name)
        except ftplib.Error:
            pass
        try:
            ftp.quit()
        except Exception:  # noqa: BLE001
            pass
    finally:
        close_quietly(ftp)
    return {
        "protocol": "ftps", "login_ms": login * 1000, "upload_mbps": _mbps(size, up),
        "download_mbps": _mbps(size, down),
        "sha256_ok": hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(),
    }


def victim_sftp(srv, user: str = "victim", size: int = MIB, source: str | None = VICTIM_IP,
                timeout: float = 20) -> dict:
    """Log in over SFTP (paramiko, password), upload, download, compare SHA-256."""
    data = os.urandom(size)
    name = f"victim-{uuid.uuid4().hex[:8]}.bin"
    t0 = time.monotonic()
    t, sftp = sftp_login(srv, user, source, timeout)
    try:
        login = time.monotonic() - t0
        t1 = time.monotonic()
        with sftp.open(name, "wb") as f:
            f.set_pipelined(True)
            for off in range(0, size, 32768):
                f.write(data[off:off + 32768])
        up = time.monotonic() - t1
        t2 = time.monotonic()
        with sftp.open(name, "rb") as f:
            f.prefetch(size)
            got = f.read()
        down = time.monotonic() - t2
        try:
            sftp.remove(name)
        except OSError:
            pass
    finally:
        close_quietly(sftp, t)
    return {
        "protocol": "sftp", "login_ms": login * 1000, "upload_mbps": _mbps(size, up),
        "download_mbps": _mbps(size, down),
        "sha256_ok": hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(),
    }


class NotServed(AssertionError):
    pass


def served(fn, *args, deadline: float = 20, **kwargs) -> dict:
    """Run `fn(*args, **kwargs)` in a thread; its result, or NotServed when it raised or did not
    finish within `deadline` seconds (a hung client thread is left behind as a daemon)."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    t0 = time.monotonic()
    thread.start()
    thread.join(deadline)
    if thread.is_alive():
        raise NotServed(f"{getattr(fn, '__name__', fn)}: not served within {deadline:.0f} s")
    if "error" in box:
        exc = box["error"]
        raise NotServed(f"{getattr(fn, '__name__', fn)}: failed after {time.monotonic() - t0:.1f} s: "
                        f"{type(exc).__name__}: {exc}") from exc
    if not box["result"].get("sha256_ok", True):
        raise NotServed(f"{getattr(fn, '__name__', fn)}: SHA-256 mismatch")
    return box["result"]


# --------------------------------------------------------------------------------------------
# Raw SFTP packets (for requests whose replies are never read)
# --------------------------------------------------------------------------------------------

FXP_INIT, FXP_VERSION, FXP_OPEN, FXP_CLOSE, FXP_READ = 1, 2, 3, 4, 5
FXP_OPENDIR, FXP_READDIR = 11, 12
FXP_STATUS, FXP_HANDLE, FXP_DATA, FXP_NAME = 101, 102, 103, 104
FXF_READ = 1


def _sstr(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _packet(kind: int, payload: bytes) -> bytes:
    return struct.pack(">IB", len(payload) + 1, kind) + payload


class RawSftp:
    """An SFTP channel driven by hand: requests can be pipelined without reading replies."""

    def __init__(self, transport: paramiko.Transport, timeout: float = 20):
        self.chan = transport.open_session(timeout=timeout)
        self.chan.settimeout(timeout)
        self.chan.invoke_subsystem("sftp")
        self.next_id = 1
        self.chan.sendall(_packet(FXP_INIT, struct.pack(">I", 3)))
        kind, _ = self.read_packet()
        assert kind == FXP_VERSION, kind

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.chan.recv(n - len(buf))
            if not chunk:
                raise EOFError("sftp channel closed")
            buf += chunk
        return buf

    def read_packet(self) -> tuple[int, bytes]:
        length = struct.unpack(">I", self._recv_exact(4))[0]
        body = self._recv_exact(length)
        return body[0], body[1:]

    def request(self, kind: int, payload: bytes) -> int:
        rid = self.next_id
        self.next_id += 1
        self.chan.sendall(_packet(kind, struct.pack(">I", rid) + payload))
        return rid

    def handle_or_status(self) -> tuple[bytes | None, str]:
        """Read one reply: (handle, "") for HANDLE, (None, message) for STATUS."""
        kind, body = self.read_packet()
        if kind == FXP_HANDLE:
            n = struct.unpack(">I", body[4:8])[0]
            return body[8:8 + n], ""
        if kind == FXP_STATUS:
            code = struct.unpack(">I", body[4:8])[0]
            n = struct.unpack(">I", body[8:12])[0]
            return None, f"status {code}: " + body[12:12 + n].decode(errors="replace")
        return None, f"packet type {kind}"

    def open_read(self, path: str) -> int:
        return self.request(FXP_OPEN, _sstr(path.encode()) + struct.pack(">II", FXF_READ, 0))

    def opendir(self, path: str) -> int:
        return self.request(FXP_OPENDIR, _sstr(path.encode()))

    def read(self, handle: bytes, offset: int, length: int) -> int:
        return self.request(FXP_READ, _sstr(handle) + struct.pack(">QI", offset, length))

    def readdir(self, handle: bytes) -> int:
        return self.request(FXP_READDIR, _sstr(handle))

    def close(self) -> None:
        close_quietly(self.chan)


# --------------------------------------------------------------------------------------------
# Attacks
# --------------------------------------------------------------------------------------------


class Attack:
    name = "attack"
    finding = ""

    def __init__(self, srv, user: str = "mallory", source: str = MALLORY_IP):
        self.srv = srv
        self.user = user
        self.source = source
        self.notes: dict = {}
        self._held: list = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def prepare(self) -> None:
        """Server-side files the attack needs (made directly on disk, before start)."""

    def start(self) -> None:
        raise NotImplementedError

    def _spawn(self, fn, *args) -> threading.Thread:
        thread = threading.Thread(target=fn, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def stop(self) -> None:
        self._stop.set()
        for thing in reversed(self._held):
            close_quietly(thing)
        self._held.clear()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self):
        self.prepare()
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


class SftpHandleFlood(Attack):
    """Finding 1: SFTP handles freeze the server (2 SSH connections x 4 channels x 64 write
    handles, kept open)."""

    name = "sftp handles (2x4x64)"

    def __init__(self, srv, connections: int = 2, channels: int = 4, files: int = 64, deadline: float = 30, **kw):
        super().__init__(srv, **kw)
        self.connections, self.channels, self.files, self.deadline = connections, channels, files, deadline
        self.opened: dict[tuple[int, int], int] = {}
        self.refusals: dict[tuple[int, int], list[str]] = {}
        self.transports: list[paramiko.Transport] = []
        self.clients: dict[tuple[int, int], paramiko.SFTPClient] = {}

    def start(self) -> None:
        clients = []
        for c in range(self.connections):
            t, sftp = sftp_login(self.srv, self.user, self.source, timeout=15)
            self._held.append(t)
            self.transports.append(t)
            clients.append((c, 0, sftp))
            for ch in range(1, self.channels):
                try:
                    extra = paramiko.SFTPClient.from_transport(t)
                    extra.get_channel().settimeout(15)
                    clients.append((c, ch, extra))
                except Exception as exc:  # noqa: BLE001
                    self.refusals.setdefault((c, ch), []).append(f"channel: {exc}")
        end = time.monotonic() + self.deadline

        def fill(c, ch, sftp):
            self.opened[(c, ch)] = 0
            files = []
            for i in range(self.files):
                if time.monotonic() > end or self._stop.is_set():
                    self.refusals.setdefault((c, ch), []).append("deadline")
                    break
                try:
                    files.append(sftp.open(f"/h-{c}-{ch}-{i}.bin", "wb"))
                    self.opened[(c, ch)] += 1
                except Exception as exc:  # noqa: BLE001 - the server's refusal
                    self.refusals.setdefault((c, ch), []).append(str(exc) or type(exc).__name__)
            self._held.extend(files)  # never closed: held until stop()

        self.clients = {(c, ch): sftp for c, ch, sftp in clients}
        with cf.ThreadPoolExecutor(len(clients)) as pool:
            futures = [pool.submit(fill, *client) for client in clients]
            cf.wait(futures, timeout=self.deadline + 20)
        self.notes = {
            "opened": sum(self.opened.values()),
            "opened_per_connection": [sum(v for (c, _), v in self.opened.items() if c == k)
                                      for k in range(self.connections)],
            "refusals": sum(len(v) for v in self.refusals.values()),
            "refusal_sample": next((v[0] for v in self.refusals.values() if v), None),
        }

    def one_more(self, connection: int = 0) -> str:
        """Try one more handle on `connection`; the server's answer ('' when it was granted)."""
        if not self.transports[connection].is_active():
            return "connection closed"
        sftp = self.clients[(connection, 0)]
        try:
            self._held.append(sftp.open(f"/h-{connection}-extra-{uuid.uuid4().hex[:6]}.bin", "wb"))
            return ""
        except Exception as exc:  # noqa: BLE001
            return str(exc) or type(exc).__name__


class Argon2Bomb(Attack):
    """Finding 2: a users.yaml passwordHash with m=4294967295 (4 TiB) crashes the process at the
    first wrong-password login. The attack reloads users.yaml with such a user, then tries
    wrong passwords for it (only when the reload was rejected, or in the bench where a guard
    kills a runaway server)."""

    name = "argon2 m=4 TiB hash"
    HASH = "$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g"

    def __init__(self, srv, users: list[dict], bomb_user: str = "mallory", **kw):
        super().__init__(srv, **kw)
        self.users = users
        self.bomb_user = bomb_user

    def bomb_users(self) -> list[dict]:
        out = []
        for entry in self.users:
            entry = dict(entry)
            if entry["username"] == self.bomb_user:
                entry.pop("_password", None)
                entry["passwordHash"] = self.HASH
            out.append(entry)
        return out

    def reload(self, timeout: float = 10) -> dict:
        before = len(self.srv.events("config_reload"))
        self.srv.write_users(self.bomb_users())
        event = self.srv.wait_event("config_reload", timeout=timeout, after=before)
        self.notes["reload"] = event.get("result")
        self.notes["reload_error"] = event.get("error")
        return event

    def wrong_password(self) -> str:
        try:
            ftp = self.srv.ftp(None, source=self.source, timeout=10)
        except Exception as exc:  # noqa: BLE001
            return f"connect: {exc}"
        try:
            ftp.login(self.bomb_user, "not the password")
            return "logged in?!"
        except Exception as exc:  # noqa: BLE001
            return str(exc)
        finally:
            close_quietly(ftp)

    def start(self) -> None:
        self.reload()
        if self.notes["reload"] != "rejected":
            # The hash is live: one wrong password makes the server allocate 4 TiB. The bench's
            # Sampler kills the server above its RSS guard; never do this without one.
            self.notes["wrong_password"] = "not tried: hash was loaded"
            return

        def loop():
            while not self._stop.is_set():
                self.notes["wrong_password"] = self.wrong_password()
                self._stop.wait(0.5)

        self._spawn(loop)


class FtpsStalledDownload:
    """A logged-in FTPS session with a download started whose data connection is never read."""

    def __init__(self, srv, user: str, source: str, path: str = "big.bin", timeout: float = 20):
        self.ftp = ftps(srv, user, source=source, timeout=timeout)
        self.ftp.voidcmd("TYPE I")
        self.data = self.ftp.transfercmd(f"RETR {path}")  # 150 read, TLS handshake done


class FtpsControlFlood(Attack):
    """Finding 3: FTPS control lines during a transfer are queued without a limit. Mallory
    starts a download, never reads the data connection and sends NOOP lines."""

    name = "ftps control lines"

    def __init__(self, srv, lines: int = 200, flood_bytes: int = 4 * MIB, **kw):
        super().__init__(srv, **kw)
        self.lines = lines
        self.flood_bytes = flood_bytes

    def prepare(self) -> None:
        home = self.srv.make_home(self.user)
        with open(home / "big.bin", "wb") as f:
            f.truncate(512 * MIB)  # sparse

    @staticmethod
    def read_control(ftp, seconds: float) -> tuple[str, bool]:
        """Everything the server sends on the control connection within `seconds`, and whether
        it closed the connection."""
        sock = ftp.sock
        sock.settimeout(0.5)
        text, closed = b"", False
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
                continue
            except (OSError, ssl.SSLError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            text += chunk
            if b"maxQueuedControlLines" in text:
                # keep reading briefly for the close
                end = min(end, time.monotonic() + 2)
        return text.decode(errors="replace"), closed

    def probe(self, seconds: float = 8) -> tuple[str, bool]:
        """One session: stall a download, send `lines` NOOPs, collect the answer."""
        stalled = FtpsStalledDownload(self.srv, self.user, self.source)
        self._held.extend([stalled.data, stalled.ftp])
        try:
            stalled.ftp.sock.sendall(b"NOOP\r\n" * self.lines)
        except OSError as exc:
            return f"send failed: {exc}", True
        text, closed = self.read_control(stalled.ftp, seconds)
        self.notes["probe_reply"] = text.strip()[:300]
        self.notes["probe_closed"] = closed
        return text, closed

    def start(self) -> None:
        stalled = FtpsStalledDownload(self.srv, self.user, self.source)
        self._held.extend([stalled.data, stalled.ftp])
        sock = stalled.ftp.sock
        sock.settimeout(2)
        self.notes["flood_sent"] = 0

        def flood():
            chunk = b"NOOP\r\n" * 10_000
            while self.notes["flood_sent"] < self.flood_bytes and not self._stop.is_set():
                try:
                    sock.sendall(chunk)
                    self.notes["flood_sent"] += len(chunk)
                except (socket.timeout, TimeoutError):
                    self.notes["flood_blocked"] = True  # the server stopped reading: fine
                    if self._stop.wait(0.2):
                        return
                except (OSError, ssl.SSLError) as exc:
                    self.notes["flood_error"] = str(exc)
                    return

        self._spawn(flood)


class SftpReadFlood(Attack):
    """Finding 4 (SFTP reply queue): many pipelined 255 KiB READs on several handles and
    channels whose replies are never read."""

    name = "sftp pipelined reads"

    def __init__(self, srv, connections: int = 3, channels: int = 4, reads: int = 320, **kw):
        super().__init__(srv, **kw)
        self.connections, self.channels, self.reads = connections, channels, reads

    def prepare(self) -> None:
        home = self.srv.make_home(self.user)
        with open(home / "big.bin", "wb") as f:
            f.truncate(1024 * MIB)  # sparse: reads are zeros, cheap for the disk

    def start(self) -> None:
        self.notes["requests"] = 0
        self.notes["errors"] = []
        self.notes["stalled_connections"] = 0
        # Phase 1: every connection, channel and handle first (a connection whose requests the
        # server stops reading may not answer a channel open afterwards).
        connections: list[list[tuple[RawSftp, bytes]]] = []
        for _ in range(self.connections):
            try:
                t = ssh_login(self.srv, self.user, self.source, timeout=15)
            except Exception as exc:  # noqa: BLE001
                self.notes["errors"].append(f"login: {exc}")
                continue
            self._held.append(t)
            channels = []
            for _ in range(self.channels):
                try:
                    raw = RawSftp(t, timeout=15)
                    self._held.append(raw)
                    raw.open_read("/big.bin")
                    handle, err = raw.handle_or_status()
                    if handle is None:
                        self.notes["errors"].append(f"open: {err}")
                        continue
                    channels.append((raw, handle))
                except Exception as exc:  # noqa: BLE001
                    self.notes["errors"].append(f"{type(exc).__name__}: {exc}")
            connections.append(channels)
        # Phase 2: pipelined READs, replies never read. When the server stops taking requests
        # (back-pressure), move on to the next connection.
        for channels in connections:
            try:
                for raw, handle in channels:
                    raw.chan.settimeout(2)
                    for i in range(self.reads):
                        raw.read(handle, (i * SFTP_MAX_IO) % (1000 * MIB), SFTP_MAX_IO)
                        self.notes["requests"] += 1
            except Exception:  # noqa: BLE001 - send blocked: the server stopped reading. Fine.
                self.notes["stalled_connections"] += 1


def make_many_files(directory: Path, count: int, name_len: int = 120) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    pad = "x" * max(0, name_len - 12)
    for i in range(count):
        fd = os.open(directory / f"{i:010d}{pad}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
    return directory


class SftpOpendirFlood(Attack):
    """Finding 4 (OPENDIR): a directory of `entries` files opened in 64 handles per connection
    (each handle used to load the whole directory)."""

    name = "sftp opendir x64"

    def __init__(self, srv, entries: int = 20_000, connections: int = 2, handles: int = 64,
                 rss_guard_mib: float = 1500, **kw):
        super().__init__(srv, **kw)
        self.entries, self.connections, self.handles, self.guard = entries, connections, handles, rss_guard_mib

    def prepare(self) -> None:
        home = self.srv.make_home(self.user)
        if not (home / "many").is_dir() or len(os.listdir(home / "many")) < self.entries:
            make_many_files(home / "many", self.entries)

    def start(self) -> None:
        self.notes.update(handles=0, refused=[], errors=[])
        pid = self.srv.proc.pid
        for _ in range(self.connections):
            try:
                t = ssh_login(self.srv, self.user, self.source, timeout=15)
                self._held.append(t)
                raw = RawSftp(t, timeout=15)
                self._held.append(raw)
            except Exception as exc:  # noqa: BLE001
                self.notes["errors"].append(f"login: {exc}")
                continue
            handles = []
            try:
                for _ in range(self.handles):
                    if rss_mib(pid) > self.guard:
                        self.notes["errors"].append("stopped: server RSS above the guard")
                        break
                    raw.opendir("/many")
                    handle, err = raw.handle_or_status()
                    if handle is None:
                        self.notes["refused"].append(err)
                        continue
                    handles.append(handle)
                    self.notes["handles"] += 1
                # One READDIR each, replies read (small: one batch of names).
                for handle in handles:
                    raw.readdir(handle)
                for _ in handles:
                    raw.read_packet()
            except Exception as exc:  # noqa: BLE001
                self.notes["errors"].append(f"{type(exc).__name__}: {exc}")


class FtpsListFlood(Attack):
    """Finding 4 (FTPS LIST built in memory): many sessions LIST a huge directory and never read
    the data connection."""

    name = "ftps list, data unread"

    def __init__(self, srv, entries: int = 60_000, sessions: int = 30, name_len: int = 240,
                 sources: tuple[str, ...] = ("127.0.0.2", "127.0.0.4", "127.0.0.5"), **kw):
        super().__init__(srv, **kw)
        self.entries, self.sessions, self.name_len, self.sources = entries, sessions, name_len, sources

    def prepare(self) -> None:
        home = self.srv.make_home(self.user)
        if not (home / "huge").is_dir() or len(os.listdir(home / "huge")) < self.entries:
            make_many_files(home / "huge", self.entries, self.name_len)

    def start(self) -> None:
        self.notes.update(listing=0, replies=[], errors=[])

        def one(i):
            try:
                ftp = ftps(self.srv, self.user, source=self.sources[i % len(self.sources)], timeout=20)
                self._held.append(ftp)
                conn = ftp.transfercmd("LIST huge")
                self._held.append(conn)
                self.notes["listing"] += 1
            except Exception as exc:  # noqa: BLE001 - a refusal
                self.notes["errors"].append(f"{type(exc).__name__}: {exc}")

        with cf.ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(self.sessions)))


class HttpSlowHeaders(Attack):
    """Finding 5: the health/metrics port held by connections that send half a request header."""

    name = "http half headers x2000"

    def __init__(self, srv, connections: int = 2000, **kw):
        super().__init__(srv, **kw)
        self.connections = connections
        self.socks: list[socket.socket] = []

    def start(self) -> None:
        self.notes.update(opened=0, connect_errors=0)
        for _ in range(self.connections):
            try:
                s = socket.create_connection(("127.0.0.1", self.srv.health_port), 5,
                                             source_address=(self.source, 0))
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: sluice\r\nX-Slow: ")
                self.socks.append(s)
                self._held.append(s)
                self.notes["opened"] += 1
            except OSError:
                self.notes["connect_errors"] += 1

    def closed_by_server(self) -> int:
        """How many of the attacker's sockets the server has closed."""
        closed = 0
        for s in self.socks:
            try:
                s.setblocking(False)
                data = s.recv(4096)
                if data == b"" or data.startswith(b"HTTP/1.1 4"):
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        return closed


class SlowHeadersStream(HttpSlowHeaders):
    """Bench variant: keeps re-opening half-header connections as the server closes them."""

    def start(self) -> None:
        super().start()

        def refill():
            while not self._stop.wait(2):
                self.socks = [s for s in self.socks if not _closed(s)]
                for _ in range(self.connections - len(self.socks)):
                    try:
                        s = socket.create_connection(("127.0.0.1", self.srv.health_port), 2,
                                                     source_address=(self.source, 0))
                        s.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
                        self.socks.append(s)
                        self._held.append(s)
                    except OSError:
                        break

        self._spawn(refill)


def _closed(s: socket.socket) -> bool:
    try:
        s.setblocking(False)
        return s.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


RESERVED = ".sluice-upload-"


def reserved_name(kind: str = "dead") -> str:
    """A reserved name; `dead` is one the start-up sweep removes (this host, another instance)."""
    host = "".join(c for c in (os.environ.get("HOSTNAME") or socket.gethostname()) if c.isalnum() or c == "-")[:40]
    return f"{RESERVED}{host or 'host'}-00000000-0123456789abcdef"


class ReservedNames(Attack):
    """Finding 6: names with the upload temp prefix, through every FTPS and SFTP verb. Each
    probe records (verb, refused?, message)."""

    name = "reserved names"

    def __init__(self, srv, target: str = "victim-data.bin", **kw):
        super().__init__(srv, **kw)
        self.target = target
        self.results: list[tuple[str, bool, str]] = []
        self._plant = lambda: None

    def _ftp_probe(self, ftp, verb: str, fn) -> None:
        self._plant()
        try:
            reply = fn()
            self.results.append((verb, False, str(reply)))
        except (ftplib.Error, EOFError, OSError) as exc:
            self.results.append((verb, True, str(exc)))

    def _sftp_probe(self, verb: str, fn) -> None:
        self._plant()
        try:
            reply = fn()
            self.results.append((verb, False, repr(reply)))
        except (OSError, paramiko.SSHException) as exc:
            self.results.append((verb, True, str(exc)))

    def start(self) -> None:
        name = reserved_name()
        existing = RESERVED + "planted-by-someone"
        home = self.srv.make_home(self.user)

        def plant():  # an existing reserved name (re-made before every probe that uses it)
            (home / existing).write_bytes(b"planted")
            (home / "m-own.bin").write_bytes(b"mallory's own file")

        self._plant = plant
        plant()
        ftp = ftps(self.srv, self.user, source=self.source)
        self._held.append(ftp)
        self._ftp_probe(ftp, "FTPS STOR", lambda: ftp.storbinary(f"STOR {RESERVED}x1", io.BytesIO(b"m")))
        self._ftp_probe(ftp, "FTPS MKD", lambda: ftp.mkd(f"{RESERVED}dir1"))

        def rnto():
            ftp.sendcmd(f"RNFR {self.target}")
            return ftp.sendcmd(f"RNTO {name}")

        self._ftp_probe(ftp, "FTPS RNTO", rnto)

        def rnfr():
            ftp.sendcmd(f"RNFR {existing}")
            return ftp.sendcmd("RNTO visible-now.bin")

        self._ftp_probe(ftp, "FTPS RNFR", rnfr)
        self._ftp_probe(ftp, "FTPS DELE", lambda: ftp.delete(existing))
        self._ftp_probe(ftp, "FTPS RETR", lambda: ftp.retrbinary(f"RETR {existing}", lambda b: None))
        self._ftp_probe(ftp, "FTPS LIST", lambda: ftp.retrlines(f"LIST {existing}", lambda l: None))
        close_quietly(ftp)
        t, sftp = sftp_login(self.srv, self.user, self.source)
        self._held.append(t)

        def sftp_write():
            with sftp.open(f"{RESERVED}x2", "wb") as f:
                f.write(b"m")

        self._sftp_probe("SFTP open(write)", sftp_write)
        self._sftp_probe("SFTP open(read)", lambda: sftp.open(existing, "rb").read())
        self._sftp_probe("SFTP rename to", lambda: sftp.rename("m-own.bin", name + "-2"))
        self._sftp_probe("SFTP posix-rename to", lambda: sftp.posix_rename("m-own.bin", name + "-3"))
        self._sftp_probe("SFTP rename from", lambda: sftp.rename(existing, "visible-2.bin"))
        self._sftp_probe("SFTP remove", lambda: sftp.remove(existing))
        self._sftp_probe("SFTP mkdir", lambda: sftp.mkdir(f"{RESERVED}dir2"))
        self._sftp_probe("SFTP stat", lambda: sftp.stat(existing))
        self._sftp_probe("SFTP listdir", lambda: sftp.listdir(existing))


class NoOverwriteRace(Attack):
    """Finding 7: many sessions upload the same new name at once without overwrite permission."""

    name = "no-overwrite race"

    def __init__(self, srv, sessions: int = 8, size: int = MIB, rounds: int = 3,
                 sources: tuple[str, ...] = ("127.0.0.2", "127.0.0.4", "127.0.0.5", "127.0.0.6"), **kw):
        super().__init__(srv, **kw)
        self.sessions, self.size, self.rounds, self.sources = sessions, size, rounds, sources
        self.outcomes: list[dict] = []

    def race(self, name: str) -> dict:
        payloads = [os.urandom(self.size) for _ in range(self.sessions)]
        def connect(i):
            src = self.sources[i % len(self.sources)]
            if i % 2 == 0:
                return "ftps", ftps(self.srv, self.user, source=src)
            return "sftp", sftp_login(self.srv, self.user, src)

        with cf.ThreadPoolExecutor(self.sessions) as pool:
            clients = list(pool.map(connect, range(self.sessions)))
        barrier = threading.Barrier(self.sessions)

        def upload(i):
            kind, client = clients[i]
            barrier.wait(10)
            try:
                if kind == "ftps":
                    client.storbinary(f"STOR {name}", io.BytesIO(payloads[i]), blocksize=64 * 1024)
                else:
                    sftp = client[1]
                    f = sftp.open(name, "wb")
                    f.set_pipelined(True)
                    for off in range(0, self.size, 32768):
                        f.write(payloads[i][off:off + 32768])
                    f.flush()
                    # paramiko's close() swallows a failed CLOSE; send it ourselves.
                    f._closed = True
                    sftp._request(paramiko.sftp.CMD_CLOSE, f.handle)
                return True, ""
            except Exception as exc:  # noqa: BLE001 - the refusal
                return False, f"{kind}: {exc}"

        with cf.ThreadPoolExecutor(self.sessions) as pool:
            results = list(pool.map(upload, range(self.sessions)))
        for kind, client in clients:
            if kind == "ftps":
                close_quietly(client)
            else:
                close_quietly(client[1], client[0])
        final = (self.srv.home(self.user) / name)
        digest = hashlib.sha256(final.read_bytes()).hexdigest() if final.exists() else None
        digests = [hashlib.sha256(p).hexdigest() for p in payloads]
        winners = [i for i, (ok, _) in enumerate(results) if ok]
        return {
            "name": name, "succeeded": len(winners), "refusals": [m for ok, m in results if not ok],
            "final_matches": [i for i, d in enumerate(digests) if d == digest],
            "winner_matches": bool(winners) and digest in [digests[i] for i in winners],
        }

    def start(self) -> None:
        for r in range(self.rounds):
            self.outcomes.append(self.race(f"race-{r}-{uuid.uuid4().hex[:6]}.bin"))
        self.notes["succeeded_per_round"] = [o["succeeded"] for o in self.outcomes]


class ConnectionRate(Attack):
    """Finding 10: 60 new TCP connections per second to the SFTP and FTPS ports from one source,
    before any handshake."""

    name = "60 conn/s per port"

    def __init__(self, srv, per_port: int = 60, **kw):
        super().__init__(srv, **kw)
        self.per_port = per_port
        self.result: dict = {}

    def burst(self) -> dict:
        ftps_socks, sftp_socks = [], []
        t0 = time.monotonic()
        for _ in range(self.per_port):
            for port, bucket in ((self.srv.explicit_port, ftps_socks), (self.srv.sftp_port, sftp_socks)):
                try:
                    bucket.append(socket.create_connection(("127.0.0.1", port), 3,
                                                           source_address=(self.source, 0)))
                except OSError:
                    bucket.append(None)
        self.notes["burst_seconds"] = time.monotonic() - t0
        self._held.extend(s for s in ftps_socks + sftp_socks if s is not None)
        time.sleep(2)  # greetings, banners and refusals arrive
        ftps_answers = [_read_greeting(s) for s in ftps_socks]
        sftp_answers = [_read_ssh_banner(s) for s in sftp_socks]
        self.result = {
            "ftps_accepted": sum(1 for a in ftps_answers if a.startswith("220")),
            "ftps_refused": [a for a in ftps_answers if not a.startswith("220")],
            "sftp_accepted": sum(1 for a in sftp_answers if a == "banner"),
            "sftp_refused": [a for a in sftp_answers if a.startswith("closed") or a.startswith("other")],
            "sftp_pending": sum(1 for a in sftp_answers if a == "no banner yet"),
        }
        self.notes.update(ftps_accepted=self.result["ftps_accepted"], sftp_accepted=self.result["sftp_accepted"], sftp_pending=self.result["sftp_pending"],
                          ftps_refused=len(self.result["ftps_refused"]), sftp_refused=len(self.result["sftp_refused"]))
        return self.result

    def start(self) -> None:
        self.burst()

        def keep():  # bench: one burst per second for as long as the attack runs
            while not self._stop.wait(1):
                for s in self._held:
                    close_quietly(s)
                self._held.clear()
                self.burst()

        self._spawn(keep)


def _drain(sock: socket.socket | None) -> tuple[bytes, bool | None]:
    """(everything already received, closed?) without blocking; closed is None when the
    connection could not even be made."""
    if sock is None:
        return b"", None
    try:
        sock.setblocking(False)
    except OSError:  # closed under us (the attack is stopping)
        return b"", True
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return data, False
        except OSError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def _read_greeting(sock: socket.socket | None) -> str:
    data, closed = _drain(sock)
    if closed is None:
        return "connect failed"
    text = data.decode(errors="replace").strip()
    if text:
        return text
    return "closed without greeting" if closed else "no greeting yet"


def _read_ssh_banner(sock: socket.socket | None) -> str:
    """'banner' when the server sent its SSH identification and kept the connection open;
    otherwise what happened."""
    data, closed = _drain(sock)
    if closed is None:
        return "connect failed"
    if data.startswith(b"SSH-"):
        return "closed after banner" if closed else "banner"
    if data:
        return f"other: {data[:40]!r}"
    return "closed without banner" if closed else "no banner yet"


# --------------------------------------------------------------------------------------------
# Attacks that run as loops (used by the bench; the tests drive the same helpers once)
# --------------------------------------------------------------------------------------------


def sftp_with_keys(srv, user: str, keys: list[Path], source: str, batch: str, cwd: Path,
                   timeout: float = 60):
    """OpenSSH sftp offering `keys` in order (IdentitiesOnly), from `source`."""
    import subprocess

    ident: list[str] = []
    for k in keys:
        ident += ["-i", str(k)]
    cmd = ["sftp", "-o", f"UserKnownHostsFile={srv.known_hosts}", "-o", "StrictHostKeyChecking=yes",
           "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "ConnectTimeout=10",
           "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
           "-o", f"BindAddress={source}", *ident, "-b", "-", "-P", str(srv.sftp_port), f"{user}@127.0.0.1"]
    return subprocess.run(cmd, input=batch, capture_output=True, text=True, timeout=timeout, cwd=cwd)


class KeyOffers(Attack):
    """Finding 8 (bench form): mallory logs in over and over with OpenSSH sftp offering five
    keys, the right one last. `keys` are made by the caller (conftest.keygen); the last one
    must be in mallory's sshAuthorizedKeys."""

    name = "5 key offers per login"

    def __init__(self, srv, keys: list[Path], workdir: Path, source: str = "127.0.0.4", **kw):
        super().__init__(srv, source=source, **kw)
        self.keys, self.workdir = keys, workdir
        self.notes.update(ok=0, failed=0, last_error="")

    def start(self) -> None:
        def loop():
            while not self._stop.is_set():
                try:
                    proc = sftp_with_keys(self.srv, self.user, self.keys, self.source, "pwd\n", self.workdir, 20)
                    if proc.returncode == 0:
                        self.notes["ok"] += 1
                    else:
                        self.notes["failed"] += 1
                        self.notes["last_error"] = proc.stderr.strip()[-120:]
                except Exception as exc:  # noqa: BLE001
                    self.notes["failed"] += 1
                    self.notes["last_error"] = str(exc)
                self._stop.wait(0.2)

        self._spawn(loop)


class HomeFlip(Attack):
    """Finding 9 (bench form): mallory holds an SFTP and an FTPS session and keeps writing
    while users.yaml moves its home between h1 and h2 every second."""

    name = "home moved by reloads"

    def __init__(self, srv, users: list[dict], **kw):
        super().__init__(srv, **kw)
        self.users = users

    def _users(self, home: str) -> list[dict]:
        return [dict(u, home=home) if u["username"] == self.user else dict(u) for u in self.users]

    def start(self) -> None:
        for h in ("h1", "h2"):
            (self.srv.data_root / h).mkdir(parents=True, exist_ok=True)
        self.srv.write_users(self._users("h1"))
        time.sleep(1)
        self.notes.update(reloads=0, writes=0, refused=0)

        def writer():
            t = ftp = None
            while not self._stop.is_set():
                try:
                    if t is None or not t.is_active():
                        t, sftp = sftp_login(self.srv, self.user, self.source, timeout=10)
                        self._held.append(t)
                    if ftp is None:
                        ftp = ftps(self.srv, self.user, source=self.source, timeout=10)
                        self._held.append(ftp)
                    with sftp.open("w.bin", "wb") as f:
                        f.write(b"x" * 4096)
                    ftp.storbinary("STOR w2.bin", io.BytesIO(b"y" * 4096))
                    self.notes["writes"] += 2
                except Exception:  # noqa: BLE001 - ended by the reload: reconnect
                    self.notes["refused"] += 1
                    close_quietly(ftp, t)
                    t = ftp = None
                self._stop.wait(0.2)

        def flipper():
            home = "h1"
            while not self._stop.wait(1):
                home = "h2" if home == "h1" else "h1"
                self.srv.write_users(self._users(home))
                self.notes["reloads"] += 1

        self._spawn(writer)
        self._spawn(flipper)


class RaceLoop(NoOverwriteRace):
    """Finding 7 (bench form): no-overwrite races, one round after another."""

    name = "no-overwrite races"

    def start(self) -> None:
        def loop():
            while not self._stop.is_set():
                try:
                    self.outcomes.append(self.race(f"race-{uuid.uuid4().hex[:8]}.bin"))
                except Exception as exc:  # noqa: BLE001
                    self.notes["error"] = str(exc)
                    self._stop.wait(0.5)
            self.notes["rounds"] = len(self.outcomes)
            self.notes["multi_winner_rounds"] = sum(1 for o in self.outcomes if o["succeeded"] > 1)

        self._spawn(loop)


class ReservedNamesLoop(ReservedNames):
    """Finding 6 (bench form): the reserved-name probes, repeated."""

    def start(self) -> None:
        def loop():
            while not self._stop.is_set():
                try:
                    ReservedNames.start(self)
                except Exception as exc:  # noqa: BLE001
                    self.notes["error"] = str(exc)
                self.notes["allowed"] = sum(1 for _, refused, _ in self.results if not refused)
                for thing in self._held:
                    close_quietly(thing)
                self._held.clear()
                self._stop.wait(0.5)

        self._spawn(loop)
