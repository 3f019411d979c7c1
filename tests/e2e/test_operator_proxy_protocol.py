"""Issue 15 through the operator: `spec.exposure.proxyProtocol` behind a real HAProxy (Debian's,
`send-proxy-v2`) in front of an operator-rendered pod. A TransferUser allowed only from
127.0.0.5 logs in through the proxy from 127.0.0.5 and is refused from 127.0.0.6; the audit log
records the client's address, not the proxy's. HAProxy's own connections come from 127.0.0.1,
the trusted proxy in the spec."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import uuid

import paramiko
import pytest

from test_operator_ftps import Ftps, server_manifest, strong_password, user_manifests

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("rbac_guard")]

NAME = "proxied"
FRONT = "127.0.0.21"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _login(port: int, user: str, password: str, source: str) -> None:
    sock = socket.create_connection((FRONT, port), timeout=20, source_address=(source, 0))
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=20)
        transport.auth_password(user, password)
        sftp = paramiko.SFTPClient.from_transport(transport)
        sftp.listdir(".")
    finally:
        transport.close()


def test_a_user_allowed_from_one_address_logs_in_through_haproxy_from_there_only(
        crds, operator, kubelet, tmp_path):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed; tests/run installs it (apt-get install haproxy)")
    cluster = crds
    ns = f"e2e-proxy-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    haproxy = None
    try:
        manifest = server_manifest(NAME)
        manifest["spec"]["protocols"] = ["sftp"]
        manifest["spec"]["exposure"] = {"serviceType": "ClusterIP",
                                        "proxyProtocol": {"enabled": True,
                                                          "trustedProxies": ["127.0.0.1/32"]}}
        cluster.apply(manifest, "-n", ns)
        proc = cluster.kubectl("wait", "--for=condition=Ready", f"fts/{NAME}", "-n", ns,
                               "--timeout=120s", check=False, timeout=130)
        assert proc.returncode == 0, proc.stderr
        password = strong_password()
        secret, user = user_manifests("partner", password, server=NAME)
        user["spec"]["allowedCidrs"] = ["127.0.0.5/32"]
        cluster.apply([secret, user], "-n", ns)
        server = Ftps(cluster, kubelet, ns, NAME, tmp_path)
        cluster.wait_for(lambda: server.has_user("partner"), 60, "partner in the pod's users volume")

        front_port = _free_port(FRONT)
        config = tmp_path / "haproxy.cfg"
        config.write_text(f"""global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend sftp
    bind {FRONT}:{front_port}
    default_backend pod
backend pod
    server pod0 127.0.0.1:{server.ports()['sftp']} send-proxy-v2
""")
        haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        cluster.wait_for(lambda: haproxy.poll() is None and socket.create_connection(
            (FRONT, front_port), timeout=2).close() is None, 20, "HAProxy to listen")

        # The user reaches the pod only through the proxy, from its allowed address (a reload
        # of the users shard may still be in flight: a few tries, well under the ban threshold).
        for attempt in range(4):
            try:
                _login(front_port, "partner", password, "127.0.0.5")
                break
            except (paramiko.SSHException, OSError):
                if attempt == 3:
                    raise
                time.sleep(2)
        with pytest.raises(paramiko.SSHException):
            _login(front_port, "partner", password, "127.0.0.6")
        # Straight to the pod, without a header: refused before SSH starts.
        with pytest.raises((paramiko.SSHException, OSError, EOFError)):
            sock = socket.create_connection(("127.0.0.1", server.ports()["sftp"]), timeout=10)
            transport = paramiko.Transport(sock)
            try:
                transport.start_client(timeout=10)
            finally:
                transport.close()

        events = server.audit_events()
        logins = [e for e in events if e.get("event") == "login" and e.get("user") == "partner"]
        assert any(e.get("result") == "success" and e.get("ip") == "127.0.0.5" for e in logins), logins
        assert not any(e.get("result") == "success" and e.get("ip") == "127.0.0.6" for e in logins), logins
        assert not any(e.get("ip") == "127.0.0.1" for e in logins), logins
        print(json.dumps(logins[-2:]))
    finally:
        if haproxy is not None:
            haproxy.terminate()
            haproxy.wait(timeout=10)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
