"""Bans across replicas, the server's side (issue 7): `GET /bans` and `PUT /bans/peers` on the
health listener. A wrong or missing token gets 401, bad bodies 400/413 naming the field, the
endpoints are off (404) without `bans.sync.tokenFile`; an imported ban refuses the address before
the banner, is audited once with `origin: peer`, is not reported back as the pod's own, and
expires at its absolute expiry."""

import datetime
import ftplib
import json
import time
import urllib.error
import urllib.request

import pytest

from test_bans import BANS, banner_refused, wrong_logins

TOKEN = "0123456789abcdef" * 4


def call(srv, method: str, path: str, body=None, token: str | None = TOKEN, raw: bytes | None = None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{srv.health_port}{path}", data=data,
                                 method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        return exc.code, json.loads(text) if text.startswith("{") else text


def expiry(seconds: float) -> str:
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def sync_server(make_server, tmp_path, **bans):
    token_dir = tmp_path / "ban-sync"
    token_dir.mkdir()
    (token_dir / "token").write_text(TOKEN + "\n")
    config = json.loads(json.dumps(BANS))
    config["bans"].update(bans)
    config["bans"]["sync"] = {"tokenFile": str(token_dir / "token")}
    return make_server(config=config)


def test_endpoints_are_off_without_a_token_file(make_server):
    srv = make_server(config=BANS)
    status, body = call(srv, "GET", "/bans")
    assert status == 404
    assert "bans.sync.tokenFile" in body["error"]


def test_token_is_required_and_bodies_are_validated(make_server, tmp_path):
    srv = sync_server(make_server, tmp_path)
    assert call(srv, "GET", "/bans", token=None)[0] == 401
    assert call(srv, "GET", "/bans", token=TOKEN[:-1] + "x")[0] == 401
    status, _ = call(srv, "PUT", "/bans/peers", {"bans": [{"address": "127.0.0.3", "expiresAt": expiry(60)}]},
                     token="guess")
    assert status == 401
    assert not banner_refused(srv, "127.0.0.3"), "an unauthorised PUT changes nothing"

    status, body = call(srv, "PUT", "/bans/peers",
                        {"bans": [{"address": "127.0.0.3", "expiresAt": expiry(60)},
                                  {"address": "not-an-ip", "expiresAt": expiry(60)}]})
    assert status == 400 and "bans[1].address" in body["error"], body
    status, body = call(srv, "PUT", "/bans/peers", {"bans": [{"address": "127.0.0.3", "expiresAt": "soon"}]})
    assert status == 400 and "bans[0].expiresAt" in body["error"], body
    status, body = call(srv, "PUT", "/bans/peers", raw=b"{not json")
    assert status == 400, body
    entry = {"address": "127.0.0.3", "expiresAt": expiry(60)}
    status, body = call(srv, "PUT", "/bans/peers", {"bans": [entry] * 10_001})
    assert status == 400 and "at most 10000" in body["error"], body
    status, body = call(srv, "PUT", "/bans/peers", raw=b" " * (1024 * 1024 + 10))
    assert status == 413, body
    assert call(srv, "DELETE", "/bans")[0] == 405
    assert not banner_refused(srv, "127.0.0.3"), "rejected bodies change nothing"
    assert srv.alive()


def test_an_imported_ban_refuses_the_address_before_the_banner_and_expires(make_server, tmp_path):
    srv = sync_server(make_server, tmp_path)
    status, body = call(srv, "PUT", "/bans/peers", {"bans": [
        {"address": "127.0.0.3", "expiresAt": expiry(10), "pod": "sluice-0"},
        {"address": "127.0.0.9", "expiresAt": expiry(60), "pod": "sluice-0"},  # safelisted here
    ]})
    assert status == 200, body
    assert body == {"imported": 2, "new": 1, "totpSteps": 0}
    assert banner_refused(srv, "127.0.0.3")
    assert not banner_refused(srv, "127.0.0.9"), "the local safelist wins"
    ftp = srv.ftp("alice", source="127.0.0.4")
    ftp.quit()
    ban = srv.wait_event("ban", origin="peer", key="127.0.0.3")
    assert ban["pod"] == "sluice-0" and ban["scope"] == "ip"
    # The same list again (the operator's next round) is not audited again.
    assert call(srv, "PUT", "/bans/peers", {"bans": [
        {"address": "127.0.0.3", "expiresAt": ban["expires_at"]}]})[1]["new"] == 0
    status, report = call(srv, "GET", "/bans")
    assert status == 200
    assert report["bans"] == [], "a peer's ban is never reported as this pod's own"
    assert [b["address"] for b in report["peers"]] == ["127.0.0.3"]
    _, metrics = srv.http_get("/metrics")
    assert 'sluice_bans_total{scope="peer_ip"} 1' in metrics
    assert 'sluice_bans_active{scope="peer_ip"} 1' in metrics
    time.sleep(0.5)
    assert len(srv.events("ban", origin="peer")) == 1
    # It ends at its absolute expiry.
    end = datetime.datetime.fromisoformat(ban["expires_at"].replace("Z", "+00:00"))
    time.sleep(max(0.0, (end - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) + 0.3)
    assert not banner_refused(srv, "127.0.0.3")


def test_local_bans_are_reported_with_a_stable_expiry(make_server, tmp_path):
    srv = sync_server(make_server, tmp_path, baseBanSeconds=30, maxBanSeconds=60)
    wrong_logins(srv, "127.0.0.5", 20)
    assert banner_refused(srv, "127.0.0.5")
    srv.wait_event("ban", origin="local", key="127.0.0.5")
    _, first = call(srv, "GET", "/bans")
    time.sleep(1.2)
    _, second = call(srv, "GET", "/bans")
    assert [b["address"] for b in first["bans"]] == ["127.0.0.5"]
    assert first["bans"] == second["bans"], "the same ban reports the same expiry every time"
    # An empty peer list clears nothing local.
    assert call(srv, "PUT", "/bans/peers", {"bans": []})[0] == 200
    assert banner_refused(srv, "127.0.0.5")


def test_username_bans_are_reported_and_imported(make_server, tmp_path):
    """A username banned here (failures from many addresses) is reported as `username`; a
    username ban imported from a peer refuses that user from any address but the safelist,
    while other users keep logging in, and is audited once with `origin: peer`."""
    srv = sync_server(make_server, tmp_path, baseBanSeconds=30, maxBanSeconds=60)
    srv.reload_users([srv.user("alice"), srv.user("bob", password="bob's long password 7"),
                      srv.user("carol", password="carol's long password 8")])
    for n in range(6):
        wrong_logins(srv, f"127.0.1.{n + 1}", 1, user="Carol")
    srv.wait_event("ban", scope="user", key="carol", origin="local")
    _, report = call(srv, "GET", "/bans")
    assert [b.get("username") for b in report["bans"] if "username" in b] == ["carol"]
    assert all(set(b) == {"username", "expiresAt"} or set(b) == {"address", "expiresAt"} for b in report["bans"])

    status, body = call(srv, "PUT", "/bans/peers", {"bans": [
        {"username": "Bob", "expiresAt": expiry(60), "pod": "sluice-1"}]})
    assert status == 200 and body == {"imported": 1, "new": 1, "totpSteps": 0}, body
    with pytest.raises(ftplib.error_perm, match="530"):
        srv.ftp("bob", source="127.0.2.7")
    ban = srv.wait_event("ban", origin="peer", scope="user", key="bob")
    assert ban["pod"] == "sluice-1"
    assert srv.wait_event("login", user="bob", result="failure")
    # The safelist still wins, other users are not affected, and the peer ban is not re-exported.
    ftp = srv.ftp("bob", source="127.0.0.9")
    ftp.quit()
    ftp = srv.ftp("alice", source="127.0.2.7")
    ftp.quit()
    _, report = call(srv, "GET", "/bans")
    assert [b.get("username") for b in report["peers"]] == ["bob"]
    assert "bob" not in [b.get("username") for b in report["bans"]]
    _, metrics = srv.http_get("/metrics")
    assert 'sluice_bans_active{scope="peer_user"} 1' in metrics
    # An empty list from the operator lifts it.
    assert call(srv, "PUT", "/bans/peers", {"bans": []})[0] == 200
    ftp = srv.ftp("bob", source="127.0.2.7")
    ftp.quit()
    status, body = call(srv, "PUT", "/bans/peers", {"bans": [
        {"username": "x", "address": "127.0.0.3", "expiresAt": expiry(60)}]})
    assert status == 400 and "needs exactly one of address and username" in body["error"], body
