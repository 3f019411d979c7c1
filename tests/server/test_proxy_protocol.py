"""PROXY protocol behind a real proxy: HAProxy (Debian's) in TCP mode in front of the server,
sending v2 headers on the explicit FTPS, SFTP and passive ports and v1 on the implicit FTPS port.
Clients bind their sockets to 127.0.0.5/.6/.9 so that the proxy, whose own connections come
from 127.0.0.1, carries a different client address for each; the server must see the client's
address everywhere (per-user and server-wide allowlists, audit, the data-connection check),
refuse headers from anyone but the proxy, and refuse the proxy's connections without one.
"""

from __future__ import annotations

import ftplib
import socket
import time

import paramiko
import pytest

FRONT = "127.0.0.20"  # where HAProxy listens
PROXY = "127.0.0.1"  # the source of HAProxy's connections to the server: the trusted proxy
PARTNER_PASSWORD = "partner's long password 9"


@pytest.fixture
def proxied(make_server, make_haproxy, user_entry):
    srv = make_server(
        users=[
            user_entry("alice"),
            user_entry("partner", password=PARTNER_PASSWORD, allowedCidrs=["127.0.0.5/32"]),
        ],
        config={
            "proxyProtocol": {"enabled": True, "trustedProxies": [f"{PROXY}/32"], "headerTimeoutMs": 1000},
            # Clients reach the passive ports through the proxy too.
            "passive": {"advertisedAddress": FRONT},
            # Server-wide allowlist: the clients' addresses, not the proxy's. Admission must use
            # the header's address or nobody gets in.
            "allowedCidrs": ["127.0.0.5/32", "127.0.0.6/32"],
        },
    )
    srv.make_home("partner")
    srv.make_home("alice")
    make_haproxy(srv, front=FRONT, headers={"implicit": "send-proxy"})
    return srv


def via_proxy(srv, user: str, password: str | None, source: str, implicit: bool = False):
    # The test certificate names 127.0.0.1, not the proxy's front address: the chain is still
    # verified, the name is not.
    context = srv.context()
    context.check_hostname = False
    return srv.ftp(user, password, source=source, host=FRONT, implicit=implicit, context=context)


def closed_without_banner(sock: socket.socket, timeout: float = 5) -> bytes:
    """What the server sends before closing (b"" when it says nothing)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return received
            received += chunk
    except ConnectionResetError:
        return received


def test_per_user_cidr_sees_the_client_behind_the_proxy_with_passive_transfers(proxied):
    srv = proxied
    payload = b"through haproxy\n" * 4096
    ftp = via_proxy(srv, "partner", PARTNER_PASSWORD, "127.0.0.5")
    ftp.upload("in.bin", payload)
    assert ftp.download("in.bin") == payload
    assert any("in.bin" in line for line in ftp.list_lines())
    ftp.quit()
    assert (srv.home("partner") / "in.bin").read_bytes() == payload

    login = srv.wait_event("login", user="partner", result="success")
    assert login["ip"] == "127.0.0.5"
    connect = srv.wait_event("connect", ip="127.0.0.5", listener="explicit")
    assert connect["proxy"].startswith(f"{PROXY}:"), connect
    transfer = srv.wait_event("transfer", user="partner", direction="upload")
    assert transfer["ip"] == "127.0.0.5"

    # The same user from 127.0.0.6, through the same proxy: its allowedCidrs refuse it.
    with pytest.raises(ftplib.error_perm) as refused:
        via_proxy(srv, "partner", PARTNER_PASSWORD, "127.0.0.6")
    assert str(refused.value).startswith("530"), refused.value
    failure = srv.wait_event("login", user="partner", result="failure")
    assert failure["ip"] == "127.0.0.6" and "not allowed" in failure["reason"], failure
    assert not srv.events("login", result="success", ip="127.0.0.6")
    # Nothing was ever attributed to the proxy's own address.
    assert not [e for e in srv.events() if e.get("ip") == PROXY]


def test_implicit_ftps_through_a_v1_header(proxied):
    srv = proxied
    ftp = via_proxy(srv, "partner", PARTNER_PASSWORD, "127.0.0.5", implicit=True)
    ftp.upload("v1.txt", b"v1 header\n")
    assert ftp.download("v1.txt") == b"v1 header\n"
    ftp.quit()
    connect = srv.wait_event("connect", listener="implicit")
    assert connect["ip"] == "127.0.0.5" and connect["proxy"].startswith(f"{PROXY}:")
    with pytest.raises(ftplib.error_perm):
        via_proxy(srv, "partner", PARTNER_PASSWORD, "127.0.0.6", implicit=True)


def test_sftp_through_the_proxy(proxied, tmp_path):
    srv = proxied

    def connect(source: str) -> paramiko.Transport:
        sock = socket.create_connection((FRONT, srv.sftp_port), 10, source_address=(source, 0))
        transport = paramiko.Transport(sock)
        transport.banner_timeout = 10
        transport.start_client(timeout=10)
        return transport

    transport = connect("127.0.0.5")
    transport.auth_password("partner", PARTNER_PASSWORD)
    sftp = paramiko.SFTPClient.from_transport(transport)
    with sftp.open("over-ssh.txt", "wb") as f:
        f.write(b"sftp behind haproxy\n")
    with sftp.open("over-ssh.txt", "rb") as f:
        assert f.read() == b"sftp behind haproxy\n"
    transport.close()
    login = srv.wait_event("login", protocol="sftp", user="partner", result="success")
    assert login["ip"] == "127.0.0.5"
    assert srv.wait_event("connect", protocol="sftp", ip="127.0.0.5")["proxy"].startswith(f"{PROXY}:")

    transport = connect("127.0.0.6")
    with pytest.raises(paramiko.AuthenticationException):
        transport.auth_password("partner", PARTNER_PASSWORD)
    transport.close()
    assert not srv.events("login", protocol="sftp", result="success", ip="127.0.0.6")


def test_server_wide_allowlist_applies_to_the_client_behind_the_proxy(proxied):
    srv = proxied
    # 127.0.0.9 is not in allowedCidrs; the proxy (127.0.0.1) is not either, and does not
    # need to be: only the client's address counts.
    sock = socket.create_connection((FRONT, srv.explicit_port), 10, source_address=("127.0.0.9", 0))
    reply = closed_without_banner(sock)
    sock.close()
    assert reply.startswith(b"421 ") and b"allowedCidrs" in reply, reply
    refused = srv.wait_event("connection_refused", ip="127.0.0.9")
    assert "allowedCidrs" in refused["reason"] and refused["proxy"].startswith(f"{PROXY}:")
    # alice (no per-user CIDRs) from an allowed address gets in.
    via_proxy(srv, "alice", None, "127.0.0.6").quit()


def test_data_connection_must_come_from_the_control_connections_client(proxied):
    srv = proxied
    (srv.home("alice") / "secret.bin").write_bytes(b"secret")
    ftp = via_proxy(srv, "alice", None, "127.0.0.5")
    # Through the proxy, but from another client address: its header gives it away.
    out = ftp.data_attempt("RETR secret.bin", source="127.0.0.6", timeout=5)
    assert out["data"] == b"" and not any(r.startswith("226") for r in out["replies"]), out
    rejected = srv.wait_event("data_rejected", ip="127.0.0.5")
    assert rejected["peer"].startswith("127.0.0.6:"), rejected
    ftp.close()

    # Straight to the server's passive port, from the client's own address: not the proxy.
    ftp = via_proxy(srv, "alice", None, "127.0.0.5")
    pasv = ftp.raw("PASV")
    assert pasv.startswith("227"), pasv
    port = ftplib.parse227(pasv)[1]
    direct = socket.create_connection(("127.0.0.1", port), 5, source_address=("127.0.0.5", 0))
    direct.sendall(b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 21\r\n")
    assert closed_without_banner(direct) == b""
    direct.close()
    srv.wait_event("data_rejected", ip="127.0.0.5", predicate=lambda e: "trusted proxy" in e["reason"])
    ftp.close()

    # A proper data connection through the proxy still works.
    ftp = via_proxy(srv, "alice", None, "127.0.0.5")
    assert ftp.download("secret.bin") == b"secret"
    ftp.quit()


@pytest.mark.parametrize("listener", ["explicit", "implicit", "sftp"])
def test_a_header_from_an_untrusted_source_is_refused(proxied, listener):
    srv = proxied
    port = {"explicit": srv.explicit_port, "implicit": srv.implicit_port, "sftp": srv.sftp_port}[listener]
    # 127.0.0.7 connects to the server directly and claims to be a proxy for 127.0.0.5.
    sock = socket.create_connection(("127.0.0.1", port), 5, source_address=("127.0.0.7", 0))
    sock.sendall(f"PROXY TCP4 127.0.0.5 127.0.0.1 40000 {port}\r\n".encode())
    assert closed_without_banner(sock) == b""
    sock.close()
    refused = srv.wait_event("connection_refused", ip="127.0.0.7")
    assert "not a trusted proxy" in refused["reason"], refused
    assert refused["listener"] == listener
    assert not srv.events("connect", ip="127.0.0.5")


@pytest.mark.parametrize("listener", ["explicit", "implicit", "sftp"])
def test_the_trusted_proxy_without_a_header_is_refused(proxied, listener):
    srv = proxied
    port = {"explicit": srv.explicit_port, "implicit": srv.implicit_port, "sftp": srv.sftp_port}[listener]
    # From the proxy's address, but no header: the client's first bytes (or nothing, for
    # explicit FTPS, where the client waits for the banner).
    sock = socket.create_connection(("127.0.0.1", port), 5, source_address=(PROXY, 0))
    first = {"explicit": b"", "implicit": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
             "sftp": b"SSH-2.0-OpenSSH_9.2\r\n"}[listener]
    started = time.monotonic()
    if first:
        sock.sendall(first)
    assert closed_without_banner(sock) == b""
    elapsed = time.monotonic() - started
    sock.close()
    refused = srv.wait_event("connection_refused", ip=PROXY, listener=listener)
    if first:
        assert "does not start with a proxy header" in refused["reason"], refused
    else:
        assert "within 1000 ms" in refused["reason"], refused
        assert 0.8 < elapsed < 4, elapsed
    assert refused["proxy_protocol"] == "invalid_proxy_header"
    assert not srv.events("connect", ip=PROXY)


def test_proxy_protocol_off_by_default_a_header_is_just_bad_input(make_server):
    srv = make_server()
    ftp = srv.ftp("alice", source="127.0.0.5")
    ftp.quit()
    assert srv.wait_event("connect", ip="127.0.0.5").get("proxy") is None
    # Without the setting, a header is never honoured: the session sees the TCP address.
    sock, f, greeting = srv.plain_control(source="127.0.0.7")
    assert greeting.startswith("220")
    sock.sendall(b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 21\r\n")
    sock.close()
    assert srv.wait_event("connect", ip="127.0.0.7")
    assert len(srv.events("connect", ip="127.0.0.5")) == 1


def test_server_wide_allowlist_without_a_proxy(make_server):
    srv = make_server(config={"allowedCidrs": ["127.0.0.5/32"]})
    srv.ftp("alice", source="127.0.0.5").quit()
    sock = socket.create_connection(("127.0.0.1", srv.explicit_port), 5, source_address=("127.0.0.6", 0))
    reply = closed_without_banner(sock)
    sock.close()
    assert reply.startswith(b"421 ") and b"allowedCidrs" in reply, reply
    refused = srv.wait_event("connection_refused", ip="127.0.0.6")
    assert refused["listener"] == "explicit" and "proxy" not in refused
    transport = paramiko.Transport(socket.create_connection(("127.0.0.1", srv.sftp_port), 5,
                                                            source_address=("127.0.0.6", 0)))
    with pytest.raises(paramiko.SSHException) as ssh_refused:
        transport.start_client(timeout=5)
    transport.close()
    assert srv.wait_event("connection_refused", ip="127.0.0.6", listener="sftp")
    assert ssh_refused.value is not None
