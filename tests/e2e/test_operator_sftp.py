"""SFTP through the operator: a FileTransferServer that serves SFTP gets an ed25519 host key
Secret (created once, never regenerated), the pod runs the SFTP listener, and a TransferUser
with an SSH public key logs in with OpenSSH `sftp` and uploads a file whose SHA-256 is audited.
Removing the key from the TransferUser refuses the next login."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import uuid

import pytest

from test_operator_ftps import Ftps, server_manifest

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("rbac_guard")]

NAME = "sftp-files"


def sftp(port: int, key, known_hosts, user: str, batch: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sftp", "-b", "-", "-P", str(port), "-i", str(key),
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "PasswordAuthentication=no",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "ConnectTimeout=10", f"{user}@127.0.0.1"],
        input=batch, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_sftp_user_with_a_key_uploads_and_the_host_key_is_stable(crds, operator, kubelet, tmp_path):
    cluster = crds
    ns = f"e2e-sftp-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        manifest = server_manifest(NAME)
        manifest["spec"]["protocols"] = ["ftpsExplicit", "sftp"]
        manifest["spec"]["passive"] = {"portStart": 30020, "portEnd": 30022}
        cluster.apply(manifest, "-n", ns)
        proc = cluster.kubectl("wait", "--for=condition=Ready", f"fts/{NAME}", "-n", ns,
                               "--timeout=120s", check=False, timeout=130)
        assert proc.returncode == 0, proc.stderr
        server = Ftps(cluster, kubelet, ns, NAME, tmp_path)

        secret = cluster.kubectl_json("get", "secret", f"{NAME}-ssh-host-keys", "-n", ns)
        host_key = tmp_path / "host_key"
        host_key.write_bytes(base64.b64decode(secret["data"]["ssh_host_ed25519_key"]))
        host_key.chmod(0o600)
        public = subprocess.run(["ssh-keygen", "-y", "-f", str(host_key)], capture_output=True,
                                text=True, check=True).stdout.strip()
        assert public.startswith("ssh-ed25519 ")
        port = server.ports()["sftp"]
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {public}\n")

        user_key = tmp_path / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(user_key)], check=True)
        user_public = (tmp_path / "id_ed25519.pub").read_text().strip()
        cluster.apply({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "TransferUser",
            "metadata": {"name": "keyuser"},
            "spec": {"serverRef": {"name": NAME}, "username": "keyuser",
                     "auth": {"sshAuthorizedKeys": [user_public]},
                     "permissions": ["list", "download", "upload"]},
        }, "-n", ns)
        data = os.urandom(300_000)
        (tmp_path / "payload.bin").write_bytes(data)

        def uploaded():
            r = sftp(port, user_key, known_hosts, "keyuser", "put payload.bin\nls -l\n", tmp_path)
            return r if r.returncode == 0 else None
        result = cluster.wait_for(uploaded, 180, "keyuser to upload over SFTP", interval=2)
        assert "payload.bin" in result.stdout
        digest = hashlib.sha256(data).hexdigest()
        cluster.wait_for(
            lambda: any(e.get("event") == "transfer" and e.get("protocol") == "sftp"
                        and e.get("sha256") == digest for e in server.audit_events()) or None,
            30, "the SFTP upload's SHA-256 in the audit log")

        # The host key Secret is never regenerated, also across a pod restart.
        resource_version = secret["metadata"]["resourceVersion"]
        old_pid = server.pid()
        cluster.kubectl("delete", "pod", f"{NAME}-0", "-n", ns)

        def restarted():
            try:
                pid, ports = server.pid(), server.ports()
            except KeyError:
                return None  # the process kubelet has no running pod yet
            return ports if pid and pid != old_pid else None
        cluster.wait_for(restarted, 120, "the recreated pod to run", interval=1)
        cluster.kubectl("wait", "--for=condition=Ready", f"pod/{NAME}-0", "-n", ns, "--timeout=120s",
                        timeout=130)
        again = cluster.kubectl_json("get", "secret", f"{NAME}-ssh-host-keys", "-n", ns)
        assert again["metadata"]["resourceVersion"] == resource_version

        # Removing the key refuses the next login (hot reload, no restart).
        cluster.kubectl("patch", "tu", "keyuser", "-n", ns, "--type=merge", "-p",
                        '{"spec": {"auth": {"sshAuthorizedKeys": [], "passwordHash": '
                        '"$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$'
                        'YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY"}}}')
        port = server.ports()["sftp"]
        known_hosts.write_text(f"[127.0.0.1]:{port} {public}\n")

        def refused():
            r = sftp(port, user_key, known_hosts, "keyuser", "ls\n", tmp_path)
            return r if r.returncode != 0 and "Host key verification failed" not in r.stderr else None
        cluster.wait_for(refused, 120, "keyuser's key login to be refused", interval=2)
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
