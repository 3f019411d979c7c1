"""The chart's PrometheusRule: `promtool check rules`, and `promtool test rules` with one unit
test per alert in which one series must fire it (with the summary and description naming the
object) and another must not, plus an evaluation before `for:` has elapsed where nothing fires.

The cases below are turned into a promtool test file (written next to the rendered rules and
printed on failure). Thresholds are the chart's defaults (values.yaml, prometheusRule.*).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from obs import helm_template

ROOT = Path(__file__).resolve().parents[2]

SERVER = {"job": "sluice-server", "namespace": "transfer", "server": "partners", "container": "server"}
POD0 = dict(SERVER, pod="partners-0", instance="10.0.0.10:8080")
POD1 = dict(SERVER, pod="partners-1", instance="10.0.0.11:8080")
OPERATOR = {"job": "sluice-operator", "namespace": "sluice-system", "pod": "sluice-operator-7d9f", "instance": "10.0.0.2:8080"}


def series(name: str, labels: dict, values: str) -> dict:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{inner}}}", "values": values}


def pick(labels: dict, *keys: str) -> dict:
    return {k: labels[k] for k in keys}


# alert -> (input series, eval time where it fires, labels of the firing alert (besides
# severity), the rendered {{ $value ... }} text, an earlier eval time where nothing fires yet
# or None when the alert has no `for:`).
CASES = {
    "SluiceCertificateExpiresSoon": (
        [series("sluice_operator_certificate_expiry_timestamp_seconds", dict(OPERATOR, namespace="transfer", server="partners"), "864000x200"),
         series("sluice_operator_certificate_expiry_timestamp_seconds", dict(OPERATOR, namespace="transfer", server="fresh"), "5184000x200")],
        "2h", dict(OPERATOR, namespace="transfer", server="partners"), "9d 22h 0m 0s", "30m"),
    "SluiceCertificateExpiryCritical": (
        [series("sluice_operator_certificate_expiry_timestamp_seconds", dict(OPERATOR, namespace="transfer", server="partners"), "259200x100"),
         series("sluice_operator_certificate_expiry_timestamp_seconds", dict(OPERATOR, namespace="transfer", server="soon"), "864000x100")],
        "30m", dict(OPERATOR, namespace="transfer", server="partners"), "2d 23h 30m 0s", "5m"),
    "SluiceCertificateRenewalFailing": (
        [series("sluice_operator_reconcile_failures_total", dict(OPERATOR, reason="CertificateError"), "0+4x60"),
         series("sluice_operator_reconcile_failures_total", dict(OPERATOR, pod="sluice-operator-old", reason="ApiError"), "0+4x60")],
        "30m", pick(OPERATOR, "namespace", "pod"), None, "10m"),
    "SluiceServerDown": (
        [series("up", POD0, "0x30"), series("up", POD1, "1x30"), series("up", OPERATOR, "0x30")],
        "10m", POD0, None, "3m"),
    "SluiceServerNotReady": (
        [series("sluice_ready", POD0, "0x30"), series("sluice_ready", POD1, "1x30")],
        "10m", POD0, None, "3m"),
    "SluiceSessionsNearLimit": (
        [series("sluice_sessions_active", POD0, "900x30"), series("sluice_sessions_max", POD0, "1000x30"),
         series("sluice_sessions_active", POD1, "100x30"), series("sluice_sessions_max", POD1, "1000x30")],
        "15m", POD0, "90%", "5m"),
    "SluiceSessionsRefused": (
        [series("sluice_sessions_refused_total", dict(POD0, reason="total"), "0+60x40"),
         series("sluice_sessions_refused_total", dict(POD1, reason="total"), "7x40")],
        "30m", dict(pick(POD0, "namespace", "server", "pod"), reason="total"), "1", "10m"),
    "SluiceLoginFailureRateHigh": (
        [series("sluice_logins_total", dict(POD0, protocol="sftp", result="failure"), "0+300x40"),
         series("sluice_logins_total", dict(POD0, protocol="ftps", result="success"), "0+600x40"),
         series("sluice_logins_total", dict(POD1, protocol="ftps", result="failure"), "0+30x40")],
        "20m", dict(pick(POD0, "namespace", "server", "pod"), protocol="sftp"), "5", "5m"),
    "SluiceBanRateHigh": (
        [series("sluice_bans_total", dict(POD0, scope="ip"), "0+2x30"),
         series("sluice_bans_total", dict(POD1, scope="ip"), "0+0x30"),
         series("sluice_bans_total", dict(POD1, scope="peer_ip"), "0+5x30")],
        "20m", pick(POD0, "namespace", "server", "pod"), "30", None),
    "SluiceBansActive": (
        [series("sluice_bans_active", dict(POD0, scope="ip"), "3x20"),
         series("sluice_bans_active", dict(POD1, scope="ip"), "0x20"),
         series("sluice_bans_active", dict(POD1, scope="peer_ip"), "5x20")],
        "10m", dict(pick(POD0, "namespace", "server", "pod"), scope="ip"), "3", "2m"),
    "SluiceBanSyncRefused": (
        [series("sluice_ban_sync_requests_total", dict(POD0, result="401"), "0+6x30"),
         series("sluice_ban_sync_requests_total", dict(POD1, result="200"), "0+30x30"),
         series("sluice_ban_sync_requests_total", dict(POD1, result="404"), "0+6x30")],
        "20m", dict(pick(POD0, "namespace", "server", "pod"), result="401"), None, "5m"),
    "SluiceConfigReloadRejected": (
        [series("sluice_config_reloads_total", dict(POD0, result="rejected"), "0 0 0 1 1 1 1 1 1 1"),
         series("sluice_config_reloads_total", dict(POD1, result="applied"), "0+1x9")],
        "5m", pick(POD0, "namespace", "server", "pod"), None, None),
    "SluiceDataConnectionsRejected": (
        [series("sluice_data_connections_rejected_total", dict(POD0, reason="foreign_address"), "0+1x30"),
         series("sluice_data_connections_rejected_total", dict(POD1, reason="foreign_address"), "0+0.2x30")],
        "20m", dict(pick(POD0, "namespace", "server", "pod"), reason="foreign_address"), "10", None),
    "SluiceBudgetRefusals": (
        [series("sluice_budget_exceeded_total", dict(POD0, budget="maxOpenHandlesPerUser"), "0+1x30"),
         series("sluice_budget_exceeded_total", dict(POD1, budget="maxOpenHandlesPerUser"), "0+0.2x30")],
        "20m", dict(pick(POD0, "namespace", "server", "pod"), budget="maxOpenHandlesPerUser"), "10", None),
    "SluiceScannerFailing": (
        [series("sluice_scans_total", dict(POD0, result="scanner_error"), "0 0 0 1 2 2 2 2 2 2"),
         series("sluice_scans_total", dict(POD1, result="scanner_error"), "0x9"),
         series("sluice_scans_total", dict(POD1, result="clean"), "0+5x9")],
        "5m", pick(POD0, "namespace", "server", "pod"), "2", None),
    "SluiceInfectedUploads": (
        [series("sluice_scans_total", dict(POD0, result="infected"), "0 0 0 1 1 1 1 1 1 1"),
         series("sluice_scans_total", dict(POD1, result="infected"), "0x9"),
         series("sluice_scans_total", dict(POD1, result="clean"), "0+5x9")],
        "5m", pick(POD0, "namespace", "server", "pod"), "1", None),
    "SluiceQuotaNearlyFull": (
        [series("sluice_quota_used_bytes", dict(POD0, user="acme"), "950x30"),
         series("sluice_quota_max_bytes", dict(POD0, user="acme"), "1000x30"),
         series("sluice_quota_used_bytes", dict(POD1, user="beta"), "100x30"),
         series("sluice_quota_max_bytes", dict(POD1, user="beta"), "1000x30")],
        "20m", dict(pick(POD0, "namespace", "server"), user="acme"), "95%", "5m"),
    "SluiceEventsUndelivered": (
        [series("sluice_events_oldest_undelivered_seconds", POD0, "0+60x30"),
         series("sluice_events_oldest_undelivered_seconds", POD1, "0x30")],
        "20m", pick(POD0, "namespace", "server", "pod"), "20m 0s", "12m"),
    "SluiceEventsDropped": (
        [series("sluice_events_dropped_total", dict(POD0, reason="full"), "0 0 0 3 3 3 3 3 3 3"),
         series("sluice_events_dropped_total", dict(POD1, reason="full"), "0x9"),
         series("sluice_events_deliveries_total", dict(POD1, sink="ingest", result="ok"), "0+5x9")],
        "5m", pick(POD0, "namespace", "server", "pod"), "3", None),
    "SluiceOperatorDown": (
        [series("up", OPERATOR, "0x30"), series("up", POD0, "0x30")],
        "15m", OPERATOR, None, "5m"),
    "SluiceOperatorReconcileErrors": (
        [series("sluice_operator_reconcile_failures_total", dict(OPERATOR, reason="ApiError"), "0+2x40"),
         series("sluice_operator_reconcile_failures_total", dict(OPERATOR, reason="InvalidSpec"), "1x40")],
        "30m", dict(pick(OPERATOR, "namespace", "pod"), reason="ApiError"), None, "10m"),
    "SluiceBanSyncFailing": (
        [series("sluice_operator_ban_sync_total", dict(OPERATOR, result="unreachable"), "0+1x40"),
         series("sluice_operator_ban_sync_total", dict(OPERATOR, result="updated"), "0+30x40")],
        "30m", dict(pick(OPERATOR, "namespace", "pod"), result="unreachable"), None, "10m"),
}


def render_annotation(template: str, labels: dict, value: str | None) -> str:
    """The annotation as Prometheus renders it for these labels ($value already formatted)."""
    def label(match):
        return labels[match.group(1)]
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", label, template)
    if "$value" in text:
        assert value is not None, f"the case must give the rendered value for: {template}"
        text = re.sub(r"\{\{ \$value(?: \| \w+)? \}\}", value, text)
    assert "{{" not in text, text
    return text


def promtool_tests(alerts: list[dict]) -> dict:
    by_name = {a["alert"]: a for a in alerts}
    groups = []
    for name, (inputs, fire_at, labels, value, quiet_at) in CASES.items():
        rule = by_name[name]
        expected = {
            "exp_labels": dict(labels, severity=rule["labels"]["severity"]),
            "exp_annotations": {k: render_annotation(v, labels, value) if k != "runbook_url" else v
                                for k, v in rule["annotations"].items()},
        }
        checks = [{"eval_time": fire_at, "alertname": name, "exp_alerts": [expected]}]
        if quiet_at:
            checks.append({"eval_time": quiet_at, "alertname": name, "exp_alerts": []})
        groups.append({"name": name, "interval": "1m", "input_series": inputs, "alert_rule_test": checks})
    return {"rule_files": ["sluice-rules.yaml"], "evaluation_interval": "1m", "tests": groups}


def test_promtool_version(promtool):
    result = subprocess.run([promtool, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    pinned = re.search(r'^VERSION="(v[0-9.]+)"', (Path(__file__).parent / "install-promtool.sh").read_text(), re.M).group(1)
    assert f"promtool, version {pinned} " in result.stdout, result.stdout


def test_rules_pass_promtool_check(promtool, rules_file):
    result = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(CASES)} rules found" in result.stdout, result.stdout


def test_check_rules_catches_a_broken_expression(promtool, rules_file, tmp_path):
    """The check above can fail: a rule file with a broken expression is refused."""
    broken = rules_file.read_text().replace("sluice_ready == 0", "sluice_ready == == 0", 1)
    assert broken != rules_file.read_text()
    path = tmp_path / "broken.yaml"
    path.write_text(broken)
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_every_alert_has_a_case(alerts):
    assert sorted(a["alert"] for a in alerts) == sorted(CASES)


def test_every_alert_fires_and_stays_silent(promtool, alerts, rules_file):
    path = rules_file.parent / "sluice-rules.test.yaml"
    path.write_text(yaml.safe_dump(promtool_tests(alerts), sort_keys=False, width=1000))
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120,
                            cwd=rules_file.parent)
    assert result.returncode == 0, f"{path}:\n{result.stdout}{result.stderr}"
    assert "SUCCESS" in result.stdout + result.stderr


def test_unit_tests_fail_on_a_wrong_expectation(promtool, alerts, rules_file):
    """The unit tests can fail: expecting an alert on the silent series is reported."""
    tests = promtool_tests(alerts)
    group = next(g for g in tests["tests"] if g["name"] == "SluiceServerNotReady")
    group["alert_rule_test"][0]["exp_alerts"][0]["exp_labels"]["pod"] = "partners-1"
    tests["tests"] = [group]
    path = rules_file.parent / "wrong.test.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False, width=1000))
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120,
                            cwd=rules_file.parent)
    assert result.returncode != 0, result.stdout


def test_every_alert_names_its_object_and_links_its_runbook(alerts):
    doc = (ROOT / "docs" / "operations.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", doc, flags=re.M)}
    for alert in alerts:
        name, annotations = alert["alert"], alert["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, name
        for key in ("summary", "description"):
            assert "$labels.namespace" in annotations[key], (name, key)
            assert "$labels.pod" in annotations[key] or "$labels.server" in annotations[key], (name, key)
        url, _, anchor = annotations["runbook_url"].partition("#")
        assert url.endswith("docs/operations.md"), name
        assert anchor == name.lower(), name
        assert anchor in anchors, f"{name}: docs/operations.md has no section #{anchor}"


def test_rule_thresholds_follow_values(helm):
    (rule,) = helm_template(helm, "prometheusRule.enabled=true", "prometheusRule.runbookUrl=https://example.test/ops.md",
                            set_json=("prometheusRule.sessionsUsedRatio=0.5",), show_only="templates/prometheusrule.yaml")
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert rules["SluiceSessionsNearLimit"]["expr"].endswith("> 0.5")
    assert rules["SluiceServerDown"]["annotations"]["runbook_url"] == "https://example.test/ops.md#sluiceserverdown"


@pytest.mark.parametrize("values,kinds", [
    ([], set()),
    (["serverPodMonitor.enabled=true", "prometheusRule.enabled=true", "grafanaDashboard.enabled=true"],
     {"PodMonitor", "PrometheusRule", "ConfigMap"}),
], ids=["off-by-default", "enabled"])
def test_monitoring_objects_are_opt_in(helm, values, kinds):
    docs = helm_template(helm, *values)
    present = {d["kind"] for d in docs} & {"PodMonitor", "PrometheusRule", "ConfigMap"}
    assert present == kinds
