"""Per-user FTPS data-channel binding (`ftpsDataBinding` in users.yaml): the default requires
the data connection to resume the control connection's TLS session and answers a client that
does not with a 425 naming the reason; `addressAndLease` admits such a client for that user
only, still bound to its control session (address, leased port, a 5 s window, the same client
certificate), warned about at load and audited on every data connection. Apache Commons Net,
the client that needs it, runs in test_client_matrix.py."""

from __future__ import annotations

import ftplib
import hashlib
import os
import shutil
import socket
import ssl
import threading
import time

import pytest

from test_client_cert import context as cert_context
from test_client_cert import pki  # noqa: F401 - fixture

WINDOW = 5  # sluice_config::UNRESUMED_DATA_WINDOW_SECONDS


@pytest.fixture
def srv(make_server, user_entry, pki):  # noqa: F811
    srv = make_server(
        users=[
            user_entry("modern"),
            user_entry("legacy", ftpsDataBinding="addressAndLease"),
            user_entry("alice", ftpsDataBinding="addressAndLease", ftpsAuth="certificateAndPassword",
                       clientCertificates=[{"subject": "CN=alice,O=Partner"}]),
        ],
        config={"tls": {"clientCertificates": "optional", "clientCaFile": "client-ca.crt"}},
        start=False,
    )
    shutil.copy(pki["ca"], srv.dir / "client-ca.crt")
    return srv.start()


def data_tls_events(srv, user: str) -> list[dict]:
    return [e for e in srv.events("tls", channel="data") if e.get("user") == user]


def test_a_client_that_does_not_resume_gets_425_naming_the_reason(srv):
    ftp = srv.ftp("modern", resume_session=False)
    try:
        out = ftp.data_attempt("STOR refused.bin", session=None, payload=b"x" * 1000)
    finally:
        ftp.close()
    assert out["handshake"] == "full"
    final = out["replies"][-1]
    assert final.startswith("425") and "did not resume the control connection's session" in final, out
    assert not (srv.home("modern") / "refused.bin").exists()
    rejected = srv.wait_event("data_rejected", user="modern")
    assert rejected["reason"] == "tls session not resumed"
    event = data_tls_events(srv, "modern")[-1]
    assert event["resumed"] is False and event["binding"] is None, event


def test_opted_in_user_transfers_without_resumption_and_is_audited(srv):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    ftp = srv.ftp("legacy", resume_session=False)
    try:
        ftp.upload("big.bin", payload)
        assert ftp.last_data_resumed is False
        assert any("big.bin" in line for line in ftp.list_lines())
        assert ftp.download("big.bin") == payload
        assert ftp.download("big.bin", rest=1000) == payload[1000:]
    finally:
        ftp.quit()
    assert hashlib.sha256((srv.home("legacy") / "big.bin").read_bytes()).hexdigest() == \
        hashlib.sha256(payload).hexdigest()
    events = data_tls_events(srv, "legacy")
    assert len(events) >= 4 and all(e["resumed"] is False and e["binding"] == "addressAndLease" for e in events), events
    # The opt-in is named at load, with the user.
    assert "ftpsDataBinding: addressAndLease" in srv.stderr() and '"legacy"' in srv.stderr()
    warned = [line for line in srv.stderr().splitlines() if "ftpsDataBinding" in line]
    assert warned and not any('"modern"' in line for line in warned), warned
    # A resuming client of the same user is admitted by resumption, and says so.
    ftp = srv.ftp("legacy")
    try:
        assert ftp.download("big.bin") == payload
    finally:
        ftp.quit()
    assert data_tls_events(srv, "legacy")[-1]["binding"] == "tlsResumption"


def test_the_first_connection_must_come_within_the_window(srv):
    ftp = srv.ftp("legacy", resume_session=False)
    try:
        pasv = ftp.raw("PASV")
        assert pasv.startswith("227"), pasv
        time.sleep(WINDOW + 1.5)
        ftp.putcmd("STOR late.bin")
        first = ftp.getmultiline()
        final = ftp.getmultiline() if first.startswith("150") else first
    finally:
        ftp.close()
    assert final.startswith("425") and f"within {WINDOW} seconds" in final, (first, final)
    assert not (srv.home("legacy") / "late.bin").exists()


def full_handshake_data(ftp, data_context: ssl.SSLContext, cmd: str, payload: bytes) -> tuple[str, str | None]:
    """A passive data connection whose TLS handshake uses `data_context` (its own certificate,
    no session): returns the final control reply and the data side's error, if any."""
    pasv = ftp.raw("PASV")
    assert pasv.startswith("227"), pasv
    _, port = ftplib.parse227(pasv)
    error: list = [None]

    def data_side():
        try:
            with socket.create_connection(("127.0.0.1", port), 10) as raw:
                with data_context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                    assert not conn.session_reused
                    conn.sendall(payload)
                    conn.unwrap()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            error[0] = exc

    thread = threading.Thread(target=data_side, daemon=True)
    thread.start()
    ftp.putcmd(cmd)
    reply = ftp.getmultiline()
    if reply.startswith("150"):
        reply = ftp.getmultiline()
    thread.join(15)
    return reply, error[0]


def test_the_data_connection_must_present_the_control_connections_certificate(srv, pki):  # noqa: F811
    ftp = srv.ftp("alice", context=cert_context(srv, pki, "alice"))
    try:
        # Another certificate the server's CA also signed: refused.
        reply, _ = full_handshake_data(ftp, cert_context(srv, pki, "bob"), "STOR bob.bin", b"b")
        assert reply.startswith("425") and "client certificate" in reply, reply
        # No certificate at all: refused.
        reply, _ = full_handshake_data(ftp, cert_context(srv, pki, None), "STOR none.bin", b"n")
        assert reply.startswith("425") and "client certificate" in reply, reply
        # The control connection's certificate, full handshake: admitted.
        reply, error = full_handshake_data(ftp, cert_context(srv, pki, "alice"), "STOR alice.bin", b"a" * 5000)
        assert reply.startswith("226"), (reply, error)
    finally:
        ftp.close()
    assert (srv.home("alice") / "alice.bin").read_bytes() == b"a" * 5000
    assert not (srv.home("alice") / "bob.bin").exists() and not (srv.home("alice") / "none.bin").exists()
    reasons = [e["reason"] for e in srv.events("data_rejected", user="alice")]
    assert reasons.count("client certificate differs from the control connection's") == 2, reasons
