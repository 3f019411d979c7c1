"""A real, node-less Kubernetes control plane for the end-to-end tests.

`Cluster` runs etcd, kube-apiserver and kube-controller-manager (built from source by
build-k8s.sh) as local processes bound to 127.0.0.1, with their own CA, serving and client
certificates and service-account signing key, in a temporary directory. No kubelet or container
runtime runs: Pods are created (by the StatefulSet controller, say) but stay Pending.

    with Cluster(bin_dir) as c:
        c.kubectl("apply", "-f", "crds/")
        print(c.kubectl("get", "crd").stdout)

Every component logs to <workdir>/logs/<name>.log; when something fails the tails of those logs
are in the exception (and `Cluster.log_tails()`). `stop()` kills each component's process group
and removes the directory (kept when SLUICE_E2E_KEEP is set, or when startup failed).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

T = TypeVar("T")

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"  # configuration only; nothing routes to it
KUBERNETES_SERVICE_IP = "10.96.0.1"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")


class ClusterError(RuntimeError):
    pass


class KubectlError(ClusterError):
    def __init__(self, args: Sequence[str], proc: subprocess.CompletedProcess):
        self.args_ = list(args)
        self.proc = proc
        super().__init__(
            f"kubectl {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )


# --------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, orgs: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


@dataclass
class _CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, cn: str) -> "_CA":
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = _name(cn)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        cn: str,
        orgs: Sequence[str] = (),
        *,
        server: bool = False,
        client: bool = False,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
    ) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, orgs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _pem_cert(cert), _pem_key(key)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    _logf: object = field(default=None, repr=False)

    def start(self, env: dict[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.log, "ab")
        self._logf.write(("$ " + " ".join(self.argv) + "\n").encode())
        self._logf.flush()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group, killed as a whole in stop()
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left in the group (the leader or anything it forked) gets SIGKILL.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self._logf is not None:
            self._logf.close()
            self._logf = None


# --------------------------------------------------------------------------------------------
# Cluster
# --------------------------------------------------------------------------------------------


class Cluster:
    def __init__(
        self,
        bin_dir: str | os.PathLike,
        workdir: str | os.PathLike | None = None,
        *,
        keep: bool | None = None,
        startup_timeout: float = 180.0,
    ):
        self.bin_dir = Path(bin_dir)
        missing = [b for b in BINARIES if not os.access(self.bin_dir / b, os.X_OK)]
        if missing:
            raise ClusterError(f"missing binaries in {self.bin_dir}: {', '.join(missing)}")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sluice-e2e-k8s-"))
        self.keep = bool(os.environ.get("SLUICE_E2E_KEEP")) if keep is None else keep
        self.startup_timeout = startup_timeout
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.components: list[Component] = []
        self.etcd_port = 0
        self.apiserver_port = 0
        self.server = ""
        self._failed = False

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "Cluster":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._failed = True
        self.stop()

    def start(self) -> "Cluster":
        t0 = time.monotonic()
        try:
            self._make_pki()
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
            # The service-account controller creating `default` in `default` proves the
            # controller-manager is up, authorised and reconciling.
            self.wait_for(
                lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default",
                                     check=False).returncode == 0,
                timeout=self.startup_timeout,
                what="controller-manager to create serviceaccount default/default",
            )
        except BaseException as e:
            self._failed = True
            tails = self.log_tails()
            self.stop()
            if isinstance(e, ClusterError):
                raise ClusterError(f"{e}\n{tails}") from e
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        # Reverse order: controller-manager, apiserver, etcd.
        for comp in reversed(self.components):
            comp.stop()
        self.components.clear()
        if self.keep or self._failed:
            print(f"[cluster] kept {self.workdir}")
        elif self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def stop_apiserver(self) -> None:
        """Stops kube-apiserver (an outage); etcd and the controller-manager keep running."""
        self._component("kube-apiserver").stop()

    def start_apiserver(self) -> None:
        """Starts kube-apiserver again after `stop_apiserver`: same port, same etcd."""
        self._component("kube-apiserver").start(self._env())
        self.wait_for(lambda: self._http_ok(f"{self.server}/readyz", self._admin_ssl),
                      self.startup_timeout, "kube-apiserver /readyz after a restart")

    def mark_failed(self) -> None:
        """Keep the work directory (logs, certificates) after stop()."""
        self._failed = True

    def log_tails(self, lines: int = 40) -> str:
        out = []
        for comp in self.components:
            state = "running" if comp.alive() else f"exited {comp.proc.returncode if comp.proc else '-'}"
            out.append(f"===== {comp.name} ({state}) {comp.log} =====\n{_tail(comp.log, lines)}")
        return "\n".join(out)

    def check_alive(self, tails: bool = False) -> None:
        """Raise ClusterError if a component has exited (with the logs' tails if `tails`)."""
        dead = [c.name for c in self.components if not c.alive()]
        if dead:
            msg = f"component(s) exited: {', '.join(dead)}"
            raise ClusterError(f"{msg}\n{self.log_tails()}" if tails else msg)

    # -- setup -------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env.pop("ETCDCTL_API", None)
        env["HOME"] = str(self.workdir)  # keep kubectl's cache (~/.kube) in the work directory
        return env

    def _make_pki(self) -> None:
        ca = _CA.create("sluice-e2e-ca")
        self.ca_file = _write(self.pki / "ca.crt", _pem_cert(ca.cert), 0o644)
        self.ca_key_file = _write(self.pki / "ca.key", _pem_key(ca.key))
        cert, key = ca.issue(
            "kube-apiserver",
            server=True,
            dns=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local"],
            ips=["127.0.0.1", KUBERNETES_SERVICE_IP],
        )
        self.apiserver_cert = _write(self.pki / "apiserver.crt", cert, 0o644)
        self.apiserver_key = _write(self.pki / "apiserver.key", key)
        cert, key = ca.issue("sluice-e2e-admin", ["system:masters"], client=True)
        self.admin_cert = _write(self.pki / "admin.crt", cert, 0o644)
        self.admin_key = _write(self.pki / "admin.key", key)
        cert, key = ca.issue("system:kube-controller-manager", client=True)
        self.kcm_cert = _write(self.pki / "kube-controller-manager.crt", cert, 0o644)
        self.kcm_key = _write(self.pki / "kube-controller-manager.key", key)
        # Front-proxy (request-header) CA and client, as kubeadm sets up: without them the
        # controller-manager's delegated authentication logs errors every few seconds.
        fp = _CA.create("sluice-e2e-front-proxy-ca")
        self.front_proxy_ca = _write(self.pki / "front-proxy-ca.crt", _pem_cert(fp.cert), 0o644)
        cert, key = fp.issue("front-proxy-client", client=True)
        self.front_proxy_cert = _write(self.pki / "front-proxy-client.crt", cert, 0o644)
        self.front_proxy_key = _write(self.pki / "front-proxy-client.key", key)
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_key = _write(self.pki / "sa.key", _pem_key(sa))
        self.sa_pub = _write(
            self.pki / "sa.pub",
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            0o644,
        )

    def _launch(self, name: str, argv: list[str]) -> Component:
        comp = Component(name, argv, self.logs / f"{name}.log")
        self.components.append(comp)
        comp.start(self._env())
        return comp

    def _start_etcd(self) -> None:
        self.etcd_port, peer = _free_port(), _free_port()
        client_url, peer_url = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{peer}"
        data = self.workdir / "etcd"
        data.mkdir(mode=0o700)
        self._launch("etcd", [
            str(self.bin_dir / "etcd"),
            "--name=e2e",
            f"--data-dir={data}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=e2e={peer_url}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync=true",  # throwaway data; spares the shared disk
            "--log-level=warn",
        ])
        self.wait_for(lambda: self._http_ok(f"{client_url}/health"), 60, "etcd /health")

    def _start_apiserver(self) -> None:
        self.apiserver_port = _free_port()
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        self._launch("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={self.apiserver_cert}",
            f"--tls-private-key-file={self.apiserver_key}",
            f"--client-ca-file={self.ca_file}",
            f"--requestheader-client-ca-file={self.front_proxy_ca}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={self.front_proxy_cert}",
            f"--proxy-client-key-file={self.front_proxy_key}",
            "--authorization-mode=Node,RBAC",
            "--anonymous-auth=false",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={self.sa_pub}",
            f"--service-account-signing-key-file={self.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            # The master-endpoints reconciler would publish 127.0.0.1 in the `kubernetes`
            # Endpoints, which validation rejects (loopback); nothing here needs it.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--v=1",
        ])
        self._write_kubeconfig(
            self.kubeconfig, "sluice-e2e-admin",
            {"client-certificate": str(self.admin_cert), "client-key": str(self.admin_key)},
        )
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.admin_cert), str(self.admin_key))
        self._admin_ssl = ctx
        self.wait_for(lambda: self._http_ok(f"{self.server}/readyz", ctx), self.startup_timeout,
                      "kube-apiserver /readyz")

    def _start_controller_manager(self) -> None:
        kubeconfig = self._write_kubeconfig(
            self.workdir / "kube-controller-manager.kubeconfig", "system:kube-controller-manager",
            {"client-certificate": str(self.kcm_cert), "client-key": str(self.kcm_key)},
        )
        port = _free_port()
        self._launch("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'kcm-certs'}",
            "--leader-elect=false",
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.sa_key}",
            f"--root-ca-file={self.ca_file}",
            f"--cluster-signing-cert-file={self.ca_file}",
            f"--cluster-signing-key-file={self.ca_key_file}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--profiling=false",
            "--v=1",
        ])
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self.wait_for(lambda: self._http_ok(f"https://127.0.0.1:{port}/healthz", insecure),
                      self.startup_timeout, "kube-controller-manager /healthz")

    def _write_kubeconfig(self, path: Path, user: str, creds: dict) -> Path:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "sluice-e2e", "cluster": {
                "server": self.server, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": user, "user": creds}],
            "contexts": [{"name": "sluice-e2e", "context": {"cluster": "sluice-e2e", "user": user}}],
            "current-context": "sluice-e2e",
        }
        return _write(path, yaml.safe_dump(cfg, sort_keys=False))

    def _http_ok(self, url: str, ctx: ssl.SSLContext | None = None) -> bool:
        self.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    # -- helpers for tests -------------------------------------------------------------------

    def wait_for(self, fn: Callable[[], T], timeout: float = 60.0, what: str = "condition",
                 interval: float = 0.5) -> T:
        """Poll fn until it returns something truthy; return that value."""
        deadline = time.monotonic() + timeout
        last_exc: BaseException | None = None
        while True:
            try:
                value = fn()
                if value:
                    return value
            except ClusterError:
                raise
            except Exception as e:  # noqa: BLE001 - reported on timeout
                last_exc = e
            if time.monotonic() > deadline:
                detail = f" (last error: {last_exc!r})" if last_exc else ""
                raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
            time.sleep(interval)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: str | os.PathLike | None = None,
                timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run the built kubectl against this cluster (admin unless `kubeconfig` is given)."""
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}",
                *map(str, args)]
        proc = subprocess.run(argv, input=input, capture_output=True, text=True,
                              timeout=timeout, env=self._env())
        if check and proc.returncode != 0:
            raise KubectlError(args, proc)
        return proc

    def kubectl_json(self, *args: str, **kw) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json", **kw).stdout)

    def apply(self, manifest: str | dict | list, *extra: str, check: bool = True,
              **kw) -> subprocess.CompletedProcess:
        """`kubectl apply -f -` with a YAML string, an object or a list of objects."""
        if isinstance(manifest, dict):
            manifest = yaml.safe_dump(manifest, sort_keys=False)
        elif isinstance(manifest, list):
            manifest = yaml.safe_dump_all(manifest, sort_keys=False)
        return self.kubectl("apply", "-f", "-", *extra, input=manifest, check=check, **kw)

    def exists(self, *args: str, **kw) -> bool:
        proc = self.kubectl("get", *args, "--ignore-not-found", "-o", "name", check=False, **kw)
        if proc.returncode != 0:
            raise KubectlError(("get", *args), proc)
        return bool(proc.stdout.strip())

    def service_account_kubeconfig(self, name: str, namespace: str, *,
                                   duration: str = "24h",
                                   path: str | os.PathLike | None = None) -> Path:
        """A kubeconfig authenticating as ServiceAccount `namespace/name` with a bound token
        (`kubectl create token`), so a program runs under that account's RBAC only."""
        token = self.kubectl("create", "token", name, "-n", namespace,
                             f"--duration={duration}").stdout.strip()
        if not token:
            raise ClusterError(f"empty token for serviceaccount {namespace}/{name}")
        path = Path(path) if path else self.workdir / f"sa-{namespace}-{name}.kubeconfig"
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "sluice-e2e", "cluster": {
                "server": self.server, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": f"{namespace}:{name}", "user": {"token": token}}],
            "contexts": [{"name": "sluice-e2e", "context": {
                "cluster": "sluice-e2e", "user": f"{namespace}:{name}", "namespace": namespace}}],
            "current-context": "sluice-e2e",
        }
        return _write(path, yaml.safe_dump(cfg, sort_keys=False))
