"""The Grafana dashboard the chart ships: generated from gen_dashboard.py, with the panels the
issue asks for and namespace/server variables that every server query uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_dashboard_json_is_current():
    result = subprocess.run([sys.executable, str(HERE / "gen_dashboard.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dashboard_has_the_panels(dashboard):
    titles = {p["title"] for p in dashboard["panels"]}
    for title in ["Open sessions", "New sessions per protocol", "Logins per protocol and result", "Transfers per second",
                  "Bytes per second", "Failures", "Bans", "Certificate expiry", "Configuration reloads", "Reconciles",
                  "Reconcile failures", "Budget refusals", "Ban sync"]:
        assert title in titles, title


def test_dashboard_variables_filter_server_queries(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "server"} <= set(variables)
    assert "$namespace" in variables["server"]["definition"]
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            if "sluice_" in expr.replace("sluice_operator_", "") or "certificate_expiry" in expr:
                assert 'namespace=~"$namespace"' in expr and 'server=~"$server"' in expr, (panel["title"], expr)
            assert target["datasource"]["uid"] == "${datasource}"


def test_dashboard_configmap_is_labelled_for_the_sidecar(helm):
    from obs import helm_template

    (configmap,) = helm_template(helm, "grafanaDashboard.enabled=true", "grafanaDashboard.namespace=monitoring",
                                 show_only="templates/dashboard.yaml")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert list(configmap["data"]) == ["sluice.json"]


def test_dashboard_panels_do_not_overlap(dashboard):
    cells = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))
        assert g["x"] + g["w"] <= 24
