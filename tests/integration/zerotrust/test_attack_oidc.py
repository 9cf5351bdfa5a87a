"""Attack checklist §8, OIDC items, against a running front door configured (``noops oidc set``)
with a small OpenID provider run by the test on 127.0.0.1:

* ``state`` enforced: a tampered state, a callback without the login cookie (login CSRF) and a
  replayed callback create no session and never reach the token endpoint;
* the nonce is enforced (an ID token with another nonce is refused);
* PKCE (S256) is enforced: the verifier never leaves the gateway before the token request, and a
  code from another login (code injection) cannot be redeemed;
* the redirect URI is built from configuration and the routed host, never X-Forwarded-Host;
  an unsafe ``rd`` is refused before the provider is contacted;
* "IdP refresh failure deletes the session": every sign-in is checked with the provider (its
  refresh token, sealed at rest, rotated each time) every second here; the provider's refusal
  ends the sign-in's sessions and closes its websockets, and so does a provider that cannot be
  asked for three periods. Revoking the user's sessions by hand cuts access at once too; a
  group the provider no longer lists loses its routes; logout revokes the refresh token at the
  provider (RFC 7009).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from zt_harness import Gateway, RawConnection, header_values, open_ws, raw_get, wait_for, ws_closed_within

from oidc_idp import TestIdP, b64url, serve

POLICY = """
[[route]]
id = "apps"
host = "*.localhost"
authenticated = true
"""


@pytest.fixture(scope="module")
def idp() -> Iterator[TestIdP]:
    with serve(TestIdP(amr=["pwd", "mfa"])) as state:
        yield state


def _noops(gw: Gateway, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "noops", "--home", str(gw.home), *args],
                          input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def gw(idp: TestIdP) -> Iterator[Gateway]:
    gateway = Gateway()
    gateway.add_app("echo")
    gateway.start()
    # configured while the front door runs (it reads the file again when it changes), the
    # client secret sealed: never on disk in clear
    done = _noops(gateway, "oidc", "set", idp.issuer, "--client-id", idp.client_id,
                  "--client-secret-stdin", "--name", "Test IdP", "--refresh-every", "1",
                  stdin=idp.client_secret + "\n")
    assert done.returncode == 0, done.stderr
    assert idp.client_secret not in (gateway.gate / "oidc.toml").read_text()
    idp.redirect_uri = f"https://echo.localhost:{gateway.port}/.noops/oidc/callback"
    gateway.apply_policy(POLICY)
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(autouse=True)
def _reset(idp: TestIdP) -> None:
    idp.mode = "ok"
    idp.deprovisioned = False
    idp.groups = ["ops", "dev"]


def _start(gw: Gateway, rd: str = "/dest", headers: list[tuple[str, str]] | None = None) -> tuple[str, str]:
    """GET /.noops/oidc/start: (the provider URL, the login cookie value)."""
    with RawConnection(gw) as c:
        r = c.request(raw_get(f"/.noops/oidc/start?rd={urllib.parse.quote(rd, safe='')}", headers=headers))
    assert r is not None and r.status == 303, r
    cookie = next(v for k, v in r.headers if k.lower() == "set-cookie")
    assert cookie.startswith("__Host-noops_oidc=") and "Secure" in cookie and "HttpOnly" in cookie
    return r.header("Location") or "", cookie.split(";")[0].split("=", 1)[1]


def _authorize(url: str) -> dict[str, str]:
    r = httpx.get(url, follow_redirects=False, timeout=5)
    assert r.status_code == 302, r.text
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.headers["location"]).query))


def _callback(gw: Gateway, query: dict[str, str], login_cookie: str | None) -> Any:
    headers = [("Cookie", f"__Host-noops_oidc={login_cookie}")] if login_cookie else []
    with RawConnection(gw) as c:
        r = c.request(raw_get("/.noops/oidc/callback?" + urllib.parse.urlencode(query), headers=headers))
    assert r is not None
    return r


def _session(r: Any) -> str | None:
    for k, v in r.headers:
        if k.lower() == "set-cookie" and v.startswith("__Host-noops_session=") and "Max-Age=0" not in v:
            return v.split(";")[0].split("=", 1)[1]
    return None


def test_login_with_state_nonce_pkce_and_configured_redirect(gw: Gateway, idp: TestIdP) -> None:
    url, login_cookie = _start(
        gw, headers=[("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Proto", "http")]
    )
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert url.startswith(f"{idp.issuer}/authorize?")
    assert q["redirect_uri"] == idp.redirect_uri  # from the routed host and the port, not the headers
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert len(q["state"]) >= 32 and len(q["nonce"]) >= 32 and q["state"] != q["nonce"]
    assert "code_verifier" not in q
    decoded = urllib.parse.unquote(login_cookie)
    assert q["state"] not in decoded and q["nonce"] not in decoded  # the cookie is only a handle
    back = _authorize(url)
    r = _callback(gw, back, login_cookie)
    assert r.status == 303 and r.header("Location") == "/dest", r
    session = _session(r)
    assert session is not None
    token = idp.token_requests[-1]
    assert b64url(hashlib.sha256(token["code_verifier"].encode()).digest()) == q["code_challenge"]
    assert token["code_verifier"] not in decoded
    with RawConnection(gw) as c:
        ok = c.request(raw_get("/x", cookie=session))
    assert ok is not None and ok.status == 200
    assert header_values(ok.json(), "X-Noops-Assertion")


def test_tampered_state_creates_no_session(gw: Gateway, idp: TestIdP) -> None:
    url, login_cookie = _start(gw)
    back = _authorize(url)
    tokens = len(idp.token_requests)
    r = _callback(gw, {**back, "state": back["state"][:-2] + "xx"}, login_cookie)
    assert r.status == 401 and _session(r) is None
    assert len(idp.token_requests) == tokens  # refused before the code is redeemed
    # the login is consumed: the right state afterwards is refused too
    r = _callback(gw, back, login_cookie)
    assert r.status == 401 and _session(r) is None


def test_callback_without_the_login_cookie_is_refused(gw: Gateway, idp: TestIdP) -> None:
    url, _cookie = _start(gw)
    back = _authorize(url)  # an attacker's own valid callback URL, opened in the victim's browser
    r = _callback(gw, back, None)
    assert r.status == 401 and _session(r) is None
    _other_url, other_cookie = _start(gw)  # or with the victim's own, unrelated login in flight
    r = _callback(gw, back, other_cookie)
    assert r.status == 401 and _session(r) is None


def test_replayed_callback_is_refused(gw: Gateway, idp: TestIdP) -> None:
    url, login_cookie = _start(gw)
    back = _authorize(url)
    assert _callback(gw, back, login_cookie).status == 303
    r = _callback(gw, back, login_cookie)
    assert r.status == 401 and _session(r) is None


def test_nonce_mismatch_is_refused(gw: Gateway, idp: TestIdP) -> None:
    idp.mode = "bad_nonce"
    url, login_cookie = _start(gw)
    r = _callback(gw, _authorize(url), login_cookie)
    assert r.status == 401 and _session(r) is None


def test_pkce_stops_code_injection(gw: Gateway, idp: TestIdP) -> None:
    victim_url, victim_cookie = _start(gw)
    victim_state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(victim_url).query))["state"]
    attacker_url, _ = _start(gw)
    stolen = _authorize(attacker_url)  # a code issued for another login (another verifier)
    r = _callback(gw, {**stolen, "state": victim_state}, victim_cookie)
    assert r.status == 401 and _session(r) is None
    assert idp.token_requests[-1]["code"] == stolen["code"]  # redeemed with the wrong verifier: refused


def test_unsafe_rd_refused_before_the_provider(gw: Gateway, idp: TestIdP) -> None:
    before = len(idp.authorize_requests)
    for rd in ("//evil.example", "https://evil.example", "/\\evil.example"):
        with RawConnection(gw) as c:
            r = c.request(raw_get(f"/.noops/oidc/start?rd={urllib.parse.quote(rd, safe='')}"))
        assert r is not None and r.status == 400, rd
        assert not any(k.lower() == "set-cookie" for k, _ in r.headers)
    assert len(idp.authorize_requests) == before


def test_deprovisioned_oidc_user_loses_access_at_once(gw: Gateway, idp: TestIdP) -> None:
    url, login_cookie = _start(gw)
    session = _session(_callback(gw, _authorize(url), login_cookie))
    assert session is not None

    def status() -> int:
        with RawConnection(gw) as c:
            r = c.request(raw_get("/x", cookie=session, headers=[("Accept", "application/json")]))
        assert r is not None
        return r.status

    assert status() == 200
    gw.identities.revoke_user_sessions("ada@example.test", reason="idp_deprovisioned")
    took = wait_for(lambda: status() == 401, 3)
    assert took is not None and took < 1.0, took


def _oidc_sign_in(gw: Gateway, idp: TestIdP) -> tuple[str, str]:
    """A fresh OIDC sign-in: its session cookie and the refresh token its login got."""
    url, login_cookie = _start(gw)
    session = _session(_callback(gw, _authorize(url), login_cookie))
    assert session is not None
    return session, idp.login_refresh_tokens[-1]


def _status(gw: Gateway, session: str) -> int:
    with RawConnection(gw) as c:
        r = c.request(raw_get("/x", cookie=session, headers=[("Accept", "application/json")]))
    assert r is not None
    return r.status


def _ended(gw: Gateway, reason: str) -> bool:
    return any(r.get("outcome") == "session_ended" and r.get("reasons") == [reason]
               and r.get("user") == "ada@example.test" for r in gw.audit_records())


def test_the_provider_is_asked_again_and_its_refusal_ends_the_sign_in(gw: Gateway, idp: TestIdP) -> None:
    session, first = _oidc_sign_in(gw, idp)
    # asked every second: each answer rotates the refresh token, and the sign-in holds
    assert wait_for(lambda: len(idp.refresh_chain(first)) >= 3, 15) is not None
    assert _status(gw, session) == 200
    chain = idp.refresh_chain(first)
    used = [f["refresh_token"] for f in idp.refreshes()]
    assert chain[0] in used and chain[1] in used and used.count(chain[0]) == 1  # never reused
    stored = b"".join(p.read_bytes() for p in gw.gate.glob("identity.db*"))
    assert not any(token.encode() in stored for token in chain)  # sealed at rest
    ws = open_ws(gw, session)
    try:
        idp.deprovision()  # the user is gone at the provider: the next refresh is refused
        closed = ws_closed_within(ws, 10)
    finally:
        ws.close()
    assert closed is not None
    assert _status(gw, session) == 401
    assert wait_for(lambda: _ended(gw, "idp_refresh_refused"), 5) is not None


def test_a_group_removed_at_the_provider_loses_its_routes(gw: Gateway, idp: TestIdP) -> None:
    gw.apply_policy(POLICY + '''
[[route]]
id = "ops"
host = "*.localhost"
path = "/ops"
authenticated = true
groups = ["ops"]

[[route]]
id = "ops-live"
host = "*.localhost"
path = "/ws"
authenticated = true
groups = ["ops"]
''')
    ws = None
    try:
        session, _ = _oidc_sign_in(gw, idp)
        ws = open_ws(gw, session)  # a live connection the ops group gave

        def status(path: str) -> int:
            with RawConnection(gw) as c:
                r = c.request(raw_get(path, cookie=session, headers=[("Accept", "application/json")]))
            assert r is not None
            return r.status

        assert status("/ops/deploy") == 200
        idp.groups = ["dev"]  # removed from ops at the provider
        assert ws_closed_within(ws, 10) is not None, "the websocket outlived the group"
        took = wait_for(lambda: status("/ops/deploy") == 403, 3)
        assert took is not None, "the provider's groups were never applied"
        assert status("/x") == 200  # still signed in: only the group's routes are gone
        changed = [r for r in gw.audit_records() if r.get("outcome") == "groups_changed"]
        assert changed and changed[-1]["user"] == "ada@example.test"
        assert changed[-1]["extra"] == {"groups_added": [], "groups_removed": ["ops"]}
    finally:
        if ws is not None:
            ws.close()
        gw.apply_policy(POLICY)


def test_logout_gives_the_refresh_token_back_to_the_provider(gw: Gateway, idp: TestIdP) -> None:
    session, first = _oidc_sign_in(gw, idp)
    assert wait_for(lambda: len(idp.refresh_chain(first)) >= 2, 15) is not None  # rotated once
    with gw.client(cookie=session) as c:
        page = c.get(gw.url("echo", "/.noops/logout"))
        token = page.text.split('name="csrf" value="')[1].split('"')[0]
        assert c.post(gw.url("echo", "/.noops/logout"), data={"csrf": token}).status_code == 303
    # the token in use when the user signed out (the chain's last) is revoked at the provider
    assert wait_for(lambda: idp.revoked and idp.revoked[-1] == idp.refresh_chain(first)[-1], 5) is not None
    assert idp.revoked[-1] not in idp.refresh_tokens  # it no longer works there
    before = len(idp.refreshes())
    time.sleep(2.5)  # two refresh periods: the ended sign-in is not checked again
    later = {f["refresh_token"] for f in idp.refreshes()[before:]}  # other sign-ins' checks
    assert not later & set(idp.refresh_chain(first))
    assert _status(gw, session) == 401


def test_a_provider_that_cannot_be_asked_ends_the_sign_in_after_three_periods(
        gw: Gateway, idp: TestIdP) -> None:
    session, first = _oidc_sign_in(gw, idp)
    assert wait_for(lambda: len(idp.refresh_chain(first)) >= 2, 15) is not None
    idp.mode = "down"  # 503 from the token endpoint: no answer about the sign-in
    assert wait_for(lambda: _status(gw, session) == 401, 15) is not None
    assert _ended(gw, "idp_unreachable")


def test_oidc_show_remove_and_a_provider_that_does_not_answer(gw: Gateway, idp: TestIdP) -> None:
    shown = _noops(gw, "oidc", "show", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout) == {
        "issuer": idp.issuer, "client_id": idp.client_id, "name": "Test IdP",
        "scopes": ["openid", "email", "profile"], "refresh_s": 1.0, "client_secret": "sealed"}
    assert idp.client_secret not in shown.stdout + shown.stderr
    dead = _noops(gw, "oidc", "set", "http://127.0.0.1:9/", "--client-id", "x",
                  "--client-secret-stdin", stdin="s\n")
    assert dead.returncode != 0 and "discovery document" in dead.stderr and "--no-check" in dead.stderr
    assert json.loads(_noops(gw, "oidc", "show", "--json").stdout)["issuer"] == idp.issuer  # kept

    def offered() -> bool:
        with RawConnection(gw) as c:
            r = c.request(raw_get("/.noops/login"))
        assert r is not None and r.status == 200
        return "Sign in with Test IdP" in r.body.decode()

    assert offered()
    assert _noops(gw, "oidc", "remove").returncode == 0
    assert wait_for(lambda: not offered(), 3) is not None  # the running front door follows
    with RawConnection(gw) as c:
        r = c.request(raw_get("/.noops/oidc/start?rd=/"))
    assert r is not None and r.status == 404
