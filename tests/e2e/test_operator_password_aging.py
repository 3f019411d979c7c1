"""Password aging and login windows through the operator (issue 7): a TransferUser's status shows
when its password changed and when it expires; a Warning Event `PasswordExpiresSoon` is recorded
once; past `maxAgeDays` the user is `Ready=False`, reason `PasswordExpired`, and the real server
(run by the process kubelet) refuses its password with the audited reason; `spec.loginWindows`
reaches the server, which refuses logins outside them.

The operator runs on the real clock: `maxAgeDays: 1, warnDaysBefore: 1` puts a new password in
its warning period at once, and an administrator's status patch that moves `passwordChangedAt`
two days back (keeping the password's source digest) stands in for the passing of time."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from test_operator_ftps import CURL_LOGIN_DENIED, SERVER, Ftps, server_manifest, strong_password, user_manifests

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("rbac_guard")]


def _ready(cluster, ns: str, name: str) -> dict | None:
    tu = cluster.kubectl_json("get", "tu", name, "-n", ns)
    conditions = (tu.get("status") or {}).get("conditions", [])
    return {c["type"]: c for c in conditions}.get("Ready")


def _events(cluster, ns: str, reason: str, name: str = "alice") -> list[dict]:
    items = cluster.kubectl_json("get", "events", "-n", ns)["items"]
    return [e for e in items
            if e.get("reason") == reason and e.get("involvedObject", {}).get("name") == name]


def test_password_aging_status_warning_expiry_and_login_windows(crds, operator, kubelet, tmp_path):
    cluster = crds
    ns = f"e2e-aging-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        policy = {"passwordPolicy": {"maxAgeDays": 1, "warnDaysBefore": 1}}
        cluster.apply(server_manifest(security=policy), "-n", ns)
        password = strong_password()
        cluster.apply(user_manifests("alice", password), "-n", ns)
        # A user whose only window opens two hours from now (UTC): always closed during the test.
        now = datetime.now(timezone.utc)
        window = {"from": (now + timedelta(hours=2)).strftime("%H:%M"),
                  "to": (now + timedelta(hours=3)).strftime("%H:%M"), "timeZone": "UTC"}
        night_password = strong_password()
        secret, night = user_manifests("night", night_password)
        night["spec"]["loginWindows"] = [window]
        cluster.apply([secret, night], "-n", ns)
        proc = cluster.kubectl("wait", "--for=condition=Ready", f"fts/{SERVER}", "-n", ns,
                               "--timeout=120s", check=False, timeout=130)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        ftps = Ftps(cluster, kubelet, ns, SERVER, tmp_path)

        # The status shows when the password changed and when it expires; the warning period
        # has begun (warnDaysBefore == maxAgeDays), so the user is Ready with that reason.
        ready = cluster.wait_for(
            lambda: (r := _ready(cluster, ns, "alice")) and r["reason"] == "PasswordExpiresSoon" and r,
            60, "alice to be in the warning period")
        assert ready["status"] == "True"
        status = cluster.kubectl_json("get", "tu", "alice", "-n", ns)["status"]
        changed = datetime.fromisoformat(status["passwordChangedAt"].replace("Z", "+00:00"))
        expires = datetime.fromisoformat(status["passwordExpiresAt"].replace("Z", "+00:00"))
        assert abs((changed - now).total_seconds()) < 120, status
        assert expires - changed == timedelta(days=1)
        warning = cluster.wait_for(lambda: _events(cluster, ns, "PasswordExpiresSoon"), 30,
                                   "a PasswordExpiresSoon event")
        assert len(warning) == 1 and warning[0]["type"] == "Warning", warning
        assert warning[0]["involvedObject"]["name"] == "alice", warning
        assert "expires at" in warning[0]["message"], warning
        assert password not in json.dumps(warning)
        ftps.wait_login("alice", password)

        # The password's change time, as the operator rendered it into users.yaml.
        users = cluster.kubectl_json("get", "secret", f"{SERVER}-users", "-n", ns)
        rendered = base64.b64decode(users["data"]["users.yaml"]).decode()
        assert f'passwordChangedAt: "{status["passwordChangedAt"]}"' in rendered, rendered
        assert "loginWindows" in rendered

        # Two days later (the status moved back): expired, still rendered, password refused.
        old = (now - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        cluster.kubectl("patch", "tu", "alice", "-n", ns, "--subresource=status", "--type=merge",
                        "-p", json.dumps({"status": {"passwordChangedAt": old}}))
        ready = cluster.wait_for(
            lambda: (r := _ready(cluster, ns, "alice")) and r["reason"] == "PasswordExpired" and r,
            60, "alice to be PasswordExpired")
        assert ready["status"] == "False"
        status = cluster.kubectl_json("get", "tu", "alice", "-n", ns)["status"]
        assert status["passwordChangedAt"] == old
        ftps.wait_refused("alice", password)
        audited = cluster.wait_for(
            lambda: [e for e in ftps.audit_events()
                     if e.get("event") == "login" and e.get("user") == "alice"
                     and e.get("reason") == "PasswordExpired"], 30, "a PasswordExpired audit event")
        assert audited[0]["result"] == "failure"
        expired_events = cluster.wait_for(lambda: _events(cluster, ns, "PasswordExpired"), 30,
                                          "a PasswordExpired event")
        assert expired_events[0]["type"] == "Warning"
        # The warning was recorded once (on the transition), not on every reconcile.
        (warning,) = _events(cluster, ns, "PasswordExpiresSoon")
        assert (warning.get("count") or 1) == 1 and not warning.get("series"), warning

        # Login windows from the TransferUser are enforced by the server.
        def outside():
            assert ftps.curl("night", night_password).returncode == CURL_LOGIN_DENIED
            return [e for e in ftps.audit_events()
                    if e.get("event") == "login" and e.get("user") == "night"
                    and e.get("reason") == "outside login window"]
        refused = cluster.wait_for(outside, 60, "an outside-window refusal", interval=1)
        assert refused[0]["next_open"]
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
