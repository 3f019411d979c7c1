"""File events to NATS JetStream (docs/events.md): a real nats-server with JetStream, built
from the Go module proxy (tests/server/install-nats-server.sh), read back with the nats-py
client. Uploads become messages whose `Nats-Msg-Id` is the event id (so JetStream drops a
republished event); events wait in the outbox while NATS is down and all arrive once it is
back; SIGKILLs of the server lose no completed upload's event.

There is no skip: without SLUICE_NATS_SERVER the fixture builds nats-server, and a failed
build fails the tests.
"""

from __future__ import annotations

import asyncio
import hashlib
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

import nats
import pytest

from test_events import UPLOADED, make_ca_and_leaf, metric, sftp_client

HERE = Path(__file__).resolve().parent
STREAM, SUBJECT = "SLUICE", "sluice.events"


@pytest.fixture(scope="session")
def nats_server_bin() -> str:
    path = os.environ.get("SLUICE_NATS_SERVER")
    if not path:
        result = subprocess.run([str(HERE / "install-nats-server.sh")], capture_output=True, text=True,
                                timeout=1800)
        assert result.returncode == 0, result.stderr
        path = result.stdout.strip().splitlines()[-1]
    assert os.access(path, os.X_OK), f"nats-server not executable: {path}"
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NatsServer:
    """One nats-server with JetStream on 127.0.0.1, its store kept across stop/start."""

    def __init__(self, binary: str, root: Path, auth: dict, tls: tuple[Path, Path, Path] | None = None):
        self.binary, self.root, self.auth, self.tls = binary, root, auth, tls
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        lines = [f"listen: 127.0.0.1:{self.port}",
                 f"jetstream {{ store_dir: {json.dumps(str(root / 'store'))} }}"]
        lines.append("authorization {\n" + "\n".join(f"  {k}: {json.dumps(v)}" for k, v in auth.items()) + "\n}")
        if tls:
            _, crt, key = tls
            lines.append(f"tls {{\n  cert_file: {json.dumps(str(crt))}\n  key_file: {json.dumps(str(key))}\n}}")
        self.conf = root / "nats.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "nats.log", "ab"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "nats.log").read_text()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        pytest.fail("nats-server did not listen")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    # --- the nats-py client --------------------------------------------------------------

    async def _connect(self):
        options: dict = {"servers": [self.url], "connect_timeout": 5, "allow_reconnect": False}
        if "token" in self.auth:
            options["token"] = self.auth["token"]
        else:
            options["user"], options["password"] = self.auth["user"], self.auth["password"]
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.tls[0]))
            options["tls"] = ctx
            options["tls_hostname"] = "127.0.0.1"
        return await nats.connect(**options)

    def run(self, fn):
        async def main():
            nc = await self._connect()
            try:
                return await fn(nc.jetstream())
            finally:
                await nc.close()
        return asyncio.run(main())

    def add_stream(self) -> None:
        self.run(lambda js: js.add_stream(name=STREAM, subjects=[SUBJECT], duplicate_window=120))

    def messages(self) -> list[tuple[str | None, dict]]:
        """Every message in the stream, in order: (Nats-Msg-Id, CloudEvent)."""
        async def read(js):
            info = await js.stream_info(STREAM)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                if info.state.messages == 0:
                    break
                msg = await js.get_msg(STREAM, seq)
                out.append(((msg.headers or {}).get("Nats-Msg-Id"), json.loads(msg.data)))
            return out
        return self.run(read)

    def republish(self, msg_id: str, body: dict) -> bool:
        """Publishes `body` again with `msg_id`; True when JetStream said duplicate."""
        async def publish(js):
            ack = await js.publish(SUBJECT, json.dumps(body).encode(), headers={"Nats-Msg-Id": msg_id})
            return ack.duplicate
        return bool(self.run(publish))

    def wait_for(self, predicate, timeout: float = 30, what: str = "messages") -> list:
        deadline = time.monotonic() + timeout
        got: list = []
        while time.monotonic() < deadline:
            got = self.messages()
            if predicate(got):
                return got
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}; got {json.dumps(got)[:3000]}")


def sink_config(tmp_path: Path, nats_srv: NatsServer, **extra) -> dict:
    creds = tmp_path / "nats-creds"
    creds.mkdir(exist_ok=True)
    for key, value in nats_srv.auth.items():
        (creds / ("username" if key == "user" else key)).write_text(value + "\n")
    sink = {"name": "bus", "url": nats_srv.url, "subject": SUBJECT, "credentialsDir": str(creds),
            "initialBackoffMs": 100, "maxBackoffMs": 400, "maxAttempts": 1000, "timeoutSeconds": 2}
    if nats_srv.tls:
        sink["caFile"] = str(nats_srv.tls[0])
    sink.update(extra)
    return {"events": {"outboxDir": str(tmp_path / "outbox"), "nats": [sink]}}


EVERYTHING = ["list", "download", "upload", "overwrite", "delete", "rename", "mkdir", "rmdir"]
USERS = [{"username": "alice", "home": "partners/alice", "permissions": EVERYTHING,
          "_password": "correct horse battery staple 42"}]


@pytest.fixture
def nats_factory(nats_server_bin, tmp_path):
    servers: list[NatsServer] = []

    def factory(auth: dict, tls: bool = False) -> NatsServer:
        pki = make_ca_and_leaf(tmp_path / "natspki") if tls else None
        srv = NatsServer(nats_server_bin, tmp_path / f"nats{len(servers)}", auth, pki)
        servers.append(srv)
        srv.start()
        srv.add_stream()
        return srv

    yield factory
    for srv in servers:
        srv.stop()


def test_uploads_reach_jetstream_over_tls_with_the_event_id_as_message_id(make_server, nats_factory, tmp_path):
    bus = nats_factory({"user": "sluice", "password": "nats password 0123456789"}, tls=True)
    config = sink_config(tmp_path, bus, stream=STREAM, types=[UPLOADED], pathPrefixes=["/partners/alice/in"])
    srv = make_server(users=USERS, config=config)
    ftps_data, sftp_data = os.urandom(50_000), os.urandom(7_000)
    with srv.ftp() as ftp:
        ftp.mkd("/in")
        assert ftp.upload("/in/ftps.bin", ftps_data).startswith("226")
        assert ftp.upload("/elsewhere.bin", b"filtered out by the path prefix").startswith("226")
        ftp.delete("/elsewhere.bin")  # filtered out by type
    t, sftp = sftp_client(srv)
    try:
        with sftp.open("/in/sftp.bin", "wb") as f:
            f.write(sftp_data)
    finally:
        t.close()

    got = bus.wait_for(lambda msgs: len(msgs) >= 2, what="two upload messages")
    time.sleep(1.0)  # anything the filters should have kept out would have arrived by now
    got = bus.messages()
    assert len(got) == 2, got
    by_path = {event["data"]["path"]: (msg_id, event) for msg_id, event in got}
    assert set(by_path) == {"/in/ftps.bin", "/in/sftp.bin"}
    for msg_id, event in by_path.values():
        assert msg_id == event["id"], "Nats-Msg-Id is the event id"
        assert event["type"] == UPLOADED and event["specversion"] == "1.0"
    assert by_path["/in/ftps.bin"][1]["data"]["sha256"] == hashlib.sha256(ftps_data).hexdigest()
    assert by_path["/in/sftp.bin"][1]["data"]["sha256"] == hashlib.sha256(sftp_data).hexdigest()
    assert by_path["/in/ftps.bin"][1]["data"]["storedPath"] == "/partners/alice/in/ftps.bin"

    # A republished event (what a crash between publish and cursor write does) is recognised
    # by JetStream as a duplicate and not stored twice.
    msg_id, event = got[0]
    assert bus.republish(msg_id, event) is True
    assert len(bus.messages()) == 2
    assert metric(srv, 'sluice_events_deliveries_total{sink="bus",result="ok"}') == 2
    assert metric(srv, 'sluice_events_sink_failing_seconds{sink="bus"}') == 0
    deadline = time.monotonic() + 5
    while metric(srv, "sluice_events_outbox_events") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(srv, "sluice_events_outbox_events") == 0


def test_events_wait_while_nats_is_down_and_all_arrive_when_it_is_back(make_server, nats_factory, tmp_path):
    bus = nats_factory({"token": "nats-token-0123456789abcdef"})
    srv = make_server(users=USERS, config=sink_config(tmp_path, bus))
    with srv.ftp() as ftp:
        assert ftp.upload("/before.bin", b"before").startswith("226")
    bus.wait_for(lambda msgs: len(msgs) == 1, what="the first upload")
    bus.stop()
    with srv.ftp() as ftp:
        for n in range(5):
            assert ftp.upload(f"/down{n}.bin", b"%d" % n).startswith("226")
    deadline = time.monotonic() + 15
    while metric(srv, 'sluice_events_sink_failing_seconds{sink="bus"}') < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(srv, 'sluice_events_sink_failing_seconds{sink="bus"}') >= 2, "the sink reports it is failing"
    assert metric(srv, 'sluice_events_deliveries_total{sink="bus",result="failed"}') >= 1
    assert metric(srv, "sluice_events_outbox_events") == 5
    bus.start()
    got = bus.wait_for(lambda msgs: len(msgs) >= 6, what="the five queued uploads")
    assert [e["data"]["path"] for _, e in got] == ["/before.bin"] + [f"/down{n}.bin" for n in range(5)]
    assert all(msg_id == e["id"] for msg_id, e in got)
    deadline = time.monotonic() + 5
    while metric(srv, 'sluice_events_sink_failing_seconds{sink="bus"}') != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(srv, 'sluice_events_sink_failing_seconds{sink="bus"}') == 0, "healthy again"


def test_every_completed_upload_reaches_jetstream_across_sigkills(make_server, nats_factory, tmp_path):
    bus = nats_factory({"token": "nats-token-0123456789abcdef"})
    srv = make_server(users=USERS, config=sink_config(tmp_path, bus))
    rng = random.Random(1818)
    completed: dict[str, str] = {}
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
                        data = os.urandom(rng.randint(1, 20_000))
                        if ftp.upload(name, data).startswith("226"):
                            completed[name] = hashlib.sha256(data).hexdigest()
            except Exception as exc:  # noqa: BLE001 (the server was killed: reconnect)
                errors.append(repr(exc))
                time.sleep(0.1)

    worker = threading.Thread(target=client, daemon=True)
    worker.start()
    for round_ in range(3):
        floor, deadline = len(completed) + 3, time.monotonic() + 20
        while len(completed) < floor and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if round_ == 1:
            bus.stop()  # NATS is down for part of the run too
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(5)
        srv.stop()
        srv.stopped = False
        srv.start()
        if round_ == 2:
            bus.start()
    time.sleep(0.5)
    stop.set()
    worker.join(10)
    assert len(completed) >= 9, f"too few uploads completed: {len(completed)}; errors: {errors[-5:]}"
    got = bus.wait_for(lambda msgs: set(completed) <= {e["data"]["path"] for _, e in msgs},
                       timeout=60, what="a message for every completed upload")
    ids = [msg_id for msg_id, _ in got]
    assert len(ids) == len(set(ids)), "JetStream stored each event id once"
    assert all(msg_id == e["id"] for msg_id, e in got)
    paths = [e["data"]["path"] for _, e in got]
    assert len(paths) == len(set(paths)), "one event id per upload"
    for _, event in got:
        if event["data"]["path"] in completed:
            assert event["data"]["sha256"] == completed[event["data"]["path"]]
