"""Bans across replicas (issue 7): wrong passwords from 127.0.0.3 against pod 0 of a 2-replica
FileTransferServer ban that address there; the operator collects the ban from pod 0's `/bans`
endpoint and hands it to pod 1, which then refuses 127.0.0.3 before the banner while 127.0.0.4
still logs in. The propagation delay (ban on pod 0 → refusal on pod 1) is measured and printed.
A username banned on pod 0 (a distributed attack) is then refused on pod 1 too, and a TOTP code
used on pod 0 is refused as a replay on pod 1."""

from __future__ import annotations

import base64
import datetime
import json
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest

from test_operator_ftps import CURL_LOGIN_DENIED, Ftps, strong_password, user_manifests
from test_operator_scale import _claim, _ready_pods

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("rbac_guard")]

NAME = "ha"
ATTACKER = "127.0.0.3"
BYSTANDER = "127.0.0.4"
# Generous: the operator polls every 2 s; a debug build on a busy machine adds to it.
MAX_PROPAGATION_SECONDS = 15


def _manifest() -> dict:
    return {
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FileTransferServer",
        "metadata": {"name": NAME},
        "spec": {
            "protocols": ["ftpsExplicit"],
            "replicas": 2,
            "passive": {"portStart": 31000, "portEnd": 31002},
            "storage": {"existingClaim": "shared"},
            "tls": {"ipAddresses": ["127.0.0.1"]},
            "exposure": {"serviceType": "ClusterIP", "perPodServices": True},
            "security": {"bans": {"threshold": 5, "windowSeconds": 300,
                                  "baseBanSeconds": 300, "maxBanSeconds": 600}},
        },
    }


def _curl(ftps: Ftps, user: str, password: str, source: str) -> subprocess.CompletedProcess:
    url = f"ftp://127.0.0.1:{ftps.ports()['ftps']}/"
    argv = ["curl", "-sS", "--ssl-reqd", "--cacert", str(ftps.ca), "--max-time", "20",
            "--interface", source, "--user", f"{user}:{password}", url]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def _refused_before_banner(ftps: Ftps, source: str) -> bool:
    with socket.create_connection(("127.0.0.1", ftps.ports()["ftps"]), timeout=5,
                                  source_address=(source, 0)) as sock:
        sock.settimeout(5)
        try:
            data = sock.recv(200)
        except (ConnectionResetError, socket.timeout):
            return True
    return not data.startswith(b"220")


def _bans(ftps: Ftps, **match) -> list[dict]:
    return [e for e in ftps.audit_events()
            if e.get("event") == "ban" and all(e.get(k) == v for k, v in match.items())]


def test_a_ban_on_one_replica_refuses_the_address_on_the_other(crds, operator, kubelet, tmp_path):
    cluster = crds
    ns = f"e2e-bans-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        bad = _manifest()
        bad["spec"]["security"]["bans"].update(safelist=["192.0.2.0/24", "nope"], baseBanSeconds=900)
        proc = cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(bad), check=False)
        assert proc.returncode != 0
        assert "every entry must be a CIDR" in proc.stderr, proc.stderr
        assert "maxBanSeconds must be >= baseBanSeconds" in proc.stderr, proc.stderr
        cluster.apply([_claim(), _manifest()], "-n", ns)
        cluster.kubectl("wait", "--for=condition=Ready", f"fts/{NAME}", "-n", ns, "--timeout=150s",
                        timeout=160)
        cluster.wait_for(lambda: _ready_pods(cluster, ns) == ["ha-0", "ha-1"], 90, "pods ha-0 and ha-1 ready")
        token = cluster.kubectl_json("get", "secret", f"{NAME}-ban-sync", "-n", ns)
        assert len(token["data"]["token"]) > 40, "a random token was generated"

        password = strong_password()
        cluster.apply(user_manifests("partner", password, server=NAME), "-n", ns)
        pod0 = Ftps(cluster, kubelet, ns, NAME, tmp_path)
        pod1 = Ftps(cluster, kubelet, ns, NAME, tmp_path)
        pod1.pod = "ha-1"
        pod0.wait_login("partner", password)
        pod1.wait_login("partner", password)
        assert kubelet.pod_ip("ha-0", ns) != kubelet.pod_ip("ha-1", ns)

        # 20 wrong passwords from the attacker against pod 0 only.
        for attempt in range(20):
            _curl(pod0, "partner", f"wrong-{attempt}", ATTACKER)
        ban = cluster.wait_for(lambda: (_bans(pod0, origin="local", key=ATTACKER) or [None])[0],
                               30, "the ban on pod 0")
        banned_at = datetime.datetime.fromisoformat(ban["ts"].replace("Z", "+00:00"))
        assert _refused_before_banner(pod0, ATTACKER)

        # Pod 1 never saw a wrong password from the attacker, yet refuses it before the banner.
        deadline = time.monotonic() + MAX_PROPAGATION_SECONDS + 5
        refused_at = None
        while time.monotonic() < deadline:
            if _refused_before_banner(pod1, ATTACKER):
                refused_at = datetime.datetime.now(datetime.timezone.utc)
                break
            time.sleep(0.1)
        assert refused_at is not None, (
            f"pod ha-1 still greets {ATTACKER}; operator log:\n{operator.tail()}")
        delay = (refused_at - banned_at).total_seconds()
        print(f"\nban propagation delay (ban on ha-0 -> refusal on ha-1): {delay:.2f} s")
        assert delay < MAX_PROPAGATION_SECONDS

        # Others still log in on pod 1; the attacker cannot, even with the right password.
        assert _curl(pod1, "partner", password, BYSTANDER).returncode == 0
        assert _curl(pod1, "partner", password, ATTACKER).returncode != 0
        imported = cluster.wait_for(lambda: (_bans(pod1, origin="peer", key=ATTACKER) or [None])[0],
                                    10, "the imported ban in pod 1's audit log")
        assert imported["pod"] == "ha-0"
        assert not _bans(pod1, origin="local"), "pod 1 banned nothing itself"

        # No ping-pong: a few more rounds later pod 0 has not imported its own ban back, and pod 1
        # audited the import once.
        time.sleep(5)
        assert not _bans(pod0, origin="peer"), "pod 0 got its own ban back"
        assert len(_bans(pod1, origin="peer", key=ATTACKER)) == 1
        assert _curl(pod0, "partner", password, BYSTANDER).returncode == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert 'sluice_operator_ban_sync_total{result="updated"}' in metrics, metrics
        wrong = _curl(pod1, "partner", "still-wrong", BYSTANDER)
        assert wrong.returncode == CURL_LOGIN_DENIED, "the bystander is not banned"

        # A username under a distributed attack on pod 0 (one wrong password from each of five
        # addresses) is banned there, and pod 1 then refuses that user even with the right
        # password from an address it has never seen.
        for n in range(5):
            _curl(pod0, "partner", f"distributed-{n}", f"127.0.0.{21 + n}")
        cluster.wait_for(lambda: (_bans(pod0, origin="local", scope="user", key="partner") or [None])[0],
                         30, "the username ban on pod 0")
        cluster.wait_for(
            lambda: _curl(pod1, "partner", password, "127.0.0.31").returncode == CURL_LOGIN_DENIED or None,
            MAX_PROPAGATION_SECONDS + 5, "pod 1 to refuse the banned username")
        imported = cluster.wait_for(
            lambda: (_bans(pod1, origin="peer", scope="user", key="partner") or [None])[0],
            10, "the imported username ban in pod 1's audit log")
        assert imported["pod"] == "ha-0"

        # A TOTP code used on pod 0 is a replay on pod 1: the operator carries the accepted step.
        from test_operator_ftps import _totp

        totp_secret = base64.b32encode(uuid.uuid4().bytes + uuid.uuid4().bytes[:4]).decode()
        otp_password = strong_password()
        secret, user = user_manifests("otp", otp_password, server=NAME)
        user["spec"]["totp"] = {"secretRef": {"name": "otp-totp"}}
        cluster.apply([secret, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "otp-totp", "labels": {"sluice.dev/referable": "true"}},
                                "stringData": {"totp": totp_secret}}, user], "-n", ns)
        cluster.kubectl("wait", "--for=condition=Ready", "tu/otp", "-n", ns, "--timeout=60s", timeout=70)

        def used_on_pod0():
            code = _totp(totp_secret)
            return code if _curl(pod0, "otp", otp_password + code, "127.0.0.41").returncode == 0 else None

        code = cluster.wait_for(used_on_pod0, 60, "a TOTP login on pod 0", interval=2)
        bearer = base64.b64decode(token["data"]["token"]).decode()

        def pod1_holds_the_step():
            request = urllib.request.Request(f"http://{kubelet.pod_ip('ha-1', ns)}:8080/bans",
                                             headers={"Authorization": f"Bearer {bearer}"})
            with urllib.request.urlopen(request, timeout=5) as response:
                held = json.loads(response.read())["peerTotpSteps"]
            return [s for s in held if s["username"] == "otp"] or None

        cluster.wait_for(pod1_holds_the_step, MAX_PROPAGATION_SECONDS, "pod 1 to hold pod 0's TOTP step")
        # The first and only use of this code on pod 1 is refused (it never saw the code).
        assert _curl(pod1, "otp", otp_password + code, "127.0.0.42").returncode == CURL_LOGIN_DENIED
        refusal = cluster.wait_for(
            lambda: [e for e in pod1.audit_events() if e.get("event") == "login" and e.get("user") == "otp"]
            or None, 10, "pod 1's login event for otp")
        assert [e["reason"] for e in refusal] == ["totp replayed"], refusal
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
