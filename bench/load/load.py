#!/usr/bin/env python3
"""Sluice load generator: N concurrent authenticated FTPS + SFTP sessions against one
sluice-server on loopback, transfers in a share of them, and the server's answers when its
session limits are hit.

It starts the server itself (like bench/ftps_bench.py) with a config a deployment for N
sessions would use, then:

  1. ramp:      opens --sessions sessions (--sftp-share of them SFTP with an ed25519 key, the rest
                explicit FTPS with a password: AUTH TLS, USER/PASS, PBSZ 0, PROT P), at most
                --ramp-concurrency logins in flight, from --sources addresses 127.0.0.x, spread
                over --users users; login latency = TCP connect to authenticated;
  2. transfers: in --transfer-share of the open sessions, upload and download a --size file
                (FTPS: PASV data connections that resume the control TLS session; SFTP: the
                session's SFTP channel) and compare SHA-256; aggregate MB/s over the phase;
  3. check:     every session must still answer (FTPS NOOP, SFTP stat);
  4. limits:    with all sessions still open, (a) one more address opens maxSessionsPerIp + 3
                connections, (b) more addresses open connections until maxSessions is reached and
                beyond, (c) one user opens maxSessionsPerUser + 1 logins; the server must answer
                the excess with FTPS 421 / SSH disconnect, keep serving, and stay healthy;
  5. close:     every session quits; the server's descriptors must come back to baseline.

The server's RSS and open descriptors are sampled from /proc/<pid> every second. The whole run
is bounded by --duration (seconds); every phase has its own timeout inside that. Results go to
stdout (a summary) and --json (everything).

Worker processes (--procs, default 2) each run one asyncio loop with their share of the
sessions, so the generator is not limited to one core. Needs Python 3.11+, asyncssh
(bench/load/requirements.txt), openssl and ssh-keygen, and RLIMIT_NOFILE raisable to
--nofile (root, or a hard limit that high). See bench/load/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import asyncssh

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "load-test password 9041"
MIB = 1 << 20


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# /proc sampling
# ------------------------------------------------------------------------------------------

def proc_sample(pid: int) -> tuple[int, int]:
    """(RSS bytes, open descriptors) of `pid`."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


# ------------------------------------------------------------------------------------------
# TLS: data connections must resume the control connection's session
# ------------------------------------------------------------------------------------------

_RESUME: contextvars.ContextVar = contextvars.ContextVar("resume_session", default=None)


class ResumingContext(ssl.SSLContext):
    """asyncio creates its SSL objects with `wrap_bio` and has no way to pass a session; this
    context takes the session to resume from a context variable set by the caller (asyncio runs
    `connection_made`, where `wrap_bio` is called, in the caller's context)."""

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname,
                                session or _RESUME.get())


def client_context(cafile: str) -> ResumingContext:
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    ctx.check_hostname = True
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# ------------------------------------------------------------------------------------------
# A minimal asyncio explicit-FTPS client
# ------------------------------------------------------------------------------------------

class FtpError(Exception):
    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


class Ftps:
    def __init__(self, host: str, port: int, source: str, ctx: ResumingContext, timeout: float):
        self.host, self.port, self.source, self.ctx, self.timeout = host, port, source, ctx, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.session = None

    async def reply(self) -> str:
        line = await asyncio.wait_for(self.reader.readline(), self.timeout)
        if not line:
            raise ConnectionError("connection closed")
        text = line.decode(errors="replace").rstrip("\r\n")
        if text[3:4] == "-":
            code = text[:3]
            while True:
                more = await asyncio.wait_for(self.reader.readline(), self.timeout)
                if not more:
                    raise ConnectionError("connection closed mid-reply")
                more_text = more.decode(errors="replace").rstrip("\r\n")
                text += "\n" + more_text
                if more_text[:3] == code and more_text[3:4] == " ":
                    break
        return text

    async def cmd(self, line: str, expect: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        reply = await self.reply()
        if not reply.startswith(expect):
            raise FtpError(reply)
        return reply

    async def connect(self) -> str:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, local_addr=(self.source, 0), limit=1 << 16),
            self.timeout)
        return await self.reply()

    async def login(self, user: str, password: str) -> None:
        greeting = await self.connect()
        if not greeting.startswith("220"):
            raise FtpError(greeting)
        await self.cmd("AUTH TLS", "234")
        await asyncio.wait_for(self.writer.start_tls(self.ctx, server_hostname="localhost"), self.timeout)
        await self.cmd(f"USER {user}", "331")
        await self.cmd(f"PASS {password}", "230")
        await self.cmd("PBSZ 0", "200")
        await self.cmd("PROT P", "200")
        await self.cmd("TYPE I", "200")

    def _resume_session(self):
        if self.session is not None:
            return self.session
        return self.writer.get_extra_info("ssl_object").session

    async def _data(self, command: str, payload: bytes | None) -> bytes:
        reply = await self.cmd("PASV", "227")
        nums = re.search(r"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", reply)
        if not nums:
            raise FtpError(reply)
        port = int(nums.group(5)) * 256 + int(nums.group(6))
        self.writer.write(command.encode() + b"\r\n")
        token = _RESUME.set(self._resume_session())
        try:
            dreader, dwriter = await asyncio.wait_for(
                asyncio.open_connection(self.host, port, ssl=self.ctx, server_hostname="localhost",
                                        local_addr=(self.source, 0)), self.timeout)
        finally:
            _RESUME.reset(token)
        received = b""
        try:
            prelim = await self.reply()
            if not prelim.startswith(("150", "125")):
                raise FtpError(prelim)
            if payload is not None:
                view = memoryview(payload)
                for i in range(0, len(payload), 256 * 1024):
                    dwriter.write(view[i:i + 256 * 1024])
                    await asyncio.wait_for(dwriter.drain(), self.timeout)
            else:
                chunks = []
                while True:
                    chunk = await asyncio.wait_for(dreader.read(1 << 18), self.timeout)
                    if not chunk:
                        break
                    chunks.append(chunk)
                received = b"".join(chunks)
        finally:
            sslobj = dwriter.get_extra_info("ssl_object")
            dwriter.close()
            try:
                await asyncio.wait_for(dwriter.wait_closed(), self.timeout)
            except (OSError, ssl.SSLError, asyncio.TimeoutError):
                pass
            if sslobj is not None and sslobj.session is not None and sslobj.session.has_ticket:
                self.session = sslobj.session
        done = await self.reply()
        if not done.startswith("226"):
            raise FtpError(done)
        return received

    async def upload(self, name: str, data: bytes) -> None:
        await self._data(f"STOR {name}", data)

    async def download(self, name: str) -> bytes:
        return await self._data(f"RETR {name}", None)

    async def noop(self) -> None:
        await self.cmd("NOOP", "200")

    async def quit(self) -> None:
        try:
            await self.cmd("QUIT", "221")
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except Exception:  # noqa: BLE001
            pass


# ------------------------------------------------------------------------------------------
# Worker process: its share of the sessions
# ------------------------------------------------------------------------------------------

class Session:
    def __init__(self, index: int, proto: str, user: str, source: str):
        self.index, self.proto, self.user, self.source = index, proto, user, source
        self.ftp: Ftps | None = None
        self.conn = None
        self.sftp = None


def classify(exc: BaseException) -> str:
    """A failure reason with per-session details (file, user, port) removed, for counting."""
    if isinstance(exc, FtpError):
        text = f"ftp {exc.reply[:80]}"
    elif isinstance(exc, asyncssh.DisconnectError):
        text = f"ssh disconnect {exc.code}: {exc.reason[:80]}"
    elif isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        text = "timeout"
    else:
        text = f"{type(exc).__name__}: {str(exc)[:80]}"
    text = re.sub(r"/load-[\w.-]+", "/<file>", text)
    text = re.sub(r"\bu\d+\b", "u<n>", text)
    return re.sub(r"\('127\.0\.\d+\.\d+', \d+\)", "(<addr>)", text)


async def open_session(s: Session, cfg: dict, ctx, known, key) -> None:
    if s.proto == "ftps":
        s.ftp = Ftps("127.0.0.1", cfg["ftps_port"], s.source, ctx, cfg["timeout"])
        try:
            await s.ftp.login(s.user, PASSWORD)
        except BaseException:
            if s.ftp.writer is not None:
                s.ftp.writer.close()
            raise
    else:
        s.conn = await asyncio.wait_for(asyncssh.connect(
            "127.0.0.1", cfg["sftp_port"], local_addr=(s.source, 0), username=s.user,
            client_keys=[key], known_hosts=known, agent_path=None, password=None,
            preferred_auth="publickey", connect_timeout=cfg["timeout"], login_timeout=cfg["timeout"],
            keepalive_interval=0), cfg["timeout"])
        s.sftp = await asyncio.wait_for(s.conn.start_sftp_client(), cfg["timeout"])


async def transfer(s: Session, data: bytes, digest: bytes, timeout: float) -> int:
    name = f"load-{os.getpid()}-{s.index}.bin"
    if s.proto == "ftps":
        await s.ftp.upload(name, data)
        back = await s.ftp.download(name)
    else:
        async with s.sftp.open(name, "wb") as f:
            await asyncio.wait_for(f.write(data), timeout)
        async with s.sftp.open(name, "rb") as f:
            back = await asyncio.wait_for(f.read(), timeout)
    if hashlib.sha256(back).digest() != digest:
        raise ValueError(f"downloaded {len(back)} bytes, SHA-256 differs")
    return 2 * len(data)


async def still_alive(s: Session, timeout: float) -> None:
    if s.proto == "ftps":
        await s.ftp.noop()
    else:
        await asyncio.wait_for(s.sftp.stat("."), timeout)


async def close_session(s: Session) -> None:
    if s.ftp is not None:
        await s.ftp.quit()
    if s.conn is not None:
        if s.sftp is not None:
            s.sftp.exit()
        s.conn.close()
        try:
            await asyncio.wait_for(s.conn.wait_closed(), 5)
        except Exception:  # noqa: BLE001
            pass


async def worker_main(cfg: dict, plan: list[tuple[int, str, str, str]], pipe) -> None:
    loop = asyncio.get_running_loop()
    ctx = client_context(cfg["cafile"])
    host_key = asyncssh.read_public_key(cfg["host_pub"])
    known = ([host_key], [], [])
    key = asyncssh.read_private_key(cfg["client_key"])

    async def command() -> str:
        return await loop.run_in_executor(None, pipe.recv)

    for round_no in range(cfg["rounds"]):
        if round_no:
            assert await command() == "ramp"
        sessions = [Session(*p) for p in plan]
        # -- 1. ramp ---------------------------------------------------------------------------
        sem = asyncio.Semaphore(cfg["ramp_concurrency"])
        latencies: dict[str, list[float]] = {"ftps": [], "sftp": []}
        failures: dict[str, int] = {}
        opened: list[Session] = []

        async def one(s: Session):
            async with sem:
                t0 = time.monotonic()
                try:
                    await open_session(s, cfg, ctx, known, key)
                except Exception as exc:  # noqa: BLE001 - counted
                    reason = f"{s.proto}: {classify(exc)}"
                    failures[reason] = failures.get(reason, 0) + 1
                    return
                latencies[s.proto].append(time.monotonic() - t0)
                opened.append(s)

        t0 = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.gather(*(one(s) for s in sessions)), cfg["phase_timeout"])
        except asyncio.TimeoutError:
            failures["ramp phase timeout"] = len(sessions) - len(opened)
        pipe.send({"phase": "ramp", "opened": len(opened), "attempted": len(sessions),
                   "seconds": time.monotonic() - t0, "latencies": latencies, "failures": failures})

        # -- 2. transfers ----------------------------------------------------------------------
        assert await command() == "transfers"
        data = os.urandom(cfg["size"])
        digest = hashlib.sha256(data).digest()
        chosen = [s for s in opened if s.index % 1000 < cfg["transfer_share"] * 1000]
        tsem = asyncio.Semaphore(cfg["transfer_concurrency"])
        tfail: dict[str, int] = {}
        moved = {"ftps": 0, "sftp": 0}
        done = {"ftps": 0, "sftp": 0}
        durations: list[float] = []

        async def xfer(s: Session):
            async with tsem:
                t = time.monotonic()
                try:
                    nbytes = await transfer(s, data, digest, cfg["timeout"])
                    moved[s.proto] += nbytes
                    done[s.proto] += 1
                    durations.append(time.monotonic() - t)
                except Exception as exc:  # noqa: BLE001
                    reason = f"{s.proto}: {classify(exc)}"
                    tfail[reason] = tfail.get(reason, 0) + 1
                    # The control connection may be out of step after a failed transfer: close it
                    # rather than read stale replies in the checks below.
                    broken.append(s)

        broken: list[Session] = []
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.gather(*(xfer(s) for s in chosen)), cfg["phase_timeout"])
        except asyncio.TimeoutError:
            tfail["transfer phase timeout"] = len(chosen) - sum(done.values())
        seconds = time.monotonic() - t0
        for s in broken:
            opened.remove(s)
            try:
                await asyncio.wait_for(close_session(s), 10)
            except Exception:  # noqa: BLE001
                pass
        pipe.send({"phase": "transfers", "attempted": len(chosen), "done": done, "bytes": moved,
                   "seconds": seconds, "failures": tfail, "durations": durations,
                   "closed_after_failure": len(broken)})

        # -- 3. check (before and after the limit phase) ---------------------------------------
        for phase in ("check", "check_after_limits") if round_no == 0 else ("check",):
            assert await command() == phase
            alive_fail: dict[str, int] = {}
            csem = asyncio.Semaphore(500)

            async def check(s: Session):
                async with csem:
                    try:
                        await still_alive(s, cfg["timeout"])
                    except Exception as exc:  # noqa: BLE001
                        reason = f"{s.proto}: {classify(exc)}"
                        alive_fail[reason] = alive_fail.get(reason, 0) + 1

            await asyncio.gather(*(check(s) for s in opened))
            pipe.send({"phase": phase, "checked": len(opened), "failures": alive_fail})

        # -- 5. close --------------------------------------------------------------------------
        assert await command() == "close"
        csem = asyncio.Semaphore(500)

        async def close(s: Session):
            async with csem:
                await close_session(s)

        await asyncio.gather(*(close(s) for s in opened))
        pipe.send({"phase": "close", "closed": len(opened)})


def worker_entry(cfg: dict, plan, pipe) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile(cfg["nofile"])
    try:
        asyncio.run(worker_main(cfg, plan, pipe))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        pipe.send({"phase": "error", "error": f"{type(exc).__name__}: {exc}"})


def raise_nofile(n: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(n, soft), max(n, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------------------------------------
# Limit phase (in the parent, while the workers hold their sessions)
# ------------------------------------------------------------------------------------------

async def read_line(reader, timeout: float) -> str:
    line = await asyncio.wait_for(reader.readline(), timeout)
    return line.decode(errors="replace").rstrip("\r\n")


async def probe_ftps(port: int, source: str, timeout: float):
    """Open a control connection and read what the server says first."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout)
    except Exception as exc:  # noqa: BLE001
        return None, f"connect: {classify(exc)}"
    try:
        first = await read_line(reader, timeout)
    except Exception as exc:  # noqa: BLE001
        first = f"no reply: {classify(exc)}"
    return writer, first or "closed without reply"


async def probe_sftp(port: int, source: str, timeout: float, known) -> str:
    """An SSH connection attempt; returns how it ended (without authenticating)."""
    try:
        conn = await asyncio.wait_for(asyncssh.connect(
            "127.0.0.1", port, local_addr=(source, 0), username="nobody", known_hosts=known,
            agent_path=None, client_keys=None, password="x", connect_timeout=timeout), timeout)
        conn.close()
        return "accepted"
    except asyncssh.PermissionDenied:
        return "admitted (auth refused as expected)"
    except Exception as exc:  # noqa: BLE001
        return classify(exc)


async def limits_phase(cfg: dict, limits: dict) -> dict:
    out: dict = {}
    host_key = asyncssh.read_public_key(cfg["host_pub"])
    known = ([host_key], [], [])
    timeout = cfg["timeout"]

    # (a) per address: maxSessionsPerIp + 3 FTPS connections from one fresh address.
    per_ip = limits["maxSessionsPerIp"]
    src = "127.0.3.1"
    probes = await asyncio.gather(*(probe_ftps(cfg["ftps_port"], src, timeout) for _ in range(per_ip + 3)))
    replies = [p[1] for p in probes]
    # The same address over SFTP while its FTPS slots are full.
    sftp_refusal = await probe_sftp(cfg["sftp_port"], src, timeout, known)
    for w, _ in probes:
        if w is not None:
            w.close()
    out["per_ip"] = {
        "limit": per_ip, "opened": per_ip + 3,
        "greeted_220": sum(r.startswith("220") for r in replies),
        "refused": sorted({r for r in replies if not r.startswith("220")}),
        "refused_count": sum(not r.startswith("220") for r in replies),
        "sftp_over_limit": sftp_refusal,
    }
    await asyncio.sleep(1)

    # (b) total: fill the remaining slots from fresh addresses, then 20 more.
    free = limits["maxSessions"] - cfg["held_sessions"]
    want = max(free, 0) + 20
    sources = [f"127.0.4.{i % 250 + 1}" for i in range(want)]
    writers = []
    replies = []
    for start in range(0, want, 200):
        batch = await asyncio.gather(*(probe_ftps(cfg["ftps_port"], s, timeout) for s in sources[start:start + 200]))
        writers += [w for w, _ in batch if w is not None]
        replies += [r for _, r in batch]
    sftp_refusal = await probe_sftp(cfg["sftp_port"], "127.0.4.251", timeout, known)
    for w in writers:
        w.close()
    out["total"] = {
        "limit": limits["maxSessions"], "held_by_workers": cfg["held_sessions"], "opened": want,
        "greeted_220": sum(r.startswith("220") for r in replies),
        "refused": sorted({r for r in replies if not r.startswith("220")}),
        "refused_count": sum(not r.startswith("220") for r in replies),
        "sftp_over_limit": sftp_refusal,
    }
    await asyncio.sleep(1)

    # (c) per user: maxSessionsPerUser + 1 FTPS logins as one user that holds no session yet.
    ctx = client_context(cfg["cafile"])
    per_user = limits["maxSessionsPerUser"]
    clients = []
    results = []
    for i in range(per_user + 1):
        c = Ftps("127.0.0.1", cfg["ftps_port"], f"127.0.5.{i % 250 + 1}", ctx, timeout)
        try:
            await c.login(cfg["spare_user"], PASSWORD)
            results.append("230")
            clients.append(c)
        except Exception as exc:  # noqa: BLE001
            results.append(classify(exc))
            if c.writer is not None:
                c.writer.close()
    for c in clients:
        await c.quit()
    out["per_user"] = {"limit": per_user, "attempted": per_user + 1,
                       "logged_in": results.count("230"),
                       "refused": sorted({r for r in results if r != "230"})}
    return out


# ------------------------------------------------------------------------------------------
# Server set-up
# ------------------------------------------------------------------------------------------

def write_server(workdir: Path, args, n_users: int, limits: dict) -> dict:
    etc = workdir / "etc"
    etc.mkdir(parents=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(etc / "tls.key"), "-out", str(etc / "tls.crt"), "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(etc / "host_key")],
                   check=True, capture_output=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / "client_key")],
                   check=True, capture_output=True)
    phc = subprocess.run([str(args.server_bin), "hash-password"], input=PASSWORD + "\n", text=True,
                         capture_output=True, check=True).stdout.strip().splitlines()[-1]
    pub = (workdir / "client_key.pub").read_text().strip()
    ports = free_ports(3, args.base_port)
    cfg = {
        "apiVersion": "sluice.dev/v1alpha1", "kind": "ServerConfig",
        "dataRoot": str(workdir / "data"), "usersFile": "users.yaml",
        "listeners": {"ftpsExplicit": f"127.0.0.1:{ports[0]}", "sftp": f"127.0.0.1:{ports[1]}",
                      "health": f"127.0.0.1:{ports[2]}"},
        "tls": {"certFile": "tls.crt", "keyFile": "tls.key"},
        "ssh": {"hostKeyFiles": ["host_key"]},
        "passive": {"portStart": args.base_port + 100, "portEnd": args.base_port + 1099},
        "limits": limits,
        "timeouts": {"idleSeconds": max(900, args.duration), "loginSeconds": args.login_timeout},
        "audit": {"stdout": False, "file": str(workdir / "audit.log")},
    }
    users = [{"username": f"u{i}", "home": f"u{i}", "passwordHash": phc,
              "permissions": ["list", "download", "upload", "overwrite", "delete"],
              "sshAuthorizedKeys": [pub]} for i in range(n_users + 1)]
    import yaml  # PyYAML: installed with the test requirements

    (etc / "server.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (etc / "users.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "sluice.dev/v1alpha1", "kind": "UserList", "users": users}, sort_keys=False))
    return {"ftps_port": ports[0], "sftp_port": ports[1], "health_port": ports[2],
            "cafile": str(etc / "tls.crt"), "host_pub": str(etc / "host_key.pub"),
            "client_key": str(workdir / "client_key"), "config": str(etc / "server.yaml")}


def free_ports(count: int, base: int) -> list[int]:
    out = []
    port = base
    while len(out) < count and port < base + 100:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            out.append(port)
        except OSError:
            pass
        finally:
            s.close()
        port += 1
    if len(out) < count:
        raise SystemExit(f"no {count} free ports in {base}..{base + 99} (--base-port)")
    return out


def health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status
    except Exception:  # noqa: BLE001
        return 0


# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--sftp-share", type=float, default=0.5)
    ap.add_argument("--transfer-share", type=float, default=0.05)
    ap.add_argument("--size", type=int, default=MIB, help="bytes per transfer (default 1 MiB)")
    ap.add_argument("--sources", type=int, default=100, help="client addresses 127.0.0.2..")
    ap.add_argument("--users", type=int, default=0, help="default: sessions / 20 + 1 (maxSessionsPerUser 20)")
    ap.add_argument("--ramp-concurrency", type=int, default=200)
    ap.add_argument("--transfer-concurrency", type=int, default=100)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--duration", type=int, default=1800, help="hard cap for the whole run, seconds")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat ramp/transfers/check/close on the same server (memory reuse); limits probed in round 1")
    ap.add_argument("--hold", type=float, default=10, help="seconds all sessions stay open idle before the transfers")
    ap.add_argument("--timeout", type=float, default=120, help="per operation, seconds")
    ap.add_argument("--login-timeout", type=int, default=120, help="server timeouts.loginSeconds")
    ap.add_argument("--nofile", type=int, default=65536, help="RLIMIT_NOFILE for server and generator")
    ap.add_argument("--server-bin", type=Path,
                    default=Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "sluice-server")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp dir under /dev/shm")
    ap.add_argument("--base-port", type=int, default=23000)
    ap.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the server, e.g. MALLOC_ARENA_MAX=2 (repeatable)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--settle", type=float, default=0,
                    help="seconds to wait after the descriptors are back before the after-close RSS sample"
                         " (allocators that return memory on a timer, e.g. jemalloc's 10 s decay)")
    args = ap.parse_args()

    deadline = time.monotonic() + args.duration
    n = args.sessions
    n_users = args.users or n // 20 + 1
    per_ip = math.ceil(n / args.sources) + 20
    limits = {"maxSessions": n + per_ip + 50, "maxSessionsPerIp": per_ip, "maxSessionsPerUser": 20}
    workdir = Path(tempfile.mkdtemp(prefix="sluice-load-", dir=args.workdir or "/dev/shm"))
    nofile = raise_nofile(args.nofile)
    log(f"workdir {workdir}; RLIMIT_NOFILE {nofile}; limits {limits}; {n_users} users")
    srv = write_server(workdir, args, n_users, limits)
    server_log = open(workdir / "server.log", "wb")

    def server_limits():
        raise_nofile(args.nofile)

    proc = subprocess.Popen([str(args.server_bin), "run", "--config", srv["config"]], stdout=server_log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=server_limits,
                            start_new_session=True,
                            env={**os.environ, **dict(e.split("=", 1) for e in args.server_env)})
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "limits": limits,
                    "users": n_users, "machine": machine()}
    samples: list[tuple[float, int, int]] = []
    workers = []
    try:
        t_start = time.monotonic()
        while health(srv["health_port"]) != 200:
            if proc.poll() is not None or time.monotonic() - t_start > 30:
                raise SystemExit(f"server did not start:\n{(workdir / 'server.log').read_text()[-3000:]}")
            time.sleep(0.1)
        rss0, fd0 = proc_sample(proc.pid)
        report["server_nofile"] = open(f"/proc/{proc.pid}/limits").read().split("Max open files")[1].split()[:2]
        report["baseline"] = {"rss_mib": rss0 / MIB, "fds": fd0}
        log(f"server pid {proc.pid} ready: RSS {rss0 / MIB:.1f} MiB, {fd0} fds")

        # Plan: session i -> protocol, user, source address.
        n_sftp = int(round(n * args.sftp_share))
        plan = []
        for i in range(n):
            proto = "sftp" if (i * n_sftp) // n != ((i + 1) * n_sftp) // n else "ftps"
            plan.append((i, proto, f"u{i % n_users}" if n_users > 1 else "u0",
                         f"127.0.{(i % args.sources) // 250}.{(i % args.sources) % 250 + 2}"))
        # u{n_users} holds no session: the per-user limit probe uses it.
        wcfg = {**srv, "timeout": args.timeout, "ramp_concurrency": max(1, args.ramp_concurrency // args.procs),
                "transfer_concurrency": max(1, args.transfer_concurrency // args.procs),
                "transfer_share": args.transfer_share, "size": args.size, "nofile": args.nofile,
                "phase_timeout": max(60, args.duration / 3), "held_sessions": 0, "rounds": args.rounds, "spare_user": f"u{n_users}"}
        for w in range(args.procs):
            parent, child = mp.Pipe()
            p = mp.Process(target=worker_entry, args=(wcfg, plan[w::args.procs], child), daemon=True)
            p.start()
            workers.append((p, parent))

        def sample():
            if proc.poll() is None:
                rss, fds = proc_sample(proc.pid)
                samples.append((round(time.monotonic() - t_start, 1), rss, fds))

        def gather(phase: str) -> list[dict]:
            results = []
            for p, pipe in workers:
                while not pipe.poll(1):
                    sample()
                    if time.monotonic() > deadline:
                        raise SystemExit(f"--duration {args.duration}s reached in phase {phase}")
                    if proc.poll() is not None:
                        raise SystemExit(f"server exited with {proc.returncode} in phase {phase}")
                msg = pipe.recv()
                if msg.get("phase") == "error":
                    raise SystemExit(f"worker failed: {msg['error']}")
                results.append(msg)
            return results

        def tell(word: str) -> None:
            for _, pipe in workers:
                pipe.send(word)

        for rnd in range(args.rounds):
            # Round 1's results are the report's top-level keys; later rounds (same server
            # process: does memory get reused?) go to "later_rounds".
            target: dict = report if rnd == 0 else {"round": rnd + 1}
            if rnd:
                log(f"round {rnd + 1}")
                tell("ramp")
            cpu0 = cpu_seconds(proc.pid)
            log(f"ramp: {n} sessions ({n_sftp} SFTP), {args.procs} worker processes")
            ramp = gather("ramp")
            lat = {p: [x for r in ramp for x in r["latencies"][p]] for p in ("ftps", "sftp")}
            opened = sum(r["opened"] for r in ramp)
            fails = merge([r["failures"] for r in ramp])
            rss, fds = proc_sample(proc.pid)
            ramp_seconds = max(r["seconds"] for r in ramp)
            target["ramp"] = {
                "attempted": n, "opened": opened, "success_rate": opened / n, "failures": fails,
                "seconds": round(ramp_seconds, 1), "logins_per_s": round(opened / ramp_seconds, 1),
                "server_cpu_s": round(cpu_seconds(proc.pid) - cpu0, 1),
                "login_latency_ms": {p: {"count": len(v), "p50": ms(percentile(v, 50)), "p99": ms(percentile(v, 99)),
                                         "max": ms(max(v) if v else None)} for p, v in lat.items()},
                "server_rss_mib": round(rss / MIB, 1), "server_fds": fds,
                "rss_per_session_kib": round((rss - rss0) / 1024 / max(opened, 1), 1),
            }
            log(f"ramp: {opened}/{n} open in {ramp_seconds:.0f}s; server RSS {rss / MIB:.0f} MiB, {fds} fds; "
                f"failures {fails}")
            hold_end = time.monotonic() + args.hold
            while time.monotonic() < hold_end:
                sample()
                time.sleep(1)

            log("transfers")
            cpu0 = cpu_seconds(proc.pid)
            tell("transfers")
            tr = gather("transfers")
            moved = sum(sum(r["bytes"].values()) for r in tr)
            secs = max(r["seconds"] for r in tr)
            durs = [d for r in tr for d in r["durations"]]
            target["transfers"] = {
                "attempted": sum(r["attempted"] for r in tr),
                "ok": merge([r["done"] for r in tr]),
                "failures": merge([r["failures"] for r in tr]),
                "sessions_closed_after_failed_transfer": sum(r["closed_after_failure"] for r in tr),
                "bytes": moved, "seconds": round(secs, 1),
                "aggregate_mb_per_s": round(moved / 1e6 / secs, 1) if secs else None,
                "per_session_upload_plus_download_s": {"p50": pct(durs, 50), "p99": pct(durs, 99)},
                "server_cpu_s": round(cpu_seconds(proc.pid) - cpu0, 1),
            }
            log(f"transfers: {target['transfers']}")

            tell("check")
            chk = gather("check")
            target["check"] = {"checked": sum(r["checked"] for r in chk), "failures": merge([r["failures"] for r in chk])}
            rss, fds = proc_sample(proc.pid)
            target["peak"] = {"server_rss_mib": round(rss / MIB, 1), "server_fds": fds}
            log(f"check: {target['check']}; server RSS {rss / MIB:.0f} MiB, {fds} fds")

            if rnd == 0:
                log("limits")
                lcfg = {**wcfg, "held_sessions": opened, "timeout": 30}
                target["limits_phase"] = asyncio.run(limits_phase(lcfg, limits))
                target["limits_phase"]["server_alive"] = proc.poll() is None
                target["limits_phase"]["readyz"] = health(srv["health_port"])
                log(f"limits: {json.dumps(target['limits_phase'])}")
                tell("check_after_limits")
                chk = gather("check_after_limits")
                target["check_after_limits"] = {"checked": sum(r["checked"] for r in chk),
                                                "failures": merge([r["failures"] for r in chk])}

            log("close")
            tell("close")
            gather("close")
            fd_deadline = time.monotonic() + 60
            while True:
                sample()
                rss_end, fds_end = proc_sample(proc.pid)
                if fds_end <= fd0 + 2 or time.monotonic() > fd_deadline:
                    break
                time.sleep(1)
            if args.settle:
                time.sleep(args.settle)
                sample()
                rss_end, fds_end = proc_sample(proc.pid)
            target["after_close"] = {"server_rss_mib": round(rss_end / MIB, 1), "server_fds": fds_end,
                                     "fds_back_to_baseline": fds_end <= fd0 + 2}
            if rnd:
                report.setdefault("later_rounds", []).append(target)
        report["server_alive"] = proc.poll() is None
        log(f"after close: {report['after_close']}")
    finally:
        for p, pipe in workers:
            if p.is_alive():
                p.kill()
            p.join(5)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        report["server_exit"] = proc.returncode
        log_text = (workdir / "server.log").read_text(errors="replace")
        report["server_panics"] = log_text.count("panicked")
        report["server_log_errors"] = [l for l in log_text.splitlines() if " ERROR " in l][:20]
        report["samples"] = samples
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir}")
    summary = {k: v for k, v in report.items() if k not in ("samples", "args")}
    print(json.dumps(summary, indent=1))
    ok = (report.get("server_alive") and report.get("after_close", {}).get("fds_back_to_baseline")
          and not report.get("server_panics"))
    return 0 if ok else 1


def merge(dicts: list[dict]) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def ms(x: float | None):
    return None if x is None else round(x * 1000, 1)


def pct(values: list[float], p: float):
    v = percentile(values, p)
    return None if v is None else round(v, 2)


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "kernel": os.uname().release}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    info["loadavg_at_start"] = open("/proc/loadavg").read().split()[:3]
    return info


if __name__ == "__main__":
    sys.exit(main())
