"""The gateway's part of a client connection: asking the enforcement point about a request
and answering with the gateway's own pages (sign-in forms read a small body first)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from noops.gate._exchange import Exchange, RequestHead
from noops.gate._http import answer
from noops.gate._pep_types import ConnIdentity, Reply, Request, Verdict
from noops.gate.pep import Gatekeeper

if TYPE_CHECKING:
    from noops.gate._core import Core

__all__ = ["FORM_LIMIT", "GateSide"]

log = logging.getLogger("noops.gate")

FORM_LIMIT = 16 * 1024  # largest body a gateway page reads (sign-in forms); more is a 413
_NO_TLS = ConnIdentity()


class GateSide:
    """Mixed into :class:`noops.gate._client.ClientConnection`."""

    core: Core
    peer: str
    conn_id: ConnIdentity | None
    out: list[bytes]
    eof: bool
    closed: bool
    active: Exchange | None
    deadline: float
    dkind: int

    if TYPE_CHECKING:  # provided by ClientConnection
        def _finish(self, ex: Exchange, close: bool) -> None: ...

    def _decide(self, gate: Gatekeeper, h: RequestHead, rid: bytes) -> Verdict:
        eps = self.core.registry.endpoints(h.host)
        sso = gate.sso
        if not eps and (sso is None or h.host != sso.host):
            return Verdict(True)  # no app here: answered 404/503 by _begin, nothing is forwarded
        conn = self.conn_id or _NO_TLS
        request_id = rid.decode("ascii")
        reused = gate.reuse(conn, self.peer, h.raw, request_id)
        if reused is not None:
            return reused
        query_at, target = h.query_at, h.target
        req = Request(method=h.method.decode("ascii"), host=h.host, app=eps[0].app if eps else "",
                      path=h.path.decode("ascii"),
                      query=target[query_at + 1:].decode("latin-1") if query_at >= 0 else "",
                      cookie_header=h.cookie.decode("latin-1"),
                      authorization=h.authorization.decode("latin-1"), client_ip=self.peer,
                      request_id=request_id, browser=h.method == b"GET" and b"text/html" in h.accept,
                      websocket=h.websocket)
        return gate.check(conn, req, h.raw)

    def _answer_later(self, ex: Exchange, reply: Reply) -> None:
        if not ex.complete and not ex.has_body:
            ex.pending_answer = reply  # the end of the head is the end of the request: answer then
        else:
            self._send_answer(ex, reply)

    def _send_answer(self, ex: Exchange, reply: Reply) -> None:
        status, headers, body = reply
        ex.status = status
        close = not (ex.keep_alive and ex.complete) or self.core.draining or self.eof
        self.out.append(answer(status, headers, body, request_id=ex.request_id, close=close,
                               head_only=ex.is_head))
        self._finish(ex, close)

    def _run_page(self, ex: Exchange) -> None:
        verdict, form = ex.verdict, ex.form
        assert verdict is not None and verdict.handler is not None and form is not None
        if ex.form_bytes > FORM_LIMIT:
            self._send_answer(ex, (413, [("Content-Type", "text/plain")], b"form too large\n"))
            return
        self.deadline, self.dkind = 0.0, 0  # no deadline while the page works
        self.core.spawn(self._page(ex, verdict.handler, b"".join(form)))

    async def _page(self, ex: Exchange, handler: Callable[[bytes], Awaitable[Reply]], body: bytes) -> None:
        try:
            reply = await handler(body)
        except Exception:
            log.exception("gateway page failed for %s", ex.request_id.decode())
            reply = (500, [("Content-Type", "text/plain")], b"the gateway failed to handle this page\n")
        if ex.done or self.closed or ex is not self.active:
            return
        self._send_answer(ex, reply)

