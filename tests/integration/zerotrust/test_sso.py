"""Single sign-on across app hosts, against the running front door with ``--sso-host``: sign in
once on ``auth.localhost``, every app host gets its own session from it; logging out anywhere
ends them all. Plus the attacks on the hand-over: open redirects, replayed, foreign, planted
(login CSRF) and orphaned codes."""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Iterator

import httpx
import pytest
from zt_harness import PASSWORD, Gateway

from noops.gate._identity_totp import totp_at
from oidc_idp import TestIdP, serve

SSO = "auth.localhost"
POLICY = '''
[[route]]
id = "apps"
host = "*.localhost"
authenticated = true

[[route]]
id = "strict"
host = "other.localhost"
path = "/strict"
authenticated = true
min_score = 30
below = "step_up"

[[route]]
id = "unreachable"
host = "other.localhost"
path = "/unreachable"
authenticated = true
min_score = 95
below = "step_up"
'''
HTML = {"Accept": "text/html"}


@pytest.fixture(scope="module")
def idp() -> Iterator[TestIdP]:
    with serve(TestIdP(amr=["pwd", "mfa"])) as state:
        yield state


@pytest.fixture(scope="module")
def gw(idp: TestIdP) -> Iterator[Gateway]:
    gateway = Gateway(sso_host=SSO)
    (gateway.gate / "oidc.toml").write_text(
        f'issuer = "{idp.issuer}"\nclient_id = "{idp.client_id}"\n'
        f'client_secret = "{idp.client_secret}"\nname = "Test IdP"\n')
    gateway.add_app("echo")
    gateway.add_app("other")
    gateway.start()
    # the only redirect URI the provider knows: the sign-in host's, whatever app was asked for
    idp.redirect_uri = f"https://{SSO}:{gateway.port}/.noops/oidc/callback"
    try:
        gateway.apply_policy(POLICY)
        yield gateway
    finally:
        gateway.stop()


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def _follow(c: httpx.Client, url: str, limit: int = 8) -> tuple[httpx.Response, list[str]]:
    """GET ``url`` as a browser would, following redirects; returns the last answer and the
    URLs visited."""
    seen = [url]
    r = c.get(url, headers=HTML)
    while r.status_code in (302, 303) and len(seen) < limit:
        url = urllib.parse.urljoin(url, r.headers["location"])
        seen.append(url)
        r = c.get(url, headers=HTML)
    return r, seen


def _moves_on(r: httpx.Response) -> str:
    """Where a signed-in form on the sign-in host sends the browser: a page that moves on by
    itself (``Refresh``), not a redirect, which the form's ``form-action 'self'`` would stop
    at the app host."""
    assert r.status_code == 200, r.text
    delay, _, url = r.headers["refresh"].partition(";url=")
    assert delay == "0" and url.startswith("/.noops/sso?")
    return url


def _sign_in_on_sso(gw: Gateway, c: httpx.Client, login_url: str,
                    user: str) -> tuple[httpx.Response, list[str]]:
    """Fill the sign-in host's form at ``login_url``, then follow where it sends the browser."""
    page = c.get(login_url, headers=HTML)
    assert page.status_code == 200 and urllib.parse.urlsplit(login_url).hostname == SSO
    rd = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(login_url).query))["rd"]
    r = c.post(f"https://{SSO}:{gw.port}/.noops/login",
               data={"user": user, "password": PASSWORD, "csrf": _csrf(page.text), "rd": rd})
    return _follow(c, urllib.parse.urljoin(login_url, _moves_on(r)))


def _code_for(gw: Gateway, c: httpx.Client, host: str, state: str, rd: str = "/") -> str:
    """A code the sign-in host issues to the signed-in client ``c`` for ``host``."""
    q = urllib.parse.urlencode({"host": host, "rd": rd, "state": state})
    r = c.get(f"https://{SSO}:{gw.port}/.noops/sso?{q}", headers=HTML)
    assert r.status_code == 303, r.text
    target = urllib.parse.urlsplit(r.headers["location"])
    assert (target.hostname, target.port, target.path) == (host, gw.port, "/.noops/sso/callback")
    return dict(urllib.parse.parse_qsl(target.query))["code"]


def _signed_in(gw: Gateway, c: httpx.Client, user: str) -> None:
    _r, seen = _follow(c, gw.url("echo", "/"))
    r, _ = _sign_in_on_sso(gw, c, seen[-1], user)
    assert r.status_code == 200


def test_sign_in_once_reach_every_app_and_sign_out_everywhere(gw: Gateway) -> None:
    gw.add_user("sso-ada")
    with gw.client() as c:
        first = c.get(gw.url("echo", "/work?q=1"), headers=HTML)
        assert first.status_code == 303
        to = urllib.parse.urlsplit(first.headers["location"])
        assert (to.hostname, to.port, to.path) == (SSO, gw.port, "/.noops/sso")
        params = dict(urllib.parse.parse_qsl(to.query))
        assert params["host"] == "echo.localhost" and params["rd"] == "/work?q=1"
        assert "__Host-noops_sso=" + params["state"] in first.headers["set-cookie"]
        r, seen = _follow(c, first.headers["location"])
        assert urllib.parse.urlsplit(seen[-1]).path == "/.noops/login"  # not signed in anywhere yet
        r, seen = _sign_in_on_sso(gw, c, seen[-1], "sso-ada")
        assert r.status_code == 200, r.text
        assert r.json()["target"] == "/work?q=1"  # back where the browser started, on the app
        assert [urllib.parse.urlsplit(u).path for u in seen] == ["/.noops/sso", "/.noops/sso/callback",
                                                                 "/work"]
        # another app: no sign-in form, straight through the sign-in host
        r, seen = _follow(c, gw.url("other", "/there"))
        assert r.status_code == 200 and r.json()["target"] == "/there"
        assert all("/.noops/login" not in u for u in seen) and len(seen) == 4
        hosts_cookies = {cookie.domain for cookie in c.cookies.jar if cookie.name == "__Host-noops_session"}
        assert hosts_cookies == {SSO, "echo.localhost", "other.localhost"}  # one session per host
        # signing out on one app ends the sign-in on every host
        page = c.get(gw.url("other", "/.noops/logout"))
        assert c.post(gw.url("other", "/.noops/logout"), data={"csrf": _csrf(page.text)}).status_code == 303
        api = {"Accept": "application/json"}
        assert c.get(gw.url("echo", "/work"), headers=api).status_code == 401
        _r, seen = _follow(c, gw.url("echo", "/work"))
        assert urllib.parse.urlsplit(seen[-1]).path == "/.noops/login"  # asked to sign in again
    records = [r for r in gw.audit_records() if r.get("user") == "sso-ada"]
    assert {"sso_code", "login"} <= {r["outcome"] for r in records}


def test_step_up_on_the_sign_in_host_carries_to_the_app(gw: Gateway) -> None:
    secret = gw.add_user("sso-bea", totp=True)
    assert secret is not None
    with gw.client() as c:
        _signed_in(gw, c, "sso-bea")
        # a session for other.localhost first, then, password only being below 30, a step-up
        r, seen = _follow(c, gw.url("other", "/strict"))
        assert "mfa=1" not in seen[1] and "mfa=1" in seen[4], seen
        verify = seen[-1]
        assert urllib.parse.urlsplit(verify).hostname == SSO
        assert urllib.parse.urlsplit(verify).path == "/.noops/verify"
        rd = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(verify).query))["rd"]
        done = c.post(f"https://{SSO}:{gw.port}/.noops/verify",
                      data={"code": totp_at(secret, time.time()), "csrf": _csrf(r.text), "rd": rd})
        r, _ = _follow(c, urllib.parse.urljoin(verify, _moves_on(done)))
        assert r.status_code == 200 and r.json()["target"] == "/strict"


def test_the_sign_in_host_redirects_only_to_routed_app_hosts(gw: Gateway) -> None:
    gw.add_user("sso-cy")
    state = "s" * 43
    with gw.client() as c:
        _signed_in(gw, c, "sso-cy")
        for host, rd in [("evil.example", "/"), ("evil.localhost", "/"), (SSO, "/"),
                         ("echo.localhost@evil.example", "/"), ("echo.localhost", "//evil.example/"),
                         ("echo.localhost", "https://evil.example/"), ("echo.localhost", "/\\evil")]:
            q = urllib.parse.urlencode({"host": host, "rd": rd, "state": state})
            r = c.get(f"https://{SSO}:{gw.port}/.noops/sso?{q}", headers=HTML)
            assert r.status_code == 400 and "location" not in r.headers, (host, rd)
        q = urllib.parse.urlencode({"host": "echo.localhost", "rd": "/", "state": "short"})
        assert c.get(f"https://{SSO}:{gw.port}/.noops/sso?{q}", headers=HTML).status_code == 400


def test_a_code_works_once_on_its_host_in_the_browser_that_asked(gw: Gateway) -> None:
    gw.add_user("sso-dan")
    state = "t" * 43
    callback = "/.noops/sso/callback?code={}&rd=/x"
    with gw.client() as c:
        _signed_in(gw, c, "sso-dan")
        code = _code_for(gw, c, "echo.localhost", state)
        with gw.client() as victim:  # login CSRF: a code planted in a browser without its state
            r = victim.get(gw.url("echo", callback.format(code)), headers=HTML)
            assert r.status_code == 400 and "__Host-noops_session=" not in r.headers.get("set-cookie", "")
        c.cookies.set("__Host-noops_sso", state, domain="echo.localhost")
        # the planted attempt used the code up: it is gone for its rightful owner too
        assert c.get(gw.url("echo", callback.format(code)), headers=HTML).status_code == 400
        code = _code_for(gw, c, "echo.localhost", state)
        c.cookies.set("__Host-noops_sso", state, domain="other.localhost")
        assert c.get(gw.url("other", callback.format(code)), headers=HTML).status_code == 400  # wrong host
        code = _code_for(gw, c, "echo.localhost", state)
        c.cookies.set("__Host-noops_sso", state, domain="echo.localhost")  # a refusal cleared it
        r = c.get(gw.url("echo", callback.format(code)), headers=HTML)
        assert r.status_code == 303 and r.headers["location"] == "/x"
        assert c.get(gw.url("echo", callback.format(code)), headers=HTML).status_code == 400  # replay
        assert c.get(gw.url("echo", callback.format("A" * 43)), headers=HTML).status_code == 400  # forged
        # the callback exists only on app hosts
        assert c.get(f"https://{SSO}:{gw.port}" + callback.format(code), headers=HTML).status_code == 404


def test_a_code_dies_with_the_sign_in_it_came_from(gw: Gateway) -> None:
    gw.add_user("sso-eve")
    state = "u" * 43
    with gw.client() as c:
        _signed_in(gw, c, "sso-eve")
        code = _code_for(gw, c, "other.localhost", state)
        gw.identities.revoke_cookie(c.cookies.get("__Host-noops_session", domain=SSO), reason="logout")
        c.cookies.set("__Host-noops_sso", state, domain="other.localhost")
        r = c.get(gw.url("other", f"/.noops/sso/callback?code={code}&rd=/"), headers=HTML)
        assert r.status_code == 400 and "signed out" in r.text


def test_the_sign_in_host_has_no_app_behind_it(gw: Gateway) -> None:
    gw.add_user("sso-fay")
    with gw.client() as c:
        home = c.get(f"https://{SSO}:{gw.port}/anything", headers=HTML)
        assert home.status_code == 303 and home.headers["location"].startswith("/.noops/login")
        _signed_in(gw, c, "sso-fay")
        home = c.get(f"https://{SSO}:{gw.port}/", headers=HTML)
        assert home.status_code == 200 and "sso-fay" in home.text
        assert not any(a.seen for a in gw.apps.values() if a.name == SSO)


def test_an_identity_provider_sign_in_serves_every_app(gw: Gateway, idp: TestIdP) -> None:
    with gw.client() as c:
        _r, seen = _follow(c, gw.url("echo", "/from-idp"))
        login = seen[-1]
        assert urllib.parse.urlsplit(login).hostname == SSO
        rd = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(login).query))["rd"]
        start = f"https://{SSO}:{gw.port}/.noops/oidc/start?{urllib.parse.urlencode({'rd': rd})}"
        r, seen = _follow(c, start)  # the provider, its callback on the sign-in host, the code, the app
        assert r.status_code == 200 and r.json()["target"] == "/from-idp", seen
        assert idp.authorize_requests[-1]["redirect_uri"] == idp.redirect_uri
        r, _ = _follow(c, gw.url("other", "/too"))
        assert r.status_code == 200 and r.json()["target"] == "/too"


def test_a_step_up_the_code_cannot_satisfy_ends_in_an_answer_not_a_loop(gw: Gateway) -> None:
    secret = gw.add_user("sso-gil", totp=True)
    assert secret is not None
    with gw.client() as c:
        _signed_in(gw, c, "sso-gil")
        r, seen = _follow(c, gw.url("other", "/unreachable"), limit=12)
        assert urllib.parse.urlsplit(seen[-1]).path == "/.noops/verify"  # asked for the code once
        rd = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(seen[-1]).query))["rd"]
        done = c.post(f"https://{SSO}:{gw.port}/.noops/verify",
                      data={"code": totp_at(secret, time.time()), "csrf": _csrf(r.text), "rd": rd})
        r, seen = _follow(c, urllib.parse.urljoin(seen[-1], _moves_on(done)), limit=12)
        assert r.status_code == 403 and "Access denied" in r.text, seen  # told why, no redirect loop
        assert len(seen) == 3  # the sign-in host, the callback, the app
