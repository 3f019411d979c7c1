"""Homes on S3-compatible object storage (`storage.objectStore`, docs/object-storage.md): the
functional cases of FTPS (ftplib) and SFTP (paramiko) run against both backends, the local file
system and a real SeaweedFS (tests/server/objectstore.py), and what was stored is read back past
the server (the home directory, or the bucket with boto3). Then the confinement cases: no
client argument reaches another user's keys or anything outside the configured prefix."""

from __future__ import annotations

import ftplib
import hashlib
import os
import secrets
import subprocess

import pytest

from conftest import blob
from objectstore import SeaweedFS


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory):
    weed = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield weed
    weed.stop()


class Backend:
    """A running server on one backend, and what it stored, read without the server."""

    def __init__(self, name: str, srv, weed: SeaweedFS | None = None, prefix: str = ""):
        self.name, self.srv, self.weed, self.prefix = name, srv, weed, prefix

    def key(self, user: str, path: str) -> str:
        return f"{self.prefix}/{user}/{path.lstrip('/')}"

    def read(self, user: str, path: str) -> bytes | None:
        """The stored content of `path` in `user`'s home, or None."""
        if self.weed is None:
            file = self.srv.home(user) / path.lstrip("/")
            return file.read_bytes() if file.is_file() else None
        return self.weed.get(self.key(user, path))

    def put(self, user: str, path: str, data: bytes) -> None:
        """Stores a file behind the server's back (another tool writing to the home)."""
        if self.weed is None:
            file = self.srv.make_home(user) / path.lstrip("/")
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(data)
        else:
            self.weed.put(self.key(user, path), data)

    def stored(self, user: str) -> set[str]:
        """Every file (and, on object storage, every `dir/` marker) in `user`'s home."""
        if self.weed is None:
            home = self.srv.home(user)
            return {str(p.relative_to(home)) + ("/" if p.is_dir() else "") for p in home.rglob("*")}
        base = f"{self.prefix}/{user}/"
        return {key[len(base):] for key in self.weed.keys(base)}


@pytest.fixture(params=["local", "s3"])
def backend(request, make_server, user_entry, tmp_path) -> Backend:
    users = [user_entry("alice"), user_entry("bob", password="bob's long password 7")]
    if request.param == "local":
        return Backend("local", make_server(users=users))
    weed = request.getfixturevalue("seaweedfs")
    prefix = f"t-{secrets.token_hex(4)}"
    storage = weed.storage_config(tmp_path / "s3-credentials", prefix)
    return Backend("s3", make_server(users=users, config={"storage": storage}), weed, prefix)


# --- FTPS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1_000_003, 17 << 20], ids=["empty", "1MB", "17MiB-multipart"])
def test_ftps_upload_download_with_sha256(backend, size):
    data = blob(size, seed=size)
    ftp = backend.srv.ftp("alice")
    ftp.upload("up.bin", data)
    assert backend.read("alice", "up.bin") == data
    assert ftp.download("up.bin") == data
    ftp.voidcmd("TYPE I")
    assert ftp.size("up.bin") == size
    reply = ftp.sendcmd("XSHA256 up.bin")
    assert hashlib.sha256(data).hexdigest() in reply.lower(), reply
    ftp.quit()
    event = backend.srv.wait_event("transfer", direction="upload", path="/up.bin", result="ok")
    assert event["sha256"] == hashlib.sha256(data).hexdigest()
    assert event["bytes"] == size


def test_ftps_rest_download_resumed_upload_and_appe(backend):
    data = blob(700_000, seed=2)
    ftp = backend.srv.ftp("alice")
    ftp.upload("f.bin", data)
    assert ftp.download("f.bin", rest=123_456) == data[123_456:]
    assert ftp.download("f.bin", rest=len(data)) == b""
    ftp.upload("g.bin", data[:100_000])
    ftp.upload("g.bin", data[100_000:], rest=100_000)
    assert backend.read("alice", "g.bin") == data
    ftp.upload("log.txt", b"first line\n")
    ftp.upload("log.txt", b"second line\n", cmd="APPE")
    assert backend.read("alice", "log.txt") == b"first line\nsecond line\n"
    with pytest.raises((ftplib.error_perm, ftplib.error_temp)):
        ftp.download("f.bin", rest=len(data) + 1)
    ftp.quit()


def test_ftps_list_mkdir_rename_delete_rmdir(backend):
    ftp = backend.srv.ftp("alice")
    assert "docs" in ftp.mkd("docs")
    with pytest.raises(ftplib.error_perm):
        ftp.mkd("docs")  # exists
    with pytest.raises(ftplib.error_perm):
        ftp.mkd("missing/child")  # no parent
    assert [name for name, facts in ftp.mlsd() if facts.get("type") == "dir"] == ["docs"]
    ftp.cwd("docs")
    ftp.upload("a.txt", b"A")
    assert backend.read("alice", "docs/a.txt") == b"A"
    assert ftp.nlst() == ["a.txt"]
    assert any(line.endswith(" a.txt") for line in ftp.list_lines())
    ftp.rename("a.txt", "b.txt")
    assert backend.read("alice", "docs/a.txt") is None
    assert backend.read("alice", "docs/b.txt") == b"A"
    ftp.cwd("/")
    # A directory rename moves everything below it.
    ftp.mkd("docs/deeper")
    ftp.upload("docs/deeper/c.txt", b"C")
    ftp.rename("docs", "archive")
    assert backend.read("alice", "archive/b.txt") == b"A"
    assert backend.read("alice", "archive/deeper/c.txt") == b"C"
    assert backend.read("alice", "docs/b.txt") is None
    assert "docs" not in ftp.nlst() and "archive" in ftp.nlst()
    with pytest.raises(ftplib.error_perm):
        ftp.rmd("archive")  # not empty
    ftp.delete("archive/b.txt")
    ftp.delete("archive/deeper/c.txt")
    with pytest.raises(ftplib.error_perm):
        ftp.delete("archive/b.txt")  # gone
    ftp.rmd("archive/deeper")
    ftp.rmd("archive")
    assert ftp.nlst() == []
    assert backend.stored("alice") == set()
    ftp.quit()


def test_ftps_overwrite_replaces_and_needs_the_permission(backend):
    ftp = backend.srv.ftp("alice")
    ftp.upload("o.txt", b"old content")
    ftp.upload("o.txt", b"new")
    assert backend.read("alice", "o.txt") == b"new"
    assert ftp.download("o.txt") == b"new"
    ftp.quit()
    # A file written by another tool is served as it is.
    backend.put("alice", "other-tool.txt", b"from elsewhere")
    ftp = backend.srv.ftp("alice")
    assert ftp.download("other-tool.txt") == b"from elsewhere"
    ftp.quit()


def test_ftps_curl_upload_and_download(backend, tmp_path):
    payload = blob(2_500_000, seed=9)
    source = tmp_path / "src.bin"
    source.write_bytes(payload)
    proc = backend.srv.curl("-T", str(source), path="/curl.bin")
    assert proc.returncode == 0, proc.stderr
    assert backend.read("alice", "curl.bin") == payload
    got = tmp_path / "got.bin"
    proc = backend.srv.curl("-o", str(got), path="/curl.bin")
    assert proc.returncode == 0, proc.stderr
    assert got.read_bytes() == payload


# --- SFTP --------------------------------------------------------------------------------------


def test_sftp_put_get_offsets_listing_rename_remove(backend):
    data = os.urandom(3_000_000)
    t, sftp = backend.srv.sftp("alice")
    try:
        with sftp.open("/p.bin", "wb") as f:
            f.set_pipelined(True)
            f.write(data)
        assert backend.read("alice", "p.bin") == data
        assert sftp.stat("/p.bin").st_size == len(data)
        with sftp.open("/p.bin", "rb") as f:
            assert f.read() == data
            f.seek(1_234_567)
            assert f.read(1000) == data[1_234_567:1_235_567]
            assert f.check("sha256") == hashlib.sha256(data).digest()
        sftp.mkdir("/dir")
        assert sftp.stat("/dir").st_mode & 0o040000
        sftp.rename("/p.bin", "/dir/q.bin")
        assert sftp.listdir("/dir") == ["q.bin"]
        assert sorted(sftp.listdir("/")) == ["dir"]
        assert backend.read("alice", "p.bin") is None
        assert backend.read("alice", "dir/q.bin") == data
        with sftp.open("/r.bin", "wb") as f:
            f.write(b"r")
        with pytest.raises(IOError):
            sftp.rename("/r.bin", "/dir/q.bin")  # plain SFTP rename never overwrites
        sftp.posix_rename("/r.bin", "/dir/q.bin")
        assert backend.read("alice", "dir/q.bin") == b"r"
        with pytest.raises(IOError):
            sftp.rmdir("/dir")  # not empty
        sftp.remove("/dir/q.bin")
        sftp.rmdir("/dir")
        with pytest.raises(FileNotFoundError):
            sftp.stat("/dir")
        with pytest.raises(FileNotFoundError):
            sftp.open("/missing.bin")
        # Out-of-order writes are spooled and published whole.
        with sftp.open("/ooo.bin", "wb") as f:
            f.seek(5)
            f.write(b"world")
            f.seek(0)
            f.write(b"hello")
        assert backend.read("alice", "ooo.bin") == b"helloworld"
        # Resume: open without truncation and append.
        with sftp.open("/ooo.bin", "a") as f:
            f.write(b"!")
        assert backend.read("alice", "ooo.bin") == b"helloworld!"
    finally:
        t.close()
    event = backend.srv.wait_event("transfer", protocol="sftp", direction="upload", path="/ooo.bin",
                                   predicate=lambda e: e.get("mode") == "replace")
    assert event["sha256"] == hashlib.sha256(b"helloworld").hexdigest()


def test_sftp_uploads_are_invisible_until_closed(backend):
    t, sftp = backend.srv.sftp("alice")
    try:
        f = sftp.open("/pending.bin", "wb")
        f.write(b"x" * 100_000)
        f.flush()
        assert backend.read("alice", "pending.bin") is None
        assert "pending.bin" not in sftp.listdir("/")
        f.close()
        assert backend.read("alice", "pending.bin") == b"x" * 100_000
        assert "pending.bin" in sftp.listdir("/")
    finally:
        t.close()


# --- confinement -------------------------------------------------------------------------------

ESCAPES = ["../bob/{n}", "/../../bob/{n}", "..%2Fbob%2F{n}", "..\\bob\\{n}", "/./../{n}",
           "%2e%2e/%2e%2e/{n}", "//bob/{n}"]


def test_no_argument_reaches_another_home_or_outside_the_prefix(backend):
    token = secrets.token_hex(4)
    ftp = backend.srv.ftp("alice")
    t, sftp = backend.srv.sftp("alice")
    backend.put("bob", f"secret-{token}", b"bob's")
    try:
        for index, pattern in enumerate(ESCAPES):
            name = pattern.format(n=f"escape-{token}-{index}")
            try:
                ftp.upload(name, b"ftps")
            except (ftplib.error_perm, ftplib.error_temp):
                pass  # refused is fine; landing anywhere but alice's home is not
            try:
                with sftp.open(name + "-sftp", "wb") as f:
                    f.write(b"sftp")
            except OSError:
                pass
            for probe in (pattern.format(n=f"secret-{token}"),):
                with pytest.raises((ftplib.error_perm, ftplib.error_temp)):
                    ftp.download(probe)
                with pytest.raises(OSError):
                    sftp.open(probe).read()
    finally:
        ftp.quit()
        t.close()
    # bob's home holds only his own file.
    assert backend.stored("bob") == {f"secret-{token}"}
    if backend.weed is not None:
        escaped = [key for key in backend.weed.keys() if f"escape-{token}" in key]
        assert escaped, "nothing was uploaded at all"
        outside = [key for key in escaped if not key.startswith(f"{backend.prefix}/alice/")]
        assert outside == [], f"keys outside alice's prefix: {outside}"
    else:
        outside = [p for p in backend.srv.data_root.rglob(f"*escape-{token}*")
                   if backend.srv.home("alice") not in p.parents]
        assert outside == []


def test_bob_cannot_list_or_read_alices_keys(backend):
    backend.put("alice", "private.txt", b"alice only")
    ftp = backend.srv.ftp("bob")
    assert "private.txt" not in ftp.nlst()
    for path in ("../alice/private.txt", "/../alice/private.txt", "private.txt"):
        with pytest.raises(ftplib.error_perm):
            ftp.download(path)
    ftp.quit()


# --- what object storage refuses ---------------------------------------------------------------


def test_object_storage_refuses_what_it_cannot_do(make_server, user_entry, seaweedfs, sluice_bin, tmp_path):
    prefix = f"t-{secrets.token_hex(4)}"
    storage = seaweedfs.storage_config(tmp_path / "creds", prefix)
    users = [user_entry("alice"), user_entry("carol", quota={"maxBytes": "1Mi"})]
    srv = make_server(users=users, config={"storage": storage}, start=False)
    proc = subprocess.run([str(sluice_bin), "check-config", str(srv.config_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "users[1].quota: is not supported with storage.objectStore" in proc.stdout + proc.stderr
    # A valid one: SETSTAT size (writes in place) is refused with a reason, the rest works.
    srv.write_users([user_entry("alice")])
    srv.start()
    t, sftp = srv.sftp("alice")
    try:
        with sftp.open("/f.txt", "wb") as f:
            f.write(b"12345")
        with pytest.raises(IOError, match="not supported on object storage"):
            sftp.truncate("/f.txt", 2)
        assert seaweedfs.get(f"{prefix}/alice/f.txt") == b"12345"
    finally:
        t.close()
