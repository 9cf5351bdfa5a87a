"""One request/response exchange of a client connection, and the request-target rules the
gateway decides on (normalised path, its own credentials)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from noops.gate.policy import normalize_path

if TYPE_CHECKING:
    from noops.gate._pep_types import Reply, Verdict
    from noops.gate._upstream import Pool, Upstream
    from noops.gate.endpoints import Endpoint

__all__ = ["GATEWAY_BEARER", "Exchange", "RequestHead", "normal_path", "without_gateway_cookies"]

class RequestHead:
    """One request head as the front door read it: what it forwards of it, and what the
    decision, the trace and the exchange need from it. Nothing here depends on the request's
    time or on the gateway's state, only on the head's bytes and its connection (TLS name,
    whether a gateway enforces), so a connection that sends the same head again reuses it
    (see ``ClientConnection.data_received``)."""

    __slots__ = ("accept", "authorization", "chunked", "cookie", "credentials", "forward",
                 "forwarded_host", "has_body", "host", "http10", "is_head", "keep_alive",
                 "method", "path", "query_at", "raw", "repeatable", "target", "trace_lines",
                 "traceparent", "tracestate", "websocket")

    def __init__(self, method: bytes, target: bytes, query_at: int, path: bytes, host: str,
                 host_raw: bytes, forward: bytes) -> None:
        self.method = method
        self.target = target  # as received (the query is split off at query_at, -1: none)
        self.query_at = query_at
        self.path = path  # normalised: what the gateway decides on and forwards
        self.host = host  # the routing key
        self.forward = forward  # request line, Host and every header that crosses as it came
        self.forwarded_host = b"X-Forwarded-Host: " + host_raw + b"\r\nX-Request-Id: "
        self.credentials = b""  # the Cookie/Authorization lines that cross when a gateway allows
        self.trace_lines = b""  # the client's trace context, forwarded when the gateway traces none
        self.accept = self.cookie = self.authorization = self.traceparent = self.tracestate = b""
        self.raw: tuple[bytes, bytes, str, bytes, bytes, bool] = (b"", b"", host, path, method, False)
        self.chunked = self.has_body = self.http10 = self.is_head = self.websocket = False
        self.keep_alive = True
        self.repeatable = False  # a bodiless HTTP/1.1 keep-alive request: worth remembering


class Exchange:
    """One request and its response.

    No ``__slots__``: most fields keep their class-level default for the whole exchange, so
    creating one sets four attributes instead of thirty.
    """

    accept = b""
    chunked = False
    has_body = False
    http10 = False
    is_head = False
    keep_alive = True
    websocket = False
    retry_safe = False
    complete = False  # the whole request has been read from the client
    done = False  # finished (answered or abandoned)
    local_status = 0  # proxy answer deferred to the end of a bodiless request
    eps: Sequence[Endpoint] = ()
    tried: set[str] | None = None
    pool: Pool | None = None
    up: Upstream | None = None
    reused = False
    fresh = False
    retried = False
    response_started = False
    client_chunked = False
    client_keep = False
    close_delimited = False
    up_keep = False
    pending_bytes = 0
    verdict: Verdict | None = None  # the gateway's decision (None: no gatekeeper)
    pending_answer: Reply | None = None
    form: list[bytes] | None = None  # body of a request to a gateway page, collected
    form_bytes = 0
    # the gateway's span (see noops.gate._tracing; set only when spans are recorded):
    # (trace id, span id, parent span id or b"", client span id or None), times in ns, request
    trace: tuple[bytes, bytes, bytes, bytes | None] | None = None
    t0 = 0
    t1 = 0  # when the request went to the instance (0: answered by the gateway)
    status = 0  # the status answered
    method = ""
    path = ""

    def __init__(self, head: bytes, host: str, request_id: bytes) -> None:
        self.head = head
        self.host = host
        self.request_id = request_id
        self.pending: list[bytes] = []  # body bytes (already framed) not yet written upstream


GATEWAY_BEARER = re.compile(rb"(?i:bearer) \s*[A-Za-z0-9_-]{43}\s*")
_GATEWAY_COOKIE = b"__Host-noops_"


def normal_path(raw: bytes) -> bytes | None:
    """The normalised request path (:func:`noops.gate.policy.normalize_path`), cached."""
    cached = _PATHS.get(raw)
    if cached is not None:
        return cached
    try:
        normal = normalize_path(raw.decode("ascii"))
    except UnicodeDecodeError:
        return None
    if normal is None:
        return None
    result = normal.encode("ascii")
    if len(_PATHS) > 8192:
        _PATHS.clear()
    _PATHS[raw] = result
    return result


_PATHS: dict[bytes, bytes] = {}


def without_gateway_cookies(cookie: bytes) -> bytes:
    """The Cookie value without the gateway's own cookies (session, CSRF, login state)."""
    if _GATEWAY_COOKIE not in cookie:
        return cookie
    kept = [c for c in (p.strip() for p in cookie.split(b";")) if c and not c.startswith(_GATEWAY_COOKIE)]
    return b"; ".join(kept)
