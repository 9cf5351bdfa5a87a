"""Attack checklist §8, *protocol and audit*, against the running front door.

* CL/TE request smuggling variants → 400, nothing (or exactly one request) reaches the app;
  pipelined requests are each decided on their own;
* h2 → h1 downgrade: h2 not negotiated, the HTTP/2 preface and ``Upgrade: h2c`` go nowhere;
* a WebSocket upgrade is authorised like the GET it is (anonymous, denied path, method rules);
* oversize headers and too many headers → 400;
* the audit log: identical fields for allow and deny, no secrets (password, session cookie,
  bearer, TOTP secret, assertion), CR/LF in logged values escaped, the hash chain verifies (and a
  tampered copy does not).
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse

import pytest
from zt_harness import PASSWORD, Gateway, RawConnection, audit_file, decisions, raw_get, ws_handshake

from noops.gate import audit

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

[[route]]
id = "posts"
host = "echo.localhost"
path = "/ws-post-only"
methods = ["POST"]
"""


@pytest.fixture(scope="module")
def cookie(gw: Gateway) -> str:
    gw.apply_policy(POLICY)
    gw.add_user("otto")
    return gw.session("otto", {"password"})


def _raw(gw: Gateway, data: bytes) -> tuple[list[int], list[str]]:
    before = len(gw.apps["echo"].seen)
    statuses = []
    with RawConnection(gw, timeout=2) as c:
        c.send(data)
        while True:
            r = c.read_response()
            if r is None:
                break
            statuses.append(r.status)
            if r.header("Connection") == "close":
                break
    return statuses, [s["target"] for s in gw.apps["echo"].seen[before:]]


def _cookie_line(cookie: str) -> bytes:
    return b"Cookie: __Host-noops_session=" + cookie.encode() + b"\r\n"


H = b"POST /a HTTP/1.1\r\nHost: echo.localhost\r\n{C}"  # {C}: the session cookie line
SMUGGLING = {
    "cl_te": H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: echo.localhost\r\n\r\n",
    "te_cl": H + b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
    b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: echo.localhost\r\n\r\n",
    "two_cl": H + b"Content-Length: 0\r\nContent-Length: 44\r\n\r\n"
    b"GET /admin HTTP/1.1\r\nHost: echo.localhost\r\n\r\n",
    "te_obfuscated": H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te_list": H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te_space_colon": H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te_obs_fold": H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "te_http10": H.replace(b"HTTP/1.1", b"HTTP/1.0") + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "cl_negative": H + b"Content-Length: -1\r\n\r\n",
    "cl_plus": H + b"Content-Length: +4\r\n\r\nabcd",
    "two_hosts": b"GET /a HTTP/1.1\r\nHost: echo.localhost\r\nHost: other.localhost\r\n{C}\r\n",
    "bare_lf": b"GET /a HTTP/1.1\nHost: echo.localhost\n{C}X-A: b\rX-Smuggled: 1\n\n",
    "bad_chunk": H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_request_smuggling_refused(gw: Gateway, cookie: str, case: str) -> None:
    data = SMUGGLING[case].replace(b"{C}", _cookie_line(cookie))
    statuses, forwarded = _raw(gw, data)
    assert statuses and statuses[0] == 400, (case, statuses)
    assert forwarded == [] or case == "bad_chunk", (case, forwarded)
    assert "/admin" not in forwarded


def test_pipelined_requests_are_decided_one_by_one(gw: Gateway, cookie: str) -> None:
    c = _cookie_line(cookie)
    data = (
        b"GET /one HTTP/1.1\r\nHost: echo.localhost\r\n" + c + b"\r\n"
        b"GET /admin HTTP/1.1\r\nHost: echo.localhost\r\nAccept: application/json\r\n" + c + b"\r\n"
        b"GET /two HTTP/1.1\r\nHost: echo.localhost\r\nConnection: close\r\n\r\n"
    )  # no cookie
    statuses, forwarded = _raw(gw, data)
    assert statuses[:2] == [200, 403] and statuses[2] in (302, 401), statuses
    assert forwarded == ["/one"]


def test_no_h2_and_no_downgrade_tricks(gw: Gateway, cookie: str) -> None:
    ctx = gw.tls()
    ctx.set_alpn_protocols(["h2"])
    try:
        with RawConnection(gw, ctx=ctx) as conn:
            assert conn.sock.selected_alpn_protocol() != "h2"
    except OSError:
        pass  # refusing the handshake (no common ALPN) is fine too
    statuses, forwarded = _raw(gw, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert (statuses[:1], forwarded) == ([400], [])
    before = len(gw.apps["echo"].seen)
    with RawConnection(gw) as conn:
        r = conn.request(
            raw_get(
                "/h2c",
                cookie=cookie,
                headers=[
                    ("Connection", "Upgrade, HTTP2-Settings"),
                    ("Upgrade", "h2c"),
                    ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
                ],
            )
        )
    assert r is not None and r.status == 200  # served as plain HTTP/1.1, not switched
    seen = gw.apps["echo"].seen[before:]
    names = {k.lower() for k, _ in seen[0]["headers"]}
    assert "upgrade" not in names and "http2-settings" not in names


def test_websocket_upgrade_is_authorised_like_get(gw: Gateway, cookie: str) -> None:
    before = len(gw.apps["echo"].seen)
    for path, who, expected in (("/ws", None, 401), ("/admin", cookie, 403), ("/ws-post-only", cookie, 403)):
        with RawConnection(gw) as conn:
            conn.send(ws_handshake(path, cookie=who, extra=[("Accept", "application/json")]))
            r = conn.read_response()
        assert r is not None and r.status == expected, (path, r)
    assert len(gw.apps["echo"].seen) == before
    with RawConnection(gw) as conn:  # positive control
        conn.send(ws_handshake("/ws", cookie=cookie))
        r = conn.read_response()
    assert r is not None and r.status == 101
    rec = [x for x in decisions(gw) if x.get("path") == "/ws"]
    assert rec[-1]["method"] == "GET" and rec[-1]["outcome"] == "allow"


def test_oversize_and_too_many_headers(gw: Gateway, cookie: str) -> None:
    big = raw_get("/big", cookie=cookie, headers=[("X-Big", "a" * 70_000)])
    statuses, forwarded = _raw(gw, big)
    assert statuses[:1] == [400] and forwarded == []
    many = raw_get("/many", cookie=cookie, headers=[(f"X-H{i}", "v") for i in range(150)])
    statuses, forwarded = _raw(gw, many)
    assert statuses[:1] == [400] and forwarded == []
    fine = raw_get("/fine", cookie=cookie, headers=[(f"X-H{i}", "v" * 100) for i in range(50)])
    statuses, forwarded = _raw(gw, fine)
    assert statuses[:1] == [200] and forwarded == ["/fine"]


# -- audit --------------------------------------------------------------------------------------


def _login_attempt(gw: Gateway, user: str, password: str) -> int:
    with RawConnection(gw) as c:
        page = c.request(raw_get("/.noops/login"))
        assert page is not None
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.body.decode())
        assert csrf is not None
        body = urllib.parse.urlencode(
            {"user": user, "password": password, "csrf": csrf.group(1), "rd": "/"}
        ).encode()
        r = c.request(
            b"POST /.noops/login HTTP/1.1\r\nHost: echo.localhost\r\nContent-Type: "
            b"application/x-www-form-urlencoded\r\nCookie: __Host-noops_csrf="
            + csrf.group(1).encode()
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
    assert r is not None
    return r.status


def test_audit_log_has_no_secrets_escapes_crlf_and_chains(gw: Gateway, cookie: str) -> None:
    totp_secret = gw.add_user("audra", totp=True)
    assert _login_attempt(gw, "audra", PASSWORD) == 303
    assert _login_attempt(gw, "audra", "wrong-" + PASSWORD) == 401
    evil = 'mallory\r\n{"outcome":"allow","user":"root"}\n'
    assert _login_attempt(gw, evil, "x") in (401, 429)
    with RawConnection(gw) as c:
        r = c.request(raw_get("/bearer", headers=[("Authorization", f"Bearer {cookie}")]))
        assert r is not None and r.status == 200
        assertion = next(v for k, v in r.json()["headers"] if k.lower() == "x-noops-assertion")
    records = decisions(gw)
    text = audit_file(gw).read_text()
    logs = gw.log_text()
    for secret in (PASSWORD, cookie, totp_secret or "", assertion, assertion.split(".")[2]):
        assert secret and secret not in text and secret not in logs, secret[:12]
    # every line is one JSON record: the CR/LF in the user name did not start a new one
    assert all(line.startswith("{") for line in text.splitlines())
    assert not any(r.get("user") == "root" for r in records)
    assert any(
        "mallory" in (r.get("user") or "") and "\n" not in json.dumps(r.get("user"))[1:-1] for r in records
    )
    result = audit.verify(audit_file(gw))
    assert result.ok, result
    tampered = gw.home / "tampered"
    shutil.copytree(gw.gate / "audit", tampered)
    log = tampered / audit_file(gw).name
    lines = log.read_text().splitlines(keepends=True)
    changed = json.loads(lines[len(lines) // 2])
    changed["outcome"] = "deny" if changed.get("outcome") == "allow" else "allow"  # rewrite history
    lines[len(lines) // 2] = json.dumps(changed, separators=(",", ":")) + "\n"
    log.write_text("".join(lines))
    assert not audit.verify(log).ok


def test_identical_fields_for_allow_and_deny(gw: Gateway, cookie: str) -> None:
    with RawConnection(gw) as c:
        for path, who in (("/f-allow", cookie), ("/admin", cookie), ("/f-anon", None)):
            c.request(raw_get(path, cookie=who, headers=[("Accept", "application/json")]))
    made = [
        r
        for r in decisions(gw)
        if r.get("outcome") in ("allow", "deny", "step_up", "read_only") and r.get("request_id")
    ]
    outcomes = {r["outcome"] for r in made}
    assert {"allow", "deny"} <= outcomes
    shapes = {frozenset(r) for r in made}
    assert len(shapes) == 1, shapes
