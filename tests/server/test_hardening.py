"""Hostile input classes from the hardening checklist (design brief §1): H2, H5, H7, H9, H11,
H12, H13, H17, plus malformed commands."""

import ftplib
import hashlib
import os
import socket
import ssl
import subprocess
import time

import pytest

from conftest import read_reply  # plain-socket reply reader

SECRET_ROOT = b"SECRET-IN-DATAROOT"
SECRET_OUTSIDE = b"SECRET-OUTSIDE-DATAROOT"
SECRET_BOB = b"BOB-PRIVATE-FILE"


def code_of(x) -> str:
    return str(x)[:3]


def expect_perm_error(fn, *args, **kwargs) -> str:
    """Call fn and require a 5xx FTP error; return the reply text."""
    with pytest.raises(ftplib.error_perm) as info:
        fn(*args, **kwargs)
    return str(info.value)


def closed_or_421(ftp, line="NOOP", timeout=10) -> str:
    """Send `line`; the server must answer 421 or have closed the connection."""
    ftp.sock.settimeout(timeout)
    try:
        reply = ftp.raw(line)
    except (EOFError, ConnectionError, ssl.SSLError, OSError) as exc:
        return f"closed: {exc!r}"
    assert reply.startswith("421"), f"expected 421 or a closed connection, got {reply!r}"
    return reply


# ---------------------------------------------------------------------------------- H2: TLS


def test_user_and_pass_before_auth_tls_are_refused(server):
    sock, f, greeting = server.plain_control()
    try:
        assert greeting.startswith("220"), greeting
        sock.sendall(b"USER alice\r\n")
        user_reply = read_reply(f)
        assert user_reply.startswith("530"), user_reply
        sock.sendall(f"PASS {server.passwords['alice']}\r\n".encode())
        pass_reply = read_reply(f)
        assert pass_reply.startswith("530"), pass_reply
        for cmd in (b"PASV\r\n", b"LIST\r\n", b"RETR x\r\n"):
            sock.sendall(cmd)
            reply = read_reply(f)
            assert reply[:1] in "45", (cmd, reply)
    finally:
        sock.close()
    assert not server.events("login", result="success")
    assert server.passwords["alice"] not in server.stdout_path.read_text()


def test_implicit_listener_never_speaks_plaintext(server):
    sock = socket.create_connection(("127.0.0.1", server.implicit_port), 5)
    sock.settimeout(1.5)
    got = b""
    try:
        try:
            got = sock.recv(100)
        except (TimeoutError, socket.timeout):
            pass
        assert not got.startswith(b"220"), got
        sock.settimeout(5)
        try:
            sock.sendall(b"USER alice\r\n")
            got += sock.recv(100)
        except (TimeoutError, socket.timeout, ConnectionError):
            pass
        assert b"331" not in got and b"220" not in got, got
    finally:
        sock.close()


def test_prot_c_is_refused(server):
    ftp = server.ftp("alice", prot_p=False)
    assert ftp.raw("PBSZ 0").startswith("200")
    reply = ftp.raw("PROT C")
    assert reply.startswith("536"), reply
    for level in ("S", "E"):
        assert ftp.raw(f"PROT {level}")[:1] == "5"
    assert ftp.raw("PROT P").startswith("200")
    ftp.quit()


def test_ccc_is_refused_and_channel_stays_encrypted(server):
    ftp = server.ftp("alice")
    reply = ftp.raw("CCC")
    assert reply.startswith("534") or reply[:1] == "5", reply
    assert isinstance(ftp.sock, ssl.SSLSocket)
    assert ftp.raw("NOOP").startswith("200")
    assert ftp.pwd() == "/"
    ftp.quit()


def test_data_transfer_before_prot_p_is_refused(server):
    (server.make_home("alice") / "f.txt").write_bytes(b"cleartext must not flow")
    ftp = server.ftp("alice", prot_p=False)
    ftp.raw("PBSZ 0")
    for cmd in ("LIST", "RETR f.txt", "STOR g.txt"):
        out = ftp.data_attempt(cmd, tls=False, payload=b"x" if cmd.startswith("STOR") else None, timeout=4)
        codes = [code_of(r) for r in out["replies"]]
        assert "521" in codes, (cmd, out["replies"])
        assert b"cleartext" not in out["data"]
    assert not (server.home("alice") / "g.txt").exists()
    ftp.quit()


# -------------------------------------------------------------------- H11: data-channel binding


def _secret_file(server, size=50_000) -> bytes:
    data = SECRET_ROOT + os.urandom(size)
    (server.make_home("alice") / "secret.bin").write_bytes(data)
    return data


def test_data_connection_from_another_ip_is_rejected(server):
    _secret_file(server)
    ftp = server.ftp("alice")  # control from 127.0.0.1
    # The rogue even holds the victim's TLS session: only the source address gives it away.
    out = ftp.data_attempt("RETR secret.bin", source="127.0.0.2", timeout=5)
    assert SECRET_ROOT not in out["data"], out["replies"]
    assert not any(r.startswith("226") for r in out["replies"]), out["replies"]
    event = server.wait_event("data_rejected")
    assert event.get("reason"), event
    assert server.alive()


def test_data_connection_from_another_ip_does_not_hijack_upload(server):
    server.make_home("alice")
    ftp = server.ftp("alice")
    ftp.data_attempt("STOR planted.txt", source="127.0.0.2", payload=b"planted by 127.0.0.2", timeout=5)
    server.wait_event("data_rejected")
    planted = server.home("alice") / "planted.txt"
    assert not planted.exists() or b"planted" not in planted.read_bytes()


@pytest.mark.parametrize("tls_version", ["1.2", "1.3"])
def test_data_connection_without_session_resumption_is_rejected(make_server, tls_version):
    server = make_server()
    _secret_file(server)
    ftp = server.ftp("alice", tls_version=tls_version)
    out = ftp.data_attempt("RETR secret.bin", session=None, timeout=5)
    assert SECRET_ROOT not in out["data"]
    codes = [code_of(r) for r in out["replies"]]
    assert codes and codes[-1] in ("425", "522"), out
    # The same session still works with a proper (resumed) data connection.
    assert ftp.download("secret.bin").startswith(SECRET_ROOT)
    ftp.quit()


def test_data_connection_resuming_another_users_session_is_rejected(server):
    _secret_file(server)
    ctx = server.context()
    bob = server.ftp("bob", context=ctx)
    alice = server.ftp("alice", context=ctx)
    out = alice.data_attempt("RETR secret.bin", session=bob.sock.session, timeout=5)
    assert SECRET_ROOT not in out["data"]
    codes = [code_of(r) for r in out["replies"]]
    assert codes and codes[-1] in ("425", "522"), out
    bob.quit()
    alice.quit()


# ------------------------------------------------------------------------- H12: active mode


def _listener(ip):
    s = socket.socket()
    s.bind((ip, 0))
    s.listen(1)
    s.settimeout(1.5)
    return s


def _port_arg(ip, port):
    return ",".join(ip.split(".") + [str(port >> 8), str(port & 255)])


def _assert_no_connection(listener):
    try:
        conn, peer = listener.accept()
        conn.close()
        raise AssertionError(f"server connected to {peer}")
    except (TimeoutError, socket.timeout):
        pass


def test_port_and_eprt_refused_by_default(server):
    ftp = server.ftp("alice")
    lst = _listener("127.0.0.1")
    port = lst.getsockname()[1]
    reply = ftp.raw(f"PORT {_port_arg('127.0.0.1', port)}")
    assert reply[:1] == "5", reply
    reply = ftp.raw(f"EPRT |1|127.0.0.1|{port}|")
    assert reply[:1] == "5", reply
    ftp.raw("LIST")
    _assert_no_connection(lst)
    lst.close()


def test_active_mode_only_to_the_clients_own_address(make_server):
    server = make_server(config={"activeMode": {"enabled": True}})
    (server.make_home("alice") / "a.txt").write_bytes(b"active")
    ftp = server.ftp("alice")
    other = _listener("127.0.0.2")
    port = other.getsockname()[1]
    for cmd in (f"PORT {_port_arg('127.0.0.2', port)}", f"EPRT |1|127.0.0.2|{port}|",
                f"PORT {_port_arg('192.0.2.1', 21)}", "EPRT |2|::1|2000|"):
        reply = ftp.raw(cmd)
        assert reply[:1] == "5", (cmd, reply)
        # Even if a server wrongly accepted it, the transfer must not reach 127.0.0.2.
    ftp.raw("NLST")
    _assert_no_connection(other)
    other.close()
    ftp.quit()
    # Active mode to the client's own address works when enabled.
    ftp = server.ftp("alice")
    ftp.set_pasv(False)
    assert any("a.txt" in line for line in ftp.list_lines())
    assert ftp.download("a.txt") == b"active"
    ftp.quit()


# ---------------------------------------------------------------------- malformed commands


def test_overlong_command_line_is_refused_and_server_keeps_serving(server):
    ftp = server.ftp("alice")
    ftp.sock.sendall(b"NOOP " + b"A" * 100_000 + b"\r\n")
    ftp.sock.settimeout(10)
    reply = ftp.getmultiline()
    assert reply[:1] == "5", reply[:200]
    try:
        nxt = ftp.raw("NOOP")
        assert nxt.startswith("200"), f"session out of step after the long line: {nxt[:200]!r}"
    except (EOFError, ConnectionError, ssl.SSLError, OSError):
        pass  # closing the session is acceptable
    again = server.ftp("alice")
    assert again.pwd() == "/"
    again.quit()


def test_endless_line_without_newline_does_not_exhaust_the_server(server):
    sock, f, _ = server.plain_control()
    sock.settimeout(10)
    result = "open"
    try:
        for _ in range(64):  # 4 MiB without a line end
            sock.sendall(b"B" * 65536)
        result = read_reply(f)
        assert result[:1] == "5", result[:200]
    except (ConnectionError, EOFError, BrokenPipeError, OSError):
        result = "closed"
    finally:
        sock.close()
    assert server.alive()
    ftp = server.ftp("alice")
    ftp.quit()


def test_nul_byte_in_path_is_refused(server):
    home = server.make_home("alice")
    ftp = server.ftp("alice")
    for cmd in ("RETR a\0b", "MKD x\0y", "CWD x\0y", "DELE a\0b", "SIZE a\0b", "RNFR a\0b"):
        reply = ftp.raw(cmd)
        assert reply[:1] == "5", (cmd, reply)
    out = ftp.data_attempt("STOR n\0.txt", payload=b"nul", timeout=4)
    assert out["replies"] and out["replies"][-1][:1] in "45", out["replies"]
    assert not any("\0" in name or name.startswith(("x", "n")) for name in os.listdir(home)), os.listdir(home)
    assert ftp.raw("NOOP").startswith("200")
    ftp.quit()


def test_unknown_and_unimplemented_commands(server):
    ftp = server.ftp("alice")
    for cmd in ("SITE EXEC /bin/sh", "SITE CHMOD 777 /", "XYZZY", "SMNT /"):
        reply = ftp.raw(cmd)
        assert reply[:1] == "5", (cmd, reply)
    assert ftp.raw("NOOP").startswith("200")
    ftp.quit()


# ------------------------------------------------------------------ H5: confinement


@pytest.fixture
def confined(server):
    """alice's home plus secrets around it: in dataRoot, outside dataRoot, and in bob's home."""
    home = server.make_home("alice")
    (server.data_root / "secret.txt").write_bytes(SECRET_ROOT)
    (server.outside / "secret.txt").write_bytes(SECRET_OUTSIDE)
    (server.data_root / "emptydir").mkdir()
    bob = server.make_home("bob")
    (bob / "bobs.txt").write_bytes(SECRET_BOB)
    (home / "sub").mkdir()
    return server


TRAVERSALS = [
    "../../etc/passwd",
    "/../../etc/passwd",
    "../../../../../../../../etc/passwd",
    "../secret.txt",
    "/../secret.txt",
    "sub/../../secret.txt",
    "./../secret.txt",
    "%2e%2e/secret.txt",
    "%2e%2e%2fsecret.txt",
    "..%2fsecret.txt",
    "%252e%252e%252fsecret.txt",
    "....//secret.txt",
    "....//....//etc/passwd",
    "..\\secret.txt",
    "..//..//etc/passwd",
    ".../secret.txt",
    "../bob/bobs.txt",
    "/../bob/bobs.txt",
    "~/../secret.txt",
    "~bob/bobs.txt",
]


def _leaks(data: bytes) -> bool:
    return SECRET_ROOT in data or SECRET_OUTSIDE in data or SECRET_BOB in data or b"root:" in data


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_cannot_read_outside_home(confined, path):
    ftp = confined.ftp("alice")
    try:
        data = ftp.download(path)
    except ftplib.error_perm:
        data = b""
    assert not _leaks(data), (path, data[:100])
    for cmd in ("SIZE", "MDTM", "HASH", "XSHA256"):
        reply = ftp.raw(f"{cmd} {path}")
        assert reply[:1] == "5", (cmd, path, reply)
    ftp.quit()


def test_cwd_above_root_stays_at_root(confined):
    ftp = confined.ftp("alice")
    for target in ("..", "../..", "/..", "/../..", "%2e%2e", "sub/../.."):
        try:
            ftp.cwd(target)
        except ftplib.error_perm:
            pass
        assert ftp.pwd() == "/", target
    listing = "\n".join(ftp.list_lines()) + "\n".join(ftp.nlst())
    assert "bob" not in listing and "secret.txt" not in listing and "emptydir" not in listing, listing
    for target in ("..", "../", "/..", "../bob"):
        try:
            listing = "\n".join(ftp.list_lines(target))
        except ftplib.error_perm:
            continue
        assert "bobs.txt" not in listing and "secret.txt" not in listing and "emptydir" not in listing, listing
    ftp.quit()


def test_traversal_cannot_write_outside_home(confined):
    ftp = confined.ftp("alice")
    for path in ("../escape.txt", "/../escape.txt", "../bob/escape.txt", "....//escape.txt", "sub/../../escape.txt"):
        ftp.data_attempt(f"STOR {path}", payload=b"escaped", timeout=5)
    for path in ("../evil", "/../evil", "../bob/evil"):
        try:
            ftp.mkd(path)
        except ftplib.error_perm:
            pass
    for cmd in ("DELE ../secret.txt", "DELE ../bob/bobs.txt", "RMD ../emptydir", "RMD ../bob"):
        assert ftp.raw(cmd)[:1] == "5", cmd
    (confined.home("alice") / "mine.txt").write_bytes(b"mine")
    for target in ("../moved.txt", "/../moved.txt", "../bob/moved.txt"):
        try:
            ftp.rename("mine.txt", target)
        except ftplib.error_perm:
            pass
        if not (confined.home("alice") / "mine.txt").exists():
            break
    ftp.quit()
    root = confined.root
    for p in (root, confined.data_root, confined.outside, confined.home("bob")):
        names = set(os.listdir(p))
        assert not names & {"escape.txt", "evil", "moved.txt"}, (p, names)
    assert (confined.data_root / "secret.txt").read_bytes() == SECRET_ROOT
    assert (confined.home("bob") / "bobs.txt").read_bytes() == SECRET_BOB
    assert (confined.data_root / "emptydir").is_dir()


def test_symlinks_pointing_outside_home_are_not_followed(confined):
    home = confined.home("alice")
    os.symlink("/etc", home / "etc_link")
    os.symlink(confined.data_root / "secret.txt", home / "secret_link")
    os.symlink("../secret.txt", home / "rel_link")
    os.symlink(confined.outside, home / "out_dir")
    os.symlink(confined.home("bob"), home / "bob_link")
    os.symlink("../../outside/secret.txt", home / "sub" / "deep_link")
    ftp = confined.ftp("alice")
    for path in ("secret_link", "rel_link", "etc_link/passwd", "out_dir/secret.txt", "bob_link/bobs.txt",
                 "sub/deep_link"):
        try:
            data = ftp.download(path)
        except ftplib.error_perm:
            data = b""
        assert not _leaks(data), (path, data[:100])
        reply = ftp.raw(f"HASH {path}")
        for secret in (SECRET_ROOT, SECRET_OUTSIDE, SECRET_BOB):
            assert hashlib.sha256(secret).hexdigest() not in reply.lower(), (path, reply)
    for path in ("etc_link", "out_dir", "bob_link", "etc_link/"):
        try:
            listing = "\n".join(ftp.list_lines(path)) + "\n".join(n for n, _ in ftp.mlsd(path))
        except ftplib.error_perm:
            listing = ""
        assert "passwd" not in listing and "secret.txt" not in listing and "bobs.txt" not in listing, (path, listing)
        try:
            ftp.cwd(path)
            listing = "\n".join(ftp.nlst())
            assert "passwd" not in listing and "secret.txt" not in listing and "bobs.txt" not in listing
        except ftplib.error_perm:
            pass
        ftp.cwd("/")
    # Writes through a symlinked directory must not land outside either.
    for path in ("out_dir/pwn.txt", "bob_link/pwn.txt"):
        ftp.data_attempt(f"STOR {path}", payload=b"pwned", timeout=5)
    try:
        ftp.mkd("out_dir/newdir")
    except ftplib.error_perm:
        pass
    ftp.raw("DELE out_dir/secret.txt")
    ftp.raw("DELE bob_link/bobs.txt")
    # Overwriting a symlink to a file outside must not modify the target.
    ftp.data_attempt("STOR secret_link", payload=b"overwritten", timeout=5)
    ftp.quit()
    assert not (confined.outside / "pwn.txt").exists()
    assert not (confined.home("bob") / "pwn.txt").exists()
    assert not (confined.outside / "newdir").exists()
    assert (confined.outside / "secret.txt").read_bytes() == SECRET_OUTSIDE
    assert (confined.home("bob") / "bobs.txt").read_bytes() == SECRET_BOB
    assert (confined.data_root / "secret.txt").read_bytes() == SECRET_ROOT


# ------------------------------------------------------------- H7/H8/H10: authentication


def _login_reply(ftp, user, password):
    first = ftp.raw(f"USER {user}")
    if first[:1] != "3":
        return first
    return ftp.raw(f"PASS {password}")


def test_wrong_passwords_then_connection_closed(make_server):
    server = make_server(config={"limits": {"maxAuthAttempts": 3, "authFailureDelayMs": 50}})
    ftp = server.ftp(None)
    ftp.auth()
    for i in range(3):
        reply = _login_reply(ftp, "alice", f"wrong-password-{i}")
        if i == 2 and reply.startswith("421"):
            break  # the attempt that reaches the limit may be answered 421 + close
        assert reply.startswith("530"), (i, reply)
    else:
        closed_or_421(ftp, "USER alice")
    with pytest.raises((EOFError, ConnectionError, ssl.SSLError, OSError, ftplib.error_temp)):
        ftp.sock.settimeout(10)
        reply = ftp.raw("USER alice")
        if reply.startswith("421"):
            raise ftplib.error_temp(reply)
    failures = server.wait_event("login", result="failure", after=2)
    assert failures.get("reason"), failures
    assert failures.get("user") == "alice"
    text = server.stdout_path.read_text()
    assert "wrong-password-" not in text
    # A correct login on a new connection still works.
    ok = server.ftp("alice")
    ok.quit()


def test_failure_delay_is_applied(make_server):
    server = make_server(config={"limits": {"maxAuthAttempts": 5, "authFailureDelayMs": 800}})
    ftp = server.ftp(None)
    ftp.auth()
    start = time.monotonic()
    reply = _login_reply(ftp, "alice", "nope nope nope")
    assert reply.startswith("530"), reply
    assert time.monotonic() - start >= 0.7


def test_refused_logins(make_server, user_entry):
    users = [
        user_entry("alice"),
        user_entry("disabled", disabled=True),
        user_entry("expired", expiresAt="2001-01-01T00:00:00Z"),
        user_entry("future", expiresAt="2099-01-01T00:00:00Z"),
        user_entry("localonly", allowedCidrs=["127.0.0.1/32"]),
        user_entry("otherip", allowedCidrs=["127.0.0.2/32"]),
        user_entry("nopass", password=None),
    ]
    # Many failures from one address by design: keep the ban engine (tests/server/test_bans.py)
    # out of this test.
    server = make_server(users=users, config={"limits": {"maxAuthAttempts": 10},
                                              "bans": {"safelist": ["127.0.0.0/8"]}})
    pw = server.passwords["alice"]

    def attempt(user, password=pw, source=None):
        ftp = server.ftp(None, source=source)
        ftp.auth()
        reply = _login_reply(ftp, user, password)
        try:
            ftp.close()
        except Exception:  # noqa: BLE001
            pass
        return reply

    wrong = attempt("alice", "not the password")
    assert wrong.startswith("530"), wrong
    for user, password in (("anonymous", "guest@example.com"), ("ftp", ""), ("nobody", pw), ("disabled", pw),
                           ("expired", pw), ("nopass", ""), ("nopass", pw), ("otherip", pw)):
        reply = attempt(user, password)
        assert reply.startswith("530"), (user, reply)
    # No user enumeration: an unknown user gets the same answer as a wrong password.
    assert attempt("nobody", "x") == wrong
    assert attempt("future").startswith("230")
    assert attempt("localonly").startswith("230")
    assert attempt("localonly", source="127.0.0.2").startswith("530")
    assert attempt("otherip", source="127.0.0.2").startswith("230")
    reasons = {e.get("reason") for e in server.events("login", result="failure")}
    assert len(reasons) >= 2, reasons


# ------------------------------------------------------------------------- H9: limits


def test_sessions_per_ip_are_limited(make_server):
    server = make_server(config={"limits": {"maxSessionsPerIp": 2}})
    a = server.ftp("alice")
    b = server.ftp("alice")
    sock = socket.create_connection(("127.0.0.1", server.explicit_port), 5)
    f = sock.makefile("rb")
    try:
        reply = read_reply(f)
        assert reply.startswith("421"), reply
    except (EOFError, ConnectionError):
        pass
    finally:
        sock.close()
    # Another address is not affected.
    c = server.ftp("alice", source="127.0.0.2")
    c.quit()
    a.quit()
    b.quit()
    time.sleep(0.5)
    d = server.ftp("alice")
    d.quit()


def test_sessions_per_user_are_limited(make_server):
    server = make_server(config={"limits": {"maxSessionsPerUser": 1}})
    a = server.ftp("alice")
    with pytest.raises((ftplib.error_temp, ftplib.error_perm)) as info:
        server.ftp("alice")
    assert code_of(info.value) in ("421", "530"), info.value
    a.quit()
    time.sleep(0.5)
    b = server.ftp("alice")
    b.quit()


# ------------------------------------------------------------------------ H17: timeouts


def test_login_and_idle_timeouts(make_server):
    server = make_server(config={"timeouts": {"loginSeconds": 2, "idleSeconds": 2}})
    not_logged_in = server.ftp(None)
    not_logged_in.auth()
    idle = server.ftp("alice")
    time.sleep(3.5)
    closed_or_421(not_logged_in, "USER alice")
    closed_or_421(idle, "NOOP")


# --------------------------------------------------------------- atomic uploads, H13


def test_aborted_upload_leaves_no_file(server):
    home = server.make_home("alice")
    ftp = server.ftp("alice")
    out = ftp.data_attempt("STOR partial.bin", payload=os.urandom(4 * 1024 * 1024), abort=True, timeout=10)
    assert out["replies"], out
    assert out["replies"][-1][:1] in "45", out["replies"]
    event = server.wait_event("transfer", direction="upload")
    assert event["result"] in ("failed", "aborted"), event
    time.sleep(1)
    assert os.listdir(home) == [], os.listdir(home)
    assert ftp.raw("NOOP").startswith("200")
    ftp.quit()


# ------------------------------------------------------------------ H3/H4: TLS settings


def test_default_suites_refuse_aes128_and_non_ecdhe(server):
    ctx = server.context("1.2")
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
        server.ftp(None, context=ctx).auth()
    ctx = server.context("1.2")
    ctx.set_ciphers("AES256-GCM-SHA384:AES128-SHA:ECDHE-ECDSA-AES256-SHA")
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
        server.ftp(None, context=ctx).auth()
    ctx = server.context("1.2")
    ctx.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305")
    ftp = server.ftp("alice", context=ctx)
    assert "CHACHA20" in ftp.sock.cipher()[0]
    ftp.quit()


def test_configured_cipher_suites_are_enforced(make_server):
    server = make_server(config={"tls": {"cipherSuites": ["TLS13_AES_256_GCM_SHA384",
                                                          "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"]}})
    ctx = server.context("1.2")
    ctx.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305")
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
        server.ftp(None, context=ctx).auth()
    ftp = server.ftp("alice", tls_version="1.2")
    assert ftp.sock.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
    ftp.quit()
    ftp = server.ftp("alice", tls_version="1.3")
    assert ftp.sock.cipher()[0] == "TLS_AES_256_GCM_SHA384"
    ftp.quit()


def _client_pki(tmp_path):
    def sh(*args):
        subprocess.run(args, check=True, capture_output=True, cwd=tmp_path)

    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
       "-keyout", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", "/CN=Test Client CA",
       "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
       "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=alice")
    (tmp_path / "ext.cnf").write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n")
    sh("openssl", "x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
       "-out", "client.crt", "-days", "30", "-extfile", "ext.cnf")
    return tmp_path / "ca.crt", tmp_path / "client.crt", tmp_path / "client.key"


def test_client_certificates_required(make_server, tmp_path):
    ca, crt, key = _client_pki(tmp_path)
    server = make_server(start=False, config={"tls": {"clientCertificates": "required", "clientCaFile": str(ca)}})
    server.start()
    # Without a certificate: no session.
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, ftplib.Error)):
        ftp = server.ftp(None)
        ftp.auth()
        ftp.login("alice", server.passwords["alice"])
    # With one: login and a data transfer work.
    ctx = server.context()
    ctx.load_cert_chain(str(crt), str(key))
    ftp = server.ftp("alice", context=ctx)
    ftp.upload("mtls.txt", b"mutual")
    assert ftp.download("mtls.txt") == b"mutual"
    ftp.quit()
