"""Observability against a real API server (issue 16): the operator's metrics have real samples
for a reconciled 2-replica FileTransferServer (the certificate gauge labelled with the server's
namespace and name, which the chart's ServiceMonitor keeps with honorLabels, reconciles, ban
sync after a ban), the server pods' metrics are reachable on the pod's health port the chart's PodMonitor
scrapes, and every metric name the chart's alerts and dashboard use is in these scrapes.
tests/observability checks the same names against the demo server and an operator without an
API server; here the operator has done real work."""

from __future__ import annotations

import re
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from test_operator_bans import ATTACKER, _curl
from test_operator_bans import _manifest as ban_manifest
from test_operator_ftps import Ftps, strong_password, user_manifests
from test_operator_scale import _claim, _ready_pods

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "observability"))
import obs  # noqa: E402

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("rbac_guard")]

NAME = "ha"


def _helm() -> str:
    import os
    import subprocess

    path = os.environ.get("SLUICE_HELM")
    if path:
        return path
    result = subprocess.run([str(obs.ROOT / "tests/packaging/install-helm.sh")], capture_output=True, text=True,
                            timeout=1500, check=True)
    return result.stdout.strip().splitlines()[-1]


def test_alert_and_dashboard_metrics_in_real_scrapes(crds, operator, kubelet, tmp_path):
    cluster = crds
    ns = f"e2e-obs-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        cluster.apply([_claim(), ban_manifest()], "-n", ns)
        cluster.kubectl("wait", "--for=condition=Ready", f"fts/{NAME}", "-n", ns, "--timeout=150s", timeout=160)
        cluster.wait_for(lambda: _ready_pods(cluster, ns) == ["ha-0", "ha-1"], 90, "pods ha-0 and ha-1 ready")
        password = strong_password()
        cluster.apply(user_manifests("partner", password, server=NAME), "-n", ns)
        pod0 = Ftps(cluster, kubelet, ns, NAME, tmp_path)
        pod0.wait_login("partner", password)
        assert pod0.curl("partner", "wrong password").returncode != 0
        # Wrong passwords from one address: pod 0 bans it and the operator spreads the ban.
        for attempt in range(8):
            _curl(pod0, "partner", f"wrong-{attempt}", ATTACKER)

        def operator_has(pattern: str):
            return re.search(pattern, operator.metrics(), re.M) or None

        cluster.wait_for(lambda: operator_has(r'^sluice_operator_ban_sync_total\{result="updated"\} [1-9]'),
                         60, "the operator's ban sync updating pod ha-1")
        operator_text = operator.metrics()
        expiry = re.search(rf'^sluice_operator_certificate_expiry_timestamp_seconds\{{(?=[^}}]*namespace="{ns}")'
                           rf'(?=[^}}]*server="{NAME}")[^}}]*\}} (\d+)$', operator_text, re.M)
        assert expiry, operator_text
        assert int(expiry.group(1)) > time.time() + 30 * 86400, "a generated certificate lives 90 days"
        assert re.search(r'^sluice_operator_reconciles_total\{kind="FileTransferServer",result="success"\} [1-9]',
                         operator_text, re.M), operator_text
        assert re.search(r"^sluice_operator_reconcile_duration_seconds_bucket\{", operator_text, re.M), operator_text

        # The pod's health port, as the PodMonitor (port "health") scrapes it.
        ip, port = kubelet.pod_ip("ha-0", ns), kubelet.ports("ha-0", ns)["health"]
        with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=5) as response:
            server_text = response.read().decode()
        assert re.search(r'^sluice_logins_total\{protocol="ftps",result="success"\} [1-9]', server_text, re.M), server_text
        assert re.search(r'^sluice_logins_total\{protocol="ftps",result="failure"\} [1-9]', server_text, re.M), server_text
        assert re.search(r"^sluice_ready 1$", server_text, re.M), server_text
        assert re.search(r'^sluice_bans_total\{scope="ip"\} [1-9]', server_text, re.M), server_text

        helm = _helm()
        (rule,) = obs.helm_template(helm, "prometheusRule.enabled=true", show_only="templates/prometheusrule.yaml")
        (configmap,) = obs.helm_template(helm, "grafanaDashboard.enabled=true", show_only="templates/dashboard.yaml")
        import json

        queries = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
        queries += obs.dashboard_queries(json.loads(configmap["data"]["sluice.json"]))
        used = {name for q in queries for name in obs.metric_names(q)}
        scraped = obs.scrape_names(operator_text) | obs.scrape_names(server_text) | {"up"}
        assert len(used) >= 15
        assert not used - scraped, f"not in the scrapes: {sorted(used - scraped)}"
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
