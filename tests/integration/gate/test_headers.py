"""Header hygiene and request-smuggling defences, through the real proxy."""

from __future__ import annotations

import re
import socket

import pytest
from gate_harness import Client, raw_exchange, status_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.gate

# What the proxy removes from every request (see noops.gate._http).
HOP_BY_HOP = {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
SPOOFABLE = {"forwarded", "x-real-ip", "x-client-ip", "true-client-ip", "x-request-id", "x-original-url",
             "x-original-uri", "x-rewrite-url", "x-http-method-override", "x-http-method",
             "x-method-override"}


def removed(name: str) -> bool:
    low = name.lower()
    return (low in HOP_BY_HOP or low in SPOOFABLE or low.startswith(("proxy-", "x-forwarded-"))
            or "_" in low or low in ("host", "content-length"))


def upstream_head(response: bytes) -> list[tuple[str, str]]:
    """The request head the app received, echoed by /echo-head, as (name, value) pairs."""
    body = response.split(b"\r\n\r\n", 1)[1]
    lines = body.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return [(n.decode("latin-1"), v.decode("latin-1").strip())
            for n, _, v in (line.partition(b":") for line in lines)]


@pytest.fixture
def echo_proxy(registry, upstream, start_proxy):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    return start_proxy()


def test_spoofed_forwarding_headers_are_replaced(echo_proxy):
    request = (b"GET /echo-head HTTP/1.1\r\nHost: a.localhost\r\n"
               b"X-Forwarded-For: 6.6.6.6\r\nx-forwarded-for: 7.7.7.7\r\nX_Forwarded_For: 8.8.8.8\r\n"
               b"Forwarded: for=6.6.6.6;proto=https\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n"
               b"X-Forwarded-Host: evil.example\r\nX-Forwarded-User: admin\r\n"
               b"X-Request-Id: chosen-by-client\r\n"
               b"X-HTTP-Method-Override: DELETE\r\nX-Original-URL: /admin\r\nConnection: close\r\n\r\n")
    response = raw_exchange(echo_proxy.port, request)
    head = upstream_head(response)
    names = [n.lower() for n, _ in head]
    values = dict((n.lower(), v) for n, v in head)
    assert names.count("x-forwarded-for") == 1 and values["x-forwarded-for"] == "127.0.0.1"
    assert values["x-forwarded-proto"] == "http"
    assert values["x-forwarded-host"] == "a.localhost"
    assert values["x-request-id"] != "chosen-by-client" and re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]{8}",
                                                                          values["x-request-id"])
    for gone in ("forwarded", "x-real-ip", "x-forwarded-user", "x_forwarded_for", "x-http-method-override",
                 "x-original-url"):
        assert gone not in names
    assert values["via"] == "1.1 noops"


def test_request_ids_are_unique(echo_proxy):
    client = Client(echo_proxy.port, "a.localhost")
    ids = set()
    for _ in range(20):
        head = dict(upstream_head(b"x\r\n\r\n" + client.get("/echo-head")[2]))
        ids.add(head["X-Request-Id"])
    assert len(ids) == 20


def test_hop_by_hop_headers_are_stripped_both_ways(echo_proxy):
    request = (b"GET /echo-head HTTP/1.1\r\nHost: a.localhost\r\n"
               b"Connection: keep-alive, X-Secret, x-other\r\n"
               b"Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\nProxy-Authorization: Basic Zm9v\r\n"
               b"Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Secret: 1\r\nX-Other: 2\r\n"
               b"X-Kept: 3\r\n\r\n"
               b"GET /hop HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\n")
    response = raw_exchange(echo_proxy.port, request)
    first, second = response.split(b"HTTP/1.1 200 OK")[1:]
    names = {n.lower() for n, _ in upstream_head(b"x\r\n\r\n" + first.split(b"\r\n\r\n", 1)[1])}
    assert names & (HOP_BY_HOP | {"proxy-authorization", "proxy-connection", "x-secret", "x-other"}) == set()
    assert "x-kept" in names
    # the app's response named X-Secret in Connection, sent Keep-Alive and Proxy-Authenticate
    resp_names = {line.split(b":")[0].lower() for line in second.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]}
    assert b"x-secret" not in resp_names and b"keep-alive" not in resp_names
    assert b"proxy-authenticate" not in resp_names and b"x-visible" in resp_names


def test_non_websocket_upgrade_is_not_tunnelled(echo_proxy):
    request = (b"GET /echo-head HTTP/1.1\r\nHost: a.localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
               b"GET / HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\n")
    response = raw_exchange(echo_proxy.port, request)
    assert response.count(b"HTTP/1.1 200 OK") == 2
    names = {n.lower() for n, _ in upstream_head(response.split(b"HTTP/1.1 200 OK")[1])}
    assert "upgrade" not in names and "http2-settings" not in names


P = b"POST /sink HTTP/1.1\r\nHost: a.localhost\r\n"
G = b"GET / HTTP/1.1\r\nHost: a.localhost\r\n"
SMUGGLING = {
    "CL and TE": P + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two CL": P + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "same CL twice": P + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "CL list": P + b"Content-Length: 3, 3\r\n\r\nabc",
    "CL sign": P + b"Content-Length: +3\r\n\r\nabc",
    "TE not chunked": P + b"Transfer-Encoding: gzip\r\n\r\nabc",
    "TE gzip, chunked": P + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "TE twice": P + b"Transfer-Encoding: chunked\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE in HTTP/1.0": b"POST /sink HTTP/1.0\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"0\r\n\r\n",
    "obs-fold": G + b"X-A: b\r\n c\r\n\r\n",
    "bare LF in header": G + b"X-A: b\nX-B: c\r\n\r\n",
    "bare CR in header": G + b"X-A: b\rX-B: c\r\n\r\n",
    "NUL in header": G + b"X-A: b\x00c\r\n\r\n",
    "space before colon": G + b"X-A : b\r\n\r\n",
    "bad chunk size": P + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "invalid method": b"G@T / HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    "unknown method": b"BREW / HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    "CONNECT": b"CONNECT a.localhost:443 HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    "space in target": b"GET /a b HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    "non-ASCII target": b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    "fragment": b"GET /a#b HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    "target not a path": b"GET a/b HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    "absolute-form other host": b"GET http://b.localhost/ HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    "absolute-form userinfo": b"GET http://x@a.localhost/ HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    "no Host": b"GET / HTTP/1.1\r\n\r\n",
    "two Hosts": G + b"Host: b.localhost\r\n\r\n",
    "bad Host": b"GET / HTTP/1.1\r\nHost: a.localhost@evil\r\n\r\n",
    "HTTP/0.9": b"GET /\r\n\r\n",
    "HTTP/2.0 text": b"GET / HTTP/2.0\r\nHost: a.localhost\r\n\r\n",
    "websocket upgrade with body": P + b"Connection: upgrade\r\nUpgrade: websocket\r\n"
                                       b"Content-Length: 2\r\n\r\nhi",
    "too many headers": G + b"".join(b"X-%d: y\r\n" % i for i in range(101)) + b"\r\n",
    "header section > 64 KiB": G + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", list(SMUGGLING))
def test_malformed_or_ambiguous_requests_get_400_and_close(echo_proxy, registry, name):
    before = echo_proxy.registry.apps()["a"]
    response = raw_exchange(echo_proxy.port, SMUGGLING[name] + b"GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
    assert status_of(response) == 400, response[:200]
    assert response.count(b"HTTP/1.1") == 1  # nothing after the 400: the connection was closed
    assert b"Connection: close" in response
    assert registry.apps()["a"] == before


def test_header_section_sent_slowly_is_bounded(echo_proxy):
    with socket.create_connection(("127.0.0.1", echo_proxy.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a.localhost\r\nX-Big: ")
        try:
            for _ in range(40):
                sock.sendall(b"a" * 4096)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = sock.recv(65536)
    assert status_of(data) == 400


# ------------------------------------------------------------------------ property test
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~",
                min_size=1, max_size=20)
INTERESTING = st.sampled_from(sorted(HOP_BY_HOP | SPOOFABLE | {
    "X-Forwarded-For", "x-forwarded-proto", "X-FORWARDED-HOST", "X-Forwarded-User", "X_Forwarded_For",
    "Proxy-Authorization", "proxy-anything", "Via", "Accept", "Expect", "Cookie", "Authorization",
    "X-Kept", "Content-Type"}))
NAME = st.one_of(TOKEN, INTERESTING).filter(
    lambda n: n.lower() not in ("host", "content-length", "transfer-encoding", "expect", "upgrade",
                                "connection", "te", "trailer"))
VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(
    lambda v: v.strip())
CONN_TOKENS = st.lists(st.one_of(TOKEN, st.sampled_from(["keep-alive", "x-kept", "cookie"])), max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.lists(st.tuples(NAME, VALUE), max_size=15), connection=CONN_TOKENS)
def test_forwarded_headers_are_input_minus_removed_plus_proxy_set(echo_proxy, headers, connection):
    """Any header set in -> the app sees exactly: the input minus hop-by-hop, spoofable and
    Connection-named headers, in order and byte for byte, plus the proxy's own."""
    lines = [b"GET /echo-head HTTP/1.1", b"Host: a.localhost"]
    lines += [f"{n}: {v}".encode() for n, v in headers]
    if connection:
        lines.append(f"Connection: {', '.join(connection)}".encode())
    response = raw_exchange(echo_proxy.port, b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200
    named = {t.lower() for t in connection}
    expected = [(n, v) for n, v in headers if not removed(n) and n.lower() not in named]
    got = upstream_head(response)
    # Host first, then the crossing headers in order, then the proxy's own (a client's Via stays:
    # the proxy appends its own hop)
    assert got[0] == ("Host", "a.localhost")
    assert got[1:-5] == expected
    assert [n for n, _ in got[-5:]] == ["X-Forwarded-For", "X-Forwarded-Proto", "Via", "X-Forwarded-Host",
                                        "X-Request-Id"]
    assert got[-5][1] == "127.0.0.1" and got[-3][1] == "1.1 noops"
