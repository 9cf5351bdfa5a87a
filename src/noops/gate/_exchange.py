"""One request/response exchange of a client connection, the request head it started from
(:func:`read_head`), and the request-target rules the gateway decides on (normalised path, its
own credentials)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from noops.gate._http import BadRequest, scan_request
from noops.gate.policy import normalize_path

if TYPE_CHECKING:
    from httptools import HttpRequestParser

    from noops.gate._core import Core
    from noops.gate._pep_types import ConnIdentity, Reply, Verdict
    from noops.gate._upstream import Pool, Upstream
    from noops.gate.endpoints import Endpoint

__all__ = ["GATEWAY_BEARER", "Exchange", "RequestHead", "normal_path", "read_head", "without_gateway_cookies"]


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


def read_head(parser: HttpRequestParser, headers: list[tuple[bytes, bytes]], target: bytes, core: Core,
              conn: ConnIdentity | None) -> RequestHead:
    """Check the head ``parser`` read on connection ``conn`` and rebuild what crosses of it
    (raises :class:`~noops.gate._http.BadRequest`)."""
    version = parser.get_http_version()
    http10 = version == "1.0"
    if not http10 and version != "1.1":
        raise BadRequest
    method = parser.get_method()
    if method == b"CONNECT":
        raise BadRequest
    out = [method, b" ", target, b" HTTP/1.1\r\nHost: ", b"", b"\r\n"]  # [2]: path, [4]: Host
    gated = core.gate is not None
    (host_raw, length, chunked, close, upgrade, _expect, accept, cookie,
     authorization, traceparent, tracestate) = scan_request(headers, http10, out, gated)
    out[4] = host_raw
    # Origin-form only: absolute-form (a proxy request), "*" and CONNECT are refused. The path
    # is normalised once; the gateway decides on that string and forwards exactly it.
    if target[:1] != b"/" or b"#" in target:
        raise BadRequest
    query_at = target.find(b"?")
    raw_path = target if query_at < 0 else target[:query_at]
    path = normal_path(raw_path)
    if path is None:
        raise BadRequest
    if path != raw_path:
        out[2] = path if query_at < 0 else path + target[query_at:]
    host = core.hosts.get(host_raw) or core.route_key(host_raw)
    if host is None:
        raise BadRequest
    if conn is not None and conn.sni is not None and conn.sni != host:
        raise BadRequest(421)  # Host names another app than the TLS name (domain fronting)
    has_body = chunked or (length is not None and length != b"0")
    websocket = False
    if upgrade is not None:
        if has_body:
            raise BadRequest  # an upgrade carrying a body is ambiguous framing
        # Only WebSocket is tunnelled; any other protocol (h2c...) would let a client talk
        # past the gateway, so its Upgrade is dropped and the request served as plain HTTP.
        websocket = method == b"GET" and upgrade.lower() == b"websocket"
    if chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    elif length is not None:
        out += (b"Content-Length: ", length, b"\r\n")
    if websocket:
        out += (b"Connection: upgrade\r\nUpgrade: ", upgrade or b"", b"\r\n")
    h = RequestHead(method, target, query_at, path, host, host_raw, b"".join(out))
    if gated:
        h.cookie, h.authorization = cookie, authorization
        h.raw = (cookie, authorization, host, path, method, websocket)
        kept = without_gateway_cookies(cookie)
        crossing = [b"Cookie: ", kept, b"\r\n"] if kept else []
        if authorization and not GATEWAY_BEARER.fullmatch(authorization):
            crossing += (b"Authorization: ", authorization, b"\r\n")
        h.credentials = b"".join(crossing)
    h.traceparent, h.tracestate = traceparent, tracestate
    if traceparent or tracestate:  # not ours to judge: as it came, unless the gateway traces
        h.trace_lines = b"".join([*((b"traceparent: ", traceparent, b"\r\n") if traceparent else ()),
                                  *((b"tracestate: ", tracestate, b"\r\n") if tracestate else ())])
    if accept:
        h.accept = accept
    h.has_body, h.chunked, h.http10 = has_body, chunked, http10
    h.is_head = method == b"HEAD"
    # A refused upgrade leaves the parser in upgrade mode: close after that response.
    h.keep_alive = not (close or websocket or not parser.should_keep_alive())
    h.websocket = websocket
    h.repeatable = h.keep_alive and not has_body and not http10 and upgrade is None
    return h
