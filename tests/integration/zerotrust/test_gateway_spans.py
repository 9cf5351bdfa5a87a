"""The gateway's own spans (``noops.gate._tracing``), sent to an OTLP sink the test runs: a
request from the internet starts a new trace (a forged ``traceparent`` is not continued) with
the gateway's server span and its client span to the instance, whose id the app gets as its
parent; a refused request is a span with its status and no client span; a workload's call keeps
its trace context and gets an internal span under the caller's."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from zt_harness import Gateway, workload_call

from noops.gate._tracing import parse_traceparent

POLICY = '''
[[route]]
id = "apps"
host = "*.localhost"
authenticated = false

[[route]]
id = "private"
host = "echo.localhost"
path = "/private"
authenticated = true
allow_spiffe = ["spiffe://noops.local/app/other/web"]
'''
FORGED = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"
SERVER, CLIENT, INTERNAL = 2, 3, 1  # opentelemetry.proto SpanKind values


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    gateway = Gateway(otlp=True)
    gateway.add_app("echo")
    gateway.add_app("other")
    gateway.start()
    try:
        gateway.apply_policy(POLICY)
        yield gateway
    finally:
        gateway.stop()


def _attrs(span: Any) -> dict[str, Any]:
    return {a.key: a.value.string_value or a.value.int_value for a in span.attributes}


def _received_traceparent(gw: Gateway, path: str) -> str:
    seen = next(r for r in reversed(gw.apps["echo"].seen) if r["target"] == path)
    (value,) = [v for k, v in seen["headers"] if k.lower() == "traceparent"]
    return str(value)


def test_a_request_from_outside_starts_its_own_trace(gw: Gateway) -> None:
    assert gw.otlp is not None
    with gw.client() as c:
        r = c.get(gw.url("echo", "/outside?token=secret"), headers={"traceparent": FORGED})
        assert r.status_code == 200
    parsed = parse_traceparent(_received_traceparent(gw, "/outside?token=secret").encode())
    assert parsed is not None
    trace, parent, _flags = parsed
    assert trace.decode() != FORGED.split("-")[1]  # a client cannot write into another trace
    spans = gw.otlp.wait_for(lambda s: any(x.trace_id.hex() == trace.decode() and x.kind == CLIENT
                                           for x in s))
    mine = {x.kind: x for x in spans if x.trace_id.hex() == trace.decode()}
    server, client = mine[SERVER], mine[CLIENT]
    assert server.parent_span_id == b"" and client.parent_span_id == server.span_id
    assert client.span_id.hex() == parent.decode()  # the app's server span hangs under it
    assert server.name == "GET echo.localhost"
    a = _attrs(server)
    assert a["url.path"] == "/outside" and "secret" not in str(server)  # no query in telemetry
    assert a["http.response.status_code"] == 200 and a["noops.gate.decision"] == "allow"
    assert _attrs(client)["peer.service"] == "echo" and _attrs(client)["noops.mtls"] == "true"
    assert server.start_time_unix_nano <= client.start_time_unix_nano <= client.end_time_unix_nano
    assert client.end_time_unix_nano <= server.end_time_unix_nano
    assert {"service.name": "noops-gateway", "service.namespace": "noops"} in gw.otlp.resources


def test_a_refused_request_is_a_span_with_no_hop_to_the_app(gw: Gateway) -> None:
    assert gw.otlp is not None
    before = len(gw.apps["echo"].seen)
    with gw.client() as c:
        assert c.get(gw.url("echo", "/private"), headers={"Accept": "application/json"}).status_code == 401
    spans = gw.otlp.wait_for(lambda s: any(_attrs(x).get("url.path") == "/private" for x in s))
    (denied,) = [x for x in spans if _attrs(x).get("url.path") == "/private"]
    assert denied.kind == SERVER and _attrs(denied)["noops.gate.decision"] == "deny"
    assert _attrs(denied)["http.response.status_code"] == 401
    assert not [x for x in spans if x.trace_id == denied.trace_id and x.kind == CLIENT]
    assert len(gw.apps["echo"].seen) == before


def _workload_get(gw: Gateway, path: str, traceparent: str) -> bytes:
    return workload_call(gw, gw.ca.issue_svid("other", "web"), "echo.localhost", path,
                         {"traceparent": traceparent})


def test_a_workload_call_keeps_its_trace_context(gw: Gateway) -> None:
    assert gw.otlp is not None
    caller = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    assert _workload_get(gw, "/private/items", caller).startswith(b"HTTP/1.1 200")
    assert _received_traceparent(gw, "/private/items") == caller  # untouched: caller -> app edge
    spans = gw.otlp.wait_for(lambda s: any(x.trace_id.hex() == "ab" * 16 for x in s))
    (mine,) = [x for x in spans if x.trace_id.hex() == "ab" * 16]
    assert mine.kind == INTERNAL and mine.parent_span_id.hex() == "cd" * 8
    assert _attrs(mine)["noops.app"] == "echo"


@pytest.mark.parametrize("value", ["00-" + "0" * 32 + "-" + "cd" * 8 + "-01",
                                   "00-" + "AB" * 16 + "-" + "cd" * 8 + "-01",
                                   "ff-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
                                   "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01-extra", "garbage"])
def test_a_workload_with_an_invalid_traceparent_gets_a_new_trace(gw: Gateway, value: str) -> None:
    assert _workload_get(gw, "/private/bad", value).startswith(b"HTTP/1.1 200")
    received = _received_traceparent(gw, "/private/bad")
    parsed = parse_traceparent(received.encode())
    assert parsed is not None and received != value


def test_the_gateway_serves_on_when_the_receiver_is_gone() -> None:
    gateway = Gateway(otlp=True)
    gateway.add_app("echo")
    gateway.start()
    try:
        gateway.apply_policy(POLICY)
        assert gateway.otlp is not None
        gateway.otlp.stop()
        (gateway.home / "run" / "otlp.sock").unlink()
        with gateway.client() as c:
            for _ in range(3):
                assert c.get(gateway.url("echo", "/still-here")).status_code == 200
        deadline = time.monotonic() + 10
        while "cannot reach the telemetry receiver" not in gateway.log_text():
            assert time.monotonic() < deadline, gateway.log_text()
            time.sleep(0.1)
    finally:
        gateway.stop()


def test_past_its_budget_the_gateway_traces_nothing_and_continues_no_client_context() -> None:
    gateway = Gateway(otlp=True, traces_per_second=2)
    gateway.add_app("echo")
    gateway.start()
    try:
        gateway.apply_policy(POLICY)
        started = time.monotonic()  # the gateway counts per second of the same clock
        with gateway.client() as c:
            for i in range(10):
                r = c.get(gateway.url("echo", f"/burst{i}"), headers={"traceparent": FORGED})
                assert r.status_code == 200
        seconds = int(time.monotonic()) - int(started) + 1
        received = [[v for k, v in r["headers"] if k.lower() == "traceparent"]
                    for r in gateway.apps["echo"].seen if r["target"].startswith("/burst")]
        traced = [r for r in received if r]
        assert 1 <= len(traced) <= 2 * seconds  # at most 2 a second
        assert all(r[0] != FORGED for r in traced)
        if 2 * seconds < len(received):
            assert [] in received  # the rest: no context at all, not the client's
        caller = "00-" + "ef" * 16 + "-" + "cd" * 8 + "-01"
        for _ in range(4):  # a workload's context crosses whether traced or not
            assert workload_call(gateway, gateway.ca.issue_svid("other", "web"), "echo.localhost",
                                 "/private/budget", {"traceparent": caller}).startswith(b"HTTP/1.1 200")
            assert _received_traceparent(gateway, "/private/budget") == caller
        assert gateway.otlp is not None
        spans = gateway.otlp.wait_for(lambda s: len({x.trace_id for x in s}) >= len(traced))
        bursts = {x.trace_id for x in spans if _attrs(x).get("url.path", "").startswith("/burst")}
        assert len(bursts) == len(traced)
    finally:
        gateway.stop()


def test_trace_state_crosses_only_with_a_workload_context(gw: Gateway) -> None:
    with gw.client() as c:
        assert c.get(gw.url("echo", "/state-outside"),
                     headers={"traceparent": FORGED, "tracestate": "ot=th:0"}).status_code == 200
    seen = next(r for r in reversed(gw.apps["echo"].seen) if r["target"] == "/state-outside")
    assert not [v for k, v in seen["headers"] if k.lower() == "tracestate"]
    caller = "00-" + "12" * 16 + "-" + "34" * 8 + "-01"
    assert workload_call(gw, gw.ca.issue_svid("other", "web"), "echo.localhost", "/private/state",
                         {"traceparent": caller, "tracestate": "vendor=1"}).startswith(b"HTTP/1.1 200")
    seen = next(r for r in reversed(gw.apps["echo"].seen) if r["target"] == "/private/state")
    assert [v for k, v in seen["headers"] if k.lower() == "tracestate"] == ["vendor=1"]


def test_a_workload_that_does_not_record_gets_no_gateway_span(gw: Gateway) -> None:
    assert gw.otlp is not None
    caller = "00-" + "56" * 16 + "-" + "78" * 8 + "-00"  # sampled flag off
    assert workload_call(gw, gw.ca.issue_svid("other", "web"), "echo.localhost", "/private/quiet",
                         {"traceparent": caller}).startswith(b"HTTP/1.1 200")
    assert _received_traceparent(gw, "/private/quiet") == caller
    with gw.client() as c:  # a later request's span arrives: the quiet one's would be there by now
        assert c.get(gw.url("echo", "/after-quiet")).status_code == 200
    spans = gw.otlp.wait_for(lambda s: any(_attrs(x).get("url.path") == "/after-quiet" for x in s))
    assert not [x for x in spans if x.trace_id.hex() == "56" * 16]


def test_unknown_hosts_are_not_traced_and_pages_are_not_refusals(gw: Gateway) -> None:
    assert gw.otlp is not None
    with gw.client() as c:
        assert c.get(gw.url("nowhere", "/x")).status_code == 404
        assert c.get(gw.url("echo", "/.noops/login")).status_code == 200
        assert c.get(gw.url("echo", "/after-pages")).status_code == 200
    spans = gw.otlp.wait_for(lambda s: any(_attrs(x).get("url.path") == "/after-pages" for x in s))
    assert not [x for x in spans if _attrs(x).get("server.address") == "nowhere.localhost"]
    (login,) = [x for x in spans if _attrs(x).get("url.path") == "/.noops/login"]
    assert _attrs(login)["noops.gate.decision"] == "page"


def test_a_request_the_client_gives_up_on_is_still_a_span(gw: Gateway) -> None:
    assert gw.otlp is not None
    head = (b"POST /gave-up HTTP/1.1\r\nHost: echo.localhost\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock, \
            gw.tls().wrap_socket(sock, server_hostname="echo.localhost") as tls:
        tls.sendall(head)
        time.sleep(0.3)  # forwarded: the app waits for the rest of the body
    spans = gw.otlp.wait_for(lambda s: any(_attrs(x).get("url.path") == "/gave-up" for x in s))
    (server,) = [x for x in spans if _attrs(x).get("url.path") == "/gave-up"]
    assert _attrs(server)["http.response.status_code"] == 499
