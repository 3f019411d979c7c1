"""What a user does with real clients: ftplib, curl and lftp over explicit and implicit FTPS."""

import calendar
import ftplib
import hashlib
import os
import re
import time

import pytest

from conftest import blob

PASSWORD_MARK = "correct horse battery staple 42"  # DEFAULT_PASSWORD in conftest


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("tls_version", ["1.2", "1.3"])
def test_ftplib_roundtrip(make_server, implicit, tls_version):
    srv = make_server()
    data = blob(1_000_003)
    ftp = srv.ftp("alice", implicit=implicit, tls_version=tls_version)
    assert ftp.sock.version() == f"TLSv{tls_version}"
    assert ftp.pwd() == "/"
    ftp.upload("up.bin", data)
    assert ftp.last_data_resumed, "data connection did not resume the control session"
    assert (srv.home("alice") / "up.bin").read_bytes() == data
    assert ftp.download("up.bin") == data
    assert ftp.last_data_resumed
    # Several transfers in one session: each data connection must resume again.
    for _ in range(3):
        assert any("up.bin" in line for line in ftp.list_lines())
    names = [name for name, _facts in ftp.mlsd()]
    assert "up.bin" in names
    facts = dict(ftp.mlsd())["up.bin"]
    assert facts.get("type") == "file" and int(facts["size"]) == len(data)
    assert "up.bin" in ftp.nlst()
    ftp.voidcmd("TYPE I")  # SIZE may be refused in ASCII mode (RFC 3659 4.1)
    assert ftp.size("up.bin") == len(data)
    ftp.quit()


def test_rest_resumes_download_and_upload(server):
    data = blob(300_000, seed=2)
    ftp = server.ftp("alice")
    ftp.upload("f.bin", data)
    assert ftp.download("f.bin", rest=123_456) == data[123_456:]
    # Upload resume: first part, then REST + STOR of the remainder.
    ftp.upload("g.bin", data[:100_000])
    ftp.upload("g.bin", data[100_000:], rest=100_000)
    assert (server.home("alice") / "g.bin").read_bytes() == data
    assert ftp.size("g.bin") == len(data)
    ftp.quit()


def test_appe_appends(server):
    ftp = server.ftp("alice")
    ftp.upload("log.txt", b"first line\n")
    ftp.upload("log.txt", b"second line\n", cmd="APPE")
    assert ftp.download("log.txt") == b"first line\nsecond line\n"
    # APPE to a new file creates it.
    ftp.upload("new.txt", b"fresh", cmd="APPE")
    assert (server.home("alice") / "new.txt").read_bytes() == b"fresh"
    ftp.quit()


def test_rename_delete_mkdir_rmdir_cwd(server):
    ftp = server.ftp("alice")
    home = server.home("alice")
    assert "docs" in ftp.mkd("docs")
    assert (home / "docs").is_dir()
    ftp.cwd("docs")
    assert ftp.pwd() == "/docs"
    ftp.upload("a.txt", b"A")
    assert (home / "docs" / "a.txt").read_bytes() == b"A"
    ftp.rename("a.txt", "b.txt")
    assert not (home / "docs" / "a.txt").exists() and (home / "docs" / "b.txt").exists()
    ftp.rename("b.txt", "/moved.txt")
    assert (home / "moved.txt").read_bytes() == b"A"
    ftp.cwd("..")
    assert ftp.pwd() == "/"
    ftp.delete("moved.txt")
    assert not (home / "moved.txt").exists()
    ftp.rmd("docs")
    assert not (home / "docs").exists()
    ftp.sendcmd("CDUP")
    assert ftp.pwd() == "/"
    ftp.quit()


def test_size_mdtm_and_hashes(server):
    data = blob(77_777, seed=3)
    ftp = server.ftp("alice")
    ftp.upload("h.bin", data)
    digest = hashlib.sha256(data).hexdigest()
    assert ftp.size("h.bin") == len(data)

    mdtm = ftp.sendcmd("MDTM h.bin")
    m = re.match(r"213 (\d{14})(\.\d+)?$", mdtm)
    assert m, mdtm
    reported = calendar.timegm(time.strptime(m.group(1), "%Y%m%d%H%M%S"))
    actual = os.stat(server.home("alice") / "h.bin").st_mtime
    assert abs(reported - actual) < 2, (mdtm, actual)

    for cmd in ("HASH h.bin", "XSHA256 h.bin"):
        reply = ftp.sendcmd(cmd)
        assert reply.startswith("213"), reply
        assert digest in reply.lower(), (cmd, reply, digest)
    ftp.quit()


def test_a_file_with_holes_is_not_hashed(server):
    """A sparse file costs nothing to make but hashing it reads every zero (found by fuzzing):
    HASH answers an error naming the holes at once, and the session keeps serving."""
    with open(server.make_home("alice") / "sparse.bin", "wb") as f:
        f.truncate(1 << 40)
    ftp = server.ftp("alice")
    start = time.monotonic()
    with pytest.raises(ftplib.Error) as refused:
        ftp.sendcmd("HASH sparse.bin")
    assert "holes" in str(refused.value), refused.value
    assert time.monotonic() - start < 10
    assert ftp.size("sparse.bin") == 1 << 40
    assert ftp.voidcmd("NOOP").startswith("200")
    ftp.quit()


def test_feat_advertises_tls_before_login(server):
    sock, f, greeting = server.plain_control()
    try:
        assert greeting.startswith("220"), greeting
        sock.sendall(b"FEAT\r\n")
        from conftest import read_reply  # noqa: PLC0415 - helper, not a fixture

        feat = read_reply(f)
        assert feat.startswith("211"), feat
        assert "AUTH TLS" in feat and "PROT" in feat and "PBSZ" in feat, feat
    finally:
        sock.close()


def test_epsv(server):
    ftp = server.ftp("alice")
    reply = ftp.sendcmd("EPSV")
    m = re.match(r"229 .*\(\|\|\|(\d+)\|\)", reply)
    assert m, reply
    port = int(m.group(1))
    assert server.passive_range[0] <= port <= server.passive_range[1], (port, server.passive_range)
    ftp.quit()

    ftp = server.ftp("alice")
    reply = ftp.sendcmd("PASV")
    from ftplib import parse227

    host, port = parse227(reply)
    assert host == "127.0.0.1"
    assert server.passive_range[0] <= port <= server.passive_range[1]
    ftp.quit()


def test_audit_events_for_a_session(server):
    data = blob(123_457, seed=4)
    ftp = server.ftp("alice")
    ftp.upload("audit.bin", data)
    assert ftp.download("audit.bin") == data
    ftp.retrlines("LIST", lambda _l: None)
    ftp.quit()

    up = server.wait_event("transfer", direction="upload")
    assert up["sha256"] == hashlib.sha256(data).hexdigest()
    assert up["bytes"] == len(data)
    assert up["result"] == "ok"
    assert up["path"].endswith("audit.bin")
    assert isinstance(up["duration_ms"], (int, float))
    down = server.wait_event("transfer", direction="download")
    assert down["bytes"] == len(data) and down["result"] == "ok"
    server.wait_event("transfer", direction="list")
    server.wait_event("disconnect")

    session = up["session"]
    mine = [e for e in server.events() if e.get("session") == session]
    kinds = [e["event"] for e in mine]
    for kind in ("connect", "tls", "login", "command", "transfer", "disconnect"):
        assert kind in kinds, (kind, kinds)
    for e in mine:
        assert e["protocol"] == "ftps"
        assert e["ip"] == "127.0.0.1"
        assert e["ts"]
    connect = next(e for e in mine if e["event"] == "connect")
    assert connect["listener"] == "explicit"
    login = next(e for e in mine if e["event"] == "login")
    assert login["result"] == "success" and login["user"] == "alice"
    assert up["user"] == "alice"
    tls = [e for e in mine if e["event"] == "tls"]
    control = [e for e in tls if e["channel"] == "control"]
    data_tls = [e for e in tls if e["channel"] == "data"]
    assert control and data_tls, tls
    assert control[0]["version"] and control[0]["cipher"]
    assert all(e["resumed"] is True for e in data_tls), data_tls
    commands = [e for e in mine if e["event"] == "command"]
    assert any(e["command"].upper().startswith("STOR") and str(e["code"]).startswith("2") for e in commands), commands
    # The password never reaches the audit log, in any form.
    text = server.stdout_path.read_text()
    assert PASSWORD_MARK not in text
    # Every stdout line is a JSON audit event.
    import json

    for line in server.audit_lines():
        obj = json.loads(line)
        assert "event" in obj and "ts" in obj, line


def test_audit_file_mirrors_stdout(server):
    data = b"mirror me"
    ftp = server.ftp("alice")
    ftp.upload("m.txt", data)
    ftp.quit()
    server.wait_event("transfer", direction="upload")
    deadline = time.time() + 5
    while time.time() < deadline:
        text = server.audit_file.read_text() if server.audit_file.exists() else ""
        if hashlib.sha256(data).hexdigest() in text:
            break
        time.sleep(0.1)
    assert hashlib.sha256(data).hexdigest() in text, text[-2000:]


def test_implicit_session_is_audited_as_implicit(server):
    ftp = server.ftp("alice", implicit=True)
    ftp.quit()
    server.wait_event("connect", listener="implicit")


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_curl(server, tmp_path, implicit):
    data = blob(2_000_000, seed=5)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    r = server.curl("-T", str(src), implicit=implicit, path="/curl.bin")
    assert r.returncode == 0, r.stderr.decode()
    assert (server.home("alice") / "curl.bin").read_bytes() == data
    dst = tmp_path / "dst.bin"
    r = server.curl("-o", str(dst), implicit=implicit, path="/curl.bin")
    assert r.returncode == 0, r.stderr.decode()
    assert dst.read_bytes() == data
    r = server.curl(implicit=implicit, path="/")
    assert r.returncode == 0, r.stderr.decode()
    assert b"curl.bin" in r.stdout
    # Resume a download with a byte range (REST).
    r = server.curl("-C", "1000000", "-o", "-", implicit=implicit, path="/curl.bin")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == data[1_000_000:]
    # Rename and delete via quote commands.
    r = server.curl("-Q", "RNFR curl.bin", "-Q", "RNTO renamed.bin", "-Q", "DELE renamed.bin", implicit=implicit,
                    path="/")
    assert r.returncode == 0, r.stderr.decode()
    assert not (server.home("alice") / "curl.bin").exists()
    assert not (server.home("alice") / "renamed.bin").exists()


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_lftp(server, tmp_path, implicit):
    data = blob(1_500_000, seed=6)
    (tmp_path / "l.bin").write_bytes(data)
    script = "\n".join([
        "mkdir dir1",
        "cd dir1",
        "put l.bin",
        "ls",
        "get l.bin -o back.bin",
        "mv l.bin l2.bin",
        "cls -1",
        "cd /",
        "mkdir dir2",
        "rmdir dir2",
        "quit",
    ])
    r = server.lftp(script, implicit=implicit, cwd=tmp_path)
    out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    assert r.returncode == 0, out
    assert (tmp_path / "back.bin").read_bytes() == data
    home = server.home("alice")
    assert (home / "dir1" / "l2.bin").read_bytes() == data
    assert not (home / "dir2").exists()
    assert "l2.bin" in out
    r = server.lftp("rm dir1/l2.bin\nrmdir dir1\nquit", implicit=implicit, cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert not (home / "dir1").exists()


def test_large_transfer_both_ways(server):
    data = os.urandom(16 * 1024 * 1024)
    ftp = server.ftp("alice")
    start = time.monotonic()
    ftp.upload("big.bin", data)
    assert ftp.download("big.bin") == data
    assert time.monotonic() - start < 60
    ftp.quit()
    up = server.wait_event("transfer", direction="upload")
    assert up["sha256"] == hashlib.sha256(data).hexdigest()


def test_health_endpoints(server):
    status, _ = server.http_get("/healthz")
    assert status == 200
    status, _ = server.http_get("/readyz")
    assert status == 200
    ftp = server.ftp("alice")
    ftp.quit()
    status, body = server.http_get("/metrics")
    assert status == 200
    assert "# TYPE" in body or "# HELP" in body, body[:500]
    samples = [l for l in body.splitlines() if l and not l.startswith("#")]
    assert samples, body[:500]
    status, _ = server.http_get("/nope")
    assert status == 404
