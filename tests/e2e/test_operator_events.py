"""Issue 18 end to end: a FileTransferServer with `spec.events` (one webhook sink) applied with
kubectl; the operator renders the `events` section of server.yaml and mounts the sink's CA and
HMAC key from Secrets it never reads; the process kubelet runs the pod; an FTPS upload through
it reaches an HTTPS receiver in this test process, which verifies the HMAC signature."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import uuid

import pytest

from conftest import REPO
from test_operator_ftps import SERVER, Ftps, server_manifest, strong_password, user_manifests

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("rbac_guard")]


def _server_events_module():
    """tests/server/test_events.py (the signature-verifying receiver), loaded by path: a plain
    import would go through sys.path, where tests/server's conftest would shadow ours."""
    spec = importlib.util.spec_from_file_location("sluice_server_test_events",
                                                  REPO / "tests" / "server" / "test_events.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


events_helpers = _server_events_module()


@pytest.fixture(scope="module")
def hooked(crds, operator, kubelet, tmp_path_factory):
    cluster = crds
    work = tmp_path_factory.mktemp("events")
    ca, crt, key = events_helpers.make_ca_and_leaf(work / "pki")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    receiver = events_helpers.Receiver(port, crt, key)
    receiver.start()
    ns = f"e2e-events-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    # Plain Secrets, without the sluice.dev/referable label: the operator only mounts them.
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook-ca"},
                   "stringData": {"ca.crt": ca.read_text()}}, "-n", ns)
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook-hmac"},
                   "stringData": {"key": events_helpers.SECRET}}, "-n", ns)
    events = {"failingAfterSeconds": 10, "webhooks": [{
        "name": "ingest", "url": f"https://127.0.0.1:{port}/hook",
        "caSecretRef": {"name": "hook-ca"}, "secretRef": {"name": "hook-hmac", "key": "key"},
        "filters": {"types": ["dev.sluice.file.uploaded"]},
    }]}
    out = cluster.apply(server_manifest(events=events), "-n", ns).stdout
    assert f"filetransferserver.sluice.dev/{SERVER} created" in out
    proc = cluster.kubectl("wait", "--for=condition=Ready", f"fts/{SERVER}", "-n", ns,
                           "--timeout=120s", check=False, timeout=130)
    assert proc.returncode == 0, (proc.stdout, proc.stderr, kubelet.log_tails())
    yield Ftps(cluster, kubelet, ns, SERVER, work), receiver
    receiver.stop()
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_the_rendered_config_names_the_mounted_sink_files(hooked):
    ftps, _ = hooked
    config_map = ftps.cluster.kubectl_json("get", "configmap", f"{SERVER}-config", "-n", ftps.namespace)
    server_yaml = config_map["data"]["server.yaml"]
    assert "outboxDir: /var/lib/sluice/events" in server_yaml
    assert "secretFile: /etc/sluice/events/ingest/hmac/secret" in server_yaml
    sts = ftps.cluster.kubectl_json("get", "statefulset", SERVER, "-n", ftps.namespace)
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["ev-ingest-hmac"]["secret"]["secretName"] == "hook-hmac"
    assert volumes["ev-ingest-hmac"]["secret"]["items"] == [{"key": "key", "path": "secret"}]
    assert "emptyDir" in volumes["events-outbox"]


def test_an_ftps_upload_reaches_the_webhook_signed(hooked):
    ftps, receiver = hooked
    name, password = "eve", strong_password()
    for doc in user_manifests(name, password):
        ftps.cluster.apply(doc, "-n", ftps.namespace)
    ftps.wait_login(name, password)
    data = os.urandom(30_000)
    local = ftps.workdir / "upload.bin"
    local.write_bytes(data)
    proc = ftps.upload(name, password, local, "arrival.bin")
    assert proc.returncode == 0, proc.stderr
    receiver.wait_for(lambda evs: any(e["data"]["path"] == "/arrival.bin" for e in evs),
                      timeout=60, what="the upload's event")
    (event,) = [e for e in receiver.of_type(events_helpers.UPLOADED) if e["data"]["path"] == "/arrival.bin"]
    assert event["source"] == f"/sluice/{SERVER}-0"
    assert event["data"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert event["data"]["storedPath"] == f"/homes/{name}/arrival.bin"
    assert event["data"]["user"] == name and event["data"]["protocol"] == "ftps"
    assert receiver.bad_signatures == 0


def _condition(ftps, type_: str) -> dict | None:
    fts = ftps.cluster.kubectl_json("get", "fts", SERVER, "-n", ftps.namespace)
    return next((c for c in (fts.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def test_events_delivering_turns_false_while_the_receiver_is_down_and_true_after(hooked):
    ftps, receiver = hooked
    name, password = "frank", strong_password()
    for doc in user_manifests(name, password):
        ftps.cluster.apply(doc, "-n", ftps.namespace)
    ftps.wait_login(name, password)
    ftps.cluster.wait_for(lambda: (_condition(ftps, "EventsDelivering") or {}).get("status") == "True" or None,
                          60, "EventsDelivering True", interval=1)
    receiver.stop()
    local = ftps.workdir / "late.bin"
    local.write_bytes(b"arrives late")
    assert ftps.upload(name, password, local, "late.bin").returncode == 0
    failing = ftps.cluster.wait_for(
        lambda: (c := _condition(ftps, "EventsDelivering")) and c["status"] == "False" and c or None,
        90, "EventsDelivering False", interval=1)
    assert failing["reason"] == "SinkFailing"
    assert f"{SERVER}-0: sink ingest failing for" in failing["message"]
    warning = ftps.cluster.wait_for(
        lambda: [e for e in ftps.cluster.kubectl_json("get", "events", "-n", ftps.namespace)["items"]
                 if e.get("reason") == "SinkFailing"] or None,
        30, "a SinkFailing Warning Event", interval=1)
    assert warning[0]["type"] == "Warning" and "sink ingest" in warning[0]["note" if "note" in warning[0] else "message"]
    receiver.start()
    receiver.wait_for(lambda evs: any(e["data"]["path"] == "/late.bin" for e in evs), timeout=60,
                      what="the queued event")
    ftps.cluster.wait_for(lambda: (_condition(ftps, "EventsDelivering") or {}).get("status") == "True" or None,
                          60, "EventsDelivering True again", interval=1)
