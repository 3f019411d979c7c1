#!/usr/bin/env python3
"""Hostile-tenant benchmark (issue 12): the victim's login latency and transfer MB/s over FTPS
and SFTP with no attack and under each attack of tests/server/test_isolation.py, in one table.

Every scenario gets a fresh sluice-server (release build if present, else debug) with two
users, `victim` and `mallory`. Mallory's attack (tests/server/hostile.py, the same code the
isolation tests run) is started and kept running; then the victim, from another loopback
address, logs in and uploads and downloads an --size file with a SHA-256 check, over FTPS (curl)
and over SFTP (OpenSSH sftp), --runs times (best run kept). The victim is measured the same way
on the same server just before the attack starts; "% of before" is the victim's worse direction
(upload or download) under attack relative to that. The server's peak RSS over the scenario is
sampled from /proc. Target (issue 12): >= 80 % under every attack.

Bounded in time: each victim step has a deadline (--deadline), attacks have their own, and the
whole run stops starting new scenarios after --budget seconds. A server whose RSS passes
--rss-guard MiB is killed (a runaway allocation must not take the machine down).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "server"))
sys.path.insert(0, str(REPO / "bench"))
from benchlib import pick_binary  # noqa: E402


class NativeVictim:
    """The victim as partners run it: curl (FTPS) and OpenSSH `sftp` (SFTP), in their own
    processes. The attacks run as Python threads in this process; a victim made of Python
    threads too would share their interpreter lock, and the table would measure the lock instead
    of the server. Transfer times exclude the login: curl's `time_pretransfer` to `time_total`,
    and for sftp the time between its batch-mode command echoes (sftp line-buffers stdout)."""

    def __init__(self, work: Path, size: int, key: Path, source: str):
        self.key = key
        self.source = source
        self.payload = work / "victim-payload.bin"
        with open(self.payload, "wb") as f:
            for _ in range(0, size, 1 << 20):
                f.write(os.urandom(min(1 << 20, size)))
        self.size = self.payload.stat().st_size
        self.sha256 = hashlib.sha256(self.payload.read_bytes()).hexdigest()
        self.download = work / "victim-download.bin"

    def _result(self, protocol: str, login: float, up: float, down: float) -> dict:
        got = hashlib.sha256(self.download.read_bytes()).hexdigest()
        self.download.unlink()
        return {
            "protocol": protocol, "login_ms": login * 1000,
            "upload_mbps": self.size / 1e6 / max(up, 1e-6),
            "download_mbps": self.size / 1e6 / max(down, 1e-6),
            "sha256_ok": got == self.sha256,
        }

    def ftps(self, srv, timeout: float = 30) -> dict:
        name = f"victim-{time.monotonic_ns()}.bin"
        base = ["curl", "--silent", "--show-error", "--ssl-reqd", "--cacert", str(srv.cafile),
                "--interface", self.source, "--user", f"victim:{srv.passwords['victim']}",
                "--max-time", str(int(timeout)), "--write-out", "%{time_pretransfer} %{time_total}\\n"]
        url = f"ftp://127.0.0.1:{srv.explicit_port}/"

        def curl(*args: str) -> tuple[float, float]:
            done = subprocess.run([*base, *args], capture_output=True, timeout=timeout + 5)
            if done.returncode != 0:
                raise RuntimeError(f"curl exited {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}")
            pre, total = done.stdout.decode().split()[-2:]
            return float(pre), float(total)

        up_pre, up_total = curl("-T", str(self.payload), url + name)
        down_pre, down_total = curl("-o", str(self.download), "-Q", f"-DELE {name}", url + name)
        return self._result("ftps", up_pre, up_total - up_pre, down_total - down_pre)

    def sftp(self, srv, timeout: float = 30) -> dict:
        name = f"victim-{time.monotonic_ns()}.bin"
        cmd = ["sftp", "-P", str(srv.sftp_port), "-i", str(self.key),
               "-o", f"BindAddress={self.source}", "-o", f"UserKnownHostsFile={srv.known_hosts}",
               "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
               "-o", f"ConnectTimeout={int(timeout)}", "-b", "-", "victim@127.0.0.1"]
        batch = f"pwd\nput {self.payload} {name}\nget {name} {self.download}\nrm {name}\n"
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdin.write(batch.encode())
        proc.stdin.close()
        echoed: dict[str, float] = {}
        for line in proc.stdout:
            if line.startswith(b"sftp> "):
                echoed.setdefault(line[6:].split()[0].decode(), time.monotonic())
        if proc.wait(timeout) != 0 or set(echoed) != {"pwd", "put", "get", "rm"}:
            raise RuntimeError(f"sftp exited {proc.returncode} after {sorted(echoed)}: "
                               f"{proc.stderr.read().decode(errors='replace')[-300:]}")
        return self._result("sftp", echoed["pwd"] - t0, echoed["get"] - echoed["put"],
                            echoed["rm"] - echoed["get"])


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-bin", help="sluice-server binary (default: release, else debug build)")
    ap.add_argument("--size", default="8M", help="victim payload, e.g. 8M (default) or 1M")
    ap.add_argument("--runs", type=int, default=2, help="victim runs per protocol and scenario (best kept)")
    ap.add_argument("--deadline", type=float, default=30, help="seconds for one victim login+upload+download")
    ap.add_argument("--budget", type=float, default=330, help="stop starting scenarios after this many seconds")
    ap.add_argument("--rss-guard", type=float, default=3072, help="kill the server above this RSS (MiB)")
    ap.add_argument("--only", help="comma-separated scenario keys (see --list)")
    ap.add_argument("--list", action="store_true", help="list scenario keys and exit")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--workdir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                    help="where servers keep their files (default /dev/shm: a disk's fsync latency "
                         "would add noise the server does not cause)")
    ap.add_argument("--clients", choices=("native", "python"), default="native",
                    help="victim clients: curl and OpenSSH sftp in their own processes (default), "
                         "or ftplib and paramiko threads in this process (shares the attacks' GIL)")
    args = ap.parse_args()

    binary = pick_binary(args.server_bin)
    os.environ["SLUICE_SERVER_BIN"] = str(binary)  # read by conftest.server_binary()
    import conftest  # noqa: E402 - after SLUICE_SERVER_BIN
    import hostile  # noqa: E402

    size = int(args.size[:-1]) * (1 << 20) if args.size.upper().endswith("M") else int(args.size)
    work = Path(tempfile.mkdtemp(prefix="sluice-hostile-", dir=args.workdir))
    cert = conftest.make_cert(work / "pki")
    keys = [conftest.keygen(work / f"key{i}", f"key{i}") for i in range(5)]
    right_key = Path(str(keys[-1]) + ".pub").read_text().strip()
    victim_key = conftest.keygen(work / "victim-key", "victim")
    native = NativeVictim(work, size, victim_key, hostile.VICTIM_IP)

    def users():
        return [
            conftest.SluiceServer.user("victim", password="victim's long password 1",
                                       sshAuthorizedKeys=[Path(str(victim_key) + ".pub").read_text().strip()]),
            conftest.SluiceServer.user("mallory", password="mallory's long password 2",
                                       sshAuthorizedKeys=[right_key]),
        ]

    # key: (label, attack factory(srv, users) or None, extra server.yaml)
    scenarios = {
        "none": ("no attack", None, {}),
        "handles": ("1 sftp handles 2x4x64", lambda s, u: hostile.SftpHandleFlood(s, deadline=20), {}),
        "argon2": ("2 argon2 m=4TiB reload", lambda s, u: hostile.Argon2Bomb(s, u), {}),
        "control": ("3 ftps control lines", lambda s, u: hostile.FtpsControlFlood(s, flood_bytes=8 << 20), {}),
        "reads": ("4a sftp unread READs", lambda s, u: hostile.SftpReadFlood(s, connections=3, channels=4, reads=320), {}),
        "opendir": ("4b sftp opendir 20k x128", lambda s, u: hostile.SftpOpendirFlood(s, entries=20_000), {}),
        "list": ("4c ftps LIST 40k unread", lambda s, u: hostile.FtpsListFlood(s, entries=40_000, sessions=30),
                 {"limits": {"maxSessionsPerUser": 40}}),
        "http": ("5 http half headers 2000", lambda s, u: hostile.SlowHeadersStream(s, connections=2000), {}),
        "reserved": ("6 reserved names", lambda s, u: hostile.ReservedNamesLoop(s, target="none.bin"), {}),
        "race": ("7 no-overwrite races", lambda s, u: hostile.RaceLoop(s, sessions=8, size=1 << 20), {}),
        # The same attack with the per-user session pacing effectively off (the server before
        # limits.newSessionsPerUserPerSecond), for a side-by-side row in one run.
        "race-unpaced": ("7 races, pacing off", lambda s, u: hostile.RaceLoop(s, sessions=8, size=1 << 20),
                         {"limits": {"newSessionsPerUserPerSecond": 100000, "newSessionBurstPerUser": 100000}}),
        "keys": ("8 five key offers", lambda s, u: hostile.KeyOffers(s, keys, work), {}),
        "home": ("9 home moved by reloads", lambda s, u: hostile.HomeFlip(s, u), {}),
        "rate": ("10 60 conn/s per port", lambda s, u: hostile.ConnectionRate(s, per_port=60),
                 {"limits": {"maxSessionsPerIp": 300, "maxSessions": 600}}),
    }
    if args.list:
        for key, (label, _, _) in scenarios.items():
            print(f"{key:10} {label}")
        return 0
    keys_wanted = list(scenarios) if not args.only else ["none"] + [k for k in args.only.split(",") if k != "none"]

    print(f"sluice-server: {binary}", file=sys.stderr)
    started = time.monotonic()
    rows: list[dict] = []
    for index, key in enumerate(keys_wanted):
        label, factory, extra = scenarios[key]
        if time.monotonic() - started > args.budget:
            rows.append({"attack": label, "protocol": "-", "error": "skipped: --budget reached"})
            continue
        root = work / f"s{index}-{key}"
        base_config = {"limits": {"maxSessions": 400, "maxSessionsPerIp": 100, "maxSessionsPerUser": 40}}
        srv = conftest.SluiceServer(root, cert, users(), conftest.deep_merge(base_config, extra))
        for name in ("victim", "mallory"):
            srv.make_home(name)
        attack = None
        notes: dict = {}
        t0 = time.monotonic()
        try:
            srv.start()
        except BaseException as exc:  # noqa: BLE001 - pytest.fail outside pytest
            rows.append({"attack": label, "protocol": "-", "error": f"server did not start: {exc}"})
            srv.stop()
            continue
        print(f"[{time.monotonic() - started:5.0f}s] {label}", file=sys.stderr, flush=True)
        sampler = hostile.Sampler(srv.proc.pid, kill_above_mib=args.rss_guard).__enter__()
        if args.clients == "native":
            victims = (("ftps", lambda s, **_: native.ftps(s, timeout=args.deadline)),
                       ("sftp", lambda s, **_: native.sftp(s, timeout=args.deadline)))
        else:
            victims = (("ftps", lambda s, **kw: hostile.victim_ftps(s, size=size, **kw)),
                       ("sftp", lambda s, **kw: hostile.victim_sftp(s, size=size, **kw)))

        def measure() -> dict[str, dict]:
            """Best of --runs per protocol, or {"error": ...}."""
            out = {}
            for proto, fn in victims:
                best = None
                error = None
                for _ in range(args.runs):
                    try:
                        r = hostile.served(fn, srv, deadline=args.deadline * 4)
                        if best is None or r["upload_mbps"] + r["download_mbps"] > best["upload_mbps"] + best["download_mbps"]:
                            best = r
                    except AssertionError as exc:
                        cause = exc.__cause__
                        error = "not served" + (f": {type(cause).__name__}" if cause else
                                                f" within {args.deadline:.0f} s")
                        if not srv.alive():
                            break
                out[proto] = best if best is not None else {"error": error or "not served"}
            return out

        try:
            # Warm-up (page cache, first TLS/SSH handshakes), not measured; then the victim on
            # this same server before the attack: the baseline each row is compared with, so
            # that run-to-run drift between servers is not counted as the attack's effect.
            for _, fn in victims:
                try:
                    hostile.served(fn, srv, deadline=args.deadline * 4)
                except AssertionError:
                    pass
            own, server_cpu, wall = os.times(), cpu_seconds(srv.proc.pid), time.monotonic()
            before = measure()
            wall = time.monotonic() - wall
            notes["server_cores_before"] = round((cpu_seconds(srv.proc.pid) - server_cpu) / wall, 2)
            if factory is not None:
                attack = factory(srv, srv.users)
                attack.prepare()
                try:
                    attack.start()
                except Exception as exc:  # noqa: BLE001 - the server's refusal is a result too
                    notes["attack_error"] = f"{type(exc).__name__}: {exc}"[:160]
                time.sleep(1)
                # What the attack's own client (threads of this process; the victim's clients
                # are subprocesses) and the server burn while the victim is measured: on this
                # one machine the attacker's client takes cores a real attacker's would not.
                own, server_cpu, wall = os.times(), cpu_seconds(srv.proc.pid), time.monotonic()
                rounds = len(getattr(attack, "outcomes", []))
                during = measure()
                rounds = len(getattr(attack, "outcomes", [])) - rounds
                wall = time.monotonic() - wall
                own_now = os.times()
                notes["attacker_client_cores"] = round(
                    (own_now.user + own_now.system - own.user - own.system) / wall, 2)
                notes["server_cores"] = round((cpu_seconds(srv.proc.pid) - server_cpu) / wall, 2)
                if rounds:
                    notes["attack_rounds_per_second"] = round(rounds / wall, 2)
            else:
                during = before
            for proto, _ in victims:
                row = {"attack": label, "protocol": proto}
                if "error" in during[proto]:
                    row["error"] = during[proto]["error"]
                else:
                    row.update({k: during[proto][k] for k in ("login_ms", "upload_mbps", "download_mbps")})
                if "error" not in before[proto]:
                    row["base_upload_mbps"] = before[proto]["upload_mbps"]
                    row["base_download_mbps"] = before[proto]["download_mbps"]
                rows.append(row)
        finally:
            if attack is not None:
                notes.update({k: v for k, v in attack.notes.items() if not isinstance(v, (list, dict))})
                try:
                    attack.stop()
                except Exception:  # noqa: BLE001
                    pass
            sampler.__exit__(None, None, None)
            alive = srv.alive()
            srv.stop()
        for row in rows:
            if row["attack"] == label:
                row["rss_mib"] = sampler.peak_rss
                row["server"] = "alive" if alive else ("killed by --rss-guard" if sampler.killed else "died")
                row["notes"] = notes
                row["seconds"] = time.monotonic() - t0
                if "base_upload_mbps" in row and "upload_mbps" in row:
                    row["pct"] = 100 * min(row["upload_mbps"] / row["base_upload_mbps"],
                                           row["download_mbps"] / row["base_download_mbps"])

    # ---- the table ----------------------------------------------------------------------------
    head = ["attack", "proto", "victim login ms", "upload MB/s", "download MB/s", "before attack up/down",
            "% of before", "server RSS MiB", "cores: attack client / server"]
    lines = []
    for r in rows:
        if "error" in r:
            cells = [r["attack"], r["protocol"], "-", "-", "-", "-", r["error"], f"{r.get('rss_mib', 0):.0f}", "-"]
        else:
            pct = f"{r['pct']:.0f} %" if "pct" in r else "-"
            before = (f"{r['base_upload_mbps']:.0f} / {r['base_download_mbps']:.0f}"
                      if "base_upload_mbps" in r else "-")
            cells = [r["attack"], r["protocol"], f"{r['login_ms']:.0f}", f"{r['upload_mbps']:.1f}",
                     f"{r['download_mbps']:.1f}", before, pct, f"{r['rss_mib']:.0f}"]
            notes = r.get("notes", {})
            cells.append(f"{notes['attacker_client_cores']:.2f} / {notes['server_cores']:.2f}"
                         f" (before {notes['server_cores_before']:.2f})"
                         if "server_cores" in notes else "-")
        if r.get("server") not in (None, "alive"):
            cells[7] += f" ({r['server']})"
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    clients = "curl and OpenSSH sftp" if args.clients == "native" else "ftplib and paramiko"
    print(f"\nvictim: {size / (1 << 20):g} MiB up + down with SHA-256 ({clients}), best of {args.runs}; "
          f"server {binary.parent.name} build; peak RSS over the scenario\n")
    print(fmt(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for cells in lines:
        print(fmt(cells))
    worst = [r["pct"] for r in rows if "pct" in r and r["attack"] != "no attack"]
    failed = [r for r in rows if "error" in r]
    print(f"\nworst % of before-attack throughput under attack: {min(worst):.0f} %" if worst else "")
    if failed:
        print(f"victim not served in {len(failed)} row(s)")
    print(f"total {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"binary": str(binary), "size": size, "rows": rows}, indent=1, default=str))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
