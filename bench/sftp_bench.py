#!/usr/bin/env python3
"""SFTP benchmark: sluice-server vs OpenSSH's internal-sftp, same client, same machine, same run.

Starts each server in turn on 127.0.0.1 (sluice with a generated config; a second sshd from the
openssh-server Debian package in the foreground with its own config, host key and
`ForceCommand internal-sftp`), then measures with OpenSSH's `sftp` client:

1. upload and download of one `--size` file (default 1 GiB), MB/s (best of `--runs`);
2. server CPU seconds per GiB (utime+stime of the server's process tree, exited session
   processes through cutime/cstime);
3. memory for `--idle` idle authenticated SFTP sessions (paramiko), PSS summed over the
   server's process tree, per session.

Prints a table with `sluice / openssh` ratios and writes bench/results/sftp-<UTC>.json.
Run as root (sshd needs it). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import children_cpu_seconds, server_cpu_allowed

REPO = Path(__file__).resolve().parents[1]
USER = "sluicebench"


def log(msg: str) -> None:
    print(f"[sftp-bench] {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_ticks(root: int) -> dict[int, int]:
    """utime+stime per process of the tree; the root also counts its reaped children."""
    out = {}
    for pid in tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = sum(int(x) for x in fields[11:15 if pid == root else 13])
    return out


class CpuMeter:
    """Server CPU during a transfer. sshd's listener reaps session processes without their
    times reaching its cutime, so every process of the tree is sampled every 50 ms and its
    last seen utime+stime counted (a session process's final <50 ms may be missed)."""

    def __init__(self, root: int):
        self.root = root
        self.first = cpu_ticks(root)
        self.last = dict(self.first)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.wait(0.05):
            self.last.update(cpu_ticks(self.root))

    def seconds(self) -> float:
        self.stop_event.set()
        self.thread.join()
        self.last.update(cpu_ticks(self.root))
        ticks = sum(v - self.first.get(pid, 0) for pid, v in self.last.items())
        return ticks / os.sysconf("SC_CLK_TCK")


def pss_kib(root: int) -> int:
    total = 0
    for pid in tree(root):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers SSH on port {port}")


class Server:
    name = ""

    def __init__(self, work: Path, port: int, client_key: Path, data: Path):
        self.work, self.port, self.client_key, self.data = work, port, client_key, data
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            pids = tree(self.proc.pid)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def remote(self, name: str) -> str:
        raise NotImplementedError

    def local(self, name: str) -> Path:
        raise NotImplementedError


class Sluice(Server):
    name = "sluice"

    def __init__(self, *args, binary: Path, idle: int):
        super().__init__(*args)
        self.binary, self.idle = binary, idle

    def start(self) -> None:
        # One directory per column: sluice and sluice-before must not share (or collide on)
        # host keys and configs.
        etc = self.work / self.name
        etc.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(etc / "host_ed25519")], check=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(etc / "tls.key"), "-out", str(etc / "tls.crt"), "-days", "2",
                        "-subj", "/CN=localhost"], check=True, capture_output=True)
        cap = self.idle + 100
        (etc / "server.yaml").write_text(f"""apiVersion: sluice.dev/v1alpha1
kind: ServerConfig
dataRoot: {self.data}
usersFile: users.yaml
listeners:
  sftp: 127.0.0.1:{self.port}
tls: {{certFile: tls.crt, keyFile: tls.key}}
limits: {{maxSessions: {cap}, maxSessionsPerIp: {cap}, maxSessionsPerUser: {cap}}}
timeouts: {{idleSeconds: 900}}
audit: {{stdout: false}}
ssh: {{hostKeyFiles: [host_ed25519]}}
""")
        key = Path(str(self.client_key) + ".pub").read_text().strip()
        (etc / "users.yaml").write_text(f"""apiVersion: sluice.dev/v1alpha1
kind: UserList
users:
  - username: {USER}
    home: {USER}
    sshAuthorizedKeys: ['{key}']
    permissions: [list, download, upload, overwrite, delete, rename, mkdir, rmdir]
""")
        self.proc = subprocess.Popen([str(self.binary), "run", "--config", str(etc / "server.yaml")],
                                     stdout=subprocess.DEVNULL, stderr=open(etc / "stderr.log", "wb"))
        wait_port(self.port)

    def remote(self, name: str) -> str:
        return f"/{name}"

    def local(self, name: str) -> Path:
        return self.data / USER / name


class OpenSSH(Server):
    name = "openssh"

    def start(self) -> None:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not Path(sshd).exists():
            raise RuntimeError("sshd not found: apt-get install openssh-server")
        etc = self.work / "openssh"
        etc.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(etc / "host_ed25519")], check=True)
        keys = etc / "authorized_keys"
        keys.write_text(Path(str(self.client_key) + ".pub").read_text())
        home = self.data / USER
        (etc / "sshd_config").write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {etc / 'host_ed25519'}
PidFile none
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile {keys}
PermitRootLogin no
AllowUsers {USER}
X11Forwarding no
AllowTcpForwarding no
PermitTTY no
MaxStartups 1000:30:2000
MaxSessions 10
ClientAliveInterval 0
Subsystem sftp internal-sftp
ForceCommand internal-sftp -d {home}
LogLevel ERROR
""")
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(etc / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(etc / "stderr.log", "wb"))
        wait_port(self.port)

    def remote(self, name: str) -> str:
        return str(self.data / USER / name)

    def local(self, name: str) -> Path:
        return self.data / USER / name


def ensure_user(data: Path) -> None:
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
    # useradd leaves the password "!" (locked), and sshd without PAM refuses locked accounts;
    # "*" means "no password" without locking key logins out.
    subprocess.run(["usermod", "-p", "*", USER], check=True)
    home = data / USER
    home.mkdir(parents=True, exist_ok=True)
    shutil.chown(home, USER, USER)


# `--request-size`: extra options of every `sftp` client run (`-B N`), empty by default.
SFTP_CLIENT_OPTIONS: list[str] = []


def sftp(server: Server, batch: str, cipher: str | None, timeout: float) -> tuple[float, float]:
    """Runs one `sftp -b` batch; returns (seconds, client CPU seconds of sftp plus its ssh)."""
    cmd = ["sftp", "-q", "-b", "-", "-i", str(server.client_key), "-P", str(server.port),
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
           "-o", "IdentityAgent=none", "-o", "LogLevel=ERROR"]
    if cipher:
        cmd += ["-c", cipher]
    cmd += SFTP_CLIENT_OPTIONS
    cmd.append(f"{USER}@127.0.0.1")
    client0 = children_cpu_seconds()
    start = time.monotonic()
    proc = subprocess.run(cmd, input=batch, capture_output=True, text=True, timeout=timeout)
    elapsed = time.monotonic() - start
    client_cpu = children_cpu_seconds() - client0
    if proc.returncode != 0:
        logs = sorted(server.work.glob("*/stderr.log"))
        tail = "\n".join(p.read_text(errors="replace")[-1500:] for p in logs)
        raise RuntimeError(f"sftp failed against {server.name}: {proc.stderr.strip()}\n{tail}")
    return elapsed, client_cpu


def transfers(server: Server, payload: Path, size: int, runs: int, cipher: str | None, pause: float) -> dict:
    result: dict = {}
    for direction in ("upload", "download"):
        best, cpu, client = None, [], []
        for _ in range(runs):
            target = server.local("payload.bin")
            if direction == "download" and not target.exists():
                sftp(server, f"put {payload} {server.remote('payload.bin')}\n", cipher, 3600)
            time.sleep(pause)
            meter = CpuMeter(server.proc.pid)
            if direction == "upload":
                batch = f"put {payload} {server.remote('payload.bin')}\n"
            else:
                batch = f"get {server.remote('payload.bin')} /dev/null\n"
            elapsed, client_cpu = sftp(server, batch, cipher, 3600)
            cpu.append(meter.seconds())
            client.append(client_cpu)
            if direction == "upload":
                assert target.stat().st_size == size, "upload size mismatch"
            mbps = size / elapsed / 1e6
            best = mbps if best is None else max(best, mbps)
            log(f"{server.name} {direction}: {mbps:.0f} MB/s, server CPU {cpu[-1]:.2f} s, "
                f"client CPU {client_cpu:.2f} s")
        gib = size / (1 << 30)
        # Median, not mean: one run slowed by a neighbour on the host would otherwise move it.
        result[direction] = {"mb_per_s": best, "cpu_s_per_gib": statistics.median(cpu) / gib,
                             "client_cpu_s_per_gib": statistics.median(client) / gib}
    return result


def ceiling_lines(sluice: dict, openssh: dict) -> list[str]:
    """What 1.5x OpenSSH's MB/s demands of the server's CPU on this machine (issue 17).

    The client is `sftp` and the `ssh` it runs; `benchlib.server_cpu_allowed` says what the
    rate leaves for the server.
    """
    lines = []
    for direction in ("upload", "download"):
        mine, theirs = sluice.get(direction, {}), openssh.get(direction, {})
        client, rate, now = (mine.get("client_cpu_s_per_gib"), theirs.get("mb_per_s"),
                             mine.get("cpu_s_per_gib"))
        if not (client and rate and now):
            continue
        cores, target_gib_per_s, allowed = server_cpu_allowed(1.5 * rate, client)
        lines.append(f"{direction}: 1.5x OpenSSH = {1.5 * rate:.0f} MB/s needs a server CPU of at most "
                     f"{cores} cores / {target_gib_per_s:.3f} GiB/s - client {client:.2f} = {allowed:.2f} "
                     f"s/GiB with this client (sluice: {now:.2f})")
    return lines


def idle_memory(server: Server, count: int, threads: int = 8) -> dict:
    import paramiko

    key = paramiko.Ed25519Key(filename=str(server.client_key))
    held: list = []
    lock = threading.Lock()

    def connect() -> None:
        t = paramiko.Transport(("127.0.0.1", server.port))
        t.start_client(timeout=30)
        t.auth_publickey(USER, key)
        client = paramiko.SFTPClient.from_transport(t)
        client.listdir(server.remote(""))
        with lock:
            held.append((t, client))

    connect()
    time.sleep(1)
    baseline = pss_kib(server.proc.pid)
    errors = 0

    def worker(n: int) -> None:
        nonlocal errors
        for _ in range(n):
            try:
                connect()
            except Exception:  # noqa: BLE001 - counted
                errors += 1

    per = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    pool = [threading.Thread(target=worker, args=(n,)) for n in per]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    time.sleep(2)
    alive = sum(1 for t, _ in held if t.is_active())
    total = pss_kib(server.proc.pid)
    for t, _ in held:
        t.close()
    return {"sessions": alive, "errors": errors, "pss_kib_total": total,
            "kib_per_session": (total - baseline) / max(alive - 1, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1G")
    parser.add_argument("--runs", type=int, default=3, help="best MB/s and median CPU of N runs (default 3)")
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--cipher", default=None, help="e.g. aes128-gcm@openssh.com (default: negotiated)")
    parser.add_argument("--request-size", type=int, default=None,
                        help="bytes per READ/WRITE the sftp client asks for (-B; default: what the "
                             "server's limits@openssh.com allows: 255 KiB for OpenSSH, 64 KiB reads "
                             "for sluice)")
    parser.add_argument("--servers", default="sluice,openssh")
    parser.add_argument("--tests", default="transfer,idle")
    parser.add_argument("--sluice-bin", default=str(REPO / "target" / "release" / "sluice-server"))
    parser.add_argument("--sluice-before", default=None,
                        help="a second sluice-server binary (e.g. before a change), run right after "
                             "sluice in the same run as the column sluice-before")
    parser.add_argument("--workdir", default="/dev/shm")
    parser.add_argument("--base-port", type=int, default=22800)
    parser.add_argument("--pause", type=float, default=1.5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        log("run as root (sshd needs it)")
        return 2
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="sftp-bench-", dir=args.workdir))
    work.chmod(0o755)  # sshd reads authorized_keys and enters the home as the bench user
    if args.request_size:
        SFTP_CLIENT_OPTIONS[:] = ["-B", str(args.request_size)]
    results: dict = {"request_size": args.request_size, "load_average_start": os.getloadavg(), "size": size, "runs": args.runs, "idle": args.idle, "cipher": args.cipher,
                     "client": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
                     "servers": {}}
    servers: list[Server] = []
    try:
        client_key = work / "client_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key)], check=True)
        payload = work / "payload.src"
        log(f"writing {size} byte payload")
        with open(payload, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
            f.write(chunk[: size & ((1 << 20) - 1)])
        names = args.servers.split(",")
        if args.sluice_before and "sluice" in names and "sluice-before" not in names:
            names.insert(names.index("sluice") + 1, "sluice-before")
        for index, name in enumerate(names):
            data = work / f"data-{name}"
            data.mkdir()
            ensure_user(data)
            port = args.base_port + index
            if name.startswith("sluice"):
                binary = Path(args.sluice_bin if name == "sluice" else args.sluice_before)
                server: Server = Sluice(work, port, client_key, data, binary=binary, idle=args.idle)
                server.name = name
            else:
                server = OpenSSH(work, port, client_key, data)
            servers.append(server)
            try:
                server.start()
            except Exception as error:  # noqa: BLE001 - reported
                log(f"{name}: cannot start: {error}")
                results["servers"][name] = {"error": str(error)}
                continue
            entry: dict = {}
            if name == "openssh":
                entry["version"] = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
            if "transfer" in args.tests:
                entry.update(transfers(server, payload, size, args.runs, args.cipher, args.pause))
                server.local("payload.bin").unlink(missing_ok=True)
            if "idle" in args.tests:
                entry["idle"] = idle_memory(server, args.idle)
                log(f"{name} idle: {entry['idle']}")
            results["servers"][name] = entry
            server.stop()
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()
    s, o = results["servers"].get("sluice", {}), results["servers"].get("openssh", {})
    before = results["servers"].get("sluice-before")
    rows = []
    for label, key, sub in [("upload MB/s (higher better)", "upload", "mb_per_s"),
                            ("download MB/s (higher better)", "download", "mb_per_s"),
                            ("upload server CPU s/GiB (lower better)", "upload", "cpu_s_per_gib"),
                            ("download server CPU s/GiB (lower better)", "download", "cpu_s_per_gib"),
                            ("upload client CPU s/GiB (same client)", "upload", "client_cpu_s_per_gib"),
                            ("download client CPU s/GiB (same client)", "download", "client_cpu_s_per_gib"),
                            ("idle session PSS KiB (lower better)", "idle", "kib_per_session")]:
        a, b = s.get(key, {}).get(sub), o.get(key, {}).get(sub)
        ratio = f"{a / b:.2f}x" if a and b else "-"
        c = (before or {}).get(key, {}).get(sub)
        rows.append((label, f"{a:.2f}" if a is not None else "-", f"{b:.2f}" if b is not None else "-", ratio,
                     f"{c:.2f}" if c is not None else "-"))
    start, end = results["load_average_start"], results["load_average_end"]
    print(f"load average (1/5/15 min) at start {start[0]:.2f}/{start[1]:.2f}/{start[2]:.2f}, "
          f"at end {end[0]:.2f}/{end[1]:.2f}/{end[2]:.2f}")
    extra = f" {'sluice-before':>14}" if before is not None else ""
    print(f"{'metric':44} {'sluice':>10} {'openssh':>10} {'sluice/openssh':>15}{extra}")
    for row in rows:
        extra = f" {row[4]:>14}" if before is not None else ""
        print(f"{row[0]:44} {row[1]:>10} {row[2]:>10} {row[3]:>15}{extra}")
    for line in ceiling_lines(s, o):
        print(line)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / time.strftime("sftp-%Y%m%dT%H%M%SZ.json", time.gmtime())
    path.write_text(json.dumps(results, indent=2))
    log(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
