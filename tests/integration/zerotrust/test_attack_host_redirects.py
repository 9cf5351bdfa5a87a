"""Attack checklist §8, *host, SNI and redirects*, against the running front door.

* Host ≠ SNI (wildcard-certificate fronting) → 421; Host ≠ :authority (absolute-form target,
  HTTP/2 not offered); trailing dot, case and port variants; unknown host → nothing forwarded;
* redirects are relative paths built from configuration, never from Host / X-Forwarded-Host;
* the oauth2-proxy open-redirect corpus is refused on /.noops/login (GET and POST) and an
  invalid ``rd`` creates no session even with the right password;
* the sign-out redirect is fixed (allow-listed), whatever ``rd`` says.
(``state``, nonce and PKCE: test_attack_oidc.py.)
"""

from __future__ import annotations

import re
import ssl
import urllib.parse

import pytest
from zt_harness import PASSWORD, Gateway, RawConnection, decisions, raw_get

POLICY = """
[[route]]
id = "apps"
host = "*.localhost"
authenticated = true

[[route]]
id = "closed"
host = "echo.localhost"
path = "/admin"
deny = true
"""

CORPUS = [
    "//evil.example",
    "/\\evil.example",
    "/\t/evil.example",
    "/\r/evil.example",
    "/\n/evil.example",
    "/./\\evil.example",
    "https://evil.example",
    "https://good@evil.example",
    "http:evil.example",
    "//echo.localhost.evil.example",
    "https://echo.localhost.evil.example/",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,x",
    "/%0d%0aSet-Cookie:x=1",
    "/x\r\nSet-Cookie: x=1",
    "evil.example",
    "\\\\evil.example",
    "/%2f%2fevil.example",
    "/%5cevil.example",
    "/\u3002evil",
    "%2f%2fevil.example",
    " //evil.example",
    "//%09/evil.example",
    "/#//evil.example",
    "\u2215\u2215evil.example",
]


@pytest.fixture(scope="module")
def user(gw: Gateway) -> str:
    gw.apply_policy(POLICY)
    gw.add_user("rita")
    return gw.session("rita", {"password", "totp"})


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def test_host_differs_from_sni_is_421(gw: Gateway, user: str) -> None:
    before = (len(gw.apps["echo"].seen), len(gw.apps["other"].seen))
    with RawConnection(gw, host="echo.localhost") as c:
        r = c.request(raw_get("/x", host="other.localhost", cookie=user))
    assert r is not None and r.status == 421
    with RawConnection(gw, host="other.localhost") as c:
        r = c.request(raw_get("/admin", host="echo.localhost", cookie=user))
    assert r is not None and r.status == 421
    assert (len(gw.apps["echo"].seen), len(gw.apps["other"].seen)) == before


def test_host_differs_from_authority(gw: Gateway, user: str) -> None:
    # HTTP/1.1's :authority is an absolute-form target: refused, whatever Host says
    with RawConnection(gw) as c:
        r = c.request(
            b"GET https://other.localhost/x HTTP/1.1\r\nHost: echo.localhost\r\n"
            b"Cookie: __Host-noops_session=" + user.encode() + b"\r\n\r\n"
        )
    assert r is not None and r.status == 400
    # and HTTP/2 (where :authority and Host could disagree) is not spoken at all
    ctx = gw.tls()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with RawConnection(gw, ctx=ctx) as c:
        assert c.sock.selected_alpn_protocol() in (None, "http/1.1")


@pytest.mark.parametrize(
    "host",
    [
        "ECHO.LOCALHOST",
        "Echo.LocalHost",
        "echo.localhost:443",
        "echo.localhost:1",
        "echo.localhost.",
        "echo.localhost.:443",
    ],
)
def test_host_variants_meet_the_same_policy(gw: Gateway, user: str, host: str) -> None:
    before = len(gw.apps["echo"].seen)
    with RawConnection(gw, host="echo.localhost") as c:
        admin = c.request(raw_get("/admin", host=host, cookie=user, headers=[("Accept", "application/json")]))
    assert admin is not None and admin.status in (400, 403, 404, 421), (host, admin)
    assert all(s["target"] != "/admin" for s in gw.apps["echo"].seen[before:])
    with RawConnection(gw, host="echo.localhost") as c:
        ok = c.request(raw_get("/fine", host=host, cookie=user))
    assert ok is not None
    if ok.status == 200:  # a variant that routes must be the same app, under the same policy
        assert ok.json()["target"] == "/fine" and admin.status == 403


@pytest.mark.parametrize("host", ["nope.localhost", "localhost", "127.0.0.1", "evil.example"])
def test_unknown_host_is_not_forwarded(gw: Gateway, user: str, host: str) -> None:
    before = (len(gw.apps["echo"].seen), len(gw.apps["other"].seen))
    with RawConnection(gw, host="localhost") as c:
        r = c.request(raw_get("/x", host=host, cookie=user))
    assert r is not None and r.status in (400, 404, 421), r
    assert (len(gw.apps["echo"].seen), len(gw.apps["other"].seen)) == before


def test_redirects_never_use_host_or_forwarded_host(gw: Gateway) -> None:
    spoof = [
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "http"),
        ("Forwarded", "host=evil.example"),
        ("X-Original-Host", "evil.example"),
        ("Accept", "text/html"),
    ]
    with RawConnection(gw) as c:
        r = c.request(raw_get("/work?q=1", headers=spoof))
    assert r is not None and r.status in (302, 303)
    location = r.header("Location") or ""
    assert location.startswith("/.noops/login?rd=") and "evil" not in location
    with RawConnection(gw, host="echo.localhost") as c:
        page = c.request(raw_get("/.noops/login?rd=/work", headers=spoof))
        assert page is not None and page.status == 200
        csrf = _csrf(page.body.decode())
        body = urllib.parse.urlencode(
            {"user": "rita", "password": PASSWORD, "csrf": csrf, "rd": "/work"}
        ).encode()
        login = c.request(
            b"POST /.noops/login HTTP/1.1\r\nHost: echo.localhost\r\nX-Forwarded-Host: evil.example\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nCookie: __Host-noops_csrf="
            + csrf.encode()
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
    assert login is not None and login.status == 303 and login.header("Location") == "/work"


def _login(
    gw: Gateway, rd: str, user: str = "rita", password: str = PASSWORD
) -> tuple[int, list[tuple[str, str]]]:
    with RawConnection(gw) as c:
        page = c.request(raw_get("/.noops/login"))
        assert page is not None
        csrf = _csrf(page.body.decode())
        body = urllib.parse.urlencode({"user": user, "password": password, "csrf": csrf, "rd": rd}).encode()
        r = c.request(
            b"POST /.noops/login HTTP/1.1\r\nHost: echo.localhost\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nCookie: __Host-noops_csrf="
            + csrf.encode()
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
    assert r is not None
    return r.status, r.headers


@pytest.mark.parametrize("rd", CORPUS)
def test_open_redirect_corpus_refused_and_no_session(gw: Gateway, user: str, rd: str) -> None:
    status, headers = _login(gw, rd)
    assert status == 400, (rd, status, headers)
    assert not any(
        k.lower() == "set-cookie" and "noops_session=" in v and "Max-Age=0" not in v for k, v in headers
    ), headers
    assert not any(k.lower() == "location" for k, _ in headers)
    # the GET form falls back to "/" instead of echoing the target back
    with RawConnection(gw) as c:
        page = c.request(raw_get("/.noops/login?rd=" + urllib.parse.quote(rd, safe="")))
    assert page is not None and page.status == 200
    hidden = re.search(r'name="rd" value="([^"]*)"', page.body.decode())
    assert hidden is not None and hidden.group(1) == "/", (rd, hidden.group(1))


@pytest.mark.parametrize(
    ("rd", "location"),
    [
        ("/..//evil.example", "/evil.example"),
        ("/.//evil.example", "/evil.example"),
        ("/a/../../x?next=//evil", "/x?next=//evil"),
    ],
)
def test_dot_segments_in_rd_resolve_to_a_same_host_path(
    gw: Gateway, user: str, rd: str, location: str
) -> None:
    status, headers = _login(gw, rd)
    assert status == 303
    assert dict((k.lower(), v) for k, v in headers)["location"] == location  # never "//evil.example"


def test_invalid_rd_is_refused_before_the_password_is_checked(gw: Gateway, user: str) -> None:
    # a valid password with a bad rd: no session; a wrong password with a bad rd: the same answer
    # (so the form is no password oracle) and no failed-login count either
    good = _login(gw, "//evil.example")
    bad = _login(gw, "//evil.example", password="wrong")
    assert good[0] == bad[0] == 400
    records = [r for r in decisions(gw) if "login_bad_redirect" in r.get("reasons", [])]
    assert len(records) >= 2 and all(r["user"] is None for r in records)
    assert not any(
        r.get("outcome") == "login" and r.get("user") == "rita"
        for r in decisions(gw)
        if r.get("time", "") >= records[-2].get("time", "")
    )


@pytest.mark.parametrize("rd", ["https://evil.example", "//evil.example", "/\\evil.example"])
def test_sign_out_redirect_is_fixed(gw: Gateway, rd: str) -> None:
    cookie = gw.session("rita", {"password"})
    with RawConnection(gw) as c:
        page = c.request(raw_get(f"/.noops/logout?rd={urllib.parse.quote(rd, safe='')}", cookie=cookie))
        assert page is not None and page.status == 200 and "evil" not in page.body.decode()
        csrf = _csrf(page.body.decode())
        body = urllib.parse.urlencode({"csrf": csrf, "rd": rd}).encode()
        r = c.request(
            b"POST /.noops/logout?rd="
            + urllib.parse.quote(rd, safe="").encode()
            + b" HTTP/1.1\r\nHost: echo.localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Cookie: __Host-noops_session="
            + cookie.encode()
            + b"; __Host-noops_csrf="
            + csrf.encode()
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
    assert r is not None and r.status == 303 and r.header("Location") == "/.noops/login"
    with RawConnection(gw) as c:
        after = c.request(raw_get("/x", cookie=cookie, headers=[("Accept", "application/json")]))
    assert after is not None and after.status == 401  # and the logout did happen


def test_tls_sni_for_an_unrelated_name_gets_no_certificate_for_it(gw: Gateway) -> None:
    # the CA's name constraints keep the gateway from presenting a certificate for other names
    with pytest.raises(ssl.SSLCertVerificationError):
        RawConnection(gw, host="evil.example").close()
