"""Every metric name the chart's alerts and dashboard query appears in a real scrape of
`sluice-server` (the demo, after FTPS and SFTP logins, a failed login and transfers) or of
`sluice-operator` (its /metrics needs no API server: the families are registered at start; it
is pointed at an unreachable one). A renamed metric fails here. `up` is the one name Prometheus
makes itself."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from obs import ROOT, dashboard_queries, metric_names, scrape_names

PROMETHEUS_MADE = {"up"}


def _binary(env: str, name: str) -> Path:
    path = os.environ.get(env)
    if path:
        return Path(path)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "debug" / name


def _free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def _get(url: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


FRESH: dict[str, str] = {}


@pytest.fixture(scope="module")
def server_scrape(tmp_path_factory) -> str:
    binary = _binary("SLUICE_SERVER_BIN", "sluice-server")
    if not binary.is_file():
        pytest.fail(f"sluice-server not found at {binary} (cargo build -p sluice-server or SLUICE_SERVER_BIN)")
    directory = tmp_path_factory.mktemp("demo")
    explicit, implicit, health, sftp = _free_ports(4)
    passive = _free_ports(1)[0]
    passive = min(passive, 65000)
    stderr = directory / "stderr.log"
    with open(stderr, "w") as err, open(directory / "stdout.jsonl", "w") as out:
        proc = subprocess.Popen([str(binary), "demo", "--dir", str(directory / "root"), "--explicit-port", str(explicit),
                                 "--implicit-port", str(implicit), "--health-port", str(health),
                                 "--passive-start", str(passive), "--sftp-port", str(sftp)], stdout=out, stderr=err)
    try:
        _get(f"http://127.0.0.1:{health}/readyz")
        FRESH["text"] = _get(f"http://127.0.0.1:{health}/metrics")
        password = re.search(r"password:\s+(\S+)", stderr.read_text()).group(1)
        cafile = directory / "root" / "tls.crt"
        curl = ["curl", "-sS", "--max-time", "20", "--ssl-reqd", "--cacert", str(cafile)]
        base = f"ftp://127.0.0.1:{explicit}/"
        subprocess.run(curl + ["-u", f"demo:{password}", base], check=True, capture_output=True)
        subprocess.run(curl + ["-u", f"demo:{password}", "-T", "-", base + "note.txt"], input=b"hello\n",
                       check=True, capture_output=True)
        subprocess.run(curl + ["-u", "demo:not the password", base], capture_output=True)
        known_hosts = directory / "root" / "known_hosts"
        subprocess.run(["sshpass", "-p", password, "sftp", "-P", str(sftp), "-o", f"UserKnownHostsFile={known_hosts}",
                        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=no", "demo@127.0.0.1"],
                       input=b"ls\nbye\n", capture_output=True, timeout=60)
        text = _get(f"http://127.0.0.1:{health}/metrics")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return text


@pytest.fixture(scope="module")
def operator_scrape(tmp_path_factory) -> str:
    binary = _binary("SLUICE_OPERATOR_BIN", "sluice-operator")
    if not binary.is_file():
        pytest.fail(f"sluice-operator not found at {binary} (cargo build -p sluice-operator or SLUICE_OPERATOR_BIN)")
    directory = tmp_path_factory.mktemp("operator")
    (unreachable,) = _free_ports(1)
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: none, cluster: {{server: "https://127.0.0.1:{unreachable}"}}}}]
users: [{{name: none, user: {{token: none}}}}]
contexts: [{{name: none, context: {{cluster: none, user: none}}}}]
current-context: none
""")
    (port,) = _free_ports(1)
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    env.pop("KUBERNETES_SERVICE_HOST", None)
    with open(directory / "operator.log", "w") as log:
        proc = subprocess.Popen([str(binary), "run", "--metrics-address", f"127.0.0.1:{port}"], env=env,
                                stdout=log, stderr=log)
    try:
        text = _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return text


def test_server_scrape_has_real_samples(server_scrape):
    """The scrape is of a server that did something: the logins and transfers are counted."""
    assert re.search(r'^sluice_logins_total\{protocol="ftps",result="success"\} [1-9]', server_scrape, re.M), server_scrape
    assert re.search(r'^sluice_logins_total\{protocol="ftps",result="failure"\} [1-9]', server_scrape, re.M), server_scrape
    assert re.search(r'^sluice_logins_total\{protocol="sftp",result="success"\} [1-9]', server_scrape, re.M), server_scrape
    assert re.search(r'^sluice_transfers_total\{direction="upload",result="ok"\} [1-9]', server_scrape, re.M), server_scrape
    assert re.search(r"^sluice_ready 1$", server_scrape, re.M), server_scrape
    assert re.search(r"^sluice_sessions_max [1-9]", server_scrape, re.M), server_scrape


def test_metric_name_extraction():
    """The extraction the name checks rely on finds names and skips everything else."""
    expr = ('histogram_quantile(0.95, sum by (le, kind) (rate(foo_bucket{job="x", a=~"$ns"}[5m]))) '
            '/ on (pod) group_left bar_total offset 5m > 3 * 86400 and up{job="y"} == 0 - time()')
    assert metric_names(expr) == {"foo_bucket", "bar_total", "up"}
    assert scrape_names("# TYPE a counter\n# TYPE h histogram\n# TYPE g gauge\nb_total 1\n") == \
        {"a_total", "h_bucket", "h_sum", "h_count", "g", "b_total"}


def test_alert_metrics_exist(alerts, server_scrape, operator_scrape):
    scraped = scrape_names(server_scrape) | scrape_names(operator_scrape) | PROMETHEUS_MADE
    used = {name for alert in alerts for name in metric_names(alert["expr"])}
    assert len(used) >= 15, used
    missing = used - scraped
    assert not missing, f"alerts query metrics no scrape has: {sorted(missing)}"


def test_dashboard_metrics_exist(dashboard, server_scrape, operator_scrape):
    scraped = scrape_names(server_scrape) | scrape_names(operator_scrape)
    used = {name for query in dashboard_queries(dashboard) for name in metric_names(query)}
    assert len(used) >= 15, used
    missing = used - scraped
    assert not missing, f"dashboard queries metrics no scrape has: {sorted(missing)}"


def test_a_renamed_metric_would_be_caught(alerts, server_scrape, operator_scrape):
    scraped = scrape_names(server_scrape) | scrape_names(operator_scrape)
    renamed = metric_names(alerts[0]["expr"].replace("sluice_", "sluice_renamed_"))
    assert renamed - scraped - PROMETHEUS_MADE


def test_labels_the_rules_group_by_exist(server_scrape):
    """Server-side label names the alerts and panels aggregate by are on the real samples."""
    for metric, label in [("sluice_logins_total", "protocol"), ("sluice_sessions_total", "listener"),
                          ("sluice_transfers_total", "direction"), ("sluice_transfer_bytes_total", "direction"),
                          ("sluice_bans_active", "scope")]:
        assert re.search(rf"^{metric}\{{[^}}]*\b{label}=", server_scrape, re.M), (metric, label)


# Series labelled by a configured event sink: the demo server has none. Each sink's series are
# created at 0 when the outbox opens (tests/server/test_events.py,
# test_alerted_event_counters_exist_at_zero_before_the_first_event).
PER_CONFIGURED_SINK = {"sluice_events_deliveries_total"}


def test_alerted_counters_exist_at_zero_before_the_first_event(alerts, server_scrape):
    """increase() cannot see the first event of a series that appears at 1: every counter
    series an alert selects with `label="value"` or `label=~"a|b"` is exported at 0 by a server
    that has not done anything yet (the first rejected reload, the first ban must fire)."""
    fresh = FRESH["text"]
    checked = 0
    for alert in alerts:
        for metric, matchers in re.findall(r"(sluice_(?!operator_)\w+_total)\{([^}]*)\}", alert["expr"]):
            if metric in PER_CONFIGURED_SINK:
                continue
            for label, op, value in re.findall(r'(\w+)\s*(=~|=)\s*"([^"]*)"', matchers):
                for one in value.split("|") if op == "=~" else [value]:
                    pattern = rf'^{metric}\{{[^}}]*\b{label}="{re.escape(one)}"[^}}]*\}} 0$'
                    assert re.search(pattern, fresh, re.M), f"{alert['alert']}: {metric}{{{label}=\"{one}\"}} not at 0 in\n{fresh}"
                    checked += 1
    assert checked >= 6, checked
