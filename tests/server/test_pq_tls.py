"""Post-quantum hybrid key exchange on FTPS (issue 17): TLS 1.3 offers X25519MLKEM768 first and
keeps the classical groups for clients without ML-KEM; the audit `tls` event names the group.

The OpenSSL 3.0 behind Python and curl here has no ML-KEM, so the post-quantum client is
`server/examples/tls_probe.rs` (rustls, offering exactly the groups it is told to), built next to
the server binary by `cargo build --workspace --all-targets` (tests/run).
"""

from __future__ import annotations

import json
import subprocess

import pytest


@pytest.fixture(scope="module")
def tls_probe(sluice_bin):
    path = sluice_bin.parent / "examples" / "tls_probe"
    if not path.is_file():
        pytest.fail(f"{path} not found: build it with `cargo build -p sluice-server --examples`")
    return path


def probe(tls_probe, server, groups: str, *extra: str) -> tuple[int, dict]:
    run = subprocess.run(
        [str(tls_probe), "--port", str(server.explicit_port), "--cafile", str(server.cafile),
         "--groups", groups, *extra],
        capture_output=True, text=True, timeout=60,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from tls_probe (exit {run.returncode}): {run.stdout} {run.stderr}"
    return run.returncode, json.loads(lines[-1])


def control_tls_events(server, count: int) -> list[dict]:
    server.wait_event("tls", after=count - 1, channel="control")
    return server.events("tls", channel="control")


def test_a_client_offering_only_the_hybrid_gets_it(server, tls_probe):
    code, result = probe(tls_probe, server, "X25519MLKEM768")
    assert code == 0, result
    assert result["version"] == "TLSv1_3"
    assert result["kx_group"] == "X25519MLKEM768"
    events = control_tls_events(server, 1)
    assert events[-1]["result"] == "success"
    assert events[-1]["kx_group"] == "X25519MLKEM768"


def test_the_hybrid_is_preferred_when_a_client_offers_both(server, tls_probe):
    code, result = probe(tls_probe, server, "X25519MLKEM768,X25519")
    assert code == 0, result
    assert result["kx_group"] == "X25519MLKEM768"
    assert control_tls_events(server, 1)[-1]["kx_group"] == "X25519MLKEM768"


@pytest.mark.parametrize("groups,tls12,expected", [
    ("X25519", False, "X25519"),
    ("secp256r1", False, "secp256r1"),
    ("X25519", True, "X25519"),
])
def test_classical_clients_still_connect(server, tls_probe, groups, tls12, expected):
    code, result = probe(tls_probe, server, groups, *(["--tls12"] if tls12 else []))
    assert code == 0, result
    assert result["version"] == ("TLSv1_2" if tls12 else "TLSv1_3")
    assert result["kx_group"] == expected
    assert control_tls_events(server, 1)[-1]["kx_group"] == expected


def test_the_hybrid_alone_cannot_do_tls12(server, tls_probe):
    code, result = probe(tls_probe, server, "X25519MLKEM768", "--tls12")
    assert code == 1
    assert "error" in result
    failure = control_tls_events(server, 1)[-1]
    assert failure["result"] == "failure"


@pytest.mark.parametrize("tls_version", ["1.2", "1.3"])
def test_openssl_clients_and_their_data_connections_name_the_group(server, tls_version):
    """Python's ssl (OpenSSL 3.0, no ML-KEM) logs in, uploads and downloads; the control and
    data `tls` events name the classical group it used."""
    ftp = server.ftp(tls_version=tls_version)
    ftp.upload("pq.bin", b"x" * 1000)
    assert ftp.download("pq.bin") == b"x" * 1000
    ftp.quit()
    control = control_tls_events(server, 1)[-1]
    assert control["kx_group"] == "X25519"
    data = server.events("tls", channel="data")
    assert len(data) >= 2
    for event in data:
        assert "kx_group" in event
        if tls_version == "1.3":
            # A TLS 1.3 resumption with (EC)DHE still runs a key exchange.
            assert event["kx_group"] == "X25519"
