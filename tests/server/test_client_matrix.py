"""The client matrix (tests/clients/): real client libraries from their registries (Maven Central,
PyPI, the Go module proxy, npm) and the Debian command-line clients, each logging in, uploading
3 MiB, listing, downloading with a SHA-256 comparison and resuming a download against the real
server. Rows and their expected outcome are declared in tests/clients/matrix.py; docs/clients.md's
table is generated from the same rows (test_docs_table_is_generated_from_the_matrix)."""

from __future__ import annotations

import base64
import ftplib
import hashlib
import io
import json
import os
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from conftest import REPO, keygen

sys.path.insert(0, str(REPO / "tests" / "clients"))
import gen_docs  # noqa: E402
import matrix  # noqa: E402

CLIENTS = REPO / "tests" / "clients"
PAYLOAD_BYTES = 3 * 1024 * 1024 + 4099
RESUME_OFFSET = 1024 * 1024 + 7
RESULTS = Path(os.environ.get("SLUICE_MATRIX_RESULTS", Path.home() / ".cache/sluice/clients/results.jsonl"))


@pytest.fixture(scope="session")
def installed() -> dict[str, str]:
    proc = subprocess.run(["bash", str(CLIENTS / "install.sh")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


@pytest.fixture(scope="session")
def payload(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("matrix") / "payload.bin"
    path.write_bytes(os.urandom(PAYLOAD_BYTES))
    return path


@pytest.fixture(scope="session")
def client_key(tmp_path_factory) -> Path:
    return keygen(tmp_path_factory.mktemp("matrix-keys") / "partner", "partner")


@pytest.fixture(scope="session")
def unknown_key(tmp_path_factory) -> Path:
    return keygen(tmp_path_factory.mktemp("matrix-unknown") / "unknown", "unknown")


@pytest.fixture(scope="session", autouse=True)
def results_file():
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("")
    yield RESULTS


def matrix_server(make_server, user_entry, client_key, case: matrix.Case):
    pub = Path(str(client_key) + ".pub").read_text().strip()
    users = [
        user_entry("partner", sshAuthorizedKeys=[pub]),
        user_entry("legacy", ftpsDataBinding="addressAndLease"),
    ]
    config = {"ssh": {"profile": "compatibility"}} if case.setting == matrix.COMPAT_PROFILE else {}
    return make_server(users=users, config=config)


def user_for(case: matrix.Case) -> str:
    return "legacy" if case.setting == matrix.LEGACY_BINDING else "partner"


# ------------------------------------------------------------------------------------------
# Runners: each returns the lines of the helper contract (tests/clients/README.md)
# ------------------------------------------------------------------------------------------


def helper_env(srv, case, payload, client_key, remote) -> dict:
    user = user_for(case)
    port = {"FTPS": srv.implicit_port if case.mode == "implicit" else srv.explicit_port,
            "SFTP": srv.sftp_port}[case.protocol]
    return {**os.environ, "MATRIX_HOST": "127.0.0.1", "MATRIX_PORT": str(port), "MATRIX_USER": user,
            "MATRIX_PASSWORD": srv.passwords[user], "MATRIX_KEY": str(client_key),
            "MATRIX_CA": str(srv.cafile), "MATRIX_KNOWN_HOSTS": str(srv.known_hosts),
            "MATRIX_PAYLOAD": str(payload), "MATRIX_REMOTE": remote,
            "MATRIX_RESUME_OFFSET": str(RESUME_OFFSET)}


def helper_args(case) -> list[str]:
    return [case.protocol.lower(), case.mode]


def run_helper(cmd: list[str], env: dict) -> list[str]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 and not any(line.startswith("error:") for line in lines):
        lines.append(f"error: exit {proc.returncode}: {proc.stderr[-2000:]}")
    return lines


def run_java(srv, case, payload, client_key, remote, installed, **_):
    return run_helper(["java", "-cp", installed["JAVA_CP"], str(CLIENTS / "java" / "Matrix.java"),
                       *helper_args(case)], helper_env(srv, case, payload, client_key, remote))


def run_go(srv, case, payload, client_key, remote, installed, **_):
    return run_helper([installed["GO_BIN"], *helper_args(case)], helper_env(srv, case, payload, client_key, remote))


def run_node(srv, case, payload, client_key, remote, installed, **_):
    env = helper_env(srv, case, payload, client_key, remote)
    env["NODE_PATH"] = str(Path(installed["NODE_DIR"]) / "node_modules")
    return run_helper(["node", str(CLIENTS / "node" / "matrix.js"), *helper_args(case)], env)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_paramiko(srv, case, payload, client_key, remote, unknown_key, **_):
    """As scripts call it: SSHClient.connect with key_filename and/or password."""
    data = payload.read_bytes()
    c = paramiko.SSHClient()
    c.load_host_keys(str(srv.known_hosts))
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    lines = []
    try:
        if case.mode.startswith("unknown key_filename"):
            c.connect("127.0.0.1", port=srv.sftp_port, username="partner", password=srv.passwords["partner"],
                      key_filename=str(unknown_key), look_for_keys=False, allow_agent=False,
                      timeout=15, auth_timeout=30, banner_timeout=15)
        else:
            c.connect("127.0.0.1", port=srv.sftp_port, username="partner", key_filename=str(client_key),
                      look_for_keys=False, allow_agent=False, timeout=15, auth_timeout=30, banner_timeout=15)
        lines.append("login ok")
        sftp = c.open_sftp()
        sftp.putfo(io.BytesIO(data), remote)
        lines.append("upload ok")
        attrs = {a.filename: a.st_size for a in sftp.listdir_attr(".")}
        assert attrs.get(remote) == len(data), attrs
        lines.append(f"listed {remote} {attrs[remote]}")
        out = io.BytesIO()
        sftp.getfo(remote, out)
        lines.append(f"sha256 {sha(out.getvalue())}")
        with sftp.open(remote, "rb") as f:
            f.seek(RESUME_OFFSET)
            assert f.read() == data[RESUME_OFFSET:]
        lines.append("resume ok")
        lines.append("done")
    except Exception as exc:  # noqa: BLE001 - reported as the row's outcome
        lines.append(f"error: {exc!r}")
    finally:
        c.close()
    return lines


def run_ftplib(srv, case, payload, client_key, remote, **_):
    data = payload.read_bytes()
    user = user_for(case)
    lines = []
    if case.id == "ftplib-resuming":
        ftp = srv.ftp(None)  # conftest's SluiceFTP: FTP_TLS passing session= on data sockets
    else:
        ftp = ftplib.FTP_TLS(context=srv.context(), timeout=15)
        ftp.connect("127.0.0.1", srv.explicit_port)
    try:
        ftp.login(user, srv.passwords[user])
        ftp.prot_p()
        lines.append("login ok")
        try:
            ftp.storbinary(f"STOR {remote}", io.BytesIO(data))
        except ftplib.error_temp as exc:
            lines.append(f"reply: {exc}")
            raise
        except (ssl.SSLError, OSError) as exc:
            # The data connection was dropped after 150: the reason is on the control connection.
            lines.append(f"upload exception: {exc!r}")
            try:
                reply = ftp.getresp()
            except ftplib.Error as error:
                reply = str(error)
            lines.append(f"reply: {reply}")
            raise
        lines.append("upload ok")
        sizes = {name: int(facts.get("size", -1)) for name, facts in ftp.mlsd()}
        assert sizes.get(remote) == len(data), sizes
        lines.append(f"listed {remote} {sizes[remote]}")
        chunks = []
        ftp.retrbinary(f"RETR {remote}", chunks.append)
        lines.append(f"sha256 {sha(b''.join(chunks))}")
        chunks = []
        ftp.retrbinary(f"RETR {remote}", chunks.append, rest=RESUME_OFFSET)
        assert b"".join(chunks) == data[RESUME_OFFSET:]
        lines.append("resume ok")
        ftp.quit()
        lines.append("done")
    except Exception as exc:  # noqa: BLE001 - reported as the row's outcome
        lines.append(f"error: {exc!r}")
        ftp.close()
    return lines


def run_curl(srv, case, payload, client_key, remote, tmp_path, **_):
    data = payload.read_bytes()
    user = user_for(case)
    lines = []
    if case.protocol == "FTPS":
        scheme, port = ("ftps", srv.implicit_port) if case.mode == "implicit" else ("ftp", srv.explicit_port)
        base = ["curl", "--silent", "--show-error", "--max-time", "60", "--ssl-reqd", "--cacert", str(srv.cafile),
                "--user", f"{user}:{srv.passwords[user]}"]
    else:
        scheme, port = "sftp", srv.sftp_port
        key_b64 = Path(str(srv.host_key) + ".pub").read_text().split()[1]
        pin = base64.b64encode(hashlib.sha256(base64.b64decode(key_b64)).digest()).decode().rstrip("=")
        base = ["curl", "--silent", "--show-error", "--max-time", "60", "--hostpubsha256", pin,
                "--user", f"{user}:{srv.passwords[user]}"]
    url = f"{scheme}://127.0.0.1:{port}/"
    steps = [
        ("login ok", [*base, "--list-only", url]),
        ("upload ok", [*base, "-T", str(payload), url + remote]),
        ("listed", [*base, "--list-only", url]),
        ("download", [*base, url + remote]),
        ("resume", [*base, "--continue-at", str(RESUME_OFFSET), url + remote]),
    ]
    for what, cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, timeout=90)
        if proc.returncode != 0:
            lines.append(f"error: {what}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')}")
            return lines
        if what == "listed":
            if remote.encode() not in proc.stdout.split():
                lines.append(f"error: listing lacks {remote}: {proc.stdout!r}")
                return lines
            lines.append(f"listed {remote} {len(data)}")
        elif what == "download":
            lines.append(f"sha256 {sha(proc.stdout)}")
        elif what == "resume":
            if proc.stdout != data[RESUME_OFFSET:]:
                lines.append("error: resumed download differs")
                return lines
            lines.append("resume ok")
        else:
            lines.append(what)
    lines.append("done")
    return lines


def run_lftp(srv, case, payload, client_key, remote, tmp_path, **_):
    data = payload.read_bytes()
    work = tmp_path / "lftp"
    work.mkdir()
    (work / remote).write_bytes(data)
    partial = work / "partial"
    partial.mkdir()
    # A partial download that `get -c` continues.
    (partial / remote).write_bytes(data[:RESUME_OFFSET])
    script = f"put {remote} -o {remote}\ncls -l\nget {remote} -o whole.bin\nlcd partial\nget -c {remote}\n"
    proc = srv.lftp(script, implicit=case.mode == "implicit", user=user_for(case), cwd=work, timeout=120)
    if proc.returncode != 0:
        return [f"error: exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}"]
    lines = ["login ok", "upload ok"]
    listing = proc.stdout.decode(errors="replace")
    if remote not in listing or str(len(data)) not in listing:
        return [*lines, f"error: listing lacks {remote}: {listing}"]
    lines.append(f"listed {remote} {len(data)}")
    lines.append(f"sha256 {sha((work / 'whole.bin').read_bytes())}")
    if (partial / remote).read_bytes() != data:
        return [*lines, "error: resumed download differs"]
    return [*lines, "resume ok", "done"]


def run_openssh(srv, case, payload, client_key, remote, tmp_path, **_):
    data = payload.read_bytes()
    work = tmp_path / "openssh"
    (work / "partial").mkdir(parents=True)
    (work / "partial" / remote).write_bytes(data[:RESUME_OFFSET])
    opts = ["-o", f"UserKnownHostsFile={srv.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "ConnectTimeout=15"]
    env = dict(os.environ)
    if case.mode == "key":
        opts += ["-i", str(client_key), "-o", "PasswordAuthentication=no"]
    else:
        script = work / "askpass.sh"
        script.write_text("#!/bin/sh\nprintf '%s\\n' '" + srv.passwords["partner"] + "'\n")
        script.chmod(0o700)
        env.update(SSH_ASKPASS=str(script), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        opts += ["-o", "BatchMode=no", "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password"]
    batch = f"put {payload} {remote}\nls -l\nget {remote} whole.bin\nreget {remote} partial/{remote}\n"
    proc = subprocess.run(["sftp", *opts, "-b", "-", "-P", str(srv.sftp_port), "partner@127.0.0.1"],
                          input=batch, capture_output=True, text=True, timeout=120, cwd=work, env=env)
    if proc.returncode != 0:
        return [f"error: exit {proc.returncode}: {proc.stderr[-2000:]}"]
    lines = ["login ok", "upload ok"]
    if not re.search(rf"\b{len(data)}\b.*\b{re.escape(remote)}\b", proc.stdout):
        return [*lines, f"error: listing lacks {remote}: {proc.stdout}"]
    lines.append(f"listed {remote} {len(data)}")
    lines.append(f"sha256 {sha((work / 'whole.bin').read_bytes())}")
    if (work / "partial" / remote).read_bytes() != data:
        return [*lines, "error: resumed download differs"]
    return [*lines, "resume ok", "done"]


RUNNERS = {"java": run_java, "go": run_go, "node": run_node, "paramiko": run_paramiko, "ftplib": run_ftplib,
           "curl": run_curl, "lftp": run_lftp, "openssh": run_openssh}


# ------------------------------------------------------------------------------------------
# The matrix
# ------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", matrix.CASES, ids=[c.id for c in matrix.CASES])
def test_client(case, make_server, user_entry, installed, payload, client_key, unknown_key, tmp_path):
    srv = matrix_server(make_server, user_entry, client_key, case)
    remote = f"{case.id}.bin"
    started = time.monotonic()
    lines = RUNNERS[case.runner](srv, case, payload, client_key, remote, installed=installed,
                                 unknown_key=unknown_key, tmp_path=tmp_path)
    elapsed = time.monotonic() - started
    output = "\n".join(lines)
    expected_sha = sha(payload.read_bytes())
    user = user_for(case)
    stored = srv.home(user) / remote
    if case.expect == matrix.PASS:
        outcome = matrix.PASS if lines and lines[-1] == "done" else "error"
    else:
        outcome = matrix.FAIL_425 if any(
            line.startswith("reply: 425") and "did not resume the control connection's session" in line
            for line in lines) else "error"
    with RESULTS.open("a") as f:
        f.write(json.dumps({"id": case.id, "client": case.client, "version": case.version,
                            "protocol": case.protocol, "mode": case.mode, "setting": case.setting,
                            "expected": case.expect, "outcome": outcome, "seconds": round(elapsed, 2)}) + "\n")
    assert outcome == case.expect, output
    if case.expect == matrix.PASS:
        for step in ("login ok", "upload ok", f"listed {remote} {PAYLOAD_BYTES}", f"sha256 {expected_sha}"):
            assert step in lines, (step, output)
        assert ("resume ok" in lines) == case.resume, output
        # What the server stored and audited, independent of the client's own report.
        assert sha(stored.read_bytes()) == expected_sha
        upload = srv.wait_event("transfer", direction="upload", result="ok", user=user)
        assert upload["sha256"] == expected_sha and upload["bytes"] == PAYLOAD_BYTES, upload
        if case.setting == matrix.LEGACY_BINDING:
            data = [e for e in srv.events("tls", channel="data") if e.get("user") == user]
            assert data and all(e["resumed"] is False and e["binding"] == "addressAndLease" for e in data), data
    else:
        # The refusal is the server's, with its audited reason, and nothing was stored.
        assert not stored.exists() or stored.stat().st_size == 0
        rejected = srv.wait_event("data_rejected", user=user)
        assert rejected["reason"] == "tls session not resumed"


def test_pinned_versions_are_what_runs(installed):
    jars = installed["JAVA_CP"]
    assert f"commons-net-{matrix.COMMONS_NET}.jar" in jars and f"jsch-{matrix.JSCH}.jar" in jars, jars
    node_modules = Path(installed["NODE_DIR"]) / "node_modules"
    for name, version in (("basic-ftp", matrix.BASIC_FTP), ("ssh2-sftp-client", matrix.SSH2_SFTP_CLIENT)):
        assert json.loads((node_modules / name / "package.json").read_text())["version"] == version
    modules = subprocess.run(["go", "version", "-m", installed["GO_BIN"]], capture_output=True, text=True,
                             check=True).stdout
    assert re.search(rf"github.com/jlaffaye/ftp\s+{re.escape(matrix.JLAFFAYE_FTP)}\b", modules), modules
    assert re.search(rf"github.com/pkg/sftp\s+{re.escape(matrix.PKG_SFTP)}\b", modules), modules
    assert paramiko.__version__ == matrix.PARAMIKO
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == matrix.PYTHON
    assert subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.startswith(
        f"curl {matrix.CURL} ")
    assert f"Version {matrix.LFTP} " in subprocess.run(["lftp", "--version"], capture_output=True, text=True).stdout
    assert f"OpenSSH_{matrix.OPENSSH} " in subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr


def test_docs_table_is_generated_from_the_matrix():
    committed = (REPO / "docs" / "clients.md").read_text()
    assert gen_docs.render(committed) == committed, (
        "docs/clients.md's client matrix is stale: run `python3 tests/clients/gen_docs.py`")
