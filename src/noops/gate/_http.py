"""HTTP/1.1 message rules of the front door: which headers cross, how heads are rebuilt,
what the proxy's own error pages say.

Request headers (client -> app)
-------------------------------
* **Hop-by-hop, removed**: ``Connection``, ``Keep-Alive``, ``Proxy-*`` (any name with that
  prefix, e.g. ``Proxy-Authorization``), ``TE``, ``Trailer``, ``Transfer-Encoding`` (the body is
  re-framed), ``Upgrade`` (kept only for a WebSocket upgrade) and every header named in
  ``Connection``.
* **Spoofable, removed**: ``Forwarded``, every ``X-Forwarded-*``, ``X-Real-IP``, ``X-Client-IP``,
  ``True-Client-IP``, ``X-Request-Id``, ``X-Original-URL``/``-URI``, ``X-Rewrite-URL`` and the
  method-override headers (``X-HTTP-Method-Override``, ``X-HTTP-Method``, ``X-Method-Override``:
  an app honouring them would run a different method than the one the gateway authorised).
  Any header whose name holds ``_`` is dropped too (as nginx does by default): CGI-style servers
  map ``X_Forwarded_For`` and ``X-Forwarded-For`` to the same variable.
* **Set by the proxy**: ``Host`` (the client's value, first), ``Content-Length`` or
  ``Transfer-Encoding: chunked`` (framing), ``X-Forwarded-For`` (the client's address only: no
  proxy in front of this one is trusted), ``X-Forwarded-Proto``, ``X-Forwarded-Host``,
  ``X-Request-Id`` (always generated), ``Via: 1.1 noops``.
* Everything else crosses unchanged, in order, names and values byte for byte.

* **Identity headers, removed**: every name starting with one of :data:`IDENTITY_PREFIXES`
  (``X-Noops-*`` — the gateway's own assertion —, ``X-Auth-Request-*``, ``X-Remote-*``,
  ``Remote-User``, ``X-Pomerium-*``, ``Cf-Access-*``, ...): only the gateway says who is calling.
* **Credentials**: when a gateway enforces policy, ``Cookie`` and ``Authorization`` are handed to
  it (:func:`scan_request` ``credentials=True``); its own cookies (``__Host-noops_*``) and a
  session bearer never reach the app.

Request target: origin-form only (``/path?query``); absolute-form, ``*`` and ``CONNECT`` are a
400. The path is normalised once (:func:`noops.gate.policy.normalize_path`: dot-segments
resolved, slashes merged, unreserved escapes decoded; encoded ``/``, ``\\`` or controls are a
400) and the normalised path is what the gateway decides on *and* what the app receives; the
query is forwarded byte for byte. Anything with a fragment (``#``) or bytes the parser refuses
(controls, spaces, non-ASCII) is a 400.

Response headers (app -> client): the hop-by-hop set above is removed (``Upgrade`` kept on a
``101``), the body re-framed for the client, ``Connection: close`` added when the proxy closes.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TypeAlias

__all__ = [
    "HOP_BY_HOP",
    "SPOOFABLE",
    "BadRequest",
    "RequestFacts",
    "ResponseFacts",
    "answer",
    "error_response",
    "scan_request",
    "scan_response",
    "status_line",
]

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding",
                        b"upgrade"})
SPOOFABLE = frozenset({b"forwarded", b"x-real-ip", b"x-client-ip", b"true-client-ip",
                       b"x-request-id", b"x-original-url", b"x-original-uri", b"x-rewrite-url",
                       b"x-http-method-override", b"x-http-method", b"x-method-override"})

# Action per lower-cased request header name; names not listed cross unless _dropped().
(_HOST, _LENGTH, _TE, _CONNECTION, _UPGRADE, _EXPECT, _ACCEPT, _DROP, _COOKIE, _AUTHZ, _TRACE,
 _TRACESTATE) = range(1, 13)
_REQUEST_RULES: dict[bytes, int] = {
    b"host": _HOST, b"content-length": _LENGTH, b"transfer-encoding": _TE,
    b"connection": _CONNECTION, b"upgrade": _UPGRADE, b"expect": _EXPECT, b"accept": _ACCEPT,
    b"cookie": _COOKIE, b"authorization": _AUTHZ, b"traceparent": _TRACE, b"tracestate": _TRACESTATE,
    **dict.fromkeys(HOP_BY_HOP - {b"connection", b"upgrade", b"transfer-encoding"}, _DROP),
    **dict.fromkeys(SPOOFABLE, _DROP),
}
_RESPONSE_RULES: dict[bytes, int] = {
    b"content-length": _LENGTH, b"transfer-encoding": _TE, b"connection": _CONNECTION,
    b"upgrade": _UPGRADE, b"keep-alive": _DROP, b"te": _DROP, b"trailer": _DROP,
}


class BadRequest(Exception):
    """The request breaks a framing or header rule; the proxy answers ``status`` and closes."""

    def __init__(self, status: int = 400) -> None:
        super().__init__(status)
        self.status = status


# Identity headers other gateways and auth proxies set: an app behind noops that also trusts one
# of them must never see a client-sent copy.
IDENTITY_PREFIXES = (b"x-noops-", b"x-auth-request-", b"x-remote-", b"remote-", b"x-pomerium-",
                     b"cf-access-", b"x-goog-authenticated-", b"x-amzn-oidc-", b"x-ms-client-principal",
                     b"x-webauth-", b"x-user", b"x-email", b"x-authenticated-")


def _dropped(name: bytes) -> bool:
    return b"_" in name or name.startswith((b"proxy-", b"x-forwarded-", *IDENTITY_PREFIXES))


# Action per raw (not lower-cased) header name, learnt on first sight: one dict lookup per
# header on the hot path. Bounded; names past the bound are classified every time.
_REQUEST_ACTIONS: dict[bytes, int] = {}
_RESPONSE_ACTIONS: dict[bytes, int] = {}
_CACHE_MAX = 4096


def _request_action(name: bytes) -> int:
    low = name.lower()
    action = _REQUEST_RULES.get(low)
    if action is None:
        action = _DROP if _dropped(low) else 0
    if len(_REQUEST_ACTIONS) < _CACHE_MAX:
        _REQUEST_ACTIONS[name] = action
    return action


def _response_action(name: bytes) -> int:
    low = name.lower()
    action = _RESPONSE_RULES.get(low)
    if action is None:
        action = _DROP if low.startswith(b"proxy-") else 0
    if len(_RESPONSE_ACTIONS) < _CACHE_MAX:
        _RESPONSE_ACTIONS[name] = action
    return action


def _tokens(value: bytes) -> tuple[bool, bool, list[bytes] | None]:
    """``Connection`` value -> (close, upgrade, other named headers or None)."""
    if value == b"keep-alive" or value == b"close":  # the usual values: no split needed
        return value == b"close", False, None
    close = upgrade = False
    named: list[bytes] | None = None
    for token in value.lower().split(b","):
        token = token.strip()
        if token == b"close":
            close = True
        elif token == b"upgrade":
            upgrade = True
        elif token and token != b"keep-alive":
            named = [token] if named is None else [*named, token]
    return close, upgrade, named


RequestFacts: TypeAlias = ("tuple[bytes, bytes | None, bool, bool, bytes | None, bool, bytes, bytes, bytes, "
                           "bytes, bytes]")
"""(host, content_length, chunked, close, upgrade, expect_continue, accept, cookie, authorization,
traceparent, tracestate)."""


def scan_request(headers: list[tuple[bytes, bytes]], http10: bool, out: list[bytes],
                 credentials: bool = False) -> RequestFacts:
    """Classify request headers, appending the crossing ones to ``out`` as
    ``name, ": ", value, "\\r\\n"`` pieces; raise :class:`BadRequest` on a framing or Host
    violation.

    Returns ``(host, content_length, chunked, close, upgrade, expect_continue, accept, cookie,
    authorization, traceparent, tracestate)``; ``upgrade`` is the Upgrade value only when
    ``Connection`` lists ``upgrade``. ``traceparent`` and ``tracestate`` are returned, not
    appended (the gateway decides which trace context crosses, see :mod:`noops.gate._tracing`);
    ``traceparent`` is ``b""`` when absent or sent twice, several ``tracestate`` are joined.
    With ``credentials`` (a gateway is enforcing), ``Cookie`` (several joined with ``; ``) and
    ``Authorization`` are returned, not appended: the caller decides what of them crosses (the
    gateway's own credentials never do); a second ``Authorization`` is a 400. Without, they
    cross like any other header and come back empty. The parser
    (llhttp) has already refused CL+TE, duplicate or malformed Content-Length, obs-fold, bare CR
    or LF and invalid characters; this adds the rules it does not enforce.
    """
    start = len(out)
    named: list[bytes] | None = None
    while True:
        host: bytes | None = None
        length: bytes | None = None
        upgrade: bytes | None = None
        accept = cookie = authorization = traceparent = tracestate = b""
        traceparents = 0
        chunked = close = upgrade_requested = expect_continue = False
        tokens: list[bytes] | None = None
        cache = _REQUEST_ACTIONS
        for name, value in headers:
            action = cache.get(name)
            if action is None:
                action = _request_action(name)
            if action == 0:
                if named is None or name.lower() not in named:
                    out += (name, b": ", value, b"\r\n")
            elif action == _HOST:
                if host is not None:
                    raise BadRequest
                host = value.strip()
            elif action == _LENGTH:
                length = value.strip()
            elif action == _TE:
                if http10 or value.strip().lower() != b"chunked":
                    raise BadRequest
                chunked = True
            elif action == _CONNECTION:
                c, u, t = _tokens(value)
                close |= c
                upgrade_requested |= u
                if t is not None:
                    tokens = t if tokens is None else tokens + t
            elif action == _UPGRADE:
                upgrade = value.strip()
            elif action == _TRACE:
                if named is None or b"traceparent" not in named:
                    traceparents += 1
                    traceparent = value if traceparents == 1 else b""
            elif action == _TRACESTATE:
                if named is None or b"tracestate" not in named:
                    tracestate = value if not tracestate else tracestate + b"," + value
            elif not credentials and action in (_COOKIE, _AUTHZ):
                if named is None or name.lower() not in named:
                    out += (name, b": ", value, b"\r\n")
            elif action == _COOKIE:
                if named is None or b"cookie" not in named:
                    cookie = value if not cookie else cookie + b"; " + value
            elif action == _AUTHZ:
                if named is not None and b"authorization" in named:
                    continue
                if authorization:
                    raise BadRequest  # two credentials: ambiguous
                authorization = value
            elif action != _DROP and (named is None or name.lower() not in named):
                if action == _EXPECT:
                    if http10:
                        continue
                    expect_continue = value.strip().lower() == b"100-continue"
                else:
                    accept = value
                out += (name, b": ", value, b"\r\n")
        if tokens is None or named is not None:
            break
        # Rare: Connection names end-to-end headers. Scan again, leaving those out.
        named = tokens
        del out[start:]
    if not host:
        raise BadRequest
    return (host, length, chunked, close, upgrade if upgrade_requested else None, expect_continue,
            accept, cookie, authorization, traceparent, tracestate)


ResponseFacts: TypeAlias = "tuple[bytes | None, bytes | None, bool, bytes | None]"
"""(content_length, transfer_encoding, close, upgrade)."""


def scan_response(headers: list[tuple[bytes, bytes]], out: list[bytes]) -> ResponseFacts:
    """Classify response headers, appending the crossing ones to ``out``; hop-by-hop and
    ``Proxy-*`` removed. Returns ``(content_length, transfer_encoding, close, upgrade)``."""
    start = len(out)
    named: list[bytes] | None = None
    while True:
        length: bytes | None = None
        te: bytes | None = None
        upgrade: bytes | None = None
        close = False
        tokens: list[bytes] | None = None
        cache = _RESPONSE_ACTIONS
        for name, value in headers:
            action = cache.get(name)
            if action is None:
                action = _response_action(name)
            if action == 0:
                if named is None or name.lower() not in named:
                    out += (name, b": ", value, b"\r\n")
            elif action == _LENGTH:
                length = value.strip()
            elif action == _TE:
                te = value.strip()
            elif action == _CONNECTION:
                c, _u, t = _tokens(value)
                close |= c
                if t is not None:
                    tokens = t if tokens is None else tokens + t
            elif action == _UPGRADE:
                upgrade = value.strip()
        if tokens is None or named is not None:
            break
        named = tokens
        del out[start:]
    return length, te, close, upgrade


_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <standard reason phrase>\\r\\n`` (cached).

    The app's own reason phrase is not relayed (it carries no meaning; HTTP/2 dropped it), which
    spares a parser callback per response.
    """
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b"Unknown"
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if 100 <= status <= 999:
            _STATUS_LINES[status] = line
    return line


_MESSAGES = {
    400: "The request was malformed and has been refused.",
    404: "No application is served at this address.",
    408: "The request was not received in time.",
    413: "The request body is too large.",
    421: "This connection was opened for another host name; connect to the host you want.",
    500: "The gateway failed to handle this request.",
    502: "The application failed to answer this request.",
    503: "The application is not ready to serve requests. Try again shortly.",
    504: "The application did not answer in time.",
}

_HTML = ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{code} {title}</title>'
         '<style>body{{font-family:system-ui,sans-serif;margin:4em auto;max-width:36em;color:#222}}'
         'small{{color:#777}}</style></head>\n<body><h1>{code} {title}</h1><p>{message}</p>'
         '<p><small>request id: {rid}</small></p></body></html>\n')


def answer(status: int, headers: list[tuple[str, str]], body: bytes, *, request_id: bytes,
           close: bool, head_only: bool = False) -> bytes:
    """A complete response the gateway composed (its pages, refusals, redirects)."""
    parts = [status_line(status)]
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError("header with CR/LF")  # never: values are built by the gateway
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    parts.append(b"Content-Length: %d\r\n" % len(body))
    if request_id:
        parts += (b"X-Request-Id: ", request_id, b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def error_response(status: int, *, as_json: bool, request_id: bytes, close: bool,
                   retry_after_s: int | None = None) -> bytes:
    """A complete response the proxy itself sends: HTML, or JSON when the client asked for it.

    It names the status, a fixed message and the request id; never an exception, a socket path
    or anything else internal.
    """
    title = HTTPStatus(status).phrase
    message = _MESSAGES.get(status, title)
    rid = request_id.decode("ascii", "replace")
    if as_json:
        body = json.dumps({"error": {"status": status, "title": title, "message": message,
                                     "request_id": rid}}).encode()
        ctype = b"application/json"
    else:
        body = _HTML.format(code=status, title=title, message=message, rid=rid).encode()
        ctype = b"text/html; charset=utf-8"
    parts = [status_line(status), b"Content-Type: ", ctype,
             b"\r\nContent-Length: %d\r\nCache-Control: no-store\r\n" % len(body)]
    if request_id:
        parts += (b"X-Request-Id: ", request_id, b"\r\n")
    if retry_after_s is not None:
        parts.append(b"Retry-After: %d\r\n" % retry_after_s)
    if close:
        parts.append(b"Connection: close\r\n")
    parts += (b"\r\n", body)
    return b"".join(parts)
