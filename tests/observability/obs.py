"""Helpers of the observability tests: helm rendering, PromQL metric-name extraction and the
names a scrape can produce."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sluice"
K8S_VERSION = "1.33.0"


def helm_template(helm: str, *values: str, show_only: str | None = None, set_json: tuple[str, ...] = ()) -> list[dict]:
    args = [helm, "template", "sluice", str(CHART), "--namespace", "sluice-system", "--kube-version", K8S_VERSION]
    for value in values:
        args += ["--set", value]
    for value in set_json:
        args += ["--set-json", value]
    if show_only:
        args += ["--show-only", show_only]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def dashboard_queries(dashboard: dict) -> list[str]:
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["definition"])
            assert match, variable["definition"]
            queries.append(match.group(1))
    return queries


# PromQL words that look like identifiers but are not metric names.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions or aggregations
    (followed by "("), not keywords, not label names (inside {...} or by/without/on(...)), not
    strings, durations or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    text = re.sub(r"\{[^}]*\}", "{}", text)                   # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)                  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)                  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def scrape_names(text: str) -> set[str]:
    """Every series name a Prometheus scrape of this OpenMetrics text can produce: sample
    names, plus what each family's TYPE declares even before it has samples (counter X ->
    X_total, histogram X -> X_bucket/_sum/_count, gauge X -> X), so a family that exists but
    has not counted anything yet still counts as present."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()[:4]
            names |= {
                "counter": {family + "_total"},
                "histogram": {family + "_bucket", family + "_sum", family + "_count"},
                "gauge": {family},
            }.get(kind, {family})
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names
