#!/usr/bin/env python3
"""File events benchmark (issue 18): what events cost and how fast they flow.

1. events/s end to end: N small uploads over S concurrent FTPS sessions against a release
   sluice-server whose webhook sink points at an HTTPS receiver in this process (verifying
   every HMAC signature); the rate is N / (time of the last event received - time of the
   first upload). The upload rate without events is measured the same way for comparison.
2. the throughput cost of events on large uploads: one file (default 1 GiB) uploaded with curl
   to the same server with events off and on (webhook sink running), alternating (off-on,
   on-off, ...), best and median of --runs; the cost is 1 - on/off.

The outbox is put on disk (--outbox-dir, default under the system temp dir), where its fsync
costs what it costs in production; the data root is in --workdir (default /dev/shm, like
bench/ftps_bench.py) so the disk is not the bottleneck of the large uploads.

Only the standard library, curl and openssl are needed:
    cargo build --release -p sluice-server
    python3 bench/events/events_bench.py                 # about 3 minutes on 2 cores
    python3 bench/events/events_bench.py --events 500 --size 256M --runs 1   # quick
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.server
import io
import json
import os
import shutil
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "bench"))
from ftps_bench import ReusingFTP_TLS, parse_size, tls_context  # noqa: E402  (the shared client)

PASSWORD = "events bench password 0123456789"
SECRET = b"events-bench-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def pki(directory: Path) -> dict[str, Path]:
    """A CA, a leaf for 127.0.0.1 signed by it (the receiver) and the server's self-signed pair."""
    directory.mkdir(parents=True, exist_ok=True)
    p = {n: directory / n for n in ("ca.crt", "ca.key", "hook.crt", "hook.key", "hook.csr",
                                    "server.crt", "server.key", "ext.cnf")}
    p["ext.cnf"].write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", str(p["ca.key"]), "-out", str(p["ca.crt"]), "-days", "2",
            "-subj", "/CN=bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign")
    openssl("req", *ec, "-keyout", str(p["hook.key"]), "-out", str(p["hook.csr"]), "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", str(p["hook.csr"]), "-CA", str(p["ca.crt"]), "-CAkey", str(p["ca.key"]),
            "-CAcreateserial", "-out", str(p["hook.crt"]), "-days", "2", "-extfile", str(p["ext.cnf"]))
    openssl("req", "-x509", *ec, "-keyout", str(p["server.key"]), "-out", str(p["server.crt"]),
            "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1")
    return p


class Receiver:
    """HTTPS webhook receiver: verifies each signature, records (arrival time, event)."""

    def __init__(self, crt: Path, key: Path):
        self.port = free_port()
        self.events: list[tuple[float, dict]] = []
        self.bad = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                parts = dict(p.split("=", 1) for p in self.headers.get("sluice-signature", "").split(",") if "=" in p)
                want = hmac.new(SECRET, parts.get("t", "").encode() + b"." + body, hashlib.sha256).hexdigest()
                ok = hmac.compare_digest(want, parts.get("v1", ""))
                with receiver.lock:
                    if ok:
                        receiver.events.append((time.monotonic(), json.loads(body)))
                    else:
                        receiver.bad += 1
                self.send_response(204 if ok else 401)
                self.send_header("content-length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def uploads(self) -> list[tuple[float, dict]]:
        with self.lock:
            return [(t, e) for t, e in self.events if e["type"] == "dev.sluice.file.uploaded"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Server:
    def __init__(self, binary: Path, root: Path, certs: dict[str, Path], events: dict | None):
        self.binary, self.root = binary, root
        self.port, self.health = free_port(), free_port()
        start = free_port()
        data = root / "data"
        (data / "bench").mkdir(parents=True, exist_ok=True)
        phash = subprocess.run([str(binary), "hash-password"], input=PASSWORD, capture_output=True,
                               text=True, check=True).stdout.strip().splitlines()[-1]
        (root / "users.yaml").write_text(
            "apiVersion: sluice.dev/v1alpha1\nkind: UserList\nusers:\n"
            f"  - username: bench\n    passwordHash: {json.dumps(phash)}\n    home: bench\n"
            "    permissions: [list, download, upload, overwrite, delete, rename, mkdir, rmdir]\n")
        config = {
            "apiVersion": "sluice.dev/v1alpha1", "kind": "ServerConfig", "dataRoot": str(data),
            "usersFile": "users.yaml",
            "listeners": {"ftpsExplicit": f"127.0.0.1:{self.port}", "health": f"127.0.0.1:{self.health}"},
            "tls": {"certFile": str(certs["server.crt"]), "keyFile": str(certs["server.key"])},
            "passive": {"portStart": start, "portEnd": start + 40},
            "audit": {"stdout": False},
            "limits": {"maxSessions": 500, "maxSessionsPerIp": 500, "maxSessionsPerUser": 500},
        }
        if events:
            config["events"] = events
        (root / "server.yaml").write_text(json.dumps(config))  # JSON is YAML
        self.log = open(root / "server.log", "wb")
        self.proc = subprocess.Popen([str(binary), "run", "--config", str(root / "server.yaml")],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"sluice-server did not get ready: {(root / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def small_uploads(srv: Server, count: int, sessions: int, tag: str) -> float:
    """`count` 1 KiB uploads over `sessions` FTPS sessions, logged in first (argon2 is not what
    is measured); returns the time the first upload started."""
    payload = os.urandom(1024)
    per = [count // sessions + (1 if i < count % sessions else 0) for i in range(sessions)]
    errors: list[str] = []
    barrier = threading.Barrier(sessions + 1)

    def worker(index: int, n: int) -> None:
        ftp = None
        try:
            ftp = ReusingFTP_TLS(context=tls_context(), timeout=60)
            ftp.connect("127.0.0.1", srv.port)
            ftp.login("bench", PASSWORD)
            ftp.prot_p()
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
        barrier.wait()
        if ftp is None or errors:
            return
        try:
            for k in range(n):
                ftp.storbinary(f"STOR {tag}-{index}-{k}.bin", io.BytesIO(payload))
            ftp.quit()
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i, n)) for i, n in enumerate(per)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.monotonic()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"uploads failed: {errors[:3]}")
    return start


def curl_upload(srv: Server, path: Path, remote: str) -> float:
    out = subprocess.run(
        ["curl", "--ssl-reqd", "-k", "-sS", "--ftp-pasv", "--user", f"bench:{PASSWORD}", "-T", str(path),
         "-w", "%{size_upload} %{time_pretransfer} %{time_total}", f"ftp://127.0.0.1:{srv.port}/{remote}"],
        capture_output=True, text=True, check=True, timeout=600).stdout.split()
    size, pre, total = int(out[0]), float(out[1]), float(out[2])
    return size / (total - pre) / 1e6


def nats_rate(args, binary: Path, work: Path, certs: dict[str, Path], outbox_parent: Path) -> float:
    """The same small uploads with a NATS JetStream sink: N / (last message stored - start)."""
    import asyncio

    import nats  # nats-py, tests/requirements.txt

    port = free_port()
    conf = work / "nats.conf"
    conf.write_text(f"listen: 127.0.0.1:{port}\njetstream {{ store_dir: {json.dumps(str(work / 'js'))} }}\n")
    proc = subprocess.Popen([args.nats_server, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        async def js_call(fn):
            for _ in range(100):
                try:
                    nc = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=1,
                                            allow_reconnect=False)
                    break
                except Exception:  # noqa: BLE001 (still starting)
                    await asyncio.sleep(0.1)
            try:
                return await fn(nc.jetstream())
            finally:
                await nc.close()

        asyncio.run(js_call(lambda js: js.add_stream(name="BENCH", subjects=["bench.events"])))
        events = {"outboxDir": str(outbox_parent / "nats"), "nats": [{
            "name": "bus", "url": f"nats://127.0.0.1:{port}", "subject": "bench.events",
            "stream": "BENCH", "initialBackoffMs": 100, "maxBackoffMs": 1000}]}
        srv = Server(binary, work / "nats-on", certs, events)
        try:
            start = small_uploads(srv, args.events, args.sessions, "small")

            async def count(js):
                return (await js.stream_info("BENCH")).state.messages

            deadline = time.monotonic() + 600
            stored = 0
            while time.monotonic() < deadline:
                stored = asyncio.run(js_call(count))
                if stored >= args.events:
                    break
                time.sleep(0.05)
            return round(stored / (time.monotonic() - start), 1)
        finally:
            srv.stop()
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sluice-bin", default=str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
                                                / "release" / "sluice-server"))
    ap.add_argument("--events", type=int, default=2000, help="small uploads for the events/s run")
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--size", default="1G", help="large upload size (K/M/G)")
    ap.add_argument("--runs", type=int, default=2, help="large uploads per mode (best counts)")
    ap.add_argument("--workdir", default="/dev/shm")
    ap.add_argument("--outbox-dir", default=None, help="default: a directory under the system temp dir")
    ap.add_argument("--nats-server", default=os.environ.get("SLUICE_NATS_SERVER"),
                    help="nats-server binary (tests/server/install-nats-server.sh): also measure the "
                         "NATS JetStream sink (needs nats-py)")
    args = ap.parse_args()
    binary = Path(args.sluice_bin)
    if not os.access(binary, os.X_OK):
        print(f"{binary} missing: cargo build --release -p sluice-server", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="sluice-events-bench-", dir=args.workdir))
    outbox_parent = Path(tempfile.mkdtemp(prefix="sluice-events-outbox-", dir=args.outbox_dir))
    certs = pki(work / "pki")
    (work / "hmac").write_bytes(SECRET)
    receiver = Receiver(certs["hook.crt"], certs["hook.key"])
    results: dict = {"machine": {"cpus": os.cpu_count(), "workdir": args.workdir,
                                 "outbox": str(outbox_parent)}}
    try:
        def events_config(name: str) -> dict:
            return {"outboxDir": str(outbox_parent / name), "webhooks": [{
                "name": "bench", "url": f"https://127.0.0.1:{receiver.port}/hook",
                "caFile": str(certs["ca.crt"]), "secretFile": str(work / "hmac"),
                "initialBackoffMs": 100, "maxBackoffMs": 1000}]}

        # 1. events/s end to end, and the same uploads without events.
        off = Server(binary, work / "off", certs, None)
        start = small_uploads(off, args.events, args.sessions, "small")
        off_rate = args.events / (time.monotonic() - start)
        off.stop()
        on = Server(binary, work / "on", certs, events_config("on"))
        start = small_uploads(on, args.events, args.sessions, "small")
        uploaded_at = time.monotonic()
        deadline = uploaded_at + 600
        while len(receiver.uploads()) < args.events and time.monotonic() < deadline:
            time.sleep(0.05)
        got = receiver.uploads()
        last = max(t for t, _ in got)
        results["small_uploads"] = {
            "events": args.events, "sessions": args.sessions, "received": len(got),
            "unique_ids": len({e["id"] for _, e in got}), "bad_signatures": receiver.bad,
            "uploads_per_s_events_off": round(off_rate, 1),
            "uploads_per_s_events_on": round(args.events / (uploaded_at - start), 1),
            "events_per_s_end_to_end": round(len(got) / (last - start), 1),
        }
        on.stop()
        if args.nats_server:
            results["small_uploads"]["events_per_s_end_to_end_nats"] = nats_rate(
                args, binary, work, certs, outbox_parent)

        # 2. the cost on large uploads: off and on alternating, best of --runs.
        size = parse_size(args.size)
        big = work / "big.bin"
        with open(big, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
        speeds: dict[str, list[float]] = {"off": [], "on": []}
        for run in range(args.runs):
            # The order alternates too: the run after another inherits its disk work.
            for mode in ("off", "on") if run % 2 == 0 else ("on", "off"):
                root = work / f"big-{mode}-{run}"
                srv = Server(binary, root, certs, events_config(f"big-{run}") if mode == "on" else None)
                try:
                    speeds[mode].append(curl_upload(srv, big, "big.bin"))
                finally:
                    srv.stop()
                    shutil.rmtree(root / "data", ignore_errors=True)
        best_off, best_on = max(speeds["off"]), max(speeds["on"])
        results["large_upload"] = {
            "bytes": size, "runs": args.runs,
            "mb_per_s_events_off": [round(s, 1) for s in speeds["off"]],
            "mb_per_s_events_on": [round(s, 1) for s in speeds["on"]],
            "best_off": round(best_off, 1), "best_on": round(best_on, 1),
            "median_off": round(statistics.median(speeds["off"]), 1),
            "median_on": round(statistics.median(speeds["on"]), 1),
            "cost_percent_best": round(100 * (1 - best_on / best_off), 2),
        }
    finally:
        receiver.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(outbox_parent, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
