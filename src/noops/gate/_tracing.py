"""The gateway's own spans: every request the front door answers becomes telemetry of the
service ``noops-gateway``, sent as OTLP/HTTP protobuf to the platform's receiver socket.

Trace context (W3C ``traceparent``):

* A request from the internet starts a new trace whatever ``traceparent`` it carries (a client
  must not be able to write into someone else's trace): a ``SERVER`` span for the request as
  the gateway saw it (decision included) and, when it is forwarded, a ``CLIENT`` child for the
  hop to the instance (mTLS), whose id the app gets as its parent. The service map thus shows
  ``noops-gateway → app``.
* A request from a workload (an SVID the CA issued: apps calling each other, the prober) keeps
  its ``traceparent`` untouched, so the caller's client span and the callee's server span stay
  one edge of the map; the gateway adds an ``INTERNAL`` span under the caller's span.

With no receiver configured nothing changes: ``traceparent`` crosses as before.

Cost on the event loop: a few attribute stores and one tuple per request; spans are encoded and
sent by a thread, at most every second. A full buffer drops the oldest spans (counted): the
gateway's telemetry never holds up a request.
"""

from __future__ import annotations

import http.client
import logging
import random
import re
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Final, NamedTuple

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

if TYPE_CHECKING:
    from noops.gate._exchange import Exchange
    from noops.gate._pep_types import ConnIdentity

__all__ = ["SERVICE_NAME", "GatewaySpans", "parse_traceparent"]

log = logging.getLogger("noops.gate")

SERVICE_NAME: Final = "noops-gateway"
_TRACEPARENT: Final = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE: Final = b"0" * 32
_ZERO_SPAN: Final = b"0" * 16
_SERVER, _CLIENT, _INTERNAL = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_INTERNAL


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bytes] | None:
    """``(trace id hex, parent span id hex, flags hex)`` of a valid W3C ``traceparent`` (version
    ``00``, or a later one read as ``00``), else None."""
    m = _TRACEPARENT.fullmatch(value.strip()[:55])
    if m is None:
        return None
    version, trace, parent, flags = m.groups()
    if version == b"ff" or trace == _ZERO_TRACE or parent == _ZERO_SPAN:
        return None
    if version == b"00" and len(value.strip()) != 55:
        return None
    return trace, parent, flags


class _Done(NamedTuple):
    """One answered request: what its span(s) are made of."""

    trace: tuple[bytes, bytes, bytes, bytes | None]  # trace id, span id, parent or b"", client span
    t0: int  # head read (ns)
    t1: int  # sent to the instance (0: answered by the gateway)
    t2: int  # answered
    status: int
    method: str
    host: str
    path: str
    user: str | None
    allowed: bool
    app: str


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class GatewaySpans:
    """Spans of the requests one front door answers, exported to the receiver at
    ``socket_path`` (``$NOOPS_HOME/run/otlp.sock``)."""

    def __init__(self, socket_path: str, *, flush_s: float = 1.0, max_buffered: int = 50_000,
                 batch: int = 2_000) -> None:
        self.socket_path = socket_path
        self.flush_s = flush_s
        self.batch = batch
        self._done: deque[_Done] = deque(maxlen=max_buffered)
        self.recorded = 0  # answered requests (one or two spans each)
        self.sent = 0  # ... whose spans the receiver took
        self.failed = 0  # ... in batches the receiver did not take
        self._stop = threading.Event()
        self._warned = 0.0
        self._resource = Resource(attributes=[_kv("service.name", SERVICE_NAME),
                                              _kv("service.namespace", "noops")])
        self._scope = InstrumentationScope(name="noops.gate")
        self._thread = threading.Thread(target=self._run, name="gateway-spans", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Requests whose spans were pushed out of a full buffer."""
        return self.recorded - self.sent - self.failed - len(self._done)

    # -- on the event loop ----------------------------------------------------------------------
    @staticmethod
    def begin(conn: ConnIdentity | None, traceparent: bytes
              ) -> tuple[tuple[bytes, bytes, bytes, bytes | None], bytes]:
        """The span context of a request (:attr:`Exchange.trace`) and the ``traceparent``
        header line the instance gets, given what the client sent."""
        cert = conn.cert if conn is not None else None
        ctx = parse_traceparent(traceparent) if traceparent and cert is not None \
            and cert.kind == "workload" else None
        if ctx is not None:  # a workload's call: its context crosses untouched
            trace, parent, _flags = ctx
            return ((bytes.fromhex(trace.decode()), random.getrandbits(64).to_bytes(8, "big"),
                     bytes.fromhex(parent.decode()), None),
                    b"traceparent: " + traceparent.strip() + b"\r\n")
        bits = random.getrandbits(256).to_bytes(32, "big")
        trace_id, server_id, client_id = bits[:16], bits[16:24], bits[24:]
        return ((trace_id, server_id, b"", client_id),
                b"traceparent: 00-" + trace_id.hex().encode() + b"-" + client_id.hex().encode() + b"-01\r\n")

    def end(self, ex: Exchange, status: int) -> None:
        """``ex`` was answered with ``status``: its spans are done."""
        self.recorded += 1
        verdict = ex.verdict
        assert ex.trace is not None
        self._done.append(_Done(ex.trace, ex.t0, ex.t1, time.time_ns(), status, ex.method, ex.host,
                                ex.path, verdict.user if verdict is not None else None,
                                verdict is None or verdict.allowed, ex.eps[0].app if ex.eps else ""))

    # -- export thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        while self._done:
            items: list[_Done] = []
            done = self._done
            while done and len(items) < self.batch:
                items.append(done.popleft())
            spans = [s for item in items for s in _spans(item)]
            request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
                resource=self._resource, scope_spans=[ScopeSpans(scope=self._scope, spans=spans)])])
            if self._send(request.SerializeToString()):
                self.sent += len(items)
            else:
                self.failed += len(items)
                return  # the rest waits for the next round (or is pushed out by newer spans)

    def _send(self, body: bytes) -> bool:
        conn = _UnixHTTPConnection(self.socket_path, timeout=5.0)
        try:
            conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            status = conn.getresponse().status
        except OSError as exc:
            self._warn(f"cannot reach the telemetry receiver at {self.socket_path}: {exc}")
            return False
        finally:
            conn.close()
        if status != 200:
            self._warn(f"the telemetry receiver answered {status} to the gateway's spans")
        return status == 200

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned >= 60.0:  # once a minute at most: the gateway keeps serving
            self._warned = now
            log.warning("%s (spans are dropped until it answers)", message)

    def close(self) -> None:
        """Send what is buffered and stop the thread."""
        self._stop.set()
        self._thread.join(10.0)


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _spans(item: _Done) -> list[Span]:
    """The span(s) of one answered request (see the module docstring)."""
    trace_id, span_id, parent_id, client_id = item.trace
    t0, t1, t2, status, method, host, path, user, allowed, app = item[1:]
    name = f"{method} {host}"
    attrs = [_kv("http.request.method", method), _kv("server.address", host), _kv("url.path", path),
             _kv("http.response.status_code", status), _kv("noops.gate.decision",
                                                           "allow" if allowed else "deny")]
    if app:
        attrs.append(_kv("noops.app", app))
    if user:
        attrs.append(_kv("enduser.id", user))
    error = Status(code=Status.STATUS_CODE_ERROR) if status >= 500 else Status()
    kind = _INTERNAL if parent_id else _SERVER
    spans = [Span(trace_id=trace_id, span_id=span_id, parent_span_id=parent_id, name=name,
                  kind=kind, start_time_unix_nano=t0, end_time_unix_nano=t2, attributes=attrs,
                  status=error)]
    if client_id is not None and t1:
        spans.append(Span(trace_id=trace_id, span_id=client_id, parent_span_id=span_id, name=method,
                          kind=_CLIENT, start_time_unix_nano=t1, end_time_unix_nano=t2, status=error,
                          attributes=[_kv("http.request.method", method), _kv("server.address", host),
                                      _kv("peer.service", app), _kv("http.response.status_code", status),
                                      _kv("noops.mtls", "true")]))
    return spans
