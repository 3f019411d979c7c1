"""The operator as a process under the ServiceAccount and RBAC rules the Helm chart installs.

`Operator.install()` renders charts/sluice/templates/rbac.yaml and serviceaccount.yaml (chart.py)
for a release in its own namespace, applies them with admin rights, and starts `sluice-operator`
with the args and env of the chart's Deployment (metrics address made a free loopback port) and
a kubeconfig that authenticates as that ServiceAccount (a bound token),
so every API call the operator makes is authorised by the chart's rules and nothing else. A
request the rules do not allow shows up as "forbidden" in the operator's log, which
`forbidden_lines()` reports and the test fixtures turn into a failure.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from chart import Renderer

RELEASE = "sluice"
NAMESPACE = "sluice-system"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    def __init__(self, cluster, binary: str | os.PathLike, chart_dir: Path, workdir: Path, *,
                 release: str = RELEASE, namespace: str = NAMESPACE, values: dict | None = None):
        self.cluster = cluster
        self.release = release
        self.namespace = namespace
        self.values = values or {}
        self.binary = str(binary)
        self.chart_dir = chart_dir
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "operator.log"
        self.proc: subprocess.Popen | None = None
        self.metrics_port = 0
        self.kubeconfig: Path | None = None
        self._logf = None
        self.starts = 0

    def _renderer(self) -> Renderer:
        return Renderer(self.chart_dir, release=self.release, namespace=self.namespace,
                        values=self.values)

    def manifests(self) -> list[dict]:
        r = self._renderer()
        return r.render("serviceaccount.yaml") + r.render("rbac.yaml")

    def container(self) -> dict:
        """The operator container of the chart's Deployment (its args and env are used)."""
        (deployment,) = self._renderer().render("deployment.yaml")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        return container

    def install(self) -> "Operator":
        c = self.cluster
        if not c.exists("namespace", self.namespace):
            c.kubectl("create", "namespace", self.namespace)
        docs = self.manifests()
        c.apply(docs)
        (sa,) = [d for d in docs if d["kind"] == "ServiceAccount"]
        self.service_account = sa["metadata"]["name"]
        self.kubeconfig = c.service_account_kubeconfig(self.service_account, self.namespace,
                                                       path=self.workdir / "operator.kubeconfig")
        self.start()
        return self

    def start(self) -> None:
        self.metrics_port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        container = self.container()
        # The chart's env (plain values) and args, with the metrics port made free and local.
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = str(e["value"])
        args = list(container.get("args", []))
        if "--metrics-address" in args:
            args[args.index("--metrics-address") + 1] = f"127.0.0.1:{self.metrics_port}"
        else:
            args += ["--metrics-address", f"127.0.0.1:{self.metrics_port}"]
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["RUST_LOG"] = os.environ.get("SLUICE_OPERATOR_LOG", "info")
        env["POD_NAME"] = f"sluice-operator-e2e-{self.starts}"
        self._logf = open(self.log, "ab")
        self._logf.write(f"===== start #{self.starts} {time.strftime('%H:%M:%S')} =====\n".encode())
        self._logf.flush()
        self.proc = subprocess.Popen(
            [self.binary, *args],
            stdin=subprocess.DEVNULL, stdout=self._logf, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )
        self.starts += 1
        self.cluster.wait_for(self._metrics_up, 60, "operator metrics endpoint")

    def _metrics_up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"operator exited {self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # ctrl_c: the operator's clean shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._logf:
            self._logf.close()
            self._logf = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def forbidden_lines(self, since: int = 0) -> list[str]:
        """Log lines (from byte offset `since`) in which RBAC refused a request: the API
        server's `User "system:serviceaccount:..." cannot <verb> resource "<r>"` message (403s
        for other reasons, such as a namespace being terminated, are not RBAC denials)."""
        text = self.text()[since:]
        return [line for line in text.splitlines()
                if re.search(r'cannot [a-z]+ resource \\?"', line)]

    def offset(self) -> int:
        return len(self.text())
