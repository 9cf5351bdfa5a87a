"""The gateway's main flows against the running front door: sign-in, step-up with TOTP, the
signed assertion, device certificates, revocation, and the audit record of each decision."""

from __future__ import annotations

import re
import time

import httpx
from zt_harness import PASSWORD, Gateway

from noops.gate._identity_jose import parse_jwks
from noops.gate._identity_totp import totp_at
from noops.gate.assertion import verify_assertion

POLICY = '''
[[route]]
id = "apps"
host = "*.localhost"
authenticated = true
min_score = 30
below = "step_up"

[[route]]
id = "admin"
host = "echo.localhost"
path = "/admin"
device_cert = "required"
min_score = 50
'''


def _form_token(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def _login(gw: Gateway, c: httpx.Client, user: str, rd: str = "/") -> httpx.Response:
    page = c.get(gw.url("echo", f"/.noops/login?rd={rd}"))
    assert page.status_code == 200
    return c.post(gw.url("echo", "/.noops/login"),
                  data={"user": user, "password": PASSWORD, "csrf": _form_token(page.text), "rd": rd})


def test_browser_signs_in_steps_up_and_reaches_the_app(gw: Gateway) -> None:
    gw.apply_policy(POLICY)
    secret = gw.add_user("alice", ("dev",), totp=True)
    assert secret is not None
    with gw.client() as c:
        first = c.get(gw.url("echo", "/work?q=1"), headers={"Accept": "text/html"})
        assert first.status_code in (302, 303)
        assert first.headers["location"].startswith("/.noops/login?rd=")
        signed = _login(gw, c, "alice", "/work")
        assert signed.status_code == 303 and signed.headers["location"] == "/work"
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith("__Host-noops_session=") and "Secure" in cookie and "HttpOnly" in cookie
        assert "SameSite=Lax" in cookie and "Domain" not in cookie
        # password only: score below 30, the browser is sent to the authenticator page
        step = c.get(gw.url("echo", "/work"), headers={"Accept": "text/html"})
        assert step.status_code in (302, 303) and step.headers["location"].startswith("/.noops/verify")
        api = c.get(gw.url("echo", "/work"), headers={"Accept": "application/json"})
        assert api.status_code == 401 and "verify with your authenticator" in api.json()["message"]
        page = c.get(gw.url("echo", "/.noops/verify?rd=/work"))
        old = c.cookies.get("__Host-noops_session")
        verified = c.post(gw.url("echo", "/.noops/verify"),
                          data={"code": totp_at(secret, time.time()), "csrf": _form_token(page.text),
                                "rd": "/work"})
        assert verified.status_code == 303, verified.text
        assert c.cookies.get("__Host-noops_session") != old  # rotated at step-up
        ok = c.get(gw.url("echo", "/work?q=1"))
        assert ok.status_code == 200, ok.text
        seen = ok.json()
        assert seen["target"] == "/work?q=1"
        names = {k.lower() for k, _ in seen["headers"]}
        assert "cookie" not in names  # the gateway's cookies never reach the app
        token = next(v for k, v in seen["headers"] if k.lower() == "x-noops-assertion")
        jwks = c.get(gw.url("echo", "/.well-known/noops/jwks.json")).json()
        claims = verify_assertion(token, parse_jwks(jwks), audience="echo")
        assert claims["sub"] == "alice" and claims["groups"] == ["dev"] and claims["score"] >= 30
        assert claims["exp"] - claims["iat"] <= 600
    records = [r for r in gw.audit_records() if r.get("user") == "alice"]
    outcomes = [r["outcome"] for r in records]
    assert "step_up" in outcomes and "allow" in outcomes
    step_rec = next(r for r in records if r["outcome"] == "step_up" and r.get("path") == "/work")
    allow_rec = next(r for r in records if r["outcome"] == "allow")
    assert set(step_rec) == set(allow_rec)  # same fields for every decision
    assert any(c["signal"] == "auth" and c["points"] > 0 for c in allow_rec["contributions"])


def _step_up(gw: Gateway, c: httpx.Client, secret: str) -> str:
    """Verify with TOTP on the gateway's page; the client keeps only the new session cookie."""
    page = c.get(gw.url("echo", "/.noops/verify?rd=/"))
    r = c.post(gw.url("echo", "/.noops/verify"),
               data={"code": totp_at(secret, time.time()), "csrf": _form_token(page.text), "rd": "/"})
    assert r.status_code == 303, r.text
    new = r.cookies["__Host-noops_session"]
    c.cookies.clear()
    c.cookies.set("__Host-noops_session", new)
    return new


def test_signals_change_the_outcome_for_the_same_user(gw: Gateway) -> None:
    gw.apply_policy(POLICY)
    secret = gw.add_user("bob", totp=True)
    assert secret is not None
    cert, key, serial = gw.device("laptop", "bob")
    with gw.client(cookie=gw.session("bob", {"password"})) as c:
        r = c.get(gw.url("echo", "/"), headers={"Accept": "application/json"})
        assert r.status_code == 401 and r.json()["error"] == "step_up_required"
        strong = _step_up(gw, c, secret)  # + TOTP
        assert c.get(gw.url("echo", "/")).status_code == 200
    with gw.client(cookie=strong) as c:
        assert c.get(gw.url("echo", "/")).status_code == 200
        # the admin route needs a device certificate
        r = c.get(gw.url("echo", "/admin"), headers={"Accept": "application/json"})
        assert r.status_code == 403 and "device certificate" in r.json()["message"]
    with gw.client(cert=(cert, key), cookie=strong) as c:
        assert c.get(gw.url("echo", "/admin")).status_code == 200
        gw.ca.revoke(serial, "key_compromise")
        time.sleep(0.1)
        r = c.get(gw.url("echo", "/admin"), headers={"Accept": "application/json"})
        assert r.status_code == 403  # refused on its next request, same connection
        r = c.get(gw.url("echo", "/"), headers={"Accept": "application/json"})
        assert r.status_code == 403  # a revoked device is a hard deny everywhere
    records = [r for r in gw.audit_records() if r.get("user") == "bob" and r.get("path") in ("/", "/admin")]
    denied = [r for r in records if r["outcome"] == "deny" and "device_revoked" in r["reasons"]]
    assert denied, records
    allowed = [r for r in records if r["outcome"] == "allow" and r["path"] == "/admin"]
    assert any(c["signal"] == "device_cert" and c["points"] > 0 for c in allowed[0]["contributions"])


READ_ONLY = """
[[route]]
id = "live"
host = "echo.localhost"
min_score = 90
below = "read_only"
"""


def test_read_only_grants_reads_but_never_a_websocket_even_right_after_a_read(gw: Gateway) -> None:
    from zt_harness import RawConnection, ws_handshake

    gw.apply_policy(READ_ONLY)
    gw.add_user("reader")
    cookie = gw.session("reader", {"password"})
    with gw.client(cookie=cookie) as c:
        assert c.get(gw.url("echo", "/live")).status_code == 200  # read-only: reads pass
        r = c.post(gw.url("echo", "/live"), headers={"Accept": "application/json"})
        assert r.status_code == 403 and "read-only" in r.json()["message"]
    before = len(gw.apps["echo"].seen)
    with RawConnection(gw) as conn:  # the same request as the read above, plus Upgrade
        conn.send(ws_handshake("/live", cookie=cookie, extra=[("Accept", "application/json")]))
        reply = conn.read_response()
    assert reply is not None and reply.status == 403
    assert len(gw.apps["echo"].seen) == before
