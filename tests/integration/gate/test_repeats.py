"""Heads repeated byte for byte: a keep-alive connection that sends its previous request again,
or an app connection that answers with its previous response head again, is served without
parsing that head a second time. What crosses must be exactly what parsing would give."""

from __future__ import annotations

import json
import re
import socket
import time
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.gate

_RID = re.compile(rb"X-Request-Id: [0-9a-f]{12}-[0-9a-f]{8}")


class Conn:
    """A plain kept-alive connection that reads whole Content-Length responses."""

    opened: ClassVar[list[Conn]] = []

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        Conn.opened.append(self)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        size = int(headers.get("content-length", "0"))
        while len(self.buf) < size:
            self._fill()
        body, self.buf = self.buf[:size], self.buf[size:]
        return int(lines[0].split(" ")[1]), headers, body

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the proxy closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def request(target: str = "/echo-head", *headers: str) -> bytes:
    return "\r\n".join([f"GET {target} HTTP/1.1", "Host: a.localhost", *headers, "", ""]).encode()


def masked(head: bytes) -> bytes:
    return _RID.sub(b"X-Request-Id: *", head)


@pytest.fixture
def proxy(registry, upstream, start_proxy):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    yield start_proxy()
    while Conn.opened:
        Conn.opened.pop().close()


def test_a_repeated_request_crosses_as_when_it_was_parsed(proxy):
    raw = request("/x/../echo-head?q=1", "X-Forwarded-For: 6.6.6.6", "Connection: keep-alive",
                  "Accept: */*", "X-Custom: v")
    first = Conn(proxy.port)
    first.send(raw)
    status, _, parsed = first.response()
    assert status == 200
    before = proxy.stats()["repeated_requests"]
    c = Conn(proxy.port)
    echoed = []
    for _ in range(6):
        c.send(raw)
        status, _, body = c.response()
        assert status == 200
        echoed.append(body)
    assert proxy.stats()["repeated_requests"] - before >= 4  # the first of a connection is parsed
    assert all(masked(body) == masked(parsed) for body in echoed)
    assert body.startswith(b"GET /echo-head?q=1 HTTP/1.1\r\n")
    ids = {_RID.search(body).group() for body in [parsed, *echoed]}  # type: ignore[union-attr]
    assert len(ids) == 7  # the request id is new each time
    assert b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in echoed[-1] and b"6.6.6.6" not in echoed[-1]
    first.close()
    c.close()


def test_what_changes_or_arrives_otherwise_is_parsed(proxy):
    c = Conn(proxy.port)
    raw = request("/echo-head", "X-Custom: v")
    c.send(raw)
    assert b"X-Custom: v\r\n" in c.response()[2]
    c.send(raw + raw)  # pipelined: one read holds two requests
    assert [b"X-Custom: v\r\n" in c.response()[2] for _ in range(2)] == [True, True]
    c.send(raw[:20])  # one request in two reads
    time.sleep(0.05)
    c.send(raw[20:])
    assert b"X-Custom: v\r\n" in c.response()[2]
    c.send(raw + raw[:30])  # a request and the start of the next
    time.sleep(0.05)
    c.send(raw[30:])
    assert [b"X-Custom: v\r\n" in c.response()[2] for _ in range(2)] == [True, True]
    c.send(raw)
    assert b"X-Custom: v\r\n" in c.response()[2]
    c.send(raw + b"GET /other HTTP/1.1\r\nX-Smuggle: ")  # a request and the start of another,
    assert b"X-Custom: v\r\n" in c.response()[2]
    c.send(raw)  # which these bytes complete: they are not the repeated request here
    assert json.loads(c.response()[2])["path"] == "/other"
    c.send(request("/echo-head", "X-Custom: w"))  # one byte differs
    assert b"X-Custom: w\r\n" in c.response()[2]
    c.send(raw)
    assert b"X-Custom: v\r\n" in c.response()[2]
    c.send(request("/echo-head", "X-Custom: v", "Connection: close"))
    status, headers, _ = c.response()
    assert status == 200 and headers["connection"] == "close"
    assert c.closed_by_peer()
    c.close()


def test_a_repeated_response_head_relays_its_own_body(proxy):
    c = Conn(proxy.port)
    bodies = []
    for _ in range(4):
        c.send(request("/echo-head"))
        bodies.append(c.response()[2])
    assert proxy.stats()["repeated_responses"] >= 2
    # each body is that request's own (its request id), not a copy of an earlier one
    assert len({_RID.search(b).group() for b in bodies}) == 4  # type: ignore[union-attr]
    c.close()


def test_a_repeated_response_head_without_its_whole_body_is_parsed(proxy):
    c = Conn(proxy.port)
    size = len(json.dumps({"app": "a", "path": "/", "method": "GET"}))
    c.send(request("/"))
    assert json.loads(c.response()[2])["app"] == "a"
    # the same head again, its body in a later write: the head alone is not a whole response
    c.send(request(f"/split?n={size}"))
    status, headers, body = c.response()
    assert status == 200 and headers["content-length"] == str(size) and body == b"s" * size
    c.send(b"HEAD / HTTP/1.1\r\nHost: a.localhost\r\n\r\n")  # the same head, and no body
    while b"\r\n\r\n" not in c.buf:
        c._fill()
    head, c.buf = c.buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: " in head and not c.buf
    for _ in range(2):
        c.send(request("/"))
        assert json.loads(c.response()[2])["path"] == "/"
    c.close()


_VARIANTS = [request("/echo-head"), request("/echo-head", "X-A: 1"), request("/a/./echo-head?x=%2F"),
             request("/echo-head", "Cookie: a=1", "Authorization: Basic eA=="),
             request("/echo-head", "Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(range(len(_VARIANTS))), min_size=2, max_size=8))
def test_any_sequence_forwards_what_a_fresh_connection_would(proxy, picks):
    fresh = {}
    for i in set(picks):
        c = Conn(proxy.port)
        c.send(_VARIANTS[i])
        fresh[i] = masked(c.response()[2])
        c.close()
    c = Conn(proxy.port)
    for i in picks:
        c.send(_VARIANTS[i])
        assert masked(c.response()[2]) == fresh[i]
    c.close()


def test_bytes_an_app_sends_after_its_response_are_not_skipped(proxy):
    """A response the app overran (the start of another after it, in the same write) leaves
    bytes in the parser: the next response on that connection is parsed behind them and
    refused, never relayed as a repeat of the head before."""
    c = Conn(proxy.port)
    for _ in range(2):
        c.send(request("/"))
        assert json.loads(c.response()[2])["path"] == "/"
    c.send(request("/overrun"))
    assert json.loads(c.response()[2])["path"] == "/"
    c.send(request("/"))
    assert c.response()[0] == 502
