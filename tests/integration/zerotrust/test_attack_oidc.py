"""Attack checklist §8, OIDC items, against a running front door configured (``gate/oidc.toml``)
with a small OpenID provider run by the test on 127.0.0.1:

* ``state`` enforced: a tampered state, a callback without the login cookie (login CSRF) and a
  replayed callback create no session and never reach the token endpoint;
* the nonce is enforced (an ID token with another nonce is refused);
* PKCE (S256) is enforced: the verifier never leaves the gateway before the token request, and a
  code from another login (code injection) cannot be redeemed;
* the redirect URI is built from configuration and the routed host, never X-Forwarded-Host;
  an unsafe ``rd`` is refused before the provider is contacted;
* "IdP refresh failure deletes the session": the gateway keeps no IdP refresh token, so the
  equivalent guarantee is tested: deprovisioning the user (revoking the sessions) cuts access at
  once.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from zt_harness import Gateway, RawConnection, header_values, raw_get, wait_for

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


@pytest.fixture(scope="module")
def gw(idp: TestIdP) -> Iterator[Gateway]:  # this module's own gateway: oidc.toml is read at start
    gateway = Gateway()
    (gateway.gate / "oidc.toml").write_text(
        f'issuer = "{idp.issuer}"\nclient_id = "{idp.client_id}"\n'
        f'client_secret = "{idp.client_secret}"\nname = "Test IdP"\n'
    )
    gateway.add_app("echo")
    gateway.start()
    idp.redirect_uri = f"https://echo.localhost:{gateway.port}/.noops/oidc/callback"
    gateway.apply_policy(POLICY)
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(autouse=True)
def _reset(idp: TestIdP) -> None:
    idp.mode = "ok"


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
