"""The e2e control plane itself: a real kube-apiserver (with etcd) serving the Sluice CRDs with
their CEL validation, and a real kube-controller-manager running the StatefulSet controller and
the garbage collector. Later operator tests build on exactly these behaviours."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from conftest import REPO, pinned_version

pytestmark = pytest.mark.timeout(300)

PASSWORD_HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$7Vz3kWQJ6d2QX0yH0o5eFg9D1kYpQ6tq0x8mQnUe3sA"


def transfer_user(name: str, **spec) -> dict:
    body = {
        "username": name,
        "serverRef": {"name": "files"},
        "permissions": ["list", "download"],
        "auth": {"passwordHash": PASSWORD_HASH},
    }
    body.update(spec)
    return {"apiVersion": "sluice.dev/v1alpha1", "kind": "TransferUser",
            "metadata": {"name": name.strip("-.").lower() or "x"}, "spec": body}


def test_server_version_is_the_pinned_release(cluster):
    want = pinned_version("k8s.io/kubernetes")
    v = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert v["serverVersion"]["gitVersion"] == want
    assert v["clientVersion"]["gitVersion"] == want
    assert (v["serverVersion"]["major"], v["serverVersion"]["minor"]) == ("1", want.split(".")[1])
    # etcd is the one built alongside it.
    etcd = cluster.bin_dir / "etcd"
    out = subprocess.run([str(etcd), "--version"], capture_output=True, text=True).stdout
    assert f"etcd Version: {pinned_version('go.etcd.io/etcd/server/v3').lstrip('v')}" in out


def test_crds_apply_and_are_served(crds):
    cluster = crds
    crd = cluster.kubectl_json("get", "crd", "filetransferservers.sluice.dev")
    assert crd["spec"]["group"] == "sluice.dev"
    assert crd["spec"]["names"]["shortNames"] == ["fts"]
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established.get("Established") == "True"
    assert established.get("NamesAccepted") == "True"
    resources = cluster.kubectl("api-resources", "--api-group=sluice.dev", "-o", "name").stdout
    assert set(resources.split()) == {"filetransferservers.sluice.dev", "transferusers.sluice.dev"}
    # Re-applying the generated files is a no-op (the files are what `sluice-operator crd` prints).
    out = cluster.kubectl("apply", "-f", str(REPO / "crds")).stdout
    assert out.count("unchanged") == 2, out


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"username": "-bad"}, "spec.username must be 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit"),
        ({"username": "a" * 65}, "spec.username must be 1-64"),
        ({"home": "../x"}, "spec.home must be relative and must not contain '..'"),
        ({"home": "/etc"}, "spec.home must be relative and must not contain '..'"),
        ({"home": "a/../../b"}, "spec.home must be relative and must not contain '..'"),
        ({"auth": {"passwordHash": PASSWORD_HASH, "passwordSecretRef": {"name": "s"}}},
         "spec.auth: set passwordSecretRef or passwordHash, not both"),
        ({"auth": {}}, "spec.auth: a password (secret or hash), at least one SSH key, or ftpsAuth certificate is required"),
        ({"auth": {}, "ftpsAuth": "certificateAndPassword"}, "spec.auth: a password (secret or hash)"),
        ({"permissions": ["list", "chmod"]}, 'Unsupported value: "chmod"'),
        ({"totp": {"secretRef": {"name": "t"}, "digits": 7}}, "spec.totp.digits must be 6 or 8"),
        ({"totp": {"secretRef": {"name": "t"}, "period": 5}}, "spec.totp.period must be 15-300 seconds"),
        ({"ftpsAuth": "token"}, 'Unsupported value: "token"'),
    ],
    ids=["username-dash", "username-long", "home-dotdot", "home-absolute", "home-escape",
         "auth-both", "auth-none", "auth-none-cert-and-password", "permission-enum", "totp-digits",
         "totp-period", "ftps-auth-enum"],
)
def test_invalid_transfer_user_is_rejected_by_the_api_server(crds, namespace, spec, message):
    cluster = crds
    obj = transfer_user("alice", **spec)
    proc = cluster.apply(obj, "-n", namespace, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "is invalid" in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert not cluster.exists("transferusers", "-n", namespace)


def test_certificate_only_user_with_totp_is_accepted(crds, namespace):
    cluster = crds
    user = transfer_user("carol", auth={}, ftpsAuth="certificate",
                         clientCertificates=[{"subject": "CN=carol,O=Partner"}],
                         totp={"secretRef": {"name": "carol-totp"}, "digits": 8})
    cluster.apply(user, "-n", namespace)
    got = cluster.kubectl_json("get", "tu", "carol", "-n", namespace)
    assert got["spec"]["clientCertificates"] == [{"subject": "CN=carol,O=Partner"}]
    assert got["spec"]["totp"] == {"secretRef": {"name": "carol-totp"}, "digits": 8}


def test_transfer_user_immutable_username(crds, namespace):
    cluster = crds
    cluster.apply(transfer_user("alice", home="data/alice"), "-n", namespace)
    changed = transfer_user("alice")
    changed["spec"]["username"] = "bob"
    proc = cluster.apply(changed, "-n", namespace, check=False)
    assert proc.returncode != 0
    assert "spec.username is immutable" in proc.stderr, proc.stderr
    got = cluster.kubectl_json("get", "tu", "alice", "-n", namespace)
    assert got["spec"]["username"] == "alice"
    assert got["spec"]["disabled"] is False  # structural-schema default applied by the server


def test_valid_file_transfer_server_is_accepted(crds, namespace):
    cluster = crds
    fts = {"apiVersion": "sluice.dev/v1alpha1", "kind": "FileTransferServer",
           "metadata": {"name": "files"}, "spec": {"protocols": ["ftpsExplicit", "sftp"]}}
    out = cluster.apply(fts, "-n", namespace).stdout
    assert "filetransferserver.sluice.dev/files created" in out
    table = cluster.kubectl("get", "fts", "-n", namespace).stdout
    header, row = table.splitlines()
    assert header.split() == ["NAME", "READY", "REPLICAS", "ENDPOINT", "USERS", "AGE"]
    assert row.split()[0] == "files"
    got = cluster.kubectl_json("get", "fts", "files", "-n", namespace)
    assert got["spec"]["replicas"] == 1
    assert got["spec"]["ports"] == {"ftpsExplicit": 21, "ftpsImplicit": 990, "sftp": 22}
    # Cross-field CEL on the same kind: more than one FTPS replica needs per-pod Services.
    bad = yaml.safe_load(yaml.safe_dump(fts))
    bad["metadata"]["name"] = "scaled"
    bad["spec"]["replicas"] = 2
    proc = cluster.apply(bad, "-n", namespace, check=False)
    assert proc.returncode != 0
    assert "spec.exposure.perPodServices must be true when spec.replicas > 1" in proc.stderr


def test_statefulset_controller_creates_pods(cluster, namespace):
    sts = {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "podManagementPolicy": "Parallel",  # OrderedReady would wait for web-0 to be Ready
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "example.invalid/none:1"}]},
            },
        },
    }
    cluster.apply(sts, "-n", namespace)
    uid = cluster.kubectl_json("get", "statefulset", "web", "-n", namespace)["metadata"]["uid"]

    def pods():
        items = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "app=web")["items"]
        return items if len(items) == 2 else None

    items = cluster.wait_for(pods, 90, "StatefulSet pods web-0 and web-1")
    assert sorted(p["metadata"]["name"] for p in items) == ["web-0", "web-1"]
    for p in items:
        (owner,) = p["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner.get("controller")) == ("StatefulSet", uid, True)
        assert p["status"]["phase"] == "Pending"  # no node here
        assert p["spec"]["serviceAccountName"] == "default"
    names = cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.split()
    assert names == ["pod/web-0", "pod/web-1"]

    # Deleting the StatefulSet lets the garbage collector remove its Pods.
    cluster.kubectl("delete", "statefulset", "web", "-n", namespace, "--cascade=background")
    cluster.wait_for(lambda: not cluster.exists("pods", "-n", namespace, "-l", "app=web"), 90,
                     "garbage collection of the StatefulSet's pods")


def test_garbage_collector_removes_dependents(cluster, namespace):
    cluster.kubectl("create", "configmap", "owner", "-n", namespace, "--from-literal=a=1")
    uid = cluster.kubectl_json("get", "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    dependent = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "dependent", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]},
        "data": {"b": "2"},
    }
    unrelated = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unrelated"}}
    cluster.apply([dependent, unrelated], "-n", namespace)
    assert cluster.exists("configmap", "dependent", "-n", namespace)

    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    cluster.wait_for(lambda: not cluster.exists("configmap", "dependent", "-n", namespace), 60,
                     "garbage collector to delete configmap/dependent")
    assert cluster.exists("configmap", "unrelated", "-n", namespace)


def test_service_account_kubeconfig_runs_under_its_rbac(cluster, namespace):
    ns = namespace
    cluster.kubectl("create", "serviceaccount", "op", "-n", ns)
    cluster.kubectl("create", "role", "cm-reader", "-n", ns, "--verb=get,list", "--resource=configmaps")
    cluster.kubectl("create", "rolebinding", "op-cm-reader", "-n", ns, "--role=cm-reader",
                    f"--serviceaccount={ns}:op")
    kc = cluster.service_account_kubeconfig("op", ns)
    who = cluster.kubectl_json("auth", "whoami", kubeconfig=kc)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:op"
    assert cluster.kubectl("get", "configmaps", kubeconfig=kc).returncode == 0
    denied = cluster.kubectl("get", "secrets", kubeconfig=kc, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    denied = cluster.kubectl("get", "configmaps", "-n", "default", kubeconfig=kc, check=False)
    assert "forbidden" in denied.stderr.lower()
