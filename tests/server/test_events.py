"""File events (docs/events.md): a real HTTPS receiver, with its own CA, that verifies the
HMAC signature of every CloudEvent it gets, against the real server driven by real FTPS and
SFTP clients. Completed uploads are delivered (also after the receiver was down, and across
SIGKILLs of the server); failed, aborted and refused uploads never produce an upload event.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

SECRET = "events-test-secret-0123456789abcdef"
UPLOADED = "dev.sluice.file.uploaded"


def make_ca_and_leaf(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a leaf for 127.0.0.1 signed by it: the server must trust the CA, not the leaf."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_crt, ca_key = directory / "ca.crt", directory / "ca.key"
    crt, key, csr = directory / "hook.crt", directory / "hook.key", directory / "hook.csr"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run = lambda *args: subprocess.run(args, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(ca_key), "-out", str(ca_crt), "-days", "2", "-subj", "/CN=events test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext))
    return ca_crt, crt, key


class Receiver:
    """HTTPS webhook receiver that verifies `Sluice-Signature` and records each event."""

    def __init__(self, port: int, crt: Path, key: Path, keep_alive: bool = False,
                 idle_timeout: float | None = None):
        self.port, self.crt, self.key = port, crt, key
        # HTTP/1.1 keeps connections open between requests; `idle_timeout` closes one that
        # waited that long for its next request (as load balancers and receivers do).
        self.keep_alive, self.idle_timeout = keep_alive, idle_timeout
        self.connections = 0
        self.events: list[dict] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        self.httpd = None

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if receiver.keep_alive else "HTTP/1.0"
            timeout = receiver.idle_timeout

            def setup(self):
                super().setup()
                with receiver.lock:
                    receiver.connections += 1

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                ok = receiver.verify(self.headers.get("sluice-signature", ""), body)
                if ok:
                    with receiver.lock:
                        receiver.events.append(json.loads(body))
                else:
                    with receiver.lock:
                        receiver.bad_signatures += 1
                self.send_response(204 if ok else 401)
                self.send_header("content-length", "0")
                self.end_headers()

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.crt, self.key)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        self.httpd = httpd
        threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    @staticmethod
    def verify(header: str, body: bytes) -> bool:
        """The check docs/events.md shows: HMAC over "<t>." + body, and a fresh timestamp."""
        parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
        if "t" not in parts or "v1" not in parts or abs(time.time() - int(parts["t"])) > 300:
            return False
        want = hmac.new(SECRET.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, parts["v1"])

    def of_type(self, kind: str) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e["type"] == kind]

    def wait_for(self, predicate, timeout: float = 20, what: str = "events"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(list(self.events)):
                    return
            time.sleep(0.05)
        with self.lock:
            pytest.fail(f"timed out waiting for {what}; got {json.dumps(self.events)[:3000]}")


@pytest.fixture
def hooked(make_server, tmp_path):
    """A server with one webhook sink pointing at a running receiver: (server, receiver)."""
    ca, crt, key = make_ca_and_leaf(tmp_path / "hookpki")
    secret = tmp_path / "hook-secret"
    secret.write_text(SECRET + "\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    receiver = Receiver(port, crt, key)
    receiver.start()
    config = {"events": {
        "outboxDir": str(tmp_path / "outbox"),
        "webhooks": [{
            "name": "test", "url": f"https://127.0.0.1:{port}/hook", "caFile": str(ca),
            "secretFile": str(secret), "initialBackoffMs": 100, "maxBackoffMs": 400,
            "maxAttempts": 1000, "timeoutSeconds": 5,
        }],
    }}
    everything = ["list", "download", "upload", "overwrite", "delete", "rename", "mkdir", "rmdir"]
    users = [
        {"username": "alice", "home": "partners/alice", "permissions": everything,
         "_password": "correct horse battery staple 42"},
        {"username": "reader", "home": "reader", "permissions": ["list", "download"],
         "_password": "reader's long password 9"},
    ]
    srv = make_server(users=users, config=config)
    yield srv, receiver
    receiver.stop()


def metric(srv, name: str) -> float:
    status, text = srv.http_get("/metrics")
    assert status == 200
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def sftp_client(srv, user: str = "alice"):
    t = paramiko.Transport(("127.0.0.1", srv.sftp_port))
    t.banner_timeout = 10
    t.connect(username=user, password=srv.passwords[user])
    return t, paramiko.SFTPClient.from_transport(t)


def test_completed_uploads_are_delivered_signed_and_failed_ones_never(hooked):
    srv, receiver = hooked
    ftps_data, sftp_data = os.urandom(70_000), os.urandom(5_000)
    with srv.ftp() as ftp:
        assert ftp.upload("/ftps.bin", ftps_data).startswith("226")
        ftp.mkd("/inbound")
        ftp.rename("/ftps.bin", "/inbound/ftps.bin")
    t, sftp = sftp_client(srv)
    try:
        with sftp.open("/sftp.bin", "wb") as f:
            f.write(sftp_data)
        # An upload abandoned mid-way: the handle is never closed, the connection dies.
        f2 = sftp.open("/partial.bin", "wb")
        f2.write(b"x" * 10_000)
        f2.flush()
    finally:
        t.close()
    # A refused upload (no upload permission).
    with srv.ftp("reader") as ftp:
        with pytest.raises(Exception) as refused:
            ftp.upload("/nope.bin", b"no")
        assert "550" in str(refused.value) or "553" in str(refused.value)

    receiver.wait_for(lambda evs: sum(e["type"] == UPLOADED for e in evs) >= 2
                      and any(e["type"] == "dev.sluice.upload.refused" for e in evs)
                      and any(e["type"] == "dev.sluice.file.renamed" for e in evs), what="two uploads")
    time.sleep(1.0)  # anything wrongly emitted for the abandoned upload would have arrived by now
    uploads = {e["data"]["path"]: e for e in receiver.of_type(UPLOADED)}
    assert set(uploads) == {"/ftps.bin", "/sftp.bin"}, uploads
    ftps, sftp_event = uploads["/ftps.bin"], uploads["/sftp.bin"]
    assert ftps["specversion"] == "1.0" and ftps["source"].startswith("/sluice/")
    assert ftps["data"]["protocol"] == "ftps" and sftp_event["data"]["protocol"] == "sftp"
    assert ftps["data"]["sha256"] == hashlib.sha256(ftps_data).hexdigest()
    assert sftp_event["data"]["sha256"] == hashlib.sha256(sftp_data).hexdigest()
    assert ftps["data"]["size"] == len(ftps_data)
    assert ftps["data"]["storedPath"] == "/partners/alice/ftps.bin"
    assert ftps["data"]["user"] == "alice" and ftps["data"]["clientAddress"] == "127.0.0.1"
    assert ftps["id"] != sftp_event["id"]
    renamed = receiver.of_type("dev.sluice.file.renamed")[0]["data"]
    assert (renamed["path"], renamed["to"]) == ("/ftps.bin", "/inbound/ftps.bin")
    assert receiver.of_type("dev.sluice.dir.created")[0]["data"]["path"] == "/inbound"
    refused_event = receiver.of_type("dev.sluice.upload.refused")[0]["data"]
    assert (refused_event["user"], refused_event["reason"]) == ("reader", "permission")
    assert receiver.bad_signatures == 0
    # The outbox is outside every home and drains once delivered.
    deadline = time.monotonic() + 5
    while metric(srv, "sluice_events_outbox_events") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(srv, "sluice_events_outbox_events") == 0
    assert metric(srv, 'sluice_events_deliveries_total{sink="test",result="ok"}') >= 4


def test_alerted_event_counters_exist_at_zero_before_the_first_event(hooked):
    """The chart's SluiceEventsDropped alert takes increase() of these: a series that first
    appears at 1 would hide the first dead letter or dropped event."""
    srv, _ = hooked
    status, text = srv.http_get("/metrics")
    assert status == 200
    for series in ['sluice_events_deliveries_total{sink="test",result="dead_letter"} 0',
                   'sluice_events_deliveries_total{sink="test",result="failed"} 0',
                   'sluice_events_dropped_total{reason="full"} 0',
                   'sluice_events_dropped_total{reason="io"} 0']:
        assert series in text.splitlines(), f"{series} missing from\n{text}"


def test_a_webhook_keeps_its_connection_and_replaces_one_the_receiver_closed(make_server, tmp_path):
    ca, crt, key = make_ca_and_leaf(tmp_path / "hookpki")
    secret = tmp_path / "hook-secret"
    secret.write_text(SECRET + "\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    receiver = Receiver(port, crt, key, keep_alive=True, idle_timeout=1.0)
    receiver.start()
    try:
        srv = make_server(users=[{"username": "alice", "home": "alice", "permissions": ["upload", "list"],
                                  "_password": "correct horse battery staple 42"}],
                          config={"events": {"outboxDir": str(tmp_path / "outbox"), "webhooks": [{
                              "name": "test", "url": f"https://127.0.0.1:{port}/hook", "caFile": str(ca),
                              "secretFile": str(secret), "initialBackoffMs": 2000, "maxBackoffMs": 2000,
                              "maxAttempts": 100, "timeoutSeconds": 5}]}})
        with srv.ftp() as ftp:
            for n in range(12):
                assert ftp.upload(f"/burst{n}.bin", b"%d" % n).startswith("226")
        receiver.wait_for(lambda evs: len(evs) >= 12, what="the burst")
        assert receiver.connections <= 2, f"{receiver.connections} connections for 12 events"
        # The receiver closes the idle kept connection; the next event goes out on a new one at
        # once, not after a failed attempt and its 2 s backoff.
        time.sleep(2.5)
        with srv.ftp() as ftp:
            assert ftp.upload("/after-idle.bin", b"late").startswith("226")
        receiver.wait_for(lambda evs: len(evs) >= 13, timeout=1.5, what="the event after the idle close")
        assert metric(srv, 'sluice_events_deliveries_total{sink="test",result="failed"}') == 0
        assert receiver.bad_signatures == 0
    finally:
        receiver.stop()


def test_events_wait_while_the_receiver_is_down_and_arrive_when_it_is_back(hooked):
    srv, receiver = hooked
    receiver.stop()
    with srv.ftp() as ftp:
        for n in range(3):
            assert ftp.upload(f"/down{n}.bin", b"%d" % n).startswith("226")
    time.sleep(1.5)
    assert receiver.of_type(UPLOADED) == []
    assert metric(srv, "sluice_events_outbox_events") == 3
    assert metric(srv, 'sluice_events_deliveries_total{sink="test",result="failed"}') >= 1
    receiver.start()
    receiver.wait_for(lambda evs: len(evs) >= 3, what="the three queued uploads")
    assert [e["data"]["path"] for e in receiver.of_type(UPLOADED)] == ["/down0.bin", "/down1.bin", "/down2.bin"]


def test_every_completed_upload_survives_sigkill_of_the_server(hooked):
    srv, receiver = hooked
    rng = random.Random(18)
    completed: dict[str, str] = {}  # name -> sha256 of uploads the client saw complete
    attempted: set[str] = set()
    counter = [0]
    stop = threading.Event()
    errors: list[str] = []

    def client():
        while not stop.is_set():
            try:
                with srv.ftp(timeout=5) as ftp:
                    while not stop.is_set():
                        counter[0] += 1
                        name = f"/crash-{counter[0]}.bin"
                        data = os.urandom(rng.randint(1, 40_000))
                        attempted.add(name)
                        if ftp.upload(name, data).startswith("226"):
                            completed[name] = hashlib.sha256(data).hexdigest()
            except Exception as exc:  # noqa: BLE001 (the server was killed: reconnect)
                errors.append(repr(exc))
                time.sleep(0.1)

    worker = threading.Thread(target=client, daemon=True)
    worker.start()
    for round_ in range(3):
        # Kill at a random point, once a few more uploads went through since the last kill.
        floor, deadline = len(completed) + 3, time.monotonic() + 20
        while len(completed) < floor and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if round_ == 1:
            receiver.stop()  # the sink is down for part of the run too
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(5)
        srv.stop()
        srv.stopped = False
        srv.start()
        if round_ == 2:
            receiver.start()
    time.sleep(0.5)
    stop.set()
    worker.join(10)
    assert len(completed) >= 9, f"too few uploads completed: {len(completed)}; errors: {errors[-5:]}"
    receiver.wait_for(lambda evs: set(completed) <= {e["data"]["path"] for e in evs if e["type"] == UPLOADED},
                      timeout=30, what="an event for every completed upload")
    by_id: dict[str, dict] = {}
    for event in receiver.of_type(UPLOADED):
        if event["id"] in by_id:
            assert by_id[event["id"]] == event, "a duplicate carries the same event"
        by_id[event["id"]] = event
    home = srv.home("alice")
    for event in by_id.values():
        path = event["data"]["path"]
        assert path in attempted
        if path in completed:
            assert event["data"]["sha256"] == completed[path]
        # An event only ever for a published file, with exactly the content it names.
        stored = home / path.lstrip("/")
        assert stored.is_file(), f"event for an unpublished upload: {path}"
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == event["data"]["sha256"]
    paths = [e["data"]["path"] for e in by_id.values()]
    assert len(paths) == len(set(paths)), "one event id per upload"
    for name in attempted - completed.keys():
        if not (home / name.lstrip("/")).exists():
            assert name not in paths, f"event for an upload that did not complete: {name}"
