"""Issue 20's acceptance test: homes on S3-compatible object storage from the CRD.

A FileTransferServer with `replicas: 2` and `spec.storage.objectStore` on a real SeaweedFS (the
helper of tests/server, started here on the host's 127.0.0.1, which every "pod" process of the
process kubelet reaches) needs no ReadWriteMany claim: each pod spools on its own emptyDir, the
credentials Secret is mounted (never read by the operator). A file uploaded over SFTP (paramiko)
through pod 0 is downloaded through pod 1 with the same SHA-256, and is in the bucket (boto3)
under `<prefix>/<home>/`. A server whose credentials Secret does not exist says so in `Ready`
and runs no process (no crash loop); a user with a quota on it is refused by name; values the
server would refuse are refused at admission naming the field."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
import uuid

import paramiko
import pytest

from conftest import REPO
from test_operator_ftps import server_manifest, strong_password, user_manifests

# One copy of the SeaweedFS helper, shared with tests/server and bench/.
sys.path.insert(0, str(REPO / "tests" / "server"))
from objectstore import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedFS  # noqa: E402

pytestmark = [pytest.mark.timeout(420), pytest.mark.usefixtures("rbac_guard")]

NAME = "s3-files"


@pytest.fixture
def seaweedfs(tmp_path):
    store = SeaweedFS(tmp_path / "seaweedfs").start()
    yield store
    store.stop()


def _credentials_secret(name: str) -> dict:
    # Deliberately without the sluice.dev/referable label: the operator never reads it.
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": {"accessKeyId": ACCESS_KEY, "secretAccessKey": SECRET_KEY}}


def _object_store_server(name: str, endpoint: str, prefix: str, secret: str, replicas: int) -> dict:
    manifest = server_manifest(name)
    spec = manifest["spec"]
    spec["protocols"] = ["sftp"]
    spec["replicas"] = replicas
    spec.pop("passive", None)
    spec["storage"] = {"objectStore": {
        "endpoint": endpoint, "bucket": BUCKET, "prefix": prefix,
        "credentialsSecretRef": {"name": secret},
        # SeaweedFS here speaks plain http on loopback: the explicit opt-in.
        "allowPlainHttp": True,
    }}
    return manifest


def _sftp(port: int, host_key: paramiko.PKey, user: str, password: str) -> paramiko.SFTPClient:
    transport = paramiko.Transport(("127.0.0.1", port))
    transport.banner_timeout = 10
    # hostkey: the handshake fails unless the pod presents the operator's host key.
    transport.connect(hostkey=host_key, username=user, password=password)
    return paramiko.SFTPClient.from_transport(transport)


def _condition(obj: dict, type_: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def _reloads(kubelet, pod: str, ns: str) -> int:
    """config_reload events with result applied in a pod's audit log."""
    count = 0
    for line in kubelet.audit_log(pod, ns).read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "config_reload" and event.get("result") == "applied":
            count += 1
    return count


def test_two_replicas_share_homes_in_a_bucket(crds, operator, kubelet, seaweedfs, tmp_path):
    cluster = crds
    ns = f"e2e-s3-{uuid.uuid4().hex[:6]}"
    prefix = f"e2e/{ns}"
    cluster.kubectl("create", "namespace", ns)
    try:
        cluster.apply(_credentials_secret("s3-credentials"), "-n", ns)
        cluster.apply(_object_store_server(NAME, seaweedfs.endpoint, prefix, "s3-credentials", 2),
                      "-n", ns)
        proc = cluster.kubectl("wait", "--for=condition=Ready", f"fts/{NAME}", "-n", ns,
                               "--timeout=180s", check=False, timeout=190)
        assert proc.returncode == 0, (proc.stderr, cluster.kubectl(
            "get", "fts", NAME, "-n", ns, "-o", "yaml", check=False).stdout)

        # No claim at all: an emptyDir spool per pod and the credentials mounted by key.
        sts = cluster.kubectl_json("get", "statefulset", NAME, "-n", ns)
        assert not sts["spec"].get("volumeClaimTemplates"), sts["spec"].get("volumeClaimTemplates")
        volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
        assert "emptyDir" in volumes["data"], volumes["data"]
        credentials = volumes["object-store-credentials"]["secret"]
        assert credentials["secretName"] == "s3-credentials"
        assert sorted(i["key"] for i in credentials["items"]) == ["accessKeyId", "secretAccessKey"]
        assert not cluster.kubectl_json("get", "pvc", "-n", ns)["items"]
        config = cluster.kubectl_json("get", "configmap", f"{NAME}-config", "-n", ns)
        assert f"prefix: {prefix}" in config["data"]["server.yaml"], config["data"]["server.yaml"]

        password = strong_password()
        for manifest in user_manifests("alice", password, ["list", "download", "upload"],
                                       server=NAME):
            cluster.apply(manifest, "-n", ns)
        proc = cluster.kubectl("wait", "--for=condition=Ready", "tu/alice", "-n", ns,
                               "--timeout=120s", check=False, timeout=130)
        assert proc.returncode == 0, proc.stderr

        secret = cluster.kubectl_json("get", "secret", f"{NAME}-ssh-host-keys", "-n", ns)
        host_key = paramiko.Ed25519Key.from_private_key(io.StringIO(
            base64.b64decode(secret["data"]["ssh_host_ed25519_key"]).decode()))

        data = os.urandom(3_000_000)
        digest = hashlib.sha256(data).hexdigest()
        port0 = kubelet.ports(f"{NAME}-0", ns)["sftp"]
        port1 = kubelet.ports(f"{NAME}-1", ns)["sftp"]
        assert port0 != port1

        def upload():
            with _sftp(port0, host_key, "alice", password) as sftp:
                sftp.putfo(io.BytesIO(data), "payload.bin")
            return True
        cluster.wait_for(upload, 60, "alice's upload through pod 0", interval=2)

        with _sftp(port1, host_key, "alice", password) as sftp:
            assert "payload.bin" in sftp.listdir(".")
            downloaded = io.BytesIO()
            sftp.getfo("payload.bin", downloaded)
        assert hashlib.sha256(downloaded.getvalue()).hexdigest() == digest

        key = f"{prefix}/homes/alice/payload.bin"
        assert key in seaweedfs.keys(prefix + "/"), seaweedfs.keys(prefix + "/")
        assert hashlib.sha256(seaweedfs.get(key)).hexdigest() == digest
        # The spool of pod 0 kept nothing once the upload was published.
        spool = kubelet.volume_dir(f"{NAME}-0", "data", ns)
        assert not [p for p in spool.rglob("*") if p.is_file()], list(spool.rglob("*"))

        # A rotated credentials Secret reaches both pods by the volume update and is applied by
        # hot reload: same processes, a config_reload audited, transfers still work. (The new
        # value differs only by a trailing newline, which the server trims: SeaweedFS has one
        # identity here.)
        pids = {pod: kubelet.pid(pod, ns) for pod in (f"{NAME}-0", f"{NAME}-1")}
        reloads = {pod: _reloads(kubelet, pod, ns) for pod in pids}
        rotated = _credentials_secret("s3-credentials")
        rotated["stringData"]["secretAccessKey"] += "\n"
        cluster.apply(rotated, "-n", ns)
        for pod in pids:
            cluster.wait_for(lambda pod=pod: _reloads(kubelet, pod, ns) > reloads[pod], 60,
                             f"{pod} to reload the rotated credentials")
            assert kubelet.pid(pod, ns) == pids[pod], f"{pod} restarted"
        with _sftp(port1, host_key, "alice", password) as sftp:
            sftp.putfo(io.BytesIO(b"after rotation"), "rotated.txt")
        assert seaweedfs.get(f"{prefix}/homes/alice/rotated.txt") == b"after rotation"

        # A user with a quota is refused by name; the others keep serving.
        for manifest in user_manifests("bob", strong_password(), server=NAME):
            if manifest["kind"] == "TransferUser":
                manifest["spec"]["quota"] = {"maxFiles": 10}
            cluster.apply(manifest, "-n", ns)

        def bob_refused():
            ready = _condition(cluster.kubectl_json("get", "tu", "bob", "-n", ns), "Ready")
            return ready if ready.get("reason") == "NotSupportedOnObjectStorage" else None
        ready = cluster.wait_for(bob_refused, 60, "bob to be refused for its quota")
        assert ready["status"] == "False"
        assert ready["message"].startswith("spec.quota is not supported"), ready["message"]
        with _sftp(port1, host_key, "alice", password) as sftp:
            assert "payload.bin" in sftp.listdir(".")
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_a_missing_credentials_secret_is_named_and_nothing_crash_loops(crds, operator, kubelet,
                                                                        seaweedfs):
    cluster = crds
    ns = f"e2e-s3bad-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        # Refused at admission, naming the field: a bucket name S3 refuses, plain http without
        # the opt-in, and a second replica on a claim that is not shared.
        bad = _object_store_server("bad", seaweedfs.endpoint, "x", "s3-credentials", 1)
        bad["spec"]["storage"]["objectStore"]["bucket"] = "Not_A_Bucket"
        proc = cluster.apply(bad, "-n", ns, check=False)
        assert proc.returncode != 0
        assert "spec.storage.objectStore.bucket must be 3-63" in proc.stderr, proc.stderr
        plain = _object_store_server("plain", seaweedfs.endpoint, "x", "s3-credentials", 1)
        del plain["spec"]["storage"]["objectStore"]["allowPlainHttp"]
        proc = cluster.apply(plain, "-n", ns, check=False)
        assert proc.returncode != 0
        assert "allowPlainHttp: true" in proc.stderr, proc.stderr

        # The API server's regular expressions (RE2) agree with the operator's: an IPv6
        # endpoint is fine, a control character in the prefix is not.
        ipv6 = _object_store_server("ipv6", "https://[2001:db8::5]:9000", "x", "s3-credentials", 1)
        del ipv6["spec"]["storage"]["objectStore"]["allowPlainHttp"]
        proc = cluster.apply(ipv6, "-n", ns, "--dry-run=server", check=False)
        assert proc.returncode == 0, proc.stderr
        tab = _object_store_server("tab", seaweedfs.endpoint, "a\tb", "s3-credentials", 1)
        proc = cluster.apply(tab, "-n", ns, "--dry-run=server", check=False)
        assert proc.returncode != 0
        assert "spec.storage.objectStore.prefix must be relative" in proc.stderr, proc.stderr

        # Valid, but its credentials Secret does not exist.
        cluster.apply(_object_store_server("nosecret", seaweedfs.endpoint, f"e2e/{ns}",
                                           "missing-credentials", 2), "-n", ns)

        def named():
            ready = _condition(cluster.kubectl_json("get", "fts", "nosecret", "-n", ns), "Ready")
            return ready if ready.get("reason") == "ObjectStoreSecretNotFound" else None
        ready = cluster.wait_for(named, 90, "Ready=False naming the missing Secret")
        assert ready["status"] == "False"
        assert ready["message"].startswith(
            'spec.storage.objectStore.credentialsSecretRef: Secret "missing-credentials" not found'
        ), ready["message"]
        server = cluster.kubectl_json("get", "fts", "nosecret", "-n", ns)
        # Waiting for a Secret is progress, not a dead end: Reconciling, not Stalled.
        assert _condition(server, "Stalled").get("status") == "False", server["status"]
        assert _condition(server, "Reconciling").get("status") == "True", server["status"]

        # Announced once as a Warning Event with the same message.
        events = cluster.wait_for(
            lambda: [e for e in cluster.kubectl_json("get", "events.events.k8s.io", "-n", ns)["items"]
                     if e.get("reason") == "ObjectStoreSecretNotFound"], 60,
            "the ObjectStoreSecretNotFound Event")
        assert events[0]["type"] == "Warning"
        assert "missing-credentials" in events[0]["note"], events[0]

        # The pods wait in ContainerCreating for the volume: no process, no restarts.
        def waiting():
            pod = cluster.kubectl_json("get", "pod", "nosecret-0", "-n", ns, check=False)
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            return statuses[0] if statuses else None
        status = cluster.wait_for(waiting, 60, "the pod's container status")
        assert status["restartCount"] == 0, status
        assert status["state"]["waiting"]["reason"] == "ContainerCreating", status
        assert "missing-credentials" in status["state"]["waiting"].get("message", ""), status
        assert kubelet.running("nosecret-0", ns) is None

        # The Secret appears: the pods start without any change to the server.
        cluster.apply(_credentials_secret("missing-credentials"), "-n", ns)
        proc = cluster.kubectl("wait", "--for=condition=Ready", "fts/nosecret", "-n", ns,
                               "--timeout=180s", check=False, timeout=190)
        assert proc.returncode == 0, (proc.stderr, cluster.kubectl(
            "get", "fts", "nosecret", "-n", ns, "-o", "yaml", check=False).stdout)
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
