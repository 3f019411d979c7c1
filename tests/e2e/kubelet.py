"""A test-only "process kubelet": it stands in for a node, because no container runtime runs here.

The control plane of the e2e suite (cluster.py) has no kubelet, so the Pods that the StatefulSet
controller creates for a FileTransferServer would stay Pending forever. `ProcessKubelet` plays
the node's part for exactly those Pods (label `app.kubernetes.io/name=sluice-server`), running
each one as a local `sluice-server` process:

- It registers a Node `process-node` (Ready, heartbeat every few seconds so the node lifecycle
  controller never taints it) and binds unscheduled Pods to it through the `pods/binding`
  subresource (no scheduler runs either).
- It materialises the Pod's ConfigMap and Secret volumes with the kubelet's on-disk layout:
  a timestamped directory `..2026_01_31_12_00_00.123456789`, a `..data` symlink to it and one
  symlink per key (`users.yaml -> ..data/users.yaml`). A change is written to a new timestamped
  directory and published by atomically renaming a fresh symlink over `..data`, as the kubelet's
  AtomicWriter does, so the server's hot reload of users.yaml and the TLS files is exercised
  exactly as in a cluster. PersistentVolumeClaim volumes become a directory per claim (shared by
  every Pod that mounts the claim, kept when a Pod is recreated); emptyDir a directory per Pod.
- The container's ports cannot be bound on 127.0.0.1 by every Pod, so the kubelet writes a local
  copy of the `server.yaml` that the Pod's args name (`run --config /etc/sluice/config/server.yaml`)
  with listeners and the passive range mapped to free loopback ports, `dataRoot`, `usersFile`,
  TLS paths, `scanning.quarantineDir` and the `storage.objectStore` credential files mapped to
  the materialised directories, and the
  advertised passive address removed (PASV then answers with 127.0.0.1, the control
  connection's local address). The copy is rewritten, atomically, whenever the ConfigMap
  changes. `ports(pod)` gives the mapping
  (container port name → local port), `passive_range(pod)` the local passive range.
- It starts the server with the Pod's args and env (plus HOSTNAME = Pod name, as a kubelet
  sets it), stdout (the JSON audit log) to `audit_log(pod)` and stderr to `server_log(pod)`;
  a process that exits is restarted with `restartCount` incremented.
- Each Pod gets its own loopback address as podIP (from a /24 in 127.0.0.0/8 picked at random
  per kubelet, so that concurrent suites on one machine do not collide), and its health
  listener is bound there on the container's own port (`podIP:8080`), as in a cluster: the
  operator reaches a pod's `/bans` endpoints through `status.podIP` and the `health` container
  port (bans across replicas). Every other listener stays on a free port of 127.0.0.1.
  (EndpointSlices refuse loopback addresses, so the endpoint-slice controller cannot publish
  these pods; nothing here routes Service traffic anyway.)
- It writes Pod status through `pods/status`: phase Running, the podIP, hostIP 127.0.0.1,
  container state,
  and the `Ready`/`ContainersReady` conditions from polling the server's `/readyz` on its health
  port, so the StatefulSet controller and the operator see real readiness.
- A Pod with a deletionTimestamp has its process stopped (SIGTERM, then SIGKILL after the grace
  period) and is then removed with grace period 0, as a kubelet confirms a deletion; the
  StatefulSet controller then creates a new Pod (new UID), which gets a new process.

It talks to the API server with the admin credentials of the `Cluster` (a real kubelet would use
`system:node:<name>`); it is test scaffolding, not part of what is tested for RBAC.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

NODE_NAME = "process-node"
POD_SELECTOR = "app.kubernetes.io/name=sluice-server"
HOST_IP = "127.0.0.1"
# Each Pod's health listener binds its podIP (a loopback address) on the container's port.
HEALTH_PORT_NAME = "health"


def _pod_network() -> str:
    """A random loopback /24 (as a prefix such as "127.93.17."), per kubelet."""
    return f"127.{random.randrange(64, 250)}.{random.randrange(0, 256)}."


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class ApiError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: str):
        self.status = status
        super().__init__(f"{method} {path} -> {status}: {body[:500]}")


class _Api:
    """Minimal JSON client for the API server (admin client certificate)."""

    def __init__(self, server: str, ssl_context):
        self.server = server
        self.ctx = ssl_context

    def request(self, method: str, path: str, body=None,
                content_type: str = "application/json", timeout: float = 10.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.server + path, data=data, method=method,
            headers={"Content-Type": content_type, "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, method, path, e.read().decode(errors="replace")) from None
        return json.loads(raw) if raw else None

    def get(self, path: str):
        return self.request("GET", path)

    def get_opt(self, path: str):
        try:
            return self.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def merge_patch(self, path: str, body):
        return self.request("PATCH", path, body, "application/merge-patch+json")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_range_lock = threading.Lock()
_taken_ranges: list[tuple[int, int]] = []


def _free_range(count: int) -> int:
    """The first port of `count` consecutive free loopback ports, below the ephemeral range."""
    with _range_lock:
        for _ in range(500):
            start = random.randrange(20000, 32000 - count)
            end = start + count - 1
            if any(not (end < a or start > b) for a, b in _taken_ranges):
                continue
            if all(_port_free(p) for p in range(start, end + 1)):
                _taken_ranges.append((start, end))
                return start
    raise RuntimeError(f"no {count} consecutive free ports found")


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Volumes with the kubelet's layout
# --------------------------------------------------------------------------------------------


class AtomicVolume:
    """A ConfigMap/Secret volume directory written like the kubelet's AtomicWriter."""

    def __init__(self, path: Path):
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, bytes] | None = None
        self.mode: int | None = None
        self.generation = 0

    def write(self, files: dict[str, bytes], mode: int) -> bool:
        """Publish `files` (relative path → content); returns whether anything changed."""
        if files == self.files and mode == self.mode:
            return False
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("..%Y_%m_%d_%H_%M_%S.%f")
        ts_dir = self.path / stamp
        n = 0
        while ts_dir.exists():
            n += 1
            ts_dir = self.path / f"{stamp}{n}"
        ts_dir.mkdir()
        for rel, content in files.items():
            target = ts_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(mode)
        # Swap ..data atomically: a fresh symlink renamed over the old one.
        tmp_link = self.path / "..data_tmp"
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        os.symlink(ts_dir.name, tmp_link)
        old_target = os.readlink(self.path / "..data") if (self.path / "..data").is_symlink() else None
        os.rename(tmp_link, self.path / "..data")
        # User-visible names: one symlink per top-level path component.
        wanted = {PurePosixPath(rel).parts[0] for rel in files}
        for name in wanted:
            link = self.path / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        for entry in self.path.iterdir():
            if entry.name.startswith(".."):
                continue
            if entry.is_symlink() and entry.name not in wanted:
                entry.unlink()
        if old_target and old_target != ts_dir.name:
            shutil.rmtree(self.path / old_target, ignore_errors=True)
        self.files = dict(files)
        self.mode = mode
        self.generation += 1
        return True


# --------------------------------------------------------------------------------------------
# One Pod run as a process
# --------------------------------------------------------------------------------------------


@dataclass
class PodProcess:
    namespace: str
    name: str
    uid: str
    root: Path
    pod: dict
    volumes: dict[str, AtomicVolume] = field(default_factory=dict)
    dirs: dict[str, Path] = field(default_factory=dict)  # volume name -> local directory
    port_map: dict[int, int] = field(default_factory=dict)  # container port -> local port
    port_names: dict[str, int] = field(default_factory=dict)  # port name -> local port
    passive: tuple[int, int] | None = None  # local passive range
    proc: subprocess.Popen | None = None
    started_at: str | None = None
    pod_started_at: str = field(default_factory=_now)
    restarts: int = 0
    ready: bool = False
    last_status: dict | None = None
    config_path: Path | None = None
    config_source: bytes | None = None
    waiting_reason: str | None = "ContainerCreating"
    waiting_message: str = ""
    next_start: float = 0.0
    last_exit: int | None = None
    pod_ip: str = ""
    _files: list = field(default_factory=list)

    @property
    def container(self) -> dict:
        return self.pod["spec"]["containers"][0]

    @property
    def audit_log(self) -> Path:
        return self.root / "stdout.log"

    @property
    def server_log(self) -> Path:
        return self.root / "stderr.log"

    def container_path(self, path: str) -> str:
        """Map a path inside the container to the local directory of its volume."""
        best = None
        for m in self.container.get("volumeMounts", []):
            mp = m["mountPath"].rstrip("/")
            if (path == mp or path.startswith(mp + "/")) and (best is None or len(mp) > len(best[0])):
                best = (mp, m)
        if best is None or best[1]["name"] not in self.dirs:
            return path
        mp, m = best
        base = self.dirs[m["name"]]
        if m.get("subPath"):
            base = base / m["subPath"]
        rest = path[len(mp):].lstrip("/")
        return str(base / rest) if rest else str(base)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for f in self._files:
            f.close()
        self._files.clear()
        self.ready = False


class ProcessKubelet:
    def __init__(self, cluster, server_bin: str | os.PathLike, workdir: str | os.PathLike,
                 *, interval: float = 0.5):
        self.cluster = cluster
        self.api = _Api(cluster.server, cluster._admin_ssl)
        self.server_bin = str(server_bin)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.interval = interval
        self.log_path = self.workdir / "kubelet.log"
        self._log = open(self.log_path, "a", buffering=1)
        self._lock = threading.RLock()
        self._pods: dict[str, PodProcess] = {}  # uid -> process
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_heartbeat = 0.0
        self._next_ip = 0
        self.pod_network = _pod_network()
        self.errors: list[str] = []
        self.history: list[PodProcess] = []  # every pod ever run, for logs after a failure
        # Volumes not updated while named here, "<namespace>/<pod>/<volume>": a kubelet's
        # Secret-volume sync is slow (about a minute) in a real cluster; tests hold it back.
        self.held_volumes: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "ProcessKubelet":
        self._register_node()
        self._thread = threading.Thread(target=self._loop, name="process-kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)
        with self._lock:
            for p in self._pods.values():
                p.stop(grace=5)
            self._pods.clear()
        self._log.close()

    def log(self, msg: str) -> None:
        self._log.write(f"{_now()} {msg}\n")

    # -- what tests use ----------------------------------------------------------------------

    def _by_name(self, pod: str, namespace: str | None = None) -> PodProcess:
        with self._lock:
            found = [p for p in self._pods.values()
                     if p.name == pod and (namespace is None or p.namespace == namespace)]
        if not found:
            raise KeyError(f"no running pod {namespace or '*'}/{pod}")
        return found[-1]

    def running(self, pod: str, namespace: str | None = None) -> PodProcess | None:
        try:
            p = self._by_name(pod, namespace)
        except KeyError:
            return None
        return p if p.alive() else None

    def ports(self, pod: str, namespace: str | None = None) -> dict[str, int]:
        return dict(self._by_name(pod, namespace).port_names)

    def passive_range(self, pod: str, namespace: str | None = None) -> tuple[int, int] | None:
        return self._by_name(pod, namespace).passive

    def pid(self, pod: str, namespace: str | None = None) -> int | None:
        p = self._by_name(pod, namespace)
        return p.proc.pid if p.alive() else None

    def audit_log(self, pod: str, namespace: str | None = None) -> Path:
        return self._by_name(pod, namespace).audit_log

    def server_log(self, pod: str, namespace: str | None = None) -> Path:
        return self._by_name(pod, namespace).server_log

    def volume_dir(self, pod: str, volume: str, namespace: str | None = None) -> Path:
        return self._by_name(pod, namespace).dirs[volume]

    def pods(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return [(p.namespace, p.name, p.uid) for p in self._pods.values()]

    def log_tails(self, lines: int = 30) -> str:
        out = [f"===== process kubelet {self.log_path} =====",
               "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
               if self.log_path.exists() else "(no log)"]
        for p in self.history[-6:]:
            for path in (p.server_log,):
                text = path.read_text(errors="replace") if path.exists() else "(no log)"
                out.append(f"===== {p.namespace}/{p.name} ({p.uid[:8]}) {path} =====")
                out.append("\n".join(text.splitlines()[-lines:]))
        return "\n".join(out)

    # -- node --------------------------------------------------------------------------------

    def _register_node(self) -> None:
        if self.api.get_opt(f"/api/v1/nodes/{NODE_NAME}") is None:
            self.api.request("POST", "/api/v1/nodes", {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": NODE_NAME, "labels": {
                    "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
                    "sluice.dev/process-kubelet": "true"}},
            })
        self._heartbeat(force=True)

    def _heartbeat(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_heartbeat < 5:
            return
        now = _now()
        self.api.merge_patch(f"/api/v1/nodes/{NODE_NAME}/status", {"status": {
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "process kubelet (test stand-in) is posting ready status",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }],
            "addresses": [{"type": "InternalIP", "address": HOST_IP},
                          {"type": "Hostname", "address": NODE_NAME}],
            "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
            "nodeInfo": {"kubeletVersion": "process-kubelet", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "process://0",
                         "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
                         "bootID": "", "kernelVersion": "", "osImage": "test"},
        }})
        self._last_heartbeat = time.monotonic()

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        api_down = False
        while not self._stop.is_set():
            try:
                self.sync_once()
                if api_down:
                    api_down = False
                    # Like a real kubelet after an outage: post node and pod status again (the
                    # node lifecycle controller may have marked them NotReady meanwhile).
                    self.log("API server reachable again: re-posting node and pod status")
                    self._heartbeat(force=True)
                    with self._lock:
                        for p in self._pods.values():
                            p.last_status = None
            except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout) as e:
                # The API server is down (a test stops it on purpose): keep every running
                # process as it is, as a real kubelet does, and retry.
                if not api_down:
                    api_down = True
                    self.log(f"API server unreachable ({e!r}): keeping {len(self._pods)} pod(s) running")
            except ApiError as e:
                if e.status >= 500:  # an API server still starting up
                    api_down = True
                else:
                    msg = f"sync failed: {e!r}\n{traceback.format_exc()}"
                    self.log(msg)
                    self.errors.append(msg)
            except Exception as e:  # noqa: BLE001 - logged, the loop goes on
                msg = f"sync failed: {e!r}\n{traceback.format_exc()}"
                self.log(msg)
                self.errors.append(msg)
            self._stop.wait(self.interval)

    def sync_once(self) -> None:
        self._heartbeat()
        sel = urllib.parse.quote(POD_SELECTOR)
        pods = self.api.get(f"/api/v1/pods?labelSelector={sel}")["items"]
        seen = set()
        for pod in pods:
            meta, spec = pod["metadata"], pod["spec"]
            ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
            node = spec.get("nodeName")
            if not node:
                if not meta.get("deletionTimestamp"):
                    self._bind(ns, name, uid)
                continue
            if node != NODE_NAME:
                continue
            seen.add(uid)
            if meta.get("deletionTimestamp"):
                self._terminate(pod)
                continue
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                continue
            with self._lock:
                p = self._pods.get(uid)
                if p is None:
                    root = self.workdir / "pods" / f"{ns}_{name}_{uid[:8]}"
                    root.mkdir(parents=True, exist_ok=True)
                    p = PodProcess(ns, name, uid, root, pod)
                    p.pod_ip = self._allocate_pod_ip(pod)
                    self._pods[uid] = p
                    self.history.append(p)
                    self.log(f"pod {ns}/{name} ({uid}) admitted")
                p.pod = pod
            try:
                self._sync_pod(p)
            except Exception as e:  # noqa: BLE001 - one pod's failure must not stop others
                msg = f"pod {ns}/{name}: {e!r}\n{traceback.format_exc()}"
                self.log(msg)
                self.errors.append(msg)
        with self._lock:
            gone = [uid for uid in self._pods if uid not in seen]
            for uid in gone:
                p = self._pods.pop(uid)
                self.log(f"pod {p.namespace}/{p.name} ({uid}) gone from the API: stopping")
                p.stop(grace=5)

    def _allocate_pod_ip(self, pod: dict) -> str:
        """The next loopback address of this kubelet's pod network whose health port is free."""
        health = [port["containerPort"] for c in pod["spec"]["containers"]
                  for port in c.get("ports", []) if port.get("name") == HEALTH_PORT_NAME]
        for _ in range(250):
            self._next_ip += 1
            ip = f"{self.pod_network}{self._next_ip % 250 + 2}"
            if all(_bindable(ip, port) for port in health):
                return ip
        raise RuntimeError(f"no free pod address in {self.pod_network}0/24")

    def pod_ip(self, pod: str, namespace: str | None = None) -> str:
        return self._by_name(pod, namespace).pod_ip

    def _bind(self, ns: str, name: str, uid: str) -> None:
        try:
            self.api.request("POST", f"/api/v1/namespaces/{ns}/pods/{name}/binding", {
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": ns, "uid": uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
            })
            self.log(f"bound {ns}/{name} to {NODE_NAME}")
        except ApiError as e:
            if e.status not in (404, 409):
                raise

    def _terminate(self, pod: dict) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        with self._lock:
            p = self._pods.pop(uid, None)
        if p is not None:
            grace = float(meta.get("deletionGracePeriodSeconds") or 30)
            self.log(f"pod {ns}/{name} ({uid}) deleting: stopping its process (grace {grace}s)")
            p.stop(grace=min(grace, 15))
        # Confirm the deletion as a kubelet does once the containers are gone.
        try:
            self.api.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", {
                "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid},
            })
        except ApiError as e:
            if e.status not in (404, 409):
                raise

    # -- one pod -----------------------------------------------------------------------------

    def _source_files(self, p: PodProcess, src: dict, kind: str,
                      secrets: dict[str, dict]) -> tuple[dict[str, bytes] | None, str]:
        """Files of one ConfigMap or Secret source (a volume, or one source of a projected
        volume): `items` applied, {} for a missing optional one, None while a required one is
        missing (the second value then says why)."""
        if kind == "configMap":
            name = src["name"]
            obj = self.api.get_opt(f"/api/v1/namespaces/{p.namespace}/configmaps/{name}")
            data = None
            if obj is not None:
                data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
                data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
            what = f"configmap {name}"
        else:
            name = src.get("secretName") or src.get("name")
            if not secrets:
                # One list per sync, not one GET per source: a projected users volume names
                # up to 64 shard Secrets, most of them absent.
                listed = self.api.get_opt(f"/api/v1/namespaces/{p.namespace}/secrets") or {}
                secrets.update({i["metadata"]["name"]: i for i in listed.get("items") or []})
                secrets.setdefault("", {})
            obj = secrets.get(name)
            data = None if obj is None else {
                k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
            what = f"secret {name}"
        if data is None:
            if src.get("optional"):
                return {}, ""
            return None, f"{what} not found"
        if src.get("items"):
            files = {}
            for item in src["items"]:
                if item["key"] in data:
                    files[item["path"]] = data[item["key"]]
                elif not src.get("optional"):
                    return None, f"{what} has no key {item['key']}"
            data = files
        return data, ""

    def _volume_sources(self, p: PodProcess) -> dict[str, tuple[dict[str, bytes], int]] | None:
        """Contents of every ConfigMap/Secret/projected volume, or None while one is missing."""
        out = {}
        secrets: dict[str, dict] = {}
        p.waiting_message = ""
        for vol in p.pod["spec"].get("volumes", []):
            vname = vol["name"]
            if "configMap" in vol or "secret" in vol:
                kind = "configMap" if "configMap" in vol else "secret"
                src = vol[kind]
                data, why = self._source_files(p, src, kind, secrets)
                if data is None:
                    p.waiting_message = f'MountVolume.SetUp failed for volume "{vname}": {why}'
                    return None
                out[vname] = (data, src.get("defaultMode", 0o644))
            elif "projected" in vol:
                files: dict[str, bytes] = {}
                for source in vol["projected"].get("sources") or []:
                    kind = "configMap" if "configMap" in source else "secret" if "secret" in source else None
                    if kind is None:
                        continue
                    data, why = self._source_files(p, source[kind], kind, secrets)
                    if data is None:
                        p.waiting_message = f'MountVolume.SetUp failed for volume "{vname}": {why}'
                        return None
                    files.update(data)
                out[vname] = (files, vol["projected"].get("defaultMode", 0o644))
        return out

    def _ensure_dirs(self, p: PodProcess) -> None:
        for vol in p.pod["spec"].get("volumes", []):
            vname = vol["name"]
            if vname in p.dirs:
                continue
            if "configMap" in vol or "secret" in vol or "projected" in vol:
                p.volumes[vname] = AtomicVolume(p.root / "volumes" / vname)
                p.dirs[vname] = p.volumes[vname].path
            elif "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                d = self.workdir / "claims" / p.namespace / claim
                d.mkdir(parents=True, exist_ok=True)
                p.dirs[vname] = d
            else:  # emptyDir and anything else: per-pod scratch
                d = p.root / "volumes" / vname
                d.mkdir(parents=True, exist_ok=True)
                p.dirs[vname] = d

    def _allocate_ports(self, p: PodProcess, server_yaml: dict) -> None:
        if p.port_map:
            return
        for port in p.container.get("ports", []):
            cport = port["containerPort"]
            if port.get("name", "").startswith("pasv-"):
                continue
            if port.get("name") == HEALTH_PORT_NAME:
                # Bound on the pod's own address and port, where the operator reaches it.
                p.port_map[cport] = cport
                p.port_names[HEALTH_PORT_NAME] = cport
                continue
            local = _free_port()
            p.port_map[cport] = local
            if port.get("name"):
                p.port_names[port["name"]] = local
        passive = server_yaml.get("passive") or {}
        if "portStart" in passive and "portEnd" in passive:
            count = int(passive["portEnd"]) - int(passive["portStart"]) + 1
            start = _free_range(count)
            p.passive = (start, start + count - 1)
            for i in range(count):
                p.port_map[int(passive["portStart"]) + i] = start + i
                p.port_names[f"pasv-{int(passive['portStart']) + i}"] = start + i

    def _local_listener(self, p: PodProcess, address: str) -> str:
        port = int(address.rsplit(":", 1)[1])
        if p.port_names.get(HEALTH_PORT_NAME) == port:
            return f"{p.pod_ip}:{port}"
        if port not in p.port_map:
            p.port_map[port] = _free_port()
        return f"127.0.0.1:{p.port_map[port]}"

    def _write_local_config(self, p: PodProcess, source: bytes) -> None:
        cfg = yaml.safe_load(source)
        self._allocate_ports(p, cfg)
        local = copy.deepcopy(cfg)
        local["dataRoot"] = p.container_path(cfg["dataRoot"])
        local["usersFile"] = p.container_path(cfg["usersFile"])
        for key in ("certFile", "keyFile", "clientCaFile"):
            if (cfg.get("tls") or {}).get(key):
                local["tls"][key] = p.container_path(cfg["tls"][key])
        for key, value in (cfg.get("listeners") or {}).items():
            if value:
                local["listeners"][key] = self._local_listener(p, value)
        if local.get("passive") and p.passive:
            local["passive"]["portStart"], local["passive"]["portEnd"] = p.passive
            # PASV then answers with the control connection's local address, 127.0.0.1.
            local["passive"].pop("advertisedAddress", None)
            local["passive"].pop("advertisedAddressByHost", None)
        if (cfg.get("ssh") or {}).get("hostKeyFiles"):
            local["ssh"]["hostKeyFiles"] = [p.container_path(f) for f in cfg["ssh"]["hostKeyFiles"]]
        if ((cfg.get("bans") or {}).get("sync") or {}).get("tokenFile"):
            local["bans"]["sync"]["tokenFile"] = p.container_path(cfg["bans"]["sync"]["tokenFile"])
        if (local.get("audit") or {}).get("file"):
            local["audit"]["file"] = p.container_path(cfg["audit"]["file"])
        if (cfg.get("scanning") or {}).get("quarantineDir"):
            local["scanning"]["quarantineDir"] = p.container_path(cfg["scanning"]["quarantineDir"])
        events = local.get("events") or {}
        if events.get("outboxDir"):
            events["outboxDir"] = p.container_path(events["outboxDir"])
        for sink in (events.get("webhooks") or []) + (events.get("nats") or []):
            for key in ("caFile", "secretFile", "credentialsDir"):
                if sink.get(key):
                    sink[key] = p.container_path(sink[key])
        store = (local.get("storage") or {}).get("objectStore")
        if store:
            # The Secret volumes of the credentials and CA; the endpoint stays as it is (an
            # object store on the host's 127.0.0.1 is reachable from every "pod" process).
            for key in ("accessKeyIdFile", "secretAccessKeyFile", "caFile"):
                if store.get(key):
                    store[key] = p.container_path(store[key])
        Path(local["dataRoot"]).mkdir(parents=True, exist_ok=True)
        p.config_path = p.root / "config" / "server.yaml"
        p.config_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(p.config_path, yaml.safe_dump(local, sort_keys=False).encode())
        p.config_source = source

    def _config_arg(self, p: PodProcess) -> str | None:
        args = list(p.container.get("args", []))
        for i, a in enumerate(args):
            if a in ("--config", "-c") and i + 1 < len(args):
                return args[i + 1]
            if a.startswith("--config="):
                return a.split("=", 1)[1]
        return None

    def _sync_pod(self, p: PodProcess) -> None:
        self._ensure_dirs(p)
        sources = self._volume_sources(p)
        if sources is None:
            p.waiting_reason = "ContainerCreating"
            self._post_status(p)
            return
        for vname, (files, mode) in sources.items():
            if (f"{p.namespace}/{p.name}/{vname}" in self.held_volumes
                    and p.volumes[vname].generation > 0):
                continue
            if p.volumes[vname].write(files, mode) and p.volumes[vname].generation > 1:
                self.log(f"pod {p.namespace}/{p.name}: volume {vname} updated (..data swapped)")
        config_arg = self._config_arg(p)
        if config_arg is None:
            raise RuntimeError(f"pod {p.name}: no --config in args {p.container.get('args')}")
        source = Path(p.container_path(config_arg)).read_bytes()
        if source != p.config_source:
            self._write_local_config(p, source)
            if p.proc is not None:
                self.log(f"pod {p.namespace}/{p.name}: server.yaml changed; local copy rewritten")
        if not p.alive():
            if p.proc is not None:
                code = p.proc.returncode
                p.last_exit = code
                p.restarts += 1
                self.log(f"pod {p.namespace}/{p.name}: server exited {code}; restart #{p.restarts}")
                p.stop(grace=0)
                p.proc = None
                p.next_start = time.monotonic() + min(10, 2 ** p.restarts)
            if time.monotonic() >= p.next_start:
                self._start_process(p)
        p.ready = p.alive() and self._probe(p)
        self._post_status(p)

    def _start_process(self, p: PodProcess) -> None:
        args = []
        it = iter(p.container.get("args", []))
        for a in it:
            if a in ("--config", "-c"):
                next(it, None)
                args += [a, str(p.config_path)]
            elif a.startswith("--config="):
                args.append(f"--config={p.config_path}")
            elif a.startswith("/"):
                args.append(p.container_path(a))
            else:
                args.append(a)
        command = p.container.get("command") or []
        if command and os.path.basename(command[0]) != "sluice-server":
            raise RuntimeError(f"pod {p.name}: cannot run command {command!r} (only sluice-server)")
        args = [*command[1:], *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        for e in p.container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
        env["HOSTNAME"] = p.name
        out = open(p.audit_log, "ab")
        err = open(p.server_log, "ab")
        err.write(f"$ {self.server_bin} {' '.join(args)}  # {_now()}\n".encode())
        err.flush()
        p._files = [out, err]
        p.proc = subprocess.Popen(
            [self.server_bin, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            env=env, cwd=str(p.root), start_new_session=True,
        )
        p.started_at = _now()
        p.waiting_reason = None
        self.log(f"pod {p.namespace}/{p.name}: started pid {p.proc.pid} ports {p.port_names}")

    def _probe(self, p: PodProcess) -> bool:
        health = p.port_names.get("health")
        if health is None:
            return True
        try:
            with urllib.request.urlopen(f"http://{p.pod_ip}:{health}/readyz", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _post_status(self, p: PodProcess) -> None:
        now = _now()
        prev = {c["type"]: c for c in (p.last_status or {}).get("conditions", [])}

        def cond(type_: str, ok: bool, reason: str | None = None) -> dict:
            status = "True" if ok else "False"
            old = prev.get(type_)
            c = {"type": type_, "status": status, "lastProbeTime": None,
                 "lastTransitionTime": old["lastTransitionTime"] if old and old["status"] == status else now}
            if reason and not ok:
                c["reason"] = reason
            return c

        c = p.container
        running = p.alive()
        if running:
            state = {"running": {"startedAt": p.started_at}}
        elif p.waiting_reason:
            state = {"waiting": {"reason": p.waiting_reason, **({"message": p.waiting_message} if p.waiting_message else {})}}
        else:
            state = {"waiting": {"reason": "CrashLoopBackOff",
                                 "message": f"sluice-server exited {p.last_exit}"}}
        cstatus = {
            "name": c["name"], "image": c.get("image", ""), "imageID": "",
            "containerID": f"process://{p.proc.pid}" if running else "",
            "ready": p.ready, "started": running, "restartCount": p.restarts, "state": state,
        }
        status = {
            "phase": "Running" if running or p.restarts else "Pending",
            "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}],
            "podIP": p.pod_ip, "podIPs": [{"ip": p.pod_ip}],
            "startTime": p.pod_started_at,
            "qosClass": p.pod.get("status", {}).get("qosClass", "BestEffort"),
            "conditions": [
                cond("PodScheduled", True),
                cond("Initialized", True),
                cond("ContainersReady", p.ready, "ContainersNotReady"),
                cond("Ready", p.ready, "ContainersNotReady"),
            ],
            "containerStatuses": [cstatus],
        }
        comparable = json.loads(json.dumps(status))
        if p.last_status is not None and _strip_times(p.last_status) == _strip_times(comparable):
            return
        try:
            self.api.merge_patch(f"/api/v1/namespaces/{p.namespace}/pods/{p.name}/status",
                                 {"metadata": {"uid": p.uid}, "status": status})
        except ApiError as e:
            if e.status in (404, 409, 422):  # the pod was deleted or replaced meanwhile
                return
            raise
        if (p.last_status or {}).get("containerStatuses", [{}])[0].get("ready") != p.ready:
            self.log(f"pod {p.namespace}/{p.name}: Ready={p.ready}")
        p.last_status = comparable


def _strip_times(status: dict) -> dict:
    s = copy.deepcopy(status)
    for c in s.get("conditions", []):
        c.pop("lastTransitionTime", None)
    return s
