"""Draining endpoints, swapping them under load without a failed request, graceful stop."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import Counter

import pytest
from gate_harness import Client, wait_for

pytestmark = pytest.mark.gate


def test_draining_endpoint_gets_nothing_new_but_finishes_in_flight(registry, upstream, start_proxy):
    old, new = upstream("old"), upstream("new")
    registry.set("a", ["a.localhost"], [old.endpoint("a")])
    proxy = start_proxy()
    slow: list[tuple[int, bytes]] = []

    def slow_request() -> None:
        status, _, body = Client(proxy.port, "a.localhost").get("/slow?ms=1000")
        slow.append((status, body))

    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_for(lambda: old.server.inflight == 1, what="the slow request to reach the old instance")
    registry.set("a", ["a.localhost"], [old.endpoint("a", draining=True), new.endpoint("a")])
    assert proxy.call(lambda: proxy.door.in_flight(old.path)) == 1
    client = Client(proxy.port, "a.localhost")
    apps = Counter(json.loads(client.get("/")[2])["app"] for _ in range(10))
    assert apps == {"new": 10}
    thread.join()
    assert slow[0][0] == 200 and json.loads(slow[0][1])["app"] == "old"
    assert proxy.call(lambda: proxy.door.in_flight(old.path)) == 0
    assert old.server.requests == 1


def test_swapping_endpoints_under_load_fails_no_request(registry, upstream, start_proxy):
    """20 kept-alive clients for ~3 s while the app's instance is replaced, the way a rolling
    deploy does it: new one added ready, old one drained, removed, stopped."""
    old = upstream("old")
    registry.set("a", ["a.localhost"], [old.endpoint("a")])
    proxy = start_proxy()
    stop = threading.Event()
    failures: list[str] = []
    done = Counter[str]()
    lock = threading.Lock()

    def client_loop(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    if i % 5 == 0:
                        conn.request("POST", "/sink", body=b"x" * 2000, headers={"Host": "a.localhost"})
                    else:
                        conn.request("GET", f"/c{n}/{i}", headers={"Host": "a.localhost"})
                    resp = conn.getresponse()
                    body = resp.read()
                    if resp.status != 200:
                        failures.append(f"{resp.status} {time.monotonic():.3f} {i % 5 == 0} {body[:80]!r}")
                    else:
                        with lock:
                            done[resp.getheader("X-Upstream") or "?"] += 1
                except Exception as exc:
                    failures.append(repr(exc))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        finally:
            conn.close()

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    try:
        marks = {}
        time.sleep(0.7)
        marks["new"] = time.monotonic()
        new = upstream("new")
        registry.set("a", ["a.localhost"], [old.endpoint("a"), new.endpoint("a")])
        time.sleep(0.5)
        marks["drain"] = time.monotonic()
        registry.set("a", ["a.localhost"], [old.endpoint("a", draining=True), new.endpoint("a")])
        wait_for(lambda: proxy.call(lambda: proxy.door.in_flight(old.path)) == 0, what="old drained")
        registry.set("a", ["a.localhost"], [new.endpoint("a")])
        served_by_old = old.server.requests
        marks["stop"] = time.monotonic()
        old.stop()
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == [], (failures, proxy.stats(), marks)
    assert done["old"] > 50 and done["new"] > 50, done
    assert old.server.requests == served_by_old  # nothing reached it after the drain


def test_graceful_stop_finishes_in_flight_requests(registry, upstream, start_proxy):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    proxy = start_proxy()
    idle = Client(proxy.port, "a.localhost")
    assert idle.get("/")[0] == 200  # a kept-alive, idle connection
    result: list[tuple[int, dict[str, str]]] = []

    def slow_request() -> None:
        status, headers, _ = Client(proxy.port, "a.localhost").get("/slow?ms=700")
        result.append((status, headers))

    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_for(lambda: a.server.inflight == 1, what="the slow request")
    started = time.monotonic()
    stopper = threading.Thread(target=lambda: proxy.call_async(proxy.door.stop(drain_s=5)))
    stopper.start()
    time.sleep(0.2)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
    thread.join()
    stopper.join()
    assert result[0][0] == 200 and result[0][1].get("connection") == "close"
    assert 0.3 < time.monotonic() - started < 3
    with pytest.raises((http.client.HTTPException, OSError)):
        idle.get("/")


def test_drain_deadline_cuts_what_is_left(registry, upstream, start_proxy):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    proxy = start_proxy()
    errors: list[BaseException] = []

    def slow_request() -> None:
        try:
            Client(proxy.port, "a.localhost").get("/slow?ms=3000")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_for(lambda: a.server.inflight == 1, what="the slow request")
    started = time.monotonic()
    proxy.call_async(proxy.door.stop(drain_s=0.3))
    assert time.monotonic() - started < 1.5
    thread.join()
    assert len(errors) == 1
