#!/usr/bin/env python3
"""Sluice FTPS benchmark: sluice-server vs vsftpd, ProFTPD (mod_tls), Pure-FTPd.

Every server is started by this script, one at a time, on 127.0.0.1 only, with
a config written into a temp dir: explicit FTPS required on control and data
channels, a self-signed ECDSA P-256 certificate, a passive port range, one
login user jailed to its home dir. The same clients measure each server:

  1. download / upload of one file (default 1 GiB) with curl and lftp, MB/s
     (best of --runs), the file on the same filesystem as --workdir (tmpfs by
     default);
  2. server CPU seconds per GiB transferred (utime+stime+cutime+cstime summed
     over the server's process tree, before/after each transfer);
  3. --sessions sequential login + LIST + QUIT sessions with ftplib.FTP_TLS
     (PROT P, data channel reusing the control channel's TLS session);
  4. server memory per idle authenticated session: --idle FTP_TLS logins kept
     open, server PSS (and RSS) summed over its process tree, minus baseline,
     divided by the number of sessions.

See bench/README.md. Needs root (peers switch to the `benchftp` user), the
peers unpacked by bench/setup_peers.sh, curl, lftp and openssl.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import ftplib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchlib import children_cpu_seconds, server_cpu_allowed

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30
MB = 1_000_000
ALL_SERVERS = ["sluice", "vsftpd", "proftpd", "pureftpd", "sluice-before"]
PEER_USER = "benchftp"  # system user created by setup_peers.sh
PASSWORD = "Bench-Pass-7319"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(s: str) -> int:
    s = s.strip().upper().rstrip("B").rstrip("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


# --------------------------------------------------------------------------
# /proc helpers: process tree, CPU and memory
# --------------------------------------------------------------------------

def _read_stat(pid: int) -> tuple[int, str, int] | None:
    """Return (ppid, state, utime+stime+cutime+cstime in ticks) or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    # rest[0] = state (field 3); utime = field 14 -> rest[11]
    ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    return int(rest[1]), rest[0], ticks


def set_child_subreaper() -> bool:
    """Make this process the subreaper of everything it starts: a server's
    per-session process whose parent exits without waiting for it (vsftpd
    does this) is re-parented to us instead of init, so it stays visible for
    CPU/memory accounting. Returns False where prctl is unavailable."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except Exception:  # noqa: BLE001
        return False


class ProcTree:
    """The processes of one server: descendants of its root pid, plus its
    orphans (processes re-parented to this script as subreaper, with their
    descendants). Orphans that have exited are zombies until reaped here;
    their CPU time is read and added to `reaped_ticks` as they are reaped."""

    def __init__(self, root: int):
        self.root = root
        self.reaped_ticks = 0

    def scan(self) -> dict[int, tuple[int, str, int]]:
        me = os.getpid()
        stats: dict[int, tuple[int, str, int]] = {}
        children: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            st = _read_stat(int(name))
            if st is None:
                continue
            stats[int(name)] = st
            children.setdefault(st[0], []).append(int(name))
        roots = [self.root] + [p for p in children.get(me, []) if p != self.root]
        out: dict[int, tuple[int, str, int]] = {}
        stack = list(roots)
        while stack:
            p = stack.pop()
            if p in out or p not in stats:
                continue
            out[p] = stats[p]
            stack.extend(children.get(p, []))
        return out

    def pids(self) -> list[int]:
        return list(self.scan())

    def reap_orphans(self, procs: dict[int, tuple[int, str, int]] | None = None) -> None:
        me = os.getpid()
        procs = self.scan() if procs is None else procs
        for pid, (ppid, state, ticks) in procs.items():
            if ppid == me and pid != self.root and state == "Z":
                try:
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        self.reaped_ticks += ticks
                except ChildProcessError:
                    pass

    def cpu_seconds(self) -> float:
        """utime+stime of live processes plus the time of the children they
        already reaped (cutime/cstime), plus orphans reaped by us."""
        procs = self.scan()
        total = sum(t for _pp, _st, t in procs.values()) + self.reaped_ticks
        self.reap_orphans(procs)  # moves zombie ticks into reaped_ticks
        return total / CLK_TCK

    def memory_kib(self) -> dict[str, int]:
        pss = rss = 0
        pids = [p for p, (_pp, st, _t) in self.scan().items() if st != "Z"]
        for pid in pids:
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            pss += int(line.split()[1])
                        elif line.startswith("Rss:"):
                            rss += int(line.split()[1])
            except OSError:
                pass
        return {"pss_kib": pss, "rss_kib": rss, "processes": len(pids)}

    def nproc(self) -> int:
        return sum(1 for _p, (_pp, st, _t) in self.scan().items() if st != "Z")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, **kw)


# --------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------

class ServerUnavailable(Exception):
    pass


class Server:
    name = "?"
    username = "bench"
    hash_scheme = "?"

    def __init__(self, bench: "Bench", index: int):
        self.bench = bench
        self.dir = bench.tmp / "srv" / self.name   # config, logs
        self.dir.mkdir(parents=True, exist_ok=True)
        base = bench.args.base_port
        self.port = base + 10 * index
        self.health_port = base + 10 * index + 1
        # Pure-FTPd caps its client count at half the passive range, so it
        # gets a range of 2 x session cap; the others 80 ports each.
        if self.name == "pureftpd":
            lo = base + 500
            self.pasv = (lo, lo + 2 * bench.session_cap + 9)
        elif self.name == "sluice-before":
            self.pasv = (base + 50, base + 99)
        else:
            lo = base + 100 + 100 * index
            self.pasv = (lo, lo + 79)
        self.proc: subprocess.Popen | None = None
        self.tree = ProcTree(-1)
        self.log_path = self.dir / "server.log"
        self._log = None
        self.version = "?"

    # home: directory on disk that the FTP user sees as its root
    home: Path

    def prepare(self) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        """Default readiness: control port answers with a 220 banner."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.settimeout(2)
                return s.recv(64).startswith(b"220")
        except OSError:
            return False

    def start(self) -> None:
        for p in (self.port, self.health_port, *range(self.pasv[0], self.pasv[1] + 1)):
            if not port_free(p):
                raise ServerUnavailable(f"port {p} on 127.0.0.1 is busy")
        self.prepare()
        self._log = open(self.log_path, "ab")
        cmd = self.command()
        log(f"{self.name}: starting: {' '.join(map(str, cmd))}")
        self.proc = subprocess.Popen(
            [str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True, cwd=self.dir,
            env=self.env())
        self.tree = ProcTree(self.proc.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerUnavailable(
                    f"{self.name} exited with {self.proc.returncode}: {self.tail_log()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise ServerUnavailable(f"{self.name} not ready after 30 s: {self.tail_log()}")

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def tail_log(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return ""
        return " | ".join(lines)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = self.tree.pids()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        # per-session processes that left the process group (setsid) or the
        # tree; only the pids we saw as this server's descendants
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            self.tree.reap_orphans()
            if not any(pp == os.getpid() for pp, _s, _t in self.tree.scan().values()):
                break
            time.sleep(0.1)
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None

    def peer_dir(self, sub: str) -> Path:
        d = self.bench.peers_dir / sub
        if not d.is_dir():
            raise ServerUnavailable(f"{d} missing: run bench/setup_peers.sh")
        return d

    def make_peer_home(self) -> None:
        self.home = self.bench.tmp / "data" / self.name
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.home, PEER_USER, PEER_USER)
        self.home.chmod(0o755)

    @staticmethod
    def peer_ids() -> tuple[int, int]:
        import pwd
        try:
            pw = pwd.getpwnam(PEER_USER)
        except KeyError:
            raise ServerUnavailable(f"user {PEER_USER} missing: run bench/setup_peers.sh")
        return pw.pw_uid, pw.pw_gid


class Sluice(Server):
    name = "sluice"
    username = "bench"

    def binary(self) -> Path:
        return Path(self.bench.args.sluice_bin)

    def prepare(self) -> None:
        binp = self.binary()
        if not (binp.is_file() and os.access(binp, os.X_OK)):
            raise ServerUnavailable(f"{binp} not built (cargo build --release -p sluice-server)")
        self.bin = binp
        self.hash_scheme = "sluice-server hash-password"
        data_root = self.bench.tmp / "data" / self.name
        self.home = data_root / "bench"
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            h = run([binp, "hash-password"], input=PASSWORD, timeout=60)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            raise ServerUnavailable(f"sluice-server hash-password failed: {e}")
        phash = h.stdout.strip().splitlines()[-1].strip() if h.stdout.strip() else ""
        if not phash:
            raise ServerUnavailable("sluice-server hash-password printed nothing")
        try:
            v = run([binp, "--version"], timeout=10, check=False)
            self.version = (v.stdout or v.stderr).strip().splitlines()[0]
        except Exception:
            pass
        (self.dir / "users.yaml").write_text(
            "apiVersion: sluice.dev/v1alpha1\n"
            "kind: UserList\n"
            "users:\n"
            f"  - username: {self.username}\n"
            f"    passwordHash: {json.dumps(phash)}\n"
            "    home: bench\n"
            "    permissions: [list, download, upload, overwrite, delete, rename, mkdir, rmdir]\n")
        cap = self.bench.session_cap
        (self.dir / "server.yaml").write_text(
            "apiVersion: sluice.dev/v1alpha1\n"
            "kind: ServerConfig\n"
            f"dataRoot: {data_root}\n"
            "usersFile: users.yaml\n"
            f"listeners: {{ftpsExplicit: 127.0.0.1:{self.port}, health: 127.0.0.1:{self.health_port}}}\n"
            f"tls: {{certFile: {self.bench.cert}, keyFile: {self.bench.key}}}\n"
            f"passive: {{portStart: {self.pasv[0]}, portEnd: {self.pasv[1]}}}\n"
            "audit: {stdout: true}\n"
            # raise the session caps like the peers' (defaults: 2000 total,
            # 50 per IP, 20 per user); idle timeout as the peers'
            f"limits: {{maxSessions: {cap}, maxSessionsPerIp: {cap}, maxSessionsPerUser: {cap}}}\n"
            "timeouts: {idleSeconds: 900}\n")

    def command(self) -> list[str]:
        return [self.bin, "run", "--config", self.dir / "server.yaml"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as r:
                return r.status == 200
        except Exception:
            return False


class SluiceBefore(Sluice):
    """A second sluice build (`--sluice-before PATH`, e.g. the commit before a change), run in the
    same benchmark so that before/after share the machine's load; never counted as a peer."""
    name = "sluice-before"

    def binary(self) -> Path:
        return Path(self.bench.args.sluice_before)


class Vsftpd(Server):
    name = "vsftpd"
    username = PEER_USER  # PAM (pam_unix) login of the system user

    def prepare(self) -> None:
        root = self.peer_dir("vsftpd")
        self.bin = root / "usr/sbin/vsftpd"
        self.version = _deb_version(root)
        self.peer_ids()
        self.make_peer_home()
        import pwd
        if not Path(pwd.getpwnam(PEER_USER).pw_dir).is_dir():
            raise ServerUnavailable(f"home of {PEER_USER} missing (vsftpd chdirs there "
                                    "before local_root): run bench/setup_peers.sh")
        if not Path("/etc/pam.d/sluice-bench-ftp").exists():
            raise ServerUnavailable("/etc/pam.d/sluice-bench-ftp missing: run bench/setup_peers.sh")
        Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
        # sha512-crypt (5000 rounds) like the other peers, or the system
        # default of chpasswd (yescrypt on Debian 12) with --peer-hash native
        if self.bench.args.peer_hash == "sha512":
            run(["chpasswd", "-c", "SHA512"], input=f"{PEER_USER}:{PASSWORD}\n")
            self.hash_scheme = "sha512-crypt (PAM pam_unix, /etc/shadow)"
        else:
            run(["chpasswd"], input=f"{PEER_USER}:{PASSWORD}\n")
            self.hash_scheme = "chpasswd default (PAM pam_unix, /etc/shadow)"
        cap = self.bench.session_cap
        conf = f"""\
listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={self.port}
background=NO
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
local_root={self.home}
chroot_local_user=YES
allow_writeable_chroot=YES
secure_chroot_dir=/var/run/vsftpd/empty
pam_service_name=sluice-bench-ftp
userlist_enable=NO
ssl_enable=YES
allow_anon_ssl=NO
force_local_logins_ssl=YES
force_local_data_ssl=YES
require_ssl_reuse=YES
ssl_sslv2=NO
ssl_sslv3=NO
ssl_tlsv1=YES
ssl_ciphers=HIGH
rsa_cert_file={self.bench.cert}
rsa_private_key_file={self.bench.key}
pasv_enable=YES
pasv_min_port={self.pasv[0]}
pasv_max_port={self.pasv[1]}
port_enable=NO
max_clients={cap}
max_per_ip={cap}
idle_session_timeout=900
data_connection_timeout=300
xferlog_enable=NO
dual_log_enable=NO
syslog_enable=NO
vsftpd_log_file={self.dir / 'vsftpd.log'}
use_localtime=NO
seccomp_sandbox=NO
"""
        self.conf = self.dir / "vsftpd.conf"
        self.conf.write_text(conf)
        self.conf.chmod(0o600)

    def command(self) -> list[str]:
        return [self.bin, self.conf]


class Proftpd(Server):
    name = "proftpd"
    username = "bench"  # AuthUserFile virtual user mapped to benchftp's uid

    def prepare(self) -> None:
        root = self.peer_dir("proftpd")
        self.bin = root / "usr/sbin/proftpd"
        self.version = _deb_version(root)
        moddir = root / "usr/lib/proftpd"
        if not (moddir / "mod_tls.so").exists():
            raise ServerUnavailable("mod_tls.so not unpacked (proftpd-mod-crypto)")
        uid, gid = self.peer_ids()
        self.make_peer_home()
        phash = run(["openssl", "passwd", "-6", "-stdin"], input=PASSWORD).stdout.strip()
        self.hash_scheme = "sha512-crypt (AuthUserFile)"
        pw = self.dir / "ftpd.passwd"
        pw.write_text(f"{self.username}:{phash}:{uid}:{gid}::{self.home}:/bin/false\n")
        grp = self.dir / "ftpd.group"
        grp.write_text(f"{PEER_USER}:x:{gid}:\n")
        for f in (pw, grp):
            f.chmod(0o600)
        cap = self.bench.session_cap
        d = self.dir
        conf = f"""\
ServerName "sluice-bench proftpd"
ServerType standalone
DefaultServer on
Port {self.port}
DefaultAddress 127.0.0.1
SocketBindTight on
UseIPv6 off
User nobody
Group nogroup
Umask 022
PidFile {d}/proftpd.pid
ScoreboardFile {d}/proftpd.scoreboard
DelayTable {d}/proftpd.delay
SystemLog {d}/proftpd.syslog
TransferLog none
WtmpLog off
UseReverseDNS off
ModulePath {moddir}
LoadModule mod_tls.c
<IfModule mod_ident.c>
  IdentLookups off
</IfModule>
<IfModule mod_auth_pam.c>
  AuthPAM off
</IfModule>
AuthOrder mod_auth_file.c
AuthUserFile {pw}
AuthGroupFile {grp}
RequireValidShell off
DefaultRoot ~
MaxInstances {cap}
MaxClients {cap}
MaxClientsPerHost {cap}
MaxLoginAttempts 3
TimeoutIdle 900
TimeoutNoTransfer 900
PassivePorts {self.pasv[0]} {self.pasv[1]}
AllowOverwrite on
TLSEngine on
TLSRequired on
TLSProtocol TLSv1.2 TLSv1.3
TLSECCertificateFile {self.bench.cert}
TLSECCertificateKeyFile {self.bench.key}
TLSVerifyClient off
TLSRenegotiate none
TLSLog {d}/tls.log
"""
        # No TLSOptions NoSessionReuseRequired: data-channel session reuse is
        # required (ProFTPD's default).
        self.conf = d / "proftpd.conf"
        self.conf.write_text(conf)

    def command(self) -> list[str]:
        return [self.bin, "--nodaemon", "--config", self.conf]


class Pureftpd(Server):
    name = "pureftpd"
    username = "bench"  # puredb virtual user mapped to benchftp's uid

    def prepare(self) -> None:
        root = self.peer_dir("pureftpd")
        self.bin = root / "usr/sbin/pure-ftpd"
        self.version = _deb_version(root)
        uid, gid = self.peer_ids()
        self.make_peer_home()
        pwfile = self.dir / "pureftpd.passwd"
        self.pdb = self.dir / "pureftpd.pdb"
        for f in (pwfile, self.pdb):
            f.unlink(missing_ok=True)
        run([root / "usr/bin/pure-pw", "useradd", self.username, "-u", str(uid), "-g", str(gid),
             "-d", str(self.home), "-f", str(pwfile), "-F", str(self.pdb), "-m"],
            input=f"{PASSWORD}\n{PASSWORD}\n")
        if self.bench.args.peer_hash == "sha512":
            # pure-pw's own default is argon2id with t=1023 (~2.7 s CPU per
            # login here); swap in sha512-crypt, which puredb also accepts,
            # so all peers hash alike.
            phash = run(["openssl", "passwd", "-6", "-stdin"], input=PASSWORD).stdout.strip()
            fields = pwfile.read_text().rstrip("\n").split(":")
            fields[1] = phash
            pwfile.write_text(":".join(fields) + "\n")
            self.pdb.unlink(missing_ok=True)
            run([root / "usr/bin/pure-pw", "mkdb", str(self.pdb), "-f", str(pwfile)])
            self.hash_scheme = "sha512-crypt (puredb)"
        else:
            self.hash_scheme = "pure-pw default (puredb)"
        # pure-ftpd wants cert and key; -2 cert,key (1.0.47+)
        self.cap = self.bench.session_cap

    def command(self) -> list[str]:
        return [self.bin,
                "-S", f"127.0.0.1,{self.port}",
                "-4",                       # IPv4 only
                "-l", f"puredb:{self.pdb}",
                "-E",                       # no anonymous
                "-A",                       # chroot everyone
                "-H",                       # no reverse DNS
                "-Y", "3",                  # TLS required on control AND data
                "-2", f"{self.bench.cert},{self.bench.key}",
                "-p", f"{self.pasv[0]}:{self.pasv[1]}",
                "-c", str(self.cap), "-C", str(self.cap),
                "-u", "100",                # min uid
                "-I", "15",                 # idle timeout, minutes
                "-f", "none",               # no syslog
                ]


SERVER_CLASSES = {c.name: c for c in (Sluice, Vsftpd, Proftpd, Pureftpd, SluiceBefore)}


def _deb_version(root: Path) -> str:
    try:
        lines = (root / "VERSIONS").read_text().split("\n")
        pkgs = [l.split(": ", 1)[1] for l in lines if l.startswith("Package:")]
        vers = [l.split(": ", 1)[1] for l in lines if l.startswith("Version:")]
        return ", ".join(f"{p} {v}" for p, v in zip(pkgs, vers))
    except OSError:
        return "?"


# --------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------

def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS
    session (servers that require session reuse reject them otherwise)."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


def ftps_login(srv: Server, timeout: float = 30) -> ReusingFTP_TLS:
    ftp = ReusingFTP_TLS(context=tls_context(), timeout=timeout)
    ftp.connect("127.0.0.1", srv.port)
    ftp.login(srv.username, PASSWORD)  # AUTH TLS, USER, PASS
    ftp.prot_p()                       # PBSZ 0, PROT P
    return ftp


def curl_transfer(srv: Server, direction: str, src: Path, remote: str, timeout: float):
    url = f"ftp://127.0.0.1:{srv.port}/{remote}"
    cmd = ["curl", "--ssl-reqd", "-k", "-s", "-S", "--ftp-pasv", "--max-time", str(int(timeout)),
           "--user", f"{srv.username}:{PASSWORD}"]
    if direction == "get":
        cmd += ["-o", "/dev/null", "-w", "%{size_download} %{time_pretransfer} %{time_total}", url]
    else:
        cmd += ["-T", str(src), "-w", "%{size_upload} %{time_pretransfer} %{time_total}", url]
    return cmd


def lftp_transfer(srv: Server, direction: str, src: Path, remote: str, timeout: float):
    script = (
        "set cmd:fail-exit yes; set ftp:ssl-force true; set ftp:ssl-protect-data true; "
        "set ftp:ssl-protect-list true; set ssl:verify-certificate no; "
        "set ftp:passive-mode true; set net:max-retries 1; set net:timeout 30; "
        "set net:reconnect-interval-base 1; set xfer:clobber on; "
        f"open -u {srv.username},{PASSWORD} -p {srv.port} 127.0.0.1; ")
    if direction == "get":
        script += f"get {remote} -o /dev/null"
    else:
        script += f"put {src} -o {remote}"
    return ["lftp", "-c", script]


CLIENTS = {"curl": curl_transfer, "lftp": lftp_transfer}


# --------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.size = parse_size(args.size)
        self.peers_dir = Path(args.peers_dir).expanduser()
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-", dir=workdir))
        self.tmp.chmod(0o755)
        self.session_cap = max(args.idle + 100, 200)
        self.servers: list[Server] = []

    # ---- setup ----------------------------------------------------------
    def setup(self) -> None:
        self.cert = self.tmp / "tls.crt"
        self.key = self.tmp / "tls.key"
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "7",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        self.key.chmod(0o600)
        self.src = self.tmp / "src" / "payload.bin"
        self.src.parent.mkdir()
        log(f"writing {self.size} byte payload to {self.src}")
        chunk = os.urandom(1 << 20)
        with open(self.src, "wb") as f:
            left = self.size
            i = 0
            while left > 0:
                # vary chunks cheaply so the payload is not one repeated MiB
                c = chunk if i % 2 == 0 else chunk[::-1]
                f.write(c[:min(left, len(c))])
                left -= len(c)
                i += 1
        self.src.chmod(0o644)

    # ---- measurements ---------------------------------------------------
    def measure_transfers(self, srv: Server) -> dict:
        # download source: hard link of the payload in the user's home
        dl = srv.home / "download.bin"
        if not dl.exists():
            os.link(self.src, dl)
        if srv.name != "sluice":
            shutil.chown(srv.home, PEER_USER, PEER_USER)
        timeout = max(120.0, self.size / (5 * MB))
        results = {}
        for client in self.args.clients:
            for direction in ("get", "put"):
                key = f"{client}_{'download' if direction == 'get' else 'upload'}"
                runs = []
                for i in range(self.args.runs):
                    remote = "download.bin" if direction == "get" else "upload.bin"
                    up = srv.home / "upload.bin"
                    up.unlink(missing_ok=True)
                    cmd = CLIENTS[client](srv, direction, self.src, remote, timeout)
                    self._settle(srv)
                    # ProFTPD's standalone daemon delays a new connection by
                    # ~0.4 s when it comes right after a session ended; a
                    # short pause keeps that out of the throughput numbers.
                    time.sleep(self.args.pause)
                    cpu0 = srv.tree.cpu_seconds()
                    client0 = children_cpu_seconds()
                    t0 = time.monotonic()
                    try:
                        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10)
                        err = None if p.returncode == 0 else f"rc={p.returncode}: {p.stderr.strip()[-300:]}"
                    except subprocess.TimeoutExpired:
                        err = f"timeout after {timeout + 10:.0f}s"
                    t1 = time.monotonic()
                    client_cpu = children_cpu_seconds() - client0
                    self._settle(srv)
                    cpu1 = srv.tree.cpu_seconds()
                    if err is None and direction == "put":
                        got = up.stat().st_size if up.exists() else -1
                        if got != self.size:
                            err = f"uploaded file has {got} bytes, expected {self.size}"
                    curl_times = None
                    if err is None and client == "curl":
                        # "<bytes> <time_pretransfer> <time_total>"
                        try:
                            nbytes, pre, total = p.stdout.split()[-3:]
                            curl_times = (float(pre), float(total))
                            if direction == "get" and int(float(nbytes)) != self.size:
                                err = f"curl downloaded {nbytes} bytes"
                        except ValueError:
                            pass
                    up.unlink(missing_ok=True)
                    r = {"seconds": round(t1 - t0, 3)}
                    if err:
                        r["error"] = err
                        log(f"{srv.name}: {key} run {i + 1}: FAILED {err}")
                    else:
                        r["mb_per_s"] = round(self.size / MB / (t1 - t0), 1)
                        r["server_cpu_s"] = round(cpu1 - cpu0, 3)
                        r["server_cpu_s_per_gib"] = round((cpu1 - cpu0) / (self.size / GIB), 3)
                        r["client_cpu_s_per_gib"] = round(client_cpu / (self.size / GIB), 3)
                        if curl_times:
                            # connect+TLS+login+PASV+data-connection setup, and
                            # the rate of the transfer phase alone
                            r["curl_pretransfer_s"] = curl_times[0]
                            if curl_times[1] > curl_times[0]:
                                r["transfer_phase_mb_per_s"] = round(
                                    self.size / MB / (curl_times[1] - curl_times[0]), 1)
                        log(f"{srv.name}: {key} run {i + 1}: {r['mb_per_s']} MB/s, "
                            f"server CPU {r['server_cpu_s_per_gib']} s/GiB, "
                            f"client CPU {r['client_cpu_s_per_gib']} s/GiB")
                    runs.append(r)
                    if err:
                        break  # don't repeat a failing transfer
                ok = [r for r in runs if "error" not in r]
                results[key] = {
                    "runs": runs,
                    "best_mb_per_s": max((r["mb_per_s"] for r in ok), default=None),
                    # Median, not mean: one run slowed by a neighbour on the host would
                    # otherwise move the number (docs/performance.md, issue 17).
                    "cpu_s_per_gib": (round(statistics.median(r["server_cpu_s_per_gib"] for r in ok), 3)
                                      if ok else None),
                    "client_cpu_s_per_gib": (round(statistics.median(r["client_cpu_s_per_gib"] for r in ok), 3)
                                             if ok else None),
                    "min_pretransfer_ms": (round(1000 * min(r["curl_pretransfer_s"] for r in ok), 1)
                                           if ok and all("curl_pretransfer_s" in r for r in ok) else None),
                }
        dl.unlink(missing_ok=True)
        return results

    def _settle(self, srv: Server, timeout: float = 3.0) -> None:
        """Wait (bounded) until the server's per-session processes are gone so
        their CPU time has been reaped into the parent's cutime/cstime."""
        deadline = time.monotonic() + timeout
        base = getattr(srv, "idle_nproc", 1)
        while time.monotonic() < deadline and srv.tree.nproc() > base:
            time.sleep(0.05)

    def measure_sessions(self, srv: Server) -> dict:
        n = self.args.sessions
        deadline = time.monotonic() + self.args.phase_timeout
        done = errors = 0
        first_err = None
        cpu0 = srv.tree.cpu_seconds()
        t0 = time.monotonic()
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            try:
                ftp = ftps_login(srv)
                lines: list[str] = []
                ftp.retrlines("LIST", lines.append)
                ftp.quit()
                done += 1
            except Exception as e:  # noqa: BLE001
                errors += 1
                first_err = first_err or f"{type(e).__name__}: {e}"
                if errors >= 5:
                    break
        t1 = time.monotonic()
        self._settle(srv)
        cpu1 = srv.tree.cpu_seconds()
        res = {"requested": n, "completed": done, "errors": errors,
               "seconds": round(t1 - t0, 3),
               "sessions_per_s": round(done / (t1 - t0), 1) if done else None,
               "server_cpu_ms_per_session": round(1000 * (cpu1 - cpu0) / done, 2) if done else None}
        if first_err:
            res["first_error"] = first_err
        log(f"{srv.name}: sessions: {res}")
        return res

    def measure_idle(self, srv: Server) -> dict:
        n = self.args.idle
        # warm up one full session so lazily-initialised state is in the baseline
        try:
            f = ftps_login(srv)
            f.retrlines("LIST", lambda _l: None)
            f.quit()
        except Exception as e:  # noqa: BLE001
            return {"error": f"warm-up session failed: {type(e).__name__}: {e}"}
        self._settle(srv)
        time.sleep(1)
        base = srv.tree.memory_kib()
        conns: list[ReusingFTP_TLS] = []
        lock = threading.Lock()
        errors: list[str] = []
        deadline = time.monotonic() + self.args.phase_timeout

        def one(_i):
            if time.monotonic() > deadline or len(errors) >= 20:
                return
            try:
                ftp = ftps_login(srv, timeout=60)
                ftp.voidcmd("PWD")
                with lock:
                    conns.append(ftp)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")

        t0 = time.monotonic()
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=self.args.idle_workers) as ex:
                list(ex.map(one, range(n)))
            t_open = time.monotonic() - t0
            time.sleep(2)  # let per-session processes settle
            # all sessions still alive?
            alive = 0
            for c in conns:
                try:
                    c.voidcmd("NOOP")
                    alive += 1
                except Exception:  # noqa: BLE001
                    pass
            loaded = srv.tree.memory_kib()
        finally:
            for c in conns:
                try:
                    c.sock.settimeout(5)
                    c.quit()
                except Exception:  # noqa: BLE001
                    try:
                        c.close()
                    except Exception:  # noqa: BLE001
                        pass
        self._settle(srv, timeout=15)
        res = {"requested": n, "opened": len(conns), "alive_at_measurement": alive,
               "errors": len(errors), "open_seconds": round(t_open, 2),
               "baseline": base, "loaded": loaded}
        if errors:
            res["first_error"] = errors[0]
        if alive:
            res["pss_kib_per_session"] = round((loaded["pss_kib"] - base["pss_kib"]) / alive, 1)
            res["rss_kib_per_session"] = round((loaded["rss_kib"] - base["rss_kib"]) / alive, 1)
        log(f"{srv.name}: idle: opened {len(conns)}/{n} in {t_open:.1f}s, "
            f"PSS/session {res.get('pss_kib_per_session')} KiB, "
            f"RSS/session {res.get('rss_kib_per_session')} KiB, "
            f"processes {base['processes']} -> {loaded['processes']}")
        return res

    def bench_server(self, name: str, index: int) -> dict:
        srv = SERVER_CLASSES[name](self, index)
        self.servers.append(srv)
        out: dict = {"server": name}
        try:
            srv.start()
        except ServerUnavailable as e:
            log(f"{name}: SKIPPED: {e}")
            out["skipped"] = str(e)
            srv.stop()
            return out
        except Exception as e:  # noqa: BLE001
            log(f"{name}: SKIPPED: {type(e).__name__}: {e}")
            out["skipped"] = f"{type(e).__name__}: {e}"
            srv.stop()
            return out
        out["version"] = srv.version
        out["password_hash"] = srv.hash_scheme
        try:
            time.sleep(0.5)
            srv.idle_nproc = srv.tree.nproc()
            out["server_processes_at_rest"] = srv.idle_nproc
            if "idle" in self.args.tests:
                out["idle"] = self.measure_idle(srv)
            if "sessions" in self.args.tests:
                out["sessions"] = self.measure_sessions(srv)
            if "transfer" in self.args.tests:
                out["transfers"] = self.measure_transfers(srv)
            if srv.proc.poll() is not None:
                out["crashed"] = f"server exited with {srv.proc.returncode}: {srv.tail_log()}"
        finally:
            srv.stop()
        return out

    def cleanup(self) -> None:
        for s in self.servers:
            try:
                s.stop()
            except Exception:  # noqa: BLE001
                pass
        if self.args.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def metric_rows(args) -> list[tuple[str, str, bool, callable]]:
    rows = []
    for c in args.clients:
        for d in ("download", "upload"):
            rows.append((f"{c} {d} MB/s (best of {args.runs})", f"{c}_{d}", True,
                         lambda r, k=f"{c}_{d}": r.get("transfers", {}).get(k, {}).get("best_mb_per_s")))
    for c in args.clients:
        for d in ("download", "upload"):
            rows.append((f"{c} {d} server CPU s/GiB", f"{c}_{d}_cpu", False,
                         lambda r, k=f"{c}_{d}": r.get("transfers", {}).get(k, {}).get("cpu_s_per_gib")))
    for c in args.clients:
        for d in ("download", "upload"):
            # The client shares the cores: on a 2-core machine MB/s is bounded by
            # 2 / (server + client CPU s/GiB), so this row says how much of a gap is the client.
            rows.append((f"{c} {d} client CPU s/GiB", f"{c}_{d}_client_cpu", False,
                         lambda r, k=f"{c}_{d}": r.get("transfers", {}).get(k, {}).get("client_cpu_s_per_gib")))
    if "curl" in args.clients:
        for d in ("download", "upload"):
            rows.append((f"curl {d}: setup ms (connect..transfer)", f"curl_{d}_pre", False,
                         lambda r, k=f"curl_{d}": r.get("transfers", {}).get(k, {}).get("min_pretransfer_ms")))
    rows.append((f"{args.sessions} login+LIST+QUIT: seconds", "sessions_s", False,
                 lambda r: r.get("sessions", {}).get("seconds")
                 if r.get("sessions", {}).get("completed") == args.sessions else None))
    rows.append(("  sessions/s", "sessions_per_s", True,
                 lambda r: r.get("sessions", {}).get("sessions_per_s")
                 if r.get("sessions", {}).get("completed") == args.sessions else None))
    rows.append(("  server CPU ms/session", "session_cpu", False,
                 lambda r: r.get("sessions", {}).get("server_cpu_ms_per_session")
                 if r.get("sessions", {}).get("completed") == args.sessions else None))
    rows.append((f"idle sessions: PSS KiB/session ({args.idle})", "idle_pss", False,
                 lambda r: r.get("idle", {}).get("pss_kib_per_session")))
    rows.append(("  RSS KiB/session", "idle_rss", False,
                 lambda r: r.get("idle", {}).get("rss_kib_per_session")))
    return rows


def render_table(results: list[dict], args) -> tuple[str, dict]:
    names = [r["server"] for r in results]
    by = {r["server"]: r for r in results}
    head = ["metric"] + names + ["sluice/best-peer"]
    lines = []
    ratios = {}
    for label, key, higher_better, get in metric_rows(args):
        vals = {n: (None if "skipped" in by[n] else get(by[n])) for n in names}
        peers = [v for n, v in vals.items() if not n.startswith("sluice") and v is not None]
        ratio = None
        if vals.get("sluice") is not None and peers:
            best = max(peers) if higher_better else min(peers)
            if best:
                ratio = vals["sluice"] / best
        ratios[key] = round(ratio, 3) if ratio is not None else None
        cells = [label] + [("-" if vals[n] is None else f"{vals[n]:g}") for n in names]
        arrow = "higher better" if higher_better else "lower better"
        cells.append(("-" if ratio is None else f"{ratio:.2f}x") + f" ({arrow})")
        lines.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths))  # noqa: E731
    out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines]
    notes = []
    for r in results:
        if "skipped" in r:
            notes.append(f"{r['server']}: skipped: {r['skipped']}")
        for k, t in r.get("transfers", {}).items():
            errs = [x["error"] for x in t["runs"] if "error" in x]
            if errs:
                notes.append(f"{r['server']}: {k} failed: {errs[0]}")
        s = r.get("sessions", {})
        if s and s.get("completed") != s.get("requested"):
            notes.append(f"{r['server']}: sessions: {s.get('completed')}/{s.get('requested')} "
                         f"completed; {s.get('first_error')}")
        i = r.get("idle", {})
        if i.get("error") or (i and i.get("alive_at_measurement") != i.get("requested")):
            notes.append(f"{r['server']}: idle: {i.get('alive_at_measurement')}/{i.get('requested')} "
                         f"alive; {i.get('error') or i.get('first_error')}")
        if r.get("crashed"):
            notes.append(f"{r['server']}: {r['crashed']}")
    if notes:
        out += ["", "notes:"] + ["  " + n for n in notes]
    return "\n".join(out), ratios


def sha256_cost(binary: Path) -> dict:
    """SHA-256 cost on this CPU, measured by the server's own upload hasher
    (`sluice-server hash-speed`: 1 GiB in upload-sized chunks, CPU seconds)."""
    try:
        p = subprocess.run([str(binary), "hash-speed"], capture_output=True, text=True, timeout=120)
        return json.loads(p.stdout.strip().splitlines()[-1])
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}


def sha_line(sha: dict, results: list[dict]) -> str:
    """The issue-17 budget: sluice's upload CPU/GiB vs the best peer's plus SHA-256."""
    if "cpu_s_per_gib" not in sha:
        return f"SHA-256 cost: not measured ({sha.get('error')})"
    out = [f"SHA-256 on this CPU ({sha.get('implementation', '?')}): {sha['cpu_s_per_gib']:.3f} "
           f"CPU s/GiB ({sha.get('mb_per_s', 0):.0f} MB/s); upload CPU budget = best peer + that:"]
    by = {r["server"]: r for r in results if "skipped" not in r}
    for key in sorted({k for r in by.values() for k in r.get("transfers", {}) if k.endswith("upload")}):
        peers = [r["transfers"][key].get("cpu_s_per_gib") for n, r in by.items()
                 if not n.startswith("sluice") and key in r.get("transfers", {})]
        peers = [p for p in peers if p is not None]
        mine = by.get("sluice", {}).get("transfers", {}).get(key, {}).get("cpu_s_per_gib")
        if peers and mine is not None:
            budget = min(peers) + sha["cpu_s_per_gib"]
            verdict = "within" if mine <= budget else "over"
            out.append(f"  {key}: sluice {mine:.2f} s/GiB, budget {min(peers):.2f} + "
                       f"{sha['cpu_s_per_gib']:.2f} = {budget:.2f}: {verdict}")
            out.append("    " + ceiling_line(key, budget, by))
    return "\n".join(out)


def ceiling_line(key: str, budget: float, by: dict) -> str:
    """What MB/s >= the best peer's demands of the server's CPU on this machine (issue 17).

    When the server CPU that rate leaves (`benchlib.server_cpu_allowed`) is below the CPU
    budget, the budget does not allow the best peer's MB/s on this machine.
    """
    client = by.get("sluice", {}).get("transfers", {}).get(key, {}).get("client_cpu_s_per_gib")
    best = max((r["transfers"][key].get("best_mb_per_s") or 0 for n, r in by.items()
                if not n.startswith("sluice") and key in r.get("transfers", {})), default=0)
    if not client or not best:
        return "CPU needed for the best peer's MB/s: not measured"
    cores, rate, allowed = server_cpu_allowed(best, client)
    verdict = "within the budget" if allowed >= budget else "below the budget"
    return (f"the best peer's {best:.0f} MB/s needs a server CPU of at most {cores} cores / "
            f"{rate:.3f} GiB/s - client {client:.2f} = {allowed:.2f} s/GiB ({verdict})")


def environment(args, bench: Bench) -> dict:
    def first_line(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            return "?"
    cpu = "?"
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                cpu = l.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fstype = first_line(["stat", "-f", "-c", "%T", str(bench.tmp)])
    return {
        "kernel": platform.release(), "cpu": cpu, "nproc": os.cpu_count(),
        "python": platform.python_version(), "openssl_py": ssl.OPENSSL_VERSION,
        "curl": first_line(["curl", "--version"]), "lftp": first_line(["lftp", "--version"]),
        "workdir": str(bench.tmp), "workdir_fs": fstype,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sluice-bin", default=str(REPO / "target/release/sluice-server"))
    ap.add_argument("--peers-dir", default=os.environ.get("SLUICE_PEERS_DIR", "~/.cache/sluice/peers"))
    ap.add_argument("--sluice-before", default=None,
                    help="a second sluice-server binary (e.g. before a change), benchmarked in the "
                         "same run as the column sluice-before (default: not run)")
    ap.add_argument("--servers", default=",".join(ALL_SERVERS),
                    help="comma list from: " + ",".join(ALL_SERVERS))
    ap.add_argument("--tests", default="idle,sessions,transfer", help="comma list: idle,sessions,transfer")
    ap.add_argument("--clients", default="curl,lftp", help="transfer clients: curl,lftp")
    ap.add_argument("--size", default="1G", help="transfer size, e.g. 64M, 1G (default 1G)")
    ap.add_argument("--runs", type=int, default=3,
                    help="runs per transfer: best MB/s and median CPU are reported (default 3)")
    ap.add_argument("--sessions", type=int, default=200, help="sequential login+LIST+QUIT sessions")
    ap.add_argument("--idle", type=int, default=1000, help="idle authenticated sessions held open")
    ap.add_argument("--idle-workers", type=int, default=8, help="threads opening idle sessions")
    ap.add_argument("--phase-timeout", type=float, default=600, help="max seconds for sessions / idle phases")
    ap.add_argument("--workdir", default="/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(),
                    help="where payload, server data and configs live (default /dev/shm, tmpfs)")
    ap.add_argument("--peer-hash", choices=["sha512", "native"], default="sha512",
                    help="peers' password hash: sha512-crypt for all (default) or each tool's "
                         "default (chpasswd: yescrypt, pure-pw: argon2id t=1023)")
    ap.add_argument("--pause", type=float, default=1.5, help="idle seconds before each transfer")
    ap.add_argument("--base-port", type=int, default=22100)
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args()
    args.servers = [s for s in args.servers.split(",") if s]
    if args.sluice_before is None:
        args.servers = [s for s in args.servers if s != "sluice-before"]
    elif "sluice-before" in args.servers and "sluice" in args.servers:
        # right after sluice, so both see the same minutes of the machine's load
        args.servers.remove("sluice-before")
        args.servers.insert(args.servers.index("sluice") + 1, "sluice-before")
    args.tests = [s for s in args.tests.split(",") if s]
    args.clients = [s for s in args.clients.split(",") if s]
    for s in args.servers:
        if s not in SERVER_CLASSES:
            ap.error(f"unknown server {s}")
    for c in args.clients:
        if c not in CLIENTS:
            ap.error(f"unknown client {c}")
    if not 1 <= args.runs <= 10 or not 0 < args.sessions <= 100_000 or not 0 < args.idle <= 4000:
        ap.error("runs 1..10, sessions 1..100000, idle 1..4000")
    if os.geteuid() != 0:
        ap.error("run as root (peers switch to the benchftp user; vsftpd/pure-ftpd need root)")
    for tool in ("curl", "lftp", "openssl"):
        if not shutil.which(tool):
            ap.error(f"{tool} not found")

    # fds: idle sessions hold one socket each on our side; servers inherit the limit
    want = args.idle * 2 + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new_hard = hard if hard == resource.RLIM_INFINITY or hard >= want else want
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, new_hard))
        except (ValueError, OSError) as e:
            log(f"could not raise RLIMIT_NOFILE to {want}: {e}")

    if not set_child_subreaper():
        log("warning: PR_SET_CHILD_SUBREAPER failed; CPU of orphaned session processes may be missed")
    bench = Bench(args)
    results: list[dict] = []

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    sha = sha256_cost(Path(args.sluice_bin))
    try:
        bench.setup()
        env = environment(args, bench)
        log(f"payload {bench.size} bytes on {env['workdir_fs']} ({bench.tmp})")
        for name in args.servers:
            idx = ALL_SERVERS.index(name)
            results.append(bench.bench_server(name, idx))
    finally:
        bench.cleanup()

    load_after = os.getloadavg()
    table, ratios = render_table(results, args)
    print()
    print(f"FTPS benchmark, payload {bench.size / MB:.0f} MB ({bench.size} bytes) on "
          f"{env['workdir_fs']}, {env['nproc']} CPUs, client and server on the same host")
    print(f"load average (1/5/15 min) at start {load_before[0]:.2f}/{load_before[1]:.2f}/"
          f"{load_before[2]:.2f}, at end {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}")
    print(table)
    print()
    print(sha_line(sha, results))
    doc = {
        "started": started.isoformat(), "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
        "args": {k: v for k, v in vars(args).items()}, "payload_bytes": bench.size,
        "environment": env, "results": results, "ratios_sluice_over_best_peer": ratios,
        "load_average": {"start": load_before, "end": load_after}, "sha256": sha,
        "table": table,
    }
    rdir = Path(args.results_dir)
    rdir.mkdir(parents=True, exist_ok=True)
    out = rdir / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
