"""Kubernetes-style Secret volumes (a timestamped directory, a `..data` symlink swapped
atomically, per-key symlinks) feeding users.yaml and the certificate, and ABOR during a
transfer."""

import ftplib
import hashlib
import os
import ssl
import time
from pathlib import Path

import pytest
import yaml

from conftest import hash_password, make_cert


def kubelet_write(volume: Path, files: dict[str, str], generation: str) -> None:
    """Writes `files` the way the kubelet updates a Secret volume: a new timestamped directory,
    then an atomic rename of a fresh `..data` symlink over the old one."""
    volume.mkdir(parents=True, exist_ok=True)
    target = volume / f"..2026_11_25_{generation}"
    target.mkdir()
    for name, text in files.items():
        (target / name).write_text(text)
    tmp_link = volume / "..data_tmp"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    os.symlink(target.name, tmp_link)
    os.replace(tmp_link, volume / "..data")
    for name in files:
        link = volume / name
        if not link.is_symlink():
            os.symlink(f"..data/{name}", link)


def users_doc(*entries: tuple[str, str]) -> str:
    return yaml.safe_dump({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "UserList",
        "users": [
            {"username": name, "passwordHash": hash_password(password), "home": name,
             "permissions": ["list", "download", "upload"]}
            for name, password in entries
        ],
    })


def server_fingerprint(srv) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    import socket
    with socket.create_connection(("127.0.0.1", srv.implicit_port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def test_secret_volume_swap_reloads_users_and_certificate(make_server, tmp_path):
    srv = make_server(start=False)
    volume = tmp_path / "secret-volume"
    first_cert = make_cert(tmp_path / "c1")
    kubelet_write(volume, {
        "users.yaml": users_doc(("alice", "first password for alice")),
        "tls.crt": first_cert[0].read_text(),
        "tls.key": first_cert[1].read_text(),
    }, "a")
    config = dict(srv.config)
    config["usersFile"] = str(volume / "users.yaml")
    config["tls"] = {"certFile": str(volume / "tls.crt"), "keyFile": str(volume / "tls.key")}
    srv.write_config(config)
    srv.passwords["alice"] = "first password for alice"
    srv.cafile.write_text(first_cert[0].read_text())
    srv.start()
    ftp = srv.ftp("alice", "first password for alice")
    ftp.quit()
    before = server_fingerprint(srv)

    second_cert = make_cert(tmp_path / "c2")
    reloads = len(srv.events("config_reload"))
    kubelet_write(volume, {
        "users.yaml": users_doc(("carol", "a password for carol")),
        "tls.crt": second_cert[0].read_text(),
        "tls.key": second_cert[1].read_text(),
    }, "b")
    srv.wait_event("config_reload", result="applied", after=reloads, timeout=10)
    assert server_fingerprint(srv) != before
    assert server_fingerprint(srv) == hashlib.sha256(
        ssl.PEM_cert_to_DER_cert(second_cert[0].read_text())).hexdigest()
    srv.cafile.write_text(second_cert[0].read_text())
    with pytest.raises(ftplib.error_perm, match="530"):
        srv.ftp("alice", "first password for alice")
    ftp = srv.ftp("carol", "a password for carol")
    ftp.quit()


def test_abor_stops_a_download_and_the_session_goes_on(server):
    home = server.make_home("alice")
    data = os.urandom(64 * 1024 * 1024)
    (home / "big.bin").write_bytes(data)
    ftp = server.ftp("alice")
    conn = ftp.transfercmd("RETR big.bin")
    received = conn.recv(65536)
    assert received
    ftp.sock.sendall(b"ABOR\r\n")
    first = ftp.getline()
    # 426 for the aborted transfer, then 226 for the ABOR itself.
    assert first.startswith("426"), first
    second = ftp.getline()
    assert second.startswith("226"), second
    conn.close()
    assert ftp.voidcmd("NOOP").startswith("200")
    assert (home / "big.bin").stat().st_size == len(data)
    event = server.wait_event("transfer", direction="download", result="aborted")
    assert event["bytes"] < len(data)
    ftp.quit()


def test_abor_during_upload_leaves_no_file(server):
    home = server.make_home("alice")
    ftp = server.ftp("alice")
    conn = ftp.transfercmd("STOR partial.bin")
    conn.sendall(os.urandom(1024 * 1024))
    time.sleep(0.2)
    ftp.sock.sendall(b"ABOR\r\n")
    assert ftp.getline().startswith("426")
    assert ftp.getline().startswith("226")
    conn.close()
    server.wait_event("transfer", direction="upload", result="aborted")
    assert not (home / "partial.bin").exists()
    assert not [p for p in home.iterdir() if p.name.startswith(".sluice-upload-")]
    ftp.quit()
