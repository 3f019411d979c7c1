#!/usr/bin/env python3
"""Generates charts/sluice/dashboards/sluice.json, the Grafana dashboard the chart ships
(grafanaDashboard.enabled). Edit this file, not the JSON: `python3 tests/observability/gen_dashboard.py`
rewrites it, `--check` fails when it is stale (tests/observability/test_dashboard.py runs that).

Server series come from the chart's PodMonitor (labels namespace, server, pod); the operator's
from its ServiceMonitor (certificate expiry carries namespace and server of the
FileTransferServer, honorLabels). Variables: datasource, namespace, server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "charts" / "sluice" / "dashboards" / "sluice.json"

SEL = 'namespace=~"$namespace", server=~"$server"'
DS = {"type": "prometheus", "uid": "${datasource}"}


def target(expr: str, legend: str, ref: str) -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


class Layout:
    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.y = 0
        self.x = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        if self.x:
            self.y += 8
            self.x = 0
        self.panels.append({"type": "row", "title": title, "id": self._id(), "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def panel(self, title: str, description: str, targets: list[tuple[str, str]], *, unit: str = "short",
              kind: str = "timeseries", width: int = 12, stack: bool = False, thresholds=None) -> None:
        if self.x + width > 24:
            self.y += 8
            self.x = 0
        panel = {
            "type": kind,
            "title": title,
            "description": description,
            "id": self._id(),
            "datasource": DS,
            "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
            "targets": [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {},
        }
        if kind == "timeseries":
            panel["fieldConfig"]["defaults"]["custom"] = {
                "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0,
                "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            }
            panel["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                                "tooltip": {"mode": "multi", "sort": "desc"}}
        if thresholds:
            panel["fieldConfig"]["defaults"]["thresholds"] = {"mode": "absolute", "steps": thresholds}
            panel["fieldConfig"]["defaults"]["color"] = {"mode": "thresholds"}
        if kind == "table":
            panel["targets"] = [dict(t, instant=True, range=False, format="table") for t in panel["targets"]]
            panel["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True}}}]
        self.panels.append(panel)
        self.x += width


def dashboard() -> dict:
    d = Layout()
    rate = "$__rate_interval"

    d.row("Sessions and logins")
    d.panel("Open sessions", "sluice_sessions_active per pod, and limits.maxSessions (sluice_sessions_max).",
            [(f"sum by (namespace, server, pod) (sluice_sessions_active{{{SEL}}})", "{{namespace}}/{{pod}}"),
             (f"max by (namespace, server) (sluice_sessions_max{{{SEL}}})", "maxSessions {{namespace}}/{{server}}")])
    d.panel("New sessions per protocol", "Accepted control connections per second by listener (explicit, implicit FTPS; sftp).",
            [(f"sum by (listener) (rate(sluice_sessions_total{{{SEL}}}[{rate}]))", "{{listener}}")], unit="cps", stack=True)
    d.panel("Logins per protocol and result", "Login attempts per second (sluice_logins_total).",
            [(f"sum by (protocol, result) (rate(sluice_logins_total{{{SEL}}}[{rate}]))", "{{protocol}} {{result}}")], unit="reqps")
    d.panel("Pods ready", "sluice_ready: 1 while /readyz answers 200.",
            [(f"sum by (namespace, server, pod) (sluice_ready{{{SEL}}})", "{{namespace}}/{{pod}}")], unit="bool")

    d.row("Transfers")
    d.panel("Transfers per second", "Completed transfers by direction and result (sluice_transfers_total).",
            [(f"sum by (direction, result) (rate(sluice_transfers_total{{{SEL}}}[{rate}]))", "{{direction}} {{result}}")], unit="ops")
    d.panel("Bytes per second", "Bytes on data connections by direction (sluice_transfer_bytes_total).",
            [(f"sum by (direction) (rate(sluice_transfer_bytes_total{{{SEL}}}[{rate}]))", "{{direction}}")], unit="Bps", stack=True)

    d.row("Failures and bans")
    d.panel("Failures", "Failed logins, TLS handshakes, rejected data connections, refused sessions, per second.",
            [(f"sum by (protocol) (rate(sluice_logins_total{{{SEL}, result=\"failure\"}}[{rate}]))", "failed logins {{protocol}}"),
             (f"sum by (channel) (rate(sluice_tls_handshake_failures_total{{{SEL}}}[{rate}]))", "TLS handshake {{channel}}"),
             (f"sum by (reason) (rate(sluice_data_connections_rejected_total{{{SEL}}}[{rate}]))", "data rejected {{reason}}"),
             (f"sum by (reason) (rate(sluice_sessions_refused_total{{{SEL}}}[{rate}]))", "session refused {{reason}}")], unit="reqps")
    d.panel("Bans", "Bans imposed per minute (sluice_bans_total; peer_* are imported from other replicas) and bans in force.",
            [(f"sum by (scope) (rate(sluice_bans_total{{{SEL}}}[{rate}])) * 60", "imposed/min {{scope}}"),
             (f"sum by (scope) (sluice_bans_active{{{SEL}}})", "active {{scope}}")])
    d.panel("Ban sync", "Server side: /bans requests by HTTP status. Operator side: pods updated, unreachable, refused calls, failed rounds.",
            [(f"sum by (result) (rate(sluice_ban_sync_requests_total{{{SEL}}}[{rate}]))", "server {{result}}"),
             (f"sum by (result) (rate(sluice_operator_ban_sync_total[{rate}]))", "operator {{result}}")], unit="reqps")
    d.panel("Budget refusals", "Requests refused or sessions ended by a tenant budget (budgets.*), by budget.",
            [(f"sum by (budget) (rate(sluice_budget_exceeded_total{{{SEL}}}[{rate}]))", "{{budget}}")], unit="reqps")

    d.row("Certificates and configuration")
    d.panel("Certificate expiry", "Days until the certificate of each FileTransferServer expires "
            "(sluice_operator_certificate_expiry_timestamp_seconds - time()).",
            [(f"(max by (namespace, server) (sluice_operator_certificate_expiry_timestamp_seconds{{{SEL}}}) - time()) / 86400",
              "{{namespace}}/{{server}}")], unit="d", kind="table",
            thresholds=[{"color": "red", "value": None}, {"color": "orange", "value": 7}, {"color": "green", "value": 21}])
    d.panel("Configuration reloads", "Hot reloads of server.yaml, users.yaml and the certificate by result (applied, rejected) in the interval.",
            [(f"sum by (namespace, pod, result) (increase(sluice_config_reloads_total{{{SEL}}}[$__interval]))",
              "{{namespace}}/{{pod}} {{result}}")], kind="timeseries")

    d.row("Operator")
    d.panel("Reconciles", "Reconciles per second by kind and result (sluice_operator_reconciles_total).",
            [(f"sum by (kind, result) (rate(sluice_operator_reconciles_total[{rate}]))", "{{kind}} {{result}}")], unit="ops", width=8)
    d.panel("Reconcile failures", "Failed reconciles per second by reason (sluice_operator_reconcile_failures_total).",
            [(f"sum by (reason) (rate(sluice_operator_reconcile_failures_total[{rate}]))", "{{reason}}")], unit="ops", width=8)
    d.panel("Reconcile duration p95", "95th percentile of sluice_operator_reconcile_duration_seconds by kind.",
            [(f"histogram_quantile(0.95, sum by (le, kind) (rate(sluice_operator_reconcile_duration_seconds_bucket[{rate}])))", "{{kind}}")],
            unit="s", width=8)

    def var(name: str, label: str, query: str) -> dict:
        return {"name": name, "label": label, "type": "query", "datasource": DS,
                "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
                "includeAll": True, "multi": True, "allValue": ".*",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}

    return {
        "title": "Sluice",
        "uid": "sluice-overview",
        "description": "Sluice FTPS/SFTP servers and operator (charts/sluice, docs/operations.md).",
        "tags": ["sluice", "ftps", "sftp"],
        "timezone": "",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            var("namespace", "Namespace", "label_values(sluice_sessions_active, namespace)"),
            var("server", "Server", 'label_values(sluice_sessions_active{namespace=~"$namespace"}, server)'),
        ]},
        "annotations": {"list": []},
        "panels": d.panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run python3 tests/observability/gen_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
