"""Upload integrity at every boundary of the upload paths (issue 17): the file on disk and the
SHA-256 in the audit `transfer` event must equal what the client sent, for sizes around

- 16 KiB: a TLS record (the most plaintext one FTPS read returns);
- 128 KiB: the data connection's read buffer (`ftp::data::DATA_READ_BUFFER`);
- 256 KiB: an upload chunk (`userfs::CHUNK_BYTES`), whose buffers the write-behind worker gives
  back for reuse, so a short chunk after full ones or stale bytes of a reused buffer would show;
- 1 MiB: a batch (`userfs::UPLOAD_BATCH_CHUNKS` chunks hashed and written in one blocking call);
- several batches, more than the worker's queue, so buffers are reused many times;

over FTPS (Python ftplib: 8 KiB writes; curl: 16 KiB records) and SFTP (paramiko: 32 KiB
WRITEs; OpenSSH sftp: ~255 KiB WRITEs, whose data the server now reads straight into its own
buffer).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import paramiko
import pytest

RECORD = 16 * 1024
READ_BUFFER = 128 * 1024
CHUNK = 256 * 1024
SIZES = [
    0, 1,
    RECORD - 1, RECORD, RECORD + 1,
    READ_BUFFER - 1, READ_BUFFER, READ_BUFFER + 1,
    CHUNK - 1, CHUNK, CHUNK + 1,
    2 * CHUNK,
    4 * CHUNK - 1, 4 * CHUNK, 4 * CHUNK + 1, 4 * CHUNK + RECORD + 3,
    12 * CHUNK - 1, 12 * CHUNK, 12 * CHUNK + 1,
    13 * CHUNK - 1, 13 * CHUNK, 13 * CHUNK + 1,
]


def payload(size: int) -> bytes:
    # Random bytes: a reused buffer's stale content cannot happen to match.
    return os.urandom(size)


def check(srv, protocol: str, name: str, data: bytes) -> None:
    event = srv.wait_event("transfer", protocol=protocol, direction="upload", path=f"/{name}",
                           result="ok", timeout=30)
    assert event["bytes"] == len(data)
    assert event["sha256"] == hashlib.sha256(data).hexdigest()
    stored = (srv.home("alice") / name).read_bytes()
    assert len(stored) == len(data)
    assert stored == data


def test_ftps_ftplib_uploads_at_every_boundary(server):
    ftp = server.ftp()
    sent = {}
    for size in SIZES:
        name = f"ftplib-{size}.bin"
        sent[name] = payload(size)
        reply = ftp.upload(name, sent[name])
        assert reply.startswith("226"), reply
    ftp.quit()
    for name, data in sent.items():
        check(server, "ftps", name, data)


def test_ftps_curl_uploads_at_every_boundary(server, tmp_path):
    for size in SIZES:
        name = f"curl-{size}.bin"
        data = payload(size)
        source = tmp_path / name
        source.write_bytes(data)
        run = server.curl("-T", str(source), path=f"/{name}")
        assert run.returncode == 0, run.stderr
        check(server, "ftps", name, data)


def test_ftps_upload_into_a_session_that_uploaded_before_reuses_nothing_stale(server):
    """A long upload then a short one on the same session and the same name: the second file
    holds only its own bytes."""
    ftp = server.ftp()
    big = payload(9 * CHUNK + 5)
    small = payload(CHUNK - 3)
    assert ftp.upload("again.bin", big).startswith("226")
    assert ftp.upload("again.bin", small).startswith("226")
    ftp.quit()
    events = [e for e in server.events("transfer", protocol="ftps", direction="upload", result="ok")
              if e["path"] == "/again.bin"]
    assert [e["sha256"] for e in events] == [hashlib.sha256(big).hexdigest(),
                                             hashlib.sha256(small).hexdigest()]
    assert (server.home("alice") / "again.bin").read_bytes() == small


@pytest.fixture
def sftp(server):
    transport = paramiko.Transport(("127.0.0.1", server.sftp_port))
    transport.connect(username="alice", password=server.passwords["alice"])
    client = paramiko.SFTPClient.from_transport(transport)
    yield client
    client.close()
    transport.close()


def test_sftp_paramiko_uploads_at_every_boundary(server, sftp):
    for size in SIZES:
        name = f"paramiko-{size}.bin"
        data = payload(size)
        with sftp.open(name, "wb") as remote:
            remote.set_pipelined(True)
            remote.write(data)
        check(server, "sftp", name, data)


def test_sftp_openssh_uploads_at_every_boundary(server, tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    users = [dict(u) for u in server.users]
    for user in users:
        if user["username"] == "alice":
            user["sshAuthorizedKeys"] = [Path(str(key) + ".pub").read_text().strip()]
    server.reload_users(users)
    script = []
    sent = {}
    for size in SIZES:
        name = f"openssh-{size}.bin"
        sent[name] = payload(size)
        (tmp_path / name).write_bytes(sent[name])
        script.append(f"put {name}")
    run = subprocess.run(
        ["sftp", "-b", "-", "-P", str(server.sftp_port), "-i", str(key),
         "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
         "alice@127.0.0.1"],
        input="\n".join(script) + "\n", capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    for name, data in sent.items():
        check(server, "sftp", name, data)
