"""Brute-force bans (issue 7, first part): failed logins from one address within the window
ban that address before the banner while others keep logging in; the ban expires; a
safelisted address is never banned; usernames are banned too; FTPS and SFTP share the engine."""

import ftplib
import socket
import re
import time

import pytest

BANS = {
    "bans": {
        "threshold": 6,
        "windowSeconds": 60,
        "baseBanSeconds": 3,
        "maxBanSeconds": 10,
        "safelist": ["127.0.0.9/32"],
    },
    "limits": {"maxAuthAttempts": 3, "authFailureDelayMs": 10},
}


def wrong_logins(srv, source: str, count: int, user: str = "alice") -> None:
    """`count` wrong passwords from `source`, reconnecting after each maxAuthAttempts."""
    done = 0
    while done < count:
        try:
            ftp = srv.ftp(None, source=source)
        except (ConnectionError, EOFError, OSError, ftplib.Error):
            return  # refused before the banner: banned
        try:
            while done < count:
                done += 1
                try:
                    ftp.login(user, "wrong password %d" % done)
                except ftplib.error_perm:
                    continue
        except (ftplib.error_temp, EOFError, OSError):
            pass  # 421 after maxAuthAttempts, or the connection closed
        finally:
            try:
                ftp.close()
            except OSError:
                pass


def banner_refused(srv, source: str) -> bool:
    with socket.create_connection(("127.0.0.1", srv.explicit_port), timeout=5,
                                  source_address=(source, 0)) as sock:
        sock.settimeout(5)
        data = sock.recv(200)
    return not data.startswith(b"220")


def test_twenty_wrong_passwords_ban_the_address_and_others_still_log_in(make_server):
    srv = make_server(config=BANS)
    wrong_logins(srv, "127.0.0.3", 20)
    assert banner_refused(srv, "127.0.0.3")
    ftp = srv.ftp("alice", source="127.0.0.4")
    assert ftp.voidcmd("NOOP").startswith("200")
    ftp.quit()
    ban = srv.wait_event("ban", scope="ip", key="127.0.0.3")
    assert ban["duration_seconds"] == 3
    refused = srv.events("connection_refused", reason="banned")
    assert len(refused) == 1, "a banned address is logged once per window, not per attempt"
    status, metrics = srv.http_get("/metrics")
    assert re.search(r'^sluice_bans_total\{scope="ip"\} [1-9]', metrics, re.M), metrics  # exported at 0 from the start
    # The ban expires.
    time.sleep(3.5)
    assert not banner_refused(srv, "127.0.0.3")
    ftp = srv.ftp("alice", source="127.0.0.3")
    ftp.quit()


def test_safelisted_address_is_never_banned(make_server):
    srv = make_server(config=BANS)
    wrong_logins(srv, "127.0.0.9", 20, user="nobody")
    assert not banner_refused(srv, "127.0.0.9")
    assert not srv.events("ban", key="127.0.0.9")


def test_a_username_under_attack_is_banned_from_other_addresses(make_server):
    srv = make_server(config=BANS)
    for n in range(6):
        wrong_logins(srv, f"127.0.1.{n + 1}", 1, user="alice")
    srv.wait_event("ban", scope="user", key="alice")
    with pytest.raises(ftplib.error_perm, match="530"):
        srv.ftp("alice", source="127.0.2.1")
    # Another user from the same address is not affected.
    srv.reload_users([srv.user("alice"), srv.user("bob", password="bob's long password 7")])
    ftp = srv.ftp("bob", source="127.0.2.1")
    ftp.quit()
