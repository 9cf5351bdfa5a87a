"""Routing, keep-alive, balancing, and the proxy's own answers (404, 502, 503, 504, 408)."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter

import pytest
from gate_harness import Client, raw_exchange, status_of

from noops.gate import Endpoint, FrontDoorConfig

pytestmark = pytest.mark.gate


def test_routes_by_host_to_two_apps(registry, upstream, start_proxy):
    a, b = upstream("a"), upstream("b")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    registry.set("b", ["b.localhost", "www.b.localhost"], [b.endpoint("b")])
    proxy = start_proxy()
    for host, app in [("a.localhost", "a"), ("b.localhost", "b"), ("WWW.B.localhost:8443", "b"),
                      ("A.LOCALHOST", "a")]:
        status, _, body = Client(proxy.port, host).get("/x?y=1")
        assert status == 200
        assert json.loads(body) == {"app": app, "path": "/x?y=1", "method": "GET"}


def test_unknown_host_is_404_and_names_nothing_internal(registry, upstream, start_proxy, sockdir):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    proxy = start_proxy()
    for host in ["nope.localhost", "a.localhost.", "xa.localhost", "127.0.0.1"]:
        status, headers, body = Client(proxy.port, host).get("/")
        assert status == 404, host
        assert headers["content-type"].startswith("text/html")
        assert str(sockdir).encode() not in body and b"a.localhost" not in body
        assert b".sock" not in body
    status, headers, body = Client(proxy.port, "nope.localhost").get("/", {"Accept": "application/json"})
    assert status == 404 and headers["content-type"] == "application/json"
    err = json.loads(body)["error"]
    assert err["status"] == 404 and err["request_id"] == headers["x-request-id"]


def test_keep_alive_reuses_upstream_connections(registry, upstream, start_proxy):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    proxy = start_proxy()
    client = Client(proxy.port, "a.localhost")
    for _ in range(50):
        assert client.get("/")[0] == 200
    assert a.server.requests == 50
    assert a.server.connections == 1
    stats = proxy.stats()
    assert stats["connections_total"] == 1 and stats["upstream_connects"] == 1
    assert stats["upstream_reuses"] == 49
    # several clients in turn share the pooled connection too
    for _ in range(5):
        Client(proxy.port, "a.localhost").get("/")
    assert a.server.connections == 1


def test_connection_close_is_honoured(registry, upstream, start_proxy):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    proxy = start_proxy()
    response = raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200
    assert b"\r\nConnection: close\r\n" in response  # and raw_exchange saw the proxy close
    response = raw_exchange(proxy.port, b"GET / HTTP/1.0\r\nHost: a.localhost\r\n\r\n")
    assert status_of(response) == 200 and response.endswith(b'"method": "GET"}')


def test_head_has_headers_and_no_body(registry, upstream, start_proxy):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    proxy = start_proxy()
    client = Client(proxy.port, "a.localhost")
    status, headers, body = client.request("HEAD", "/")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    status, headers, body = client.request("HEAD", "/stream?n=1000")
    assert status == 200 and body == b""
    # the same connections keep working after HEAD responses
    assert client.get("/")[0] == 200
    assert a.server.connections == 1


def test_balances_round_robin_over_three_endpoints(registry, upstream, start_proxy):
    ups = [upstream(f"u{i}") for i in range(3)]
    registry.set("a", ["a.localhost"], [u.endpoint("a") for u in ups])
    proxy = start_proxy()
    client = Client(proxy.port, "a.localhost")
    seen = Counter(json.loads(client.get("/")[2])["app"] for _ in range(30))
    assert seen == {"u0": 10, "u1": 10, "u2": 10}


def test_least_outstanding_avoids_a_busy_endpoint(registry, upstream, start_proxy):
    import threading

    slow, fast = upstream("slow"), upstream("fast")
    registry.set("a", ["a.localhost"], [slow.endpoint("a"), fast.endpoint("a")])
    proxy = start_proxy()
    busy = []
    def slow() -> None:
        busy.append(Client(proxy.port, "a.localhost").get("/slow?ms=800"))

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # both slow requests are in flight, one on each endpoint
    client = Client(proxy.port, "a.localhost")
    apps = Counter(json.loads(client.get("/")[2])["app"] for _ in range(10))
    for t in threads:
        t.join()
    assert len(busy) == 2
    assert sum(apps.values()) == 10 and apps["fast"] >= 5


def test_refused_endpoint_is_skipped(registry, upstream, start_proxy, sockdir):
    a = upstream("a")
    dead = Endpoint("a/dead", "a", str(sockdir / "dead.sock"))
    registry.set("a", ["a.localhost"], [dead, a.endpoint("a")])
    proxy = start_proxy()
    client = Client(proxy.port, "a.localhost")
    for _ in range(6):
        status, _, body = client.request("POST", "/sink", body=b"payload")
        assert status == 200 and json.loads(body)["bytes"] == 7
    assert proxy.stats()["connect_failures"] >= 1


def test_503_with_retry_after_when_nothing_is_ready(registry, upstream, start_proxy, sockdir):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a", ready=False)])
    registry.set("b", ["b.localhost"], [])
    proxy = start_proxy(FrontDoorConfig(retry_after_s=7))
    for host in ["a.localhost", "b.localhost"]:
        status, headers, body = Client(proxy.port, host).get("/", {"Accept": "application/json"})
        assert status == 503 and headers["retry-after"] == "7"
        assert json.loads(body)["error"]["status"] == 503
        assert str(sockdir) not in body.decode()
    assert a.server.requests == 0


def test_502_when_the_app_crashes(registry, upstream, start_proxy, sockdir):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    proxy = start_proxy()
    client = Client(proxy.port, "a.localhost")
    status, _, body = client.request("POST", "/crash", body=b"x" * 100)
    assert status == 502 and b"Bad Gateway" in body
    assert str(sockdir).encode() not in body and b"Errno" not in body and b"Traceback" not in body
    assert client.get("/")[0] == 200  # the client connection survives
    # after the head was sent nothing can be said: the response is cut short
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /crash-mid HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert status_of(data) == 200 and data.endswith(b"partial")
    assert proxy.stats()["errors"] >= 2


def test_502_when_every_endpoint_refuses(registry, start_proxy, sockdir):
    registry.set("a", ["a.localhost"], [Endpoint("a/dead", "a", str(sockdir / "dead.sock"))])
    proxy = start_proxy()
    assert Client(proxy.port, "a.localhost").get("/")[0] == 502


def test_504_when_the_app_is_too_slow(registry, upstream, start_proxy):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    proxy = start_proxy(FrontDoorConfig(upstream_timeout_s=0.3))
    started = time.monotonic()
    status, _, body = Client(proxy.port, "a.localhost").get("/slow?ms=1500")
    assert status == 504 and b"Gateway Timeout" in body
    assert time.monotonic() - started < 1.2


def test_408_for_a_slow_client_and_idle_close(registry, upstream, start_proxy):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    proxy = start_proxy(FrontDoorConfig(header_timeout_s=0.3, keepalive_timeout_s=0.3))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a.loc")  # ... and nothing more
        data = sock.recv(65536)
        assert status_of(data) == 408
        assert sock.recv(65536) == b""  # closed
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
        assert status_of(sock.recv(65536)) == 200
        started = time.monotonic()
        assert sock.recv(65536) == b""  # an idle keep-alive connection is closed quietly
        assert time.monotonic() - started < 2


def test_path_is_forwarded_normalised_and_ambiguous_ones_refused(registry, upstream, start_proxy):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    proxy = start_proxy()
    forwarded: dict[str, str | None] = {
        "/a/../b": "/b", "/%2e%2e/admin": "/admin", "//double//slash": "/double/slash",
        "/A%2FB?q=%20x&r=../": None,  # an encoded slash is ambiguous: refused
        "/;x=1/./y": "/;x=1/y", "/~user/%7E": "/~user/~", "/sp%20ace?r=../": "/sp%20ace?r=../"}
    for path, expected in forwarded.items():
        response = raw_exchange(proxy.port, f"GET {path} HTTP/1.1\r\nHost: a.localhost\r\n"
                                "Connection: close\r\n\r\n".encode())
        if expected is None:
            assert status_of(response) == 400, path
            continue
        assert status_of(response) == 200, path
        assert a.server.seen[-1][1] == expected  # the query is forwarded untouched
    for target in (b"http://a.localhost/abs?x=1", b"*", b"/%00", b"/a%5cb"):
        response = raw_exchange(proxy.port, b"OPTIONS " + target + b" HTTP/1.1\r\nHost: a.localhost\r\n"
                                            b"Connection: close\r\n\r\n")
        assert status_of(response) == 400, target


def test_pipelined_requests_are_answered_in_order(registry, upstream, start_proxy):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    proxy = start_proxy()
    reqs = b"".join(f"GET /p{i} HTTP/1.1\r\nHost: a.localhost\r\n\r\n".encode() for i in range(5))
    last = b"GET /last HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\n"
    data = raw_exchange(proxy.port, reqs + last)
    paths = [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["path"]
             for part in data.split(b"HTTP/1.1 200 OK")[1:]]
    assert paths == ["/p0", "/p1", "/p2", "/p3", "/p4", "/last"]
