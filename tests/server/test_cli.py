"""The command-line contract: hash-password, check-config, demo."""

import os
import re
import shlex
import signal
import subprocess
import time

import pytest
import yaml


def run(bin_path, *args, stdin=None, timeout=60):
    return subprocess.run([str(bin_path), *args], input=stdin, capture_output=True, text=True, timeout=timeout)


def test_hash_password_prints_argon2id_phc(sluice_bin):
    first = run(sluice_bin, "hash-password", stdin="a long enough password\n")
    second = run(sluice_bin, "hash-password", stdin="a long enough password\n")
    assert first.returncode == 0, first.stderr
    phc = first.stdout.strip()
    assert re.fullmatch(r"\$argon2id\$v=19\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+", phc), phc
    # A fresh random salt every time.
    assert second.stdout.strip() != phc
    # The password itself is never echoed.
    assert "a long enough password" not in first.stdout + first.stderr


def test_hashed_password_logs_in(make_server, user_entry):
    srv = make_server(users=[user_entry("carol", password="carol's password 123")])
    ftp = srv.ftp("carol")
    assert ftp.pwd() == "/"
    ftp.quit()


def test_check_config_accepts_valid_files(make_server, sluice_bin):
    srv = make_server(start=False)
    proc = run(sluice_bin, "check-config", str(srv.config_path))
    assert proc.returncode == 0, proc.stderr


def _check(srv, sluice_bin):
    return run(sluice_bin, "check-config", str(srv.config_path))


def test_check_config_names_invalid_server_field(make_server, sluice_bin):
    srv = make_server(start=False)
    cfg = dict(srv.config)
    cfg["passive"] = {"portStart": 31000, "portEnd": 30000}
    srv.write_config(cfg)
    proc = _check(srv, sluice_bin)
    assert proc.returncode != 0
    assert "server.yaml" in proc.stderr and "passive.portEnd" in proc.stderr, proc.stderr
    assert re.search(r"server\.yaml: passive\.portEnd: must be >=", proc.stderr), proc.stderr


def test_check_config_rejects_unknown_key(make_server, sluice_bin):
    srv = make_server(start=False)
    srv.write_config(raw_text=srv.config_path.read_text() + "bogusKey: 1\n")
    proc = _check(srv, sluice_bin)
    assert proc.returncode != 0
    assert "bogusKey" in proc.stderr, proc.stderr


def test_check_config_reports_every_invalid_field(make_server, sluice_bin):
    srv = make_server(start=False)
    cfg = dict(srv.config)
    cfg["limits"] = dict(cfg["limits"], maxSessions=0, maxCommandLength=10)
    cfg["tls"] = dict(cfg["tls"], cipherSuites=["TLS13_AES_256_GCM_SHA384", "TLS_RSA_WITH_AES_128_CBC_SHA"])
    srv.write_config(cfg)
    proc = _check(srv, sluice_bin)
    assert proc.returncode != 0
    for field in ("limits.maxSessions", "limits.maxCommandLength", "tls.cipherSuites[1]"):
        assert field in proc.stderr, proc.stderr


def test_check_config_validates_the_users_file(make_server, sluice_bin, user_entry):
    srv = make_server(start=False)
    doc = yaml.safe_load(srv.users_path.read_text())
    doc["users"][0]["home"] = "/etc"
    doc["users"].append({"username": "mallory", "passwordHash": "plaintext", "home": "m", "permissions": ["list"]})
    srv.write_users([], raw_text=yaml.safe_dump(doc))
    proc = _check(srv, sluice_bin)
    assert proc.returncode != 0
    assert "users.yaml" in proc.stderr, proc.stderr
    assert "users[0].home" in proc.stderr, proc.stderr
    assert "users[1].passwordHash" in proc.stderr, proc.stderr


def test_check_config_validates_certificate_and_key(make_server, sluice_bin):
    srv = make_server(start=False)
    (srv.dir / "tls.crt").unlink()
    proc = _check(srv, sluice_bin)
    assert proc.returncode != 0
    assert "tls.crt" in proc.stderr or "certFile" in proc.stderr, proc.stderr

    srv2 = make_server(start=False)
    (srv2.dir / "tls.key").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    proc = _check(srv2, sluice_bin)
    assert proc.returncode != 0
    assert "tls.key" in proc.stderr or "keyFile" in proc.stderr, proc.stderr


def test_check_config_rejects_missing_users_file(make_server, sluice_bin):
    srv = make_server(start=False)
    srv.users_path.unlink()
    proc = _check(srv, sluice_bin)
    assert proc.returncode != 0
    assert "users.yaml" in proc.stderr, proc.stderr


def test_run_refuses_invalid_config(make_server, sluice_bin):
    srv = make_server(start=False)
    srv.write_config(raw_text=srv.config_path.read_text() + "bogusKey: 1\n")
    proc = run(sluice_bin, "run", "--config", str(srv.config_path), timeout=30)
    assert proc.returncode != 0
    assert "bogusKey" in proc.stderr, proc.stderr


def _port_free(port):
    import socket

    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_demo_prints_working_client_commands(sluice_bin, tmp_path):
    if not (_port_free(2121) and _port_free(2990)):
        pytest.fail("ports 2121/2990 are busy; the demo needs them")
    out_path = tmp_path / "demo.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([str(sluice_bin), "demo"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        curl_lines = []
        text = ""
        while time.monotonic() < deadline:
            text = out_path.read_text(errors="replace")
            curl_lines = [l[l.index("curl "):].strip() for l in text.splitlines() if "curl " in l]
            if curl_lines and "lftp" in text:
                break
            assert proc.poll() is None, f"demo exited early:\n{text}"
            time.sleep(0.2)
        assert curl_lines, f"demo printed no curl command:\n{text}"
        assert "lftp" in text, text
        assert "2121" in text and "2990" in text, text
        time.sleep(0.5)
        for line in curl_lines:
            result = subprocess.run(line, shell=True, capture_output=True, timeout=60, cwd=tmp_path)
            assert result.returncode == 0, f"{line}\n{result.stderr.decode(errors='replace')}\n{text}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
