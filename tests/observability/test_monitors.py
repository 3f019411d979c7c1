"""The chart's PodMonitor selects the pods the operator renders (labels and the health port
name as in src/render.rs) and the ServiceMonitor keeps the certificate gauge's labels."""

from __future__ import annotations

import re

from obs import ROOT, helm_template


def test_podmonitor_selects_the_operators_server_pods(helm):
    (monitor,) = helm_template(helm, "serverPodMonitor.enabled=true", "rbacScope=cluster",
                               show_only="templates/podmonitor.yaml")
    render = (ROOT / "src" / "render.rs").read_text()
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "sluice-server", "app.kubernetes.io/managed-by": "sluice-operator"}
    # The labels every server pod gets (render::labels) and the health port's name.
    assert re.search(r'"app\.kubernetes\.io/name"\.to_string\(\),\s*"sluice-server"', render)
    assert re.search(r'"app\.kubernetes\.io/managed-by"\.to_string\(\),\s*"sluice-operator"', render)
    assert 'container_port("health", CONTAINER_HEALTH)' in render
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "health" and endpoint["path"] == "/metrics"
    relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    assert relabel["job"]["replacement"] == "sluice-server"
    assert relabel["server"]["sourceLabels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"]
    assert monitor["spec"]["namespaceSelector"] == {"any": True}


def test_podmonitor_namespaces(helm):
    # The default (rbacScope: namespaces): the namespaces the operator watches.
    (scoped,) = helm_template(helm, "serverPodMonitor.enabled=true",
                              show_only="templates/podmonitor.yaml")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["sluice-system"]}
    (watched,) = helm_template(helm, "serverPodMonitor.enabled=true", "watchNamespaces={x,y}",
                               show_only="templates/podmonitor.yaml")
    assert watched["spec"]["namespaceSelector"] == {"matchNames": ["x", "y"]}
    (listed,) = helm_template(helm, "serverPodMonitor.enabled=true", "serverPodMonitor.namespaces={a,b}",
                              show_only="templates/podmonitor.yaml")
    assert listed["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}


def test_servicemonitor_keeps_server_labels(helm):
    (monitor,) = helm_template(helm, "serviceMonitor.enabled=true", show_only="templates/servicemonitor.yaml")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    assert {"targetLabel": "job", "replacement": "sluice-operator"} in endpoint["relabelings"]
