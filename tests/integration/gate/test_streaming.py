"""Bodies stream through the proxy with backpressure, both ways, in every framing."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import time

import pytest
from gate_harness import raw_exchange, status_of

pytestmark = pytest.mark.gate

MB = 1024 * 1024
BLOCK = bytes(range(256)) * 256  # what /stream sends, 64 KiB at a time


@pytest.fixture
def app(registry, upstream, start_proxy):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    return a, start_proxy()


def test_20mb_chunked_response_to_a_slow_client_is_not_buffered(app):
    a, proxy = app
    total = 20 * MB
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", proxy.port))
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.sock = sock
    try:
        conn.request("GET", f"/stream?n={total}", headers={"Host": "a.localhost"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
        digest, got, worst = hashlib.sha256(), 0, 0
        while True:
            piece = resp.read(256 * 1024)
            if not piece:
                break
            digest.update(piece)
            got += len(piece)
            if got % (4 * MB) < 256 * 1024 and got < total - 4 * MB:
                time.sleep(0.3)  # a slow consumer: the app must be held back meanwhile
                worst = max(worst, a.server.sent - got)
        assert got == total
        assert digest.hexdigest() == hashlib.sha256(BLOCK * (total // len(BLOCK))).hexdigest()
        # what the app got ahead of the client sits in socket buffers and one proxy read,
        # never the whole body
        assert worst < 8 * MB, worst
    finally:
        conn.close()


def test_20mb_chunked_request_to_a_slow_app_is_not_buffered(app):
    a, proxy = app
    total = 20 * MB
    sent = 0
    worst = 0

    def body():
        nonlocal sent, worst
        while sent < total:
            yield BLOCK
            sent += len(BLOCK)
            worst = max(worst, sent - a.server.received)

    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        conn.request("POST", "/sink?delay_ms=3", body=body(), encode_chunked=True,
                     headers={"Host": "a.localhost", "Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        result = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200
    assert result == {"bytes": total, "sha256": hashlib.sha256(BLOCK * (total // len(BLOCK))).hexdigest()}
    assert worst < 8 * MB, worst
    _method, _target, headers = a.server.seen[-1]
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers


def test_content_length_body_and_keep_alive(app):
    a, proxy = app
    payload = bytes(range(256)) * 20000  # ~5 MB
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        for _ in range(2):
            conn.request("PUT", "/sink", body=payload, headers={"Host": "a.localhost"})
            resp = conn.getresponse()
            assert json.loads(resp.read()) == {"bytes": len(payload),
                                               "sha256": hashlib.sha256(payload).hexdigest()}
    finally:
        conn.close()
    assert a.server.seen[-1][2]["content-length"] == str(len(payload))
    assert a.server.connections == 1


def test_expect_100_continue_is_relayed(app):
    _a, proxy = app
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"POST /sink HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        interim = sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        final = b""
        while b"sha256" not in final:
            final += sock.recv(65536)
        assert status_of(final) == 200 and b'"bytes": 5' in final
    # an unknown host is answered at once; the body is never asked for
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"POST /sink HTTP/1.1\r\nHost: nobody.localhost\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        data = sock.recv(65536)
        assert status_of(data) == 404 and b"Connection: close" in data


def test_close_delimited_response_is_rechunked(app):
    _a, proxy = app
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        conn.request("GET", "/close-delimited", headers={"Host": "a.localhost"})
        resp = conn.getresponse()
        assert resp.read() == b"until the end"
        assert resp.getheader("Transfer-Encoding") == "chunked"
        conn.request("GET", "/", headers={"Host": "a.localhost"})  # same client connection
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    response = raw_exchange(proxy.port, b"GET /close-delimited HTTP/1.0\r\nHost: a.localhost\r\n\r\n")
    assert response.endswith(b"\r\n\r\nuntil the end") and b"chunked" not in response


def test_chunked_request_with_trailers_and_extensions(app):
    _a, proxy = app
    response = raw_exchange(proxy.port, b"POST /sink HTTP/1.1\r\nHost: a.localhost\r\n"
                                        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n")
    assert status_of(response) == 200
    assert json.loads(response.split(b"\r\n\r\n", 1)[1]) == {
        "bytes": 5, "sha256": hashlib.sha256(b"abcde").hexdigest()}


def test_many_concurrent_streams(app):
    _a, proxy = app
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            payload = b"z" * 300_000
            conn.request("POST", "/sink", body=payload, headers={"Host": "a.localhost"})
            assert json.loads(conn.getresponse().read())["bytes"] == len(payload)
            conn.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
