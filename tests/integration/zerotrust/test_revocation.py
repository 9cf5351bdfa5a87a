"""Revocation reaches open connections: logout and ``users lock`` end the session on its next
request *and* close its open websockets (Pomerium #1279); the latency is measured."""

from __future__ import annotations

import socket
import ssl
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from zt_harness import Gateway, RawConnection, _resolve_localhost, decisions, header_values, raw_get

SIGNED_IN = '''
[[route]]
id = "apps"
host = "*.localhost"
authenticated = true
'''


@contextmanager
def _open_ws(gw: Gateway, cookie: str) -> Iterator[ClientConnection]:
    with _resolve_localhost(), connect(f"wss://echo.localhost:{gw.port}/ws", ssl=gw.tls(),
                                       additional_headers={"Cookie": f"__Host-noops_session={cookie}"},
                                       open_timeout=5) as ws:
        yield ws


def _closed_within(ws, seconds: float) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            ws.recv(timeout=0.05)
        except TimeoutError:
            continue
        except ConnectionClosed:
            return time.monotonic() - started
    pytest.fail(f"the websocket stayed open {seconds} s after the revocation")


@pytest.mark.parametrize("how", ["lock", "revoke"])
def test_revocation_closes_open_websockets_and_refuses_the_next_request(gw: Gateway, how: str) -> None:
    gw.apply_policy(SIGNED_IN)
    user = f"ws-{how}"
    gw.add_user(user)
    cookie = gw.session(user, {"password"})
    with _open_ws(gw, cookie) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        started = time.monotonic()
        if how == "lock":
            gw.identities.lock_user(user)  # what `noops users lock` does
        else:
            gw.identities.revoke_user_sessions(user)
        latency = _closed_within(ws, 3.0)
        print(f"websocket closed {latency * 1000:.0f} ms after {how}")
    with gw.client(cookie=cookie) as c:
        r = c.get(gw.url("echo", "/"), headers={"Accept": "application/json"})
        assert r.status_code == 401
    assert time.monotonic() - started < 3.0


def test_logout_ends_the_session_and_its_websockets(gw: Gateway) -> None:
    gw.apply_policy(SIGNED_IN)
    gw.add_user("leaver")
    cookie = gw.session("leaver", {"password"})
    with _open_ws(gw, cookie) as ws, gw.client(cookie=cookie) as c:
        assert c.get(gw.url("echo", "/")).status_code == 200
        page = c.get(gw.url("echo", "/.noops/logout"))
        token = page.text.split('name="csrf" value="')[1].split('"')[0]
        r = c.post(gw.url("echo", "/.noops/logout"), data={"csrf": token})
        assert r.status_code == 303 and "Max-Age=0" in r.headers["set-cookie"]
        assert r.headers["location"] == "/.noops/login"
        _closed_within(ws, 2.0)
    with gw.client(cookie=cookie) as c:
        assert c.get(gw.url("echo", "/"), headers={"Accept": "application/json"}).status_code == 401


def test_a_request_sent_again_byte_for_byte_is_decided_again(gw: Gateway) -> None:
    """The front door reads a repeated head once (see ClientConnection.data_received), never
    its decision: every request is decided, audited and stripped of the gateway's credentials,
    and the same bytes are refused once the session is revoked."""
    gw.apply_policy(SIGNED_IN)
    gw.add_user("repeater")
    cookie = gw.session("repeater", {"password"})
    data = raw_get("/again", headers=[("Cookie", f"__Host-noops_session={cookie}; theme=dark"),
                                      ("Accept", "application/json")])
    app = gw.apps["echo"]
    before = len(app.seen)
    with RawConnection(gw) as c:
        for _ in range(5):
            r = c.request(data)
            assert r is not None and r.status == 200
        seen = app.seen[before:]
        assert [header_values(rec, "Cookie") for rec in seen] == [["theme=dark"]] * 5
        assert all(len(header_values(rec, "X-Noops-Assertion")) == 1 for rec in seen)
        assert cookie not in repr(seen)
        ids = [header_values(rec, "X-Request-Id")[0] for rec in seen]
        assert len(set(ids)) == 5
        gw.identities.revoke_user_sessions("repeater")
        allowed = 5
        deadline = time.monotonic() + 3
        while r is not None and r.status == 200 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the front door's next look at revocations (~50 ms)
            r = c.request(data)
            allowed += r is not None and r.status == 200
        assert r is not None and r.status == 401
        refused_id = r.header("X-Request-Id")
    assert len(app.seen) - before == allowed  # the refused request never reached the app
    outcomes = {rec["request_id"]: rec["outcome"] for rec in decisions(gw)}
    assert [outcomes.get(rid) for rid in ids] == ["allow"] * 5
    assert refused_id and outcomes.get(refused_id) not in (None, "allow")


def test_tls_below_1_2_is_refused(gw: Gateway) -> None:
    ctx = gw.tls()
    with warnings.catch_warnings():  # the client deliberately offers a deprecated version
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, OSError)), \
            socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock, \
            ctx.wrap_socket(sock, server_hostname="echo.localhost"):
        pass
