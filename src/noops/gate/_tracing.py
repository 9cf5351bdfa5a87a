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

With no receiver configured the trace context crosses as it came (a ``traceparent`` sent twice
is dropped).

Cost: recording a request takes ~15 µs of the event loop (its spans are encoded there, written
as protobuf directly) and more in the process (measured with ``bench/gateway.py``: 40 to 60 µs of
CPU per request at 4,000 requests/s). So the gateway traces at most ``per_second`` requests a
second (100 by default: every request of a small app, a steady sample of a busy one); a request
beyond that gets no gateway span, and from outside no ``traceparent`` either (the app starts
its own trace, as with any client), while a workload's context still crosses. The gateway's
decision counts stay complete in ``/metrics`` (``noops_gateway_decisions_total``). A thread
sends the spans, at most every second; a full buffer drops the oldest (counted), and a missing
receiver never holds up a request.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import socket
import struct
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from noops.gate._exchange import Exchange
    from noops.gate._pep_types import ConnIdentity

__all__ = ["SERVICE_NAME", "GatewaySpans", "parse_traceparent"]

log = logging.getLogger("noops.gate")

SERVICE_NAME: Final = "noops-gateway"
_TRACEPARENT: Final = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE: Final = b"0" * 32
_ZERO_SPAN: Final = b"0" * 16
_INTERNAL, _SERVER, _CLIENT = 1, 2, 3  # Span.SpanKind
_STATUS_ERROR: Final = 2  # Status.StatusCode.STATUS_CODE_ERROR
_PAGES: Final = ("/.noops/", "/.well-known/noops/")  # the gateway's own pages (noops.gate._pep_pages)


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bytes] | None:
    """``(trace id hex, parent span id hex, flags hex)`` of a valid W3C ``traceparent`` (version
    ``00``, or a later one read as ``00``), else None."""
    m = _TRACEPARENT.fullmatch(value.strip()[:55])
    if m is None:
        return None
    version, trace, parent, flags = m.groups()
    if version == b"ff" or trace == _ZERO_TRACE or parent == _ZERO_SPAN:
        return None
    rest = value.strip()[55:]
    if (version == b"00" and rest) or (rest and rest[:1] != b"-"):
        return None
    return trace, parent, flags


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

    def __init__(self, socket_path: str, *, per_second: int = 100, flush_s: float = 1.0,
                 max_buffered: int = 50_000, batch: int = 2_000) -> None:
        self.socket_path = socket_path
        self.per_second = per_second
        self._second = 0
        self._admitted = 0
        self.unsampled = 0  # requests past the per-second budget
        self.flush_s = flush_s
        self.batch = batch
        self._done: deque[bytes] = deque(maxlen=max_buffered)  # encoded spans per request
        self.recorded = 0  # answered requests (one or two spans each)
        self.sent = 0  # ... whose spans the receiver took
        self.failed = 0  # ... in batches the receiver did not take
        self._stop = threading.Event()
        self._warned = 0.0
        # ResourceSpans.resource and ScopeSpans.scope, encoded once
        self._resource = _ld(1, _ld(1, _key_value("service.name", SERVICE_NAME))
                             + _ld(1, _key_value("service.namespace", "noops")))
        self._scope = _ld(1, _ld(1, b"noops.gate"))
        self._encoder = _Encoder()
        self._thread = threading.Thread(target=self._run, name="gateway-spans", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Requests whose spans were pushed out of a full buffer."""
        return self.recorded - self.sent - self.failed - len(self._done)

    # -- on the event loop ----------------------------------------------------------------------
    def _admit(self) -> bool:
        second = int(time.monotonic())
        if second != self._second:
            self._second, self._admitted = second, 0
        self._admitted += 1
        if self._admitted > self.per_second:
            self.unsampled += 1
            return False
        return True

    def begin(self, conn: ConnIdentity | None, traceparent: bytes, tracestate: bytes = b""
              ) -> tuple[tuple[bytes, bytes, bytes, bytes | None] | None, bytes]:
        """The span context of a request (:attr:`Exchange.trace`; None: not traced) and the
        trace-context header lines the instance gets, given what the client sent: a workload's
        ``traceparent`` and ``tracestate`` cross untouched; anyone else's are dropped (W3C: a
        restarted trace drops the state too)."""
        cert = conn.cert if conn is not None else None
        ctx = parse_traceparent(traceparent) if traceparent and cert is not None \
            and cert.kind == "workload" else None
        if ctx is not None:  # a workload's call: its context crosses untouched
            line = b"traceparent: " + traceparent.strip() + b"\r\n"
            if tracestate:
                line += b"tracestate: " + tracestate + b"\r\n"
            trace, parent, flags = ctx
            if not int(flags, 16) & 1 or not self._admit():  # the caller does not record it
                return None, line
            return ((bytes.fromhex(trace.decode()), os.urandom(8), bytes.fromhex(parent.decode()), None),
                    line)
        if not self._admit():
            return None, b""
        bits = os.urandom(32)
        trace_id, server_id, client_id = bits[:16], bits[16:24], bits[24:]
        return ((trace_id, server_id, b"", client_id),
                b"traceparent: 00-" + trace_id.hex().encode() + b"-" + client_id.hex().encode() + b"-01\r\n")

    def end(self, ex: Exchange, status: int) -> None:
        """``ex`` was answered with ``status``: its spans are done. They are encoded here, on
        the loop, in a few microseconds: encoding on the export thread would cost more in
        contention for the interpreter than it saves."""
        self.recorded += 1
        self._done.append(self._encoder.spans(ex, status, time.time_ns()))

    # -- export thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self._flush()
            except Exception:  # never let the thread die: spans would pile up unsent
                log.exception("sending the gateway's spans failed")
        with contextlib.suppress(Exception):
            self._flush()

    def _flush(self) -> None:
        while self._done:
            items: list[bytes] = []
            done = self._done
            while done and len(items) < self.batch:
                items.append(done.popleft())
            if self._send(_ld(1, self._resource + _ld(2, self._scope + b"".join(items)))):
                self.sent += len(items)
            else:
                self.failed += len(items)
                return  # the rest waits for the next round (or is pushed out by newer spans)

    def _send(self, body: bytes) -> bool:
        conn = _UnixHTTPConnection(self.socket_path, timeout=5.0)
        try:
            conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException) as exc:
            self._warn(f"cannot reach the telemetry receiver at {self.socket_path}: {exc!r}")
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
        """Send what is buffered and stop the thread (waiting 5 s at most)."""
        self._stop.set()
        self._thread.join(5.0)


# -- OTLP protobuf, written directly -----------------------------------------------------------
# Field numbers of opentelemetry/proto/trace/v1/trace.proto and common.proto. Everything that
# repeats (a request's method, host, status and decision; paths; users) is encoded once and
# cached: a request's spans cost a few concatenations on the event loop (the tests decode the
# result with the official classes).

def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _key_value(key: str, value: str | int) -> bytes:
    """A ``KeyValue`` message (a string or a non-negative integer value)."""
    any_value = _ld(1, value.encode()) if isinstance(value, str) else _varint(3 << 3) + _varint(value)
    return _ld(1, key.encode()) + _ld(2, any_value)


def _attr(key: str, value: str | int) -> bytes:
    """A ``KeyValue`` as ``Span.attributes`` (field 9)."""
    return _ld(9, _key_value(key, value))


_ERROR_STATUS: Final = _ld(15, _varint(3 << 3) + _varint(_STATUS_ERROR))
_FIXED64: Final = struct.Struct("<Q")


def _field_len(n: int) -> bytes:
    return bytes((n,)) if n < 0x80 else bytes((n & 0x7F | 0x80, n >> 7)) if n < 0x4000 else _varint(n)


class _Encoder:
    """Encodes a request's span(s) as ``ScopeSpans.spans`` fields, caching what repeats
    (bounded)."""

    def __init__(self) -> None:
        self._common: dict[tuple[str, str, int, str, str, bool], tuple[bytes, bytes, bytes]] = {}
        self._values: dict[tuple[str, str], bytes] = {}

    def _value(self, key: str, value: str) -> bytes:
        hit = self._values.get((key, value))
        if hit is None:
            if len(self._values) > 8192:
                self._values.clear()
            hit = self._values[key, value] = _attr(key, value)
        return hit

    def _parts(self, key: tuple[str, str, int, str, str, bool]) -> tuple[bytes, bytes, bytes]:
        """(the first span's name, kind and fixed attributes; the client span's; the status
        field) for (method, host, status, decision, app, under a workload's span)."""
        method, host, status, decision, app, internal = key
        server = (_ld(5, f"{method} {host}".encode()) + _varint(6 << 3)
                  + _varint(_INTERNAL if internal else _SERVER) + _attr("http.request.method", method)
                  + _attr("server.address", host) + _attr("http.response.status_code", status)
                  + _attr("noops.gate.decision", decision)
                  + (_attr("noops.app", app) if app else b""))
        client = (_ld(5, method.encode()) + _varint(6 << 3) + _varint(_CLIENT)
                  + _attr("http.request.method", method) + _attr("server.address", host)
                  + _attr("peer.service", app) + _attr("http.response.status_code", status)
                  + _attr("noops.mtls", "true"))
        if len(self._common) > 4096:
            self._common.clear()
        hit = self._common[key] = (server, client, _ERROR_STATUS if status >= 500 else b"")
        return hit

    def spans(self, ex: Exchange, status: int, t2: int) -> bytes:
        """The span(s) of one answered request (see the module docstring)."""
        assert ex.trace is not None
        trace_id, span_id, parent_id, client_id = ex.trace
        verdict = ex.verdict
        app = ex.eps[0].app if ex.eps else ""
        decision = ("allow" if verdict is None or verdict.allowed
                    else "page" if ex.path.startswith(_PAGES) else "deny")  # sign-in pages are no refusal
        key = (ex.method, ex.host, status, decision, app, bool(parent_id))
        parts = self._common.get(key) or self._parts(key)
        pack = _FIXED64.pack
        end = pack(t2)
        user = verdict.user if verdict is not None else None
        body = b"".join((b"\x0a\x10", trace_id, b"\x12\x08", span_id,
                         b"\x22\x08" + parent_id if parent_id else b"", parts[0],
                         b"\x39", pack(ex.t0), b"\x41", end, self._value("url.path", ex.path),
                         self._value("enduser.id", user) if user else b"", parts[2]))
        out = b"\x12" + _field_len(len(body)) + body
        if client_id is not None and ex.t1:
            body = b"".join((b"\x0a\x10", trace_id, b"\x12\x08", client_id, b"\x22\x08", span_id,
                             parts[1], b"\x39", pack(ex.t1), b"\x41", end, parts[2]))
            out += b"\x12" + _field_len(len(body)) + body
        return out
