#!/usr/bin/env python3
"""Prints every panel query of the chart's dashboard with its current values from a running
Prometheus (default http://127.0.0.1:49090), as in docs/operations.md ("What the dashboard shows
on a short run"), plus the alerts Prometheus has pending or firing. Not a test: a tool to
reproduce that table.

    python3 tests/observability/dashboard_sample.py [PROMETHEUS_URL [UNIX_TIME [RATE_INTERVAL]]]
"""

from __future__ import annotations

import json
import sys
import urllib.parse
import urllib.request
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "sluice" / "dashboards" / "sluice.json"


def query(base: str, expr: str, at: str | None) -> list[dict]:
    params = {"query": expr} | ({"time": at} if at else {})
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)["data"]["result"]


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:49090"
    at = sys.argv[2] if len(sys.argv) > 2 else None
    rate_interval = sys.argv[3] if len(sys.argv) > 3 else "1m"
    dashboard = json.loads(DASHBOARD.read_text())
    print("| panel | legend | value |\n|---|---|---|")
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = (target["expr"].replace("$namespace", ".*").replace("$server", ".*")
                    .replace("$__rate_interval", rate_interval).replace("$__interval", "5m"))
            results = query(base, expr, at)
            if not results:
                print(f"| {panel['title']} | {target['legendFormat']} | (no series) |")
            for r in results:
                legend = target["legendFormat"]
                for key, value in r["metric"].items():
                    legend = legend.replace("{{" + key + "}}", value)
                print(f"| {panel['title']} | {legend} | {float(r['value'][1]):.4g} |")
    with urllib.request.urlopen(f"{base}/api/v1/alerts", timeout=10) as response:
        alerts = json.load(response)["data"]["alerts"]
    print("\n| alert | state | labels | summary |\n|---|---|---|---|")
    for a in alerts:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items()) if k not in ("alertname", "severity"))
        print(f"| {a['labels']['alertname']} | {a['state']} | {labels} | {a['annotations'].get('summary', '')} |")


if __name__ == "__main__":
    main()
