"""Fixtures for the observability tests: the chart's PrometheusRule and Grafana dashboard as
rendered by helm, promtool (built from the Go module proxy and cached, install-promtool.sh), and
the dashboard JSON (helpers in obs.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from obs import ROOT, helm_template

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def helm() -> str:
    path = os.environ.get("SLUICE_HELM") or shutil.which("helm")
    if not path:
        result = subprocess.run([str(ROOT / "tests/packaging/install-helm.sh")], capture_output=True,
                                text=True, timeout=1500)
        assert result.returncode == 0, result.stderr
        path = result.stdout.strip().splitlines()[-1]
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    """Our pinned promtool, never one on PATH (Debian's is years older)."""
    path = os.environ.get("SLUICE_PROMTOOL")
    if not path:
        result = subprocess.run([str(HERE / "install-promtool.sh")], capture_output=True, text=True, timeout=1800)
        assert result.returncode == 0, result.stderr
        path = result.stdout.strip().splitlines()[-1]
    return path


@pytest.fixture(scope="session")
def prometheus_rule(helm) -> dict:
    (rule,) = helm_template(helm, "prometheusRule.enabled=true", show_only="templates/prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    return rule


@pytest.fixture(scope="session")
def rules_file(prometheus_rule, tmp_path_factory) -> Path:
    """The PrometheusRule's groups as a plain Prometheus rule file (what promtool reads)."""
    path = tmp_path_factory.mktemp("rules") / "sluice-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": prometheus_rule["spec"]["groups"]}, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def alerts(prometheus_rule) -> list[dict]:
    return [rule for group in prometheus_rule["spec"]["groups"] for rule in group["rules"] if "alert" in rule]


@pytest.fixture(scope="session")
def dashboard(helm) -> dict:
    (configmap,) = helm_template(helm, "grafanaDashboard.enabled=true", show_only="templates/dashboard.yaml")
    return json.loads(configmap["data"]["sluice.json"])


