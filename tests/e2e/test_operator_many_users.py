"""Issue 14's scaled-down "many users": a few thousand TransferUsers on one SFTP server are
split over several users.yaml Secrets (shards), the server reads every shard, users log in,
and a change of one user rewrites exactly one shard while the others keep their
resourceVersion. The 50,000-user run is bench/operator/many_users.py."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid

import pytest

from test_operator_ftps import Ftps, server_manifest, strong_password, user_manifests
from test_operator_sftp import sftp

pytestmark = [pytest.mark.timeout(420), pytest.mark.usefixtures("rbac_guard")]

NAME = "bulk"
# Five keys per user (one of them logs in) make each entry ~600 bytes, so 3,000 users need
# four shards of ~450 KB: several shards without creating tens of thousands of objects.
USERS = 3000
CHUNK = 500
KEYS = 5


def _users(public_keys: list[str]) -> list[dict]:
    return [{"apiVersion": "sluice.dev/v1alpha1", "kind": "TransferUser",
             "metadata": {"name": f"u{i:05d}"},
             "spec": {"serverRef": {"name": NAME}, "username": f"user{i:05d}",
                      "auth": {"sshAuthorizedKeys": public_keys},
                      "permissions": ["list", "download"]}}
            for i in range(USERS)]


def _shards(cluster, ns) -> dict[str, str]:
    items = cluster.kubectl_json("get", "secrets", "-n", ns, "-l", f"sluice.dev/users-of={NAME}")["items"]
    return {s["metadata"]["name"]: s["metadata"]["resourceVersion"] for s in items}


def _shard_holding(cluster, ns, username: str) -> str:
    items = cluster.kubectl_json("get", "secrets", "-n", ns, "-l", f"sluice.dev/users-of={NAME}")["items"]
    for s in items:
        if f"username: {username}\n".encode() in base64.b64decode(s["data"]["users.yaml"]):
            return s["metadata"]["name"]
    raise AssertionError(f"{username} in no shard")


def test_thousands_of_users_in_shards_one_change_rewrites_one_shard(crds, operator, kubelet, tmp_path):
    cluster = crds
    ns = f"e2e-bulk-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    # Another tenant's server, whose users must not wait for this namespace's thousands.
    neighbour_ns = f"e2e-neighbour-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", neighbour_ns)
    started = time.monotonic()
    try:
        manifest = server_manifest(NAME)
        manifest["spec"]["protocols"] = ["sftp"]
        cluster.apply(manifest, "-n", ns)
        neighbour = server_manifest("neighbour")
        neighbour["spec"]["passive"] = {"portStart": 30020, "portEnd": 30022}
        cluster.apply(neighbour, "-n", neighbour_ns)
        publics = []
        for k in range(KEYS):
            path = tmp_path / f"id_ed25519_{k}"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
            publics.append(path.with_suffix(".pub").read_text().strip())
        key = tmp_path / "id_ed25519_0"
        users = _users(publics)
        for start in range(0, USERS, CHUNK):
            cluster.kubectl("create", "-n", ns, "-f", "-", timeout=120,
                            input=json.dumps({"apiVersion": "v1", "kind": "List",
                                              "items": users[start:start + CHUNK]}))
        status = cluster.wait_for(
            lambda: (s := cluster.kubectl_json("get", "fts", NAME, "-n", ns).get("status", {}))
            .get("users") == USERS and s, 180, f"{USERS} users in users.yaml", interval=2)
        synced = {c["type"]: c for c in status["conditions"]}["UsersSynced"]
        assert synced["status"] == "True", synced
        shards = _shards(cluster, ns)
        assert len(shards) >= 4, shards
        assert f"({len(shards)} shards)" in synced["message"], synced
        assert status["endpoint"].endswith(":22"), status["endpoint"]
        converged = time.monotonic() - started
        print(f"\n[many users] {USERS} users converged into {len(shards)} shards in {converged:.1f}s")

        # Users of different shards log in.
        server = Ftps(cluster, kubelet, ns, NAME, tmp_path)
        port = server.ports()["sftp"]
        host = cluster.kubectl_json("get", "secret", f"{NAME}-ssh-host-keys", "-n", ns)
        host_key = tmp_path / "host_key"
        host_key.write_bytes(base64.b64decode(host["data"]["ssh_host_ed25519_key"]))
        host_key.chmod(0o600)
        host_public = subprocess.run(["ssh-keygen", "-y", "-f", str(host_key)], capture_output=True,
                                     text=True, check=True).stdout.strip()
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_public}\n")
        probes = ["user00000", "user01499", "user02999"]
        assert len({_shard_holding(cluster, ns, u) for u in probes}) >= 2
        for username in probes:
            cluster.wait_for(
                lambda u=username: sftp(port, key, known_hosts, u, "ls\n", tmp_path).returncode == 0 or None,
                120, f"{username} to log in over SFTP", interval=2)

        # One user's change rewrites one shard.
        before = _shards(cluster, ns)
        holder = _shard_holding(cluster, ns, "user02424")
        cluster.kubectl("patch", "tu", "u02424", "-n", ns, "--type=merge", "-p",
                        json.dumps({"spec": {"permissions": ["list", "download", "upload"]}}))
        after = cluster.wait_for(lambda: (a := _shards(cluster, ns)) != before and a, 60,
                                 "the shard of user02424 to be rewritten")
        time.sleep(3)  # nothing else follows
        after = _shards(cluster, ns)
        changed = sorted(n for n in after if after[n] != before.get(n))
        assert changed == [holder], (changed, holder)
        (tmp_path / "up.txt").write_text("one shard\n")
        cluster.wait_for(
            lambda: sftp(port, key, known_hosts, "user02424", "put up.txt\n", tmp_path).returncode == 0 or None,
            60, "user02424 to upload with its new permission", interval=2)
        assert sftp(port, key, known_hosts, "user00000", "put up.txt\n", tmp_path).returncode != 0
        print(f"[many users] whole test {time.monotonic() - started:.1f}s")

        # Deleting the namespace wakes all 3,000 users at once (their server goes, each
        # reports ServerNotFound or is gone). Meanwhile another tenant's new user still
        # reaches its server and logs in: before the user controller was bounded, such a
        # user waited over a minute (and the polling login got the test's address banned).
        proc = cluster.kubectl("wait", "--for=condition=Ready", "fts/neighbour", "-n",
                               neighbour_ns, "--timeout=120s", check=False, timeout=130)
        assert proc.returncode == 0, proc.stderr
        cluster.kubectl("delete", "namespace", ns, "--wait=false")
        deleted = time.monotonic()
        password = strong_password()
        cluster.apply(user_manifests("newcomer", password, server="neighbour"), "-n", neighbour_ns)
        Ftps(cluster, kubelet, neighbour_ns, "neighbour", tmp_path).wait_login("newcomer", password,
                                                                              timeout=60)
        print(f"[many users] a neighbour's new user logged in {time.monotonic() - deleted:.1f}s "
              "after the namespace of 3,000 users was deleted")
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", neighbour_ns, "--wait=false", check=False)
