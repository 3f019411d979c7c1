"""Renders the Helm chart (charts/sluice) with the real helm binary for the e2e suite, so the
operator runs under exactly the RBAC rules, args and env the chart installs (one source).

helm comes from SLUICE_HELM or is built once from the Go module proxy by
tests/packaging/install-helm.sh.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE_VERSION = "1.33.0"


class TemplateError(RuntimeError):
    pass


def helm_binary() -> str:
    path = os.environ.get("SLUICE_HELM")
    if path and Path(path).exists():
        return path
    result = subprocess.run([str(ROOT / "tests/packaging/install-helm.sh")], capture_output=True,
                            text=True, timeout=1500)
    if result.returncode != 0:
        raise TemplateError(f"cannot build helm: {result.stderr}")
    return result.stdout.strip().splitlines()[-1]


class Renderer:
    def __init__(self, chart_dir: Path, *, release: str, namespace: str,
                 values: dict | None = None):
        self.chart_dir = Path(chart_dir)
        self.release = release
        self.namespace = namespace
        self.values = values or {}

    def render(self, template: str) -> list[dict]:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values_file:
            yaml.safe_dump(self.values, values_file)
            values_file.flush()
            result = subprocess.run(
                [helm_binary(), "template", self.release, str(self.chart_dir),
                 "--namespace", self.namespace, "--kube-version", KUBE_VERSION,
                 "-f", values_file.name, "--show-only", f"templates/{template}"],
                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise TemplateError(f"helm template {template}: {result.stderr}")
        return [d for d in yaml.safe_load_all(result.stdout) if d]
