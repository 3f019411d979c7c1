"""H5: each permission gates exactly its verbs; a missing permission is a 550."""

import ftplib

import pytest

ALL = ["list", "download", "upload", "overwrite", "delete", "rename", "mkdir", "rmdir"]


@pytest.fixture
def perm_server(make_server, user_entry):
    users = [user_entry(f"no-{p}", permissions=[q for q in ALL if q != p]) for p in ALL]
    users.append(user_entry("full"))
    server = make_server(users=users)
    for entry in users:
        home = server.make_home(entry["username"])
        (home / "existing.txt").write_bytes(b"original")
        (home / "emptydir").mkdir()
    return server


def _assert_550(fn, *args):
    with pytest.raises(ftplib.error_perm) as info:
        fn(*args)
    assert str(info.value).startswith("550"), info.value


@pytest.mark.parametrize("missing", ALL)
def test_missing_permission_is_refused(perm_server, missing):
    server = perm_server
    user = f"no-{missing}"
    home = server.home(user)
    ftp = server.ftp(user)
    if missing == "list":
        _assert_550(ftp.list_lines)
        _assert_550(ftp.list_lines, "", "MLSD")
        _assert_550(ftp.list_lines, "", "NLST")
        assert ftp.raw("MLST existing.txt").startswith("550")
        assert ftp.raw("SIZE existing.txt").startswith("550")
    elif missing == "download":
        _assert_550(ftp.download, "existing.txt")
        assert ftp.raw("HASH existing.txt").startswith("550")
        assert ftp.raw("XSHA256 existing.txt").startswith("550")
        assert "existing.txt" in ftp.nlst()  # listing still allowed
    elif missing == "upload":
        _assert_550(ftp.upload, "new.txt", b"new")
        _assert_550(ftp.upload, "new2.txt", b"new", "APPE")
        assert not (home / "new.txt").exists() and not (home / "new2.txt").exists()
        ftp.upload("existing.txt", b"overwrite is still allowed")
    elif missing == "overwrite":
        _assert_550(ftp.upload, "existing.txt", b"clobber")
        _assert_550(ftp.upload, "existing.txt", b"more", "APPE")
        _assert_550(ftp.upload, "existing.txt", b"tail", "STOR", 3)
        assert (home / "existing.txt").read_bytes() == b"original"
        ftp.upload("brand-new.txt", b"upload is still allowed")
        assert (home / "brand-new.txt").read_bytes() == b"upload is still allowed"
    elif missing == "delete":
        _assert_550(ftp.delete, "existing.txt")
        assert (home / "existing.txt").exists()
    elif missing == "rename":
        first = ftp.raw("RNFR existing.txt")
        if first.startswith("350"):
            assert ftp.raw("RNTO renamed.txt").startswith("550")
        else:
            assert first.startswith("550"), first
        assert (home / "existing.txt").exists() and not (home / "renamed.txt").exists()
    elif missing == "mkdir":
        _assert_550(ftp.mkd, "newdir")
        assert not (home / "newdir").exists()
    elif missing == "rmdir":
        _assert_550(ftp.rmd, "emptydir")
        assert (home / "emptydir").is_dir()
    assert ftp.raw("NOOP").startswith("200")
    ftp.quit()


def test_full_permissions_allow_every_verb(perm_server):
    server = perm_server
    home = server.home("full")
    ftp = server.ftp("full")
    assert "existing.txt" in ftp.nlst()
    assert ftp.download("existing.txt") == b"original"
    ftp.upload("new.txt", b"new")
    ftp.upload("existing.txt", b"replaced")
    ftp.rename("new.txt", "renamed.txt")
    ftp.delete("renamed.txt")
    ftp.mkd("d")
    ftp.rmd("emptydir")
    ftp.quit()
    assert (home / "existing.txt").read_bytes() == b"replaced"
    assert not (home / "renamed.txt").exists() and (home / "d").is_dir() and not (home / "emptydir").exists()


def test_upload_only_user(make_server, user_entry):
    server = make_server(users=[user_entry("dropbox", permissions=["upload"])])
    ftp = server.ftp("dropbox")
    ftp.upload("report.csv", b"a,b\n")
    _assert_550(ftp.download, "report.csv")
    _assert_550(ftp.list_lines)
    _assert_550(ftp.upload, "report.csv", b"overwrite")
    _assert_550(ftp.delete, "report.csv")
    ftp.quit()
    assert (server.home("dropbox") / "report.csv").read_bytes() == b"a,b\n"
