"""Fixtures for the sluice-server integration tests.

Every test starts the real `sluice-server` binary (path in $SLUICE_SERVER_BIN, set by tests/run)
on 127.0.0.1 with its own directory, certificate, free ports and users, and drives it with real
clients. Helpers live on the objects the fixtures return, so test modules import nothing from here.
"""

from __future__ import annotations

import copy
import ftplib
import hashlib
import json
import os
import random
import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ALL_PERMISSIONS = ["list", "download", "upload", "overwrite", "delete", "rename", "mkdir", "rmdir"]
DEFAULT_PASSWORD = "correct horse battery staple 42"


# --------------------------------------------------------------------------------------------
# Binary, hashes, certificates, ports
# --------------------------------------------------------------------------------------------


def server_binary() -> Path:
    env = os.environ.get("SLUICE_SERVER_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "sluice-server"


@pytest.fixture(scope="session")
def sluice_bin() -> Path:
    path = server_binary()
    if not path.is_file():
        pytest.fail(
            f"sluice-server binary not found at {path}; build it with `cargo build -p sluice-server` "
            "or set SLUICE_SERVER_BIN"
        )
    return path


_HASHES: dict[str, str] = {}
_HASH_LOCK = threading.Lock()


def hash_password(password: str) -> str:
    """argon2id PHC string from `sluice-server hash-password`, cached per password."""
    with _HASH_LOCK:
        if password in _HASHES:
            return _HASHES[password]
        proc = subprocess.run(
            [str(server_binary()), "hash-password"],
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"hash-password failed: {proc.stderr}"
        phc = proc.stdout.strip().splitlines()[-1].strip() if proc.stdout.strip() else ""
        assert phc.startswith("$argon2id$"), f"hash-password printed {proc.stdout!r}"
        _HASHES[password] = phc
        return phc


def keygen(path: Path, comment: str = "test") -> Path:
    """A fresh unencrypted ed25519 key pair at `path` (and `path`.pub), made by ssh-keygen."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    return path


def make_cert(directory: Path, name: str = "tls", cn: str = "localhost", days: int = 90) -> tuple[Path, Path]:
    """Self-signed ECDSA P-256 certificate for 127.0.0.1 and localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(crt), "-days", str(days), "-subj", f"/CN={cn}",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext", "keyUsage=critical,digitalSignature",
            "-addext", "extendedKeyUsage=serverAuth",
        ],
        check=True,
        capture_output=True,
    )
    return crt, key


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("pki"))


_USED_PORTS: set[int] = set()
_PORT_LOCK = threading.Lock()


def _bindable(port: int) -> bool:
    for addr in ("127.0.0.1", "0.0.0.0"):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((addr, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_ports(count: int) -> list[int]:
    """`count` consecutive free ports below the ephemeral range (so clients never collide)."""
    with _PORT_LOCK:
        for _ in range(2000):
            start = random.randint(20000, 32000 - count)
            ports = list(range(start, start + count))
            if any(p in _USED_PORTS for p in ports):
                continue
            if all(_bindable(p) for p in ports):
                _USED_PORTS.update(ports)
                return ports
    raise RuntimeError("no free port range found")


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 5 s; nothing when it is not running."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{random.randint(0, 1 << 30)}")
    tmp.write_text(text)
    os.replace(tmp, path)


def blob(size: int, seed: int = 1) -> bytes:
    # Deterministic, incompressible enough, quick to make.
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


class _TrackingSSLSocket(ssl.SSLSocket):
    """Remembers the newest TLS session seen on each connection (TLS 1.3 tickets arrive after
    the handshake and are only processed on read, e.g. during the close_notify exchange)."""

    def _remember(self, sslobj) -> None:
        callback = getattr(self, "_sluice_on_session", None)
        if callback is None or sslobj is None:
            return
        try:
            session = sslobj.session
        except Exception:  # noqa: BLE001 - best effort
            return
        if session is not None:
            callback(session)

    def unwrap(self):
        sslobj = self._sslobj
        try:
            return super().unwrap()
        finally:
            self._remember(sslobj)

    def close(self):
        sslobj = getattr(self, "_sslobj", None)
        try:
            super().close()
        finally:
            self._remember(sslobj)


def client_context(cafile: Path, tls_version: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.sslsocket_class = _TrackingSSLSocket
    if tls_version == "1.2":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif tls_version == "1.3":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class SluiceFTP(ftplib.FTP_TLS):
    """ftplib.FTP_TLS that (a) can speak implicit FTPS, (b) resumes the control connection's TLS
    session on every data connection, as RFC 4217 servers that bind the channels require, and
    (c) has raw helpers for hostile tests."""

    def __init__(self, *, context: ssl.SSLContext, implicit: bool = False, timeout: float = 15,
                 source_address=None, resume_session: bool = True):
        super().__init__(context=context, timeout=timeout, source_address=source_address)
        self.implicit = implicit
        self.resume_session = resume_session
        self.data_session = None
        self.last_data_session = None

    # -- implicit FTPS ------------------------------------------------------------------------
    def connect(self, host="", port=0, timeout=-999, source_address=None):
        if not self.implicit:
            return super().connect(host, port, timeout, source_address)
        if host:
            self.host = host
        if port > 0:
            self.port = port
        if timeout != -999:
            self.timeout = timeout
        if source_address is not None:
            self.source_address = source_address
        raw = socket.create_connection((self.host, self.port), self.timeout, source_address=self.source_address)
        self.af = raw.family
        self.sock = self.context.wrap_socket(raw, server_hostname=self.host)
        self.sock._sluice_on_session = None
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome

    # -- session resumption on the data channel ----------------------------------------------
    def _on_data_session(self, session) -> None:
        self.last_data_session = session
        if session.has_ticket or session.id:
            self.data_session = session

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            session = None
            if self.resume_session:
                session = self.data_session or self.sock.session
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
            conn._sluice_on_session = self._on_data_session
            self.last_data_resumed = conn.session_reused
        return conn, size

    # -- conveniences -----------------------------------------------------------------------
    def raw(self, line: str) -> str:
        """Send one command and return the full reply text without raising on 4xx/5xx."""
        self.putcmd(line)
        return self.getmultiline()

    def download(self, path: str, rest=None) -> bytes:
        chunks: list[bytes] = []
        self.retrbinary(f"RETR {path}", chunks.append, rest=rest)
        return b"".join(chunks)

    def upload(self, path: str, data: bytes, cmd: str = "STOR", rest=None) -> str:
        import io

        return self.storbinary(f"{cmd} {path}", io.BytesIO(data), rest=rest)

    def list_lines(self, path: str = "", cmd: str = "LIST") -> list[str]:
        lines: list[str] = []
        self.retrlines(f"{cmd} {path}".strip(), lines.append)
        return lines

    def data_attempt(self, cmd: str, *, source: str | None = None, tls: bool = True,
                     session="control", payload: bytes | None = None, timeout: float = 6,
                     abort: bool = False) -> dict:
        """Open a passive data connection by hand (optionally from another source address, with
        or without resuming the control session), send `cmd`, and collect what happens on both
        channels. Never raises on protocol errors."""
        pasv = self.raw("PASV")
        out: dict = {"pasv": pasv, "replies": [], "data": b"", "error": None, "handshake": None}
        if not pasv.startswith("227"):
            out["replies"].append(pasv)
            return out
        host, port = ftplib.parse227(pasv)
        host = self.host  # same as ftplib's trust_server_pasv_ipv4_address=False
        if session == "control":
            session = self.data_session or self.sock.session

        def data_side():
            conn = None
            try:
                src = (source, 0) if source else self.source_address
                conn = socket.create_connection((host, port), timeout, source_address=src)
                if tls:
                    conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
                    out["handshake"] = "resumed" if conn.session_reused else "full"
                if payload is not None:
                    conn.sendall(payload)
                    if abort:
                        # Abrupt end: no TLS close_notify, and a TCP RST instead of a FIN.
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        conn.close()
                        conn = None
                        return
                    if tls:
                        conn.unwrap()
                else:
                    while True:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        out["data"] += chunk
            except Exception as exc:  # noqa: BLE001 - reported to the test
                out["error"] = exc
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001
                        pass

        thread = threading.Thread(target=data_side, daemon=True)
        thread.start()
        old_timeout = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            self.putcmd(cmd)
            while True:
                reply = self.getmultiline()
                out["replies"].append(reply)
                if not reply[:1] == "1":
                    break
        except (TimeoutError, socket.timeout, OSError, EOFError) as exc:
            out["control_error"] = exc
        finally:
            try:
                self.sock.settimeout(old_timeout)
            except OSError:
                pass
        thread.join(timeout + 3)
        return out


def reply_code(reply_or_exc) -> str:
    text = str(reply_or_exc)
    return text[:3]


# --------------------------------------------------------------------------------------------
# The server under test
# --------------------------------------------------------------------------------------------


class SluiceServer:
    def __init__(self, root: Path, cert: tuple[Path, Path], users: list[dict], config: dict):
        self.root = root
        self.dir = root / "etc"
        self.data_root = root / "data"
        self.outside = root / "outside"  # a directory no user may reach
        for d in (self.dir, self.data_root, self.outside):
            d.mkdir(parents=True, exist_ok=True)
        shutil.copy(cert[0], self.dir / "tls.crt")
        shutil.copy(cert[1], self.dir / "tls.key")
        self.cafile = self.dir / "ca.crt"  # what clients trust; survives a cert swap in tests
        shutil.copy(cert[0], self.cafile)
        ports = free_ports(4)
        passive = free_ports(20)
        self.explicit_port, self.implicit_port, self.health_port, self.sftp_port = ports
        # SFTP: an ed25519 host key and a known_hosts file for clients.
        self.host_key = self.dir / "ssh_host_ed25519_key"
        keygen(self.host_key, "sluice-test")
        self.known_hosts = self.dir / "known_hosts"
        host_pub = (self.dir / "ssh_host_ed25519_key.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.sftp_port} {host_pub[0]} {host_pub[1]}\n")
        self.passive_range = (passive[0], passive[-1])
        self.config_path = self.dir / "server.yaml"
        self.users_path = self.dir / "users.yaml"
        self.stdout_path = root / "stdout.jsonl"
        self.stderr_path = root / "stderr.log"
        self.audit_file = root / "audit.log"
        self.base_config = {
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "ServerConfig",
            "dataRoot": str(self.data_root),
            "usersFile": "users.yaml",
            "listeners": {
                "ftpsExplicit": f"127.0.0.1:{self.explicit_port}",
                "ftpsImplicit": f"127.0.0.1:{self.implicit_port}",
                "health": f"127.0.0.1:{self.health_port}",
                "sftp": f"127.0.0.1:{self.sftp_port}",
            },
            "ssh": {"hostKeyFiles": ["ssh_host_ed25519_key"]},
            "tls": {"certFile": "tls.crt", "keyFile": "tls.key"},
            "passive": {"portStart": self.passive_range[0], "portEnd": self.passive_range[1]},
            "activeMode": {"enabled": False},
            "limits": {
                "maxSessions": 200,
                "maxSessionsPerIp": 50,
                "maxSessionsPerUser": 20,
                "maxAuthAttempts": 3,
                "authFailureDelayMs": 50,
                "maxCommandLength": 4096,
            },
            "timeouts": {"loginSeconds": 30, "idleSeconds": 300, "dataConnectSeconds": 10, "dataIdleSeconds": 30},
            "uploads": {"atomic": True},
            "audit": {"stdout": True, "file": str(self.audit_file)},
            "reload": {"intervalMs": 200},
        }
        self.config = deep_merge(self.base_config, config)
        self.passwords: dict[str, str] = {}
        self.users: list[dict] = []
        self.proc: subprocess.Popen | None = None
        self.stopped = False
        self.write_config(self.config)
        self.write_users(users)

    # -- files --------------------------------------------------------------------------------
    @staticmethod
    def user(username: str, password: str | None = DEFAULT_PASSWORD, permissions=None, **extra) -> dict:
        """A users.yaml entry; `password` is kept (not written) so clients can log in."""
        entry = {
            "username": username,
            "home": extra.pop("home", username),
            "permissions": list(ALL_PERMISSIONS if permissions is None else permissions),
        }
        entry.update(extra)
        entry["_password"] = password
        return entry

    def write_users(self, users: list[dict], raw_text: str | None = None) -> None:
        if raw_text is not None:
            write_atomic(self.users_path, raw_text)
            return
        rendered = []
        for entry in users:
            entry = dict(entry)
            password = entry.pop("_password", None)
            if password is not None and "passwordHash" not in entry:
                entry["passwordHash"] = hash_password(password)
                self.passwords[entry["username"]] = password
            rendered.append(entry)
        self.users = users
        doc = {"apiVersion": "sluice.dev/v1alpha1", "kind": "UserList", "users": rendered}
        write_atomic(self.users_path, yaml.safe_dump(doc, sort_keys=False))

    def write_config(self, config: dict | None = None, raw_text: str | None = None) -> None:
        if raw_text is not None:
            write_atomic(self.config_path, raw_text)
            return
        self.config = config
        write_atomic(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def home(self, username: str = "alice") -> Path:
        for entry in self.users:
            if entry["username"] == username:
                return self.data_root / entry["home"]
        return self.data_root / username

    def make_home(self, username: str = "alice") -> Path:
        path = self.home(username)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- process ------------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> "SluiceServer":
        self._stdout = open(self.stdout_path, "ab")
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [str(server_binary()), "run", "--config", str(self.config_path)],
            stdout=self._stdout,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
        )
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"sluice-server exited with {self.proc.returncode} during start-up:\n{self.stderr()}")
            try:
                status, _ = self.http_get("/readyz", timeout=1)
                if status == 200:
                    return self
                last = status
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"sluice-server not ready within {timeout}s (last /readyz: {last}):\n{self.stderr()}")

    def stop(self) -> None:
        self.stopped = True
        stop_process(self.proc)
        for f in (getattr(self, "_stdout", None), getattr(self, "_stderr", None)):
            if f:
                f.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr(self, tail: int = 8000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def http_get(self, path: str, timeout: float = 5) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=timeout) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    # -- audit --------------------------------------------------------------------------------
    def audit_lines(self) -> list[str]:
        try:
            return [l for l in self.stdout_path.read_text(errors="replace").splitlines() if l.strip()]
        except FileNotFoundError:
            return []

    def events(self, event: str | None = None, **match) -> list[dict]:
        out = []
        for line in self.audit_lines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            if event is not None and obj.get("event") != event:
                continue
            if all(obj.get(k) == v for k, v in match.items()):
                out.append(obj)
        return out

    def wait_event(self, event: str, timeout: float = 10, after: int = 0, predicate=None, **match) -> dict:
        """The first matching event with index >= `after` among matching events."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(event, **match) if predicate is None or predicate(e)]
            if len(found) > after:
                return found[after]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {event} event matching {match} within {timeout}s; audit so far:\n"
                    + "\n".join(self.audit_lines()[-40:])
                )
            time.sleep(0.05)

    def reload_users(self, users: list[dict] | None = None, raw_text: str | None = None,
                     expect: str = "applied", timeout: float = 10) -> dict:
        before = len(self.events("config_reload", result=expect))
        self.write_users(users or [], raw_text=raw_text)
        return self.wait_event("config_reload", timeout=timeout, after=before, result=expect)

    def reload_config(self, config: dict | None = None, raw_text: str | None = None,
                      expect: str = "applied", timeout: float = 10) -> dict:
        before = len(self.events("config_reload", result=expect))
        self.write_config(config, raw_text=raw_text)
        return self.wait_event("config_reload", timeout=timeout, after=before, result=expect)

    # -- clients ------------------------------------------------------------------------------
    def context(self, tls_version: str | None = None) -> ssl.SSLContext:
        return client_context(self.cafile, tls_version)

    def ftp(self, user: str | None = "alice", password: str | None = None, *, implicit: bool = False,
            source: str | None = None, prot_p: bool = True, tls_version: str | None = None,
            resume_session: bool = True, timeout: float = 15, context: ssl.SSLContext | None = None,
            host: str = "127.0.0.1", port: int | None = None) -> SluiceFTP:
        """Connected (and, when `user` is given, logged-in with PROT P) client; `host`/`port`
        reach it through something in front (a proxy)."""
        ftp = SluiceFTP(
            context=context or self.context(tls_version),
            implicit=implicit,
            timeout=timeout,
            source_address=(source, 0) if source else None,
            resume_session=resume_session,
        )
        ftp.connect(host, port or (self.implicit_port if implicit else self.explicit_port))
        if user is not None:
            ftp.login(user, password if password is not None else self.passwords[user])
            if prot_p:
                ftp.prot_p()
        return ftp

    def sftp(self, user: str = "alice"):
        """(transport, paramiko SFTPClient) logged in with `user`'s password; close the transport."""
        import paramiko

        t = paramiko.Transport(("127.0.0.1", self.sftp_port))
        t.banner_timeout = 10
        t.start_client(timeout=10)
        t.auth_password(user, self.passwords[user])
        return t, paramiko.SFTPClient.from_transport(t)

    def plain_control(self, source: str | None = None, timeout: float = 10):
        """A plain TCP connection to the explicit listener, with its greeting read."""
        sock = socket.create_connection(("127.0.0.1", self.explicit_port), timeout,
                                        source_address=(source, 0) if source else None)
        f = sock.makefile("rb")
        greeting = read_reply(f)
        return sock, f, greeting

    def curl(self, *args: str, implicit: bool = False, user: str = "alice", path: str = "/",
             timeout: float = 60) -> subprocess.CompletedProcess:
        scheme, port = ("ftps", self.implicit_port) if implicit else ("ftp", self.explicit_port)
        url = f"{scheme}://127.0.0.1:{port}{path}"
        cmd = ["curl", "--silent", "--show-error", "--ssl-reqd", "--cacert", str(self.cafile),
               "--user", f"{user}:{self.passwords[user]}", "--max-time", str(int(timeout)), *args, url]
        return subprocess.run(cmd, capture_output=True, timeout=timeout + 10)

    def lftp(self, script: str, *, implicit: bool = False, user: str = "alice", cwd: Path | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
        scheme, port = ("ftps", self.implicit_port) if implicit else ("ftp", self.explicit_port)
        prelude = "\n".join([
            "set cmd:fail-exit true",
            "set net:max-retries 1",
            "set net:timeout 10",
            "set net:reconnect-interval-base 1",
            "debug 5",
            "set ftp:ssl-force true",
            "set ftp:ssl-protect-data true",
            "set ftp:ssl-protect-list true",
            "set ftp:passive-mode true",
            f"set ssl:ca-file {self.cafile}",
            "set ssl:verify-certificate true",
            "set ssl:check-hostname no",
            f"open -u {_lftp_quote(user + ',' + self.passwords[user])} {scheme}://127.0.0.1:{port}",
        ])
        return subprocess.run(["lftp", "-c", prelude + "\n" + script], capture_output=True,
                              timeout=timeout, cwd=cwd)


def _lftp_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_reply(f) -> str:
    """Read one (possibly multi-line) FTP reply from a binary file object."""
    line = f.readline(16384).decode(errors="replace")
    if not line:
        raise EOFError("connection closed")
    lines = [line]
    if line[3:4] == "-":
        code = line[:3]
        while True:
            nxt = f.readline(16384).decode(errors="replace")
            if not nxt:
                raise EOFError("connection closed mid-reply")
            lines.append(nxt)
            if nxt[:3] == code and nxt[3:4] == " ":
                break
    return "".join(lines).rstrip("\r\n")


@pytest.fixture
def make_server(sluice_bin, tls_material, tmp_path):
    """Factory: make_server(users=None, config=None, start=True) -> SluiceServer.

    users: list of SluiceServer.user(...) entries (default: alice with every permission).
    config: overrides deep-merged into the default server.yaml (a None value deletes a key).
    """
    servers: list[SluiceServer] = []

    def factory(users: list[dict] | None = None, config: dict | None = None, start: bool = True,
                cert: tuple[Path, Path] | None = None) -> SluiceServer:
        root = tmp_path / f"srv{len(servers)}"
        if users is None:
            users = [SluiceServer.user("alice")]
        srv = SluiceServer(root, cert or tls_material, users, config or {})
        servers.append(srv)
        if start:
            srv.start()
        return srv

    yield factory

    died = []
    for srv in servers:
        if srv.proc is not None and not srv.stopped and srv.proc.poll() is not None:
            died.append(srv)
        srv.stop()
    if died:
        pytest.fail(
            "sluice-server died during the test (exit "
            + ", ".join(str(s.proc.returncode) for s in died)
            + "):\n"
            + "\n---\n".join(s.stderr() for s in died)
        )


# --------------------------------------------------------------------------------------------
# A real TCP proxy in front of the server: HAProxy (Debian's), sending PROXY protocol headers
# --------------------------------------------------------------------------------------------


class HAProxy:
    """HAProxy in TCP mode in front of a SluiceServer: each of the server's FTPS, SFTP and
    passive ports is bound on `front` with the same number and forwarded to the server on
    127.0.0.1 with a PROXY header (`send-proxy-v2` or `send-proxy` for v1, per listener)."""

    def __init__(self, srv: SluiceServer, front: str, headers: dict[str, str]):
        self.srv = srv
        self.front = front
        self.cfg = srv.root / "haproxy.cfg"
        self.log = srv.root / "haproxy.log"
        start, end = srv.passive_range
        listeners = {
            "explicit": f"{srv.explicit_port}",
            "implicit": f"{srv.implicit_port}",
            "sftp": f"{srv.sftp_port}",
            "passive": f"{start}-{end}",
        }
        lines = [
            "global",
            "    maxconn 500",
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 60s",
            "    timeout server 60s",
        ]
        for name, ports in listeners.items():
            header = headers.get(name, "send-proxy-v2")
            lines += [
                f"listen {name}",
                f"    bind {front}:{ports}",
                # No port on the server line: HAProxy keeps the port the client connected to.
                f"    server sluice 127.0.0.1 {header}",
            ]
        self.cfg.write_text("\n".join(lines) + "\n")
        self.ports = [srv.explicit_port, srv.implicit_port, srv.sftp_port, *range(start, end + 1)]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10) -> "HAProxy":
        check = subprocess.run(["haproxy", "-c", "-f", str(self.cfg)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen(["haproxy", "-f", str(self.cfg), "-db"], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"haproxy exited with {self.proc.returncode}:\n{self.log.read_text()}")
            # Listening once its ports cannot be bound (no probe connection: it would reach
            # the server and show up in the audit log).
            if not any(self._bindable(p) for p in self.ports):
                return self
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"haproxy not listening within {timeout}s:\n{self.log.read_text()}")

    def _bindable(self, port: int) -> bool:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((self.front, port))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def stop(self) -> None:
        stop_process(self.proc)
        if getattr(self, "_log", None):
            self._log.close()


@pytest.fixture
def make_haproxy():
    """Factory: make_haproxy(srv, front="127.0.0.20", headers={"implicit": "send-proxy"}) ->
    a running HAProxy in front of `srv`."""
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed; tests/run installs it (apt-get install haproxy)")
    proxies: list[HAProxy] = []

    def factory(srv: SluiceServer, front: str = "127.0.0.20",
                headers: dict[str, str] | None = None) -> HAProxy:
        proxy = HAProxy(srv, front, headers or {}).start()
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def server(make_server) -> SluiceServer:
    """A running server with alice (every permission) and bob (every permission)."""
    return make_server(users=[SluiceServer.user("alice"), SluiceServer.user("bob", password="bob's long password 7")])


@pytest.fixture(scope="session")
def user_entry():
    """SluiceServer.user, for tests that build their own user lists."""
    return SluiceServer.user


HEX64 = re.compile(r"\b[0-9a-fA-F]{64}\b")


def pytest_collection_modifyitems(config, items):
    """A hung server must fail one test, not stall the whole suite."""
    if not config.pluginmanager.hasplugin("timeout"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(120))
