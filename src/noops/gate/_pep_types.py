"""The facts the front door hands the enforcement point, and its answer (shared by
:mod:`noops.gate.pep`, its pages and the client connection)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from noops.gate._identity_sessions import COOKIE_NAME, session_cookie_from_header
from noops.gate.pki import VerifiedIdentity

__all__ = ["ConnIdentity", "Reply", "Request", "Verdict", "session_secret"]

Reply = tuple[int, list[tuple[str, str]], bytes]
"""A gateway page's answer: status, headers, body."""


@dataclass(slots=True)
class ConnIdentity:
    """What one connection's TLS handshake proved (checked once, when the connection opens)."""

    cert: VerifiedIdentity | None = None
    rejected: str | None = None   # reason code of a certificate that was presented but refused
    sni: str | None = None


@dataclass(slots=True)
class Verdict:
    """The enforcement point's answer for one request.

    ``allowed``: forward, adding ``extra`` (header lines) upstream. Otherwise either
    ``response`` — ``(status, headers, body)`` to answer at once — or ``handler``, a gateway page
    that needs the request body first and returns such a triple.
    """

    allowed: bool
    extra: bytes = b""
    response: Reply | None = None
    handler: Callable[[bytes], Awaitable[Reply]] | None = None
    user: str | None = None
    session_id: str | None = None
    device_serial: int | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """The facts of one request the front door hands over."""

    method: str
    host: str
    app: str
    path: str
    query: str
    cookie_header: str  # the request's Cookie header(s), "" when none
    authorization: str  # the request's Authorization header, "" when none
    client_ip: str
    request_id: str
    browser: bool  # a top-level GET that accepts HTML: redirect it to the login page
    websocket: bool = False  # an Upgrade to a two-way channel: never granted read-only


def session_secret(req: Request) -> str | None:
    """The session secret a request carries: the cookie, else ``Authorization: Bearer``."""
    if req.cookie_header:
        secret = session_cookie_from_header(req.cookie_header)
        if secret is not None:
            return secret
    if req.authorization[:7].lower() == "bearer ":
        return session_cookie_from_header(f"{COOKIE_NAME}={req.authorization[7:].strip()}")
    return None
