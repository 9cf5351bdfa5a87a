"""Client side: one accepted connection, its requests, and how each is carried to an app.

Per connection, requests are handled one at a time (pipelined requests wait, parsed, in a
queue, with reading paused). For each request the head is checked and rebuilt (:mod:`_http`),
an endpoint picked (:meth:`Core.pick`), an idle upstream connection taken from its pool (or a
new one opened), and bytes streamed both ways with backpressure: a full buffer on one side
pauses reading on the other, so a body never sits whole in memory.

Output to the client is gathered in ``self.out`` while a parser runs and written with one
``writelines`` afterwards (one syscall for head + small body).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import cast

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from noops.gate._client_gate import FORM_LIMIT, GateSide
from noops.gate._core import Core
from noops.gate._exchange import Exchange, RequestHead, read_head
from noops.gate._http import BadRequest, error_response, scan_response, status_line
from noops.gate._pep_types import ConnIdentity, Verdict
from noops.gate._tunnel import Tunnel, TunnelInfo
from noops.gate._upstream import HeadDone, Pool, RepeatableResponse, Upstream
from noops.gate.serving import sni_of

__all__ = ["ClientConnection"]

log = logging.getLogger("noops.gate")

# Why reading from the client is paused (a bit each; reading resumes when none is left).
_P_PIPELINE, _P_UPSTREAM, _P_WAIT, _P_UPGRADE = 1, 2, 4, 8
# What the connection's single deadline means.
_D_NONE, _D_IDLE, _D_HEAD, _D_BODY, _D_UPSTREAM, _D_SEND = range(6)
_WAIT_LIMIT = 256 * 1024  # request body held while no upstream connection is attached
_RETRY_SAFE = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
_VIA = b"Via: 1.1 noops\r\n"


class _UpstreamProtocolError(Exception):
    """The app sent something that is not a valid answer to this request."""


class ClientConnection(GateSide, asyncio.Protocol):
    """One client connection (plain or TLS)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        cfg = self.cfg = core.config
        self.t_head = cfg.header_timeout_s
        self.t_keep = cfg.keepalive_timeout_s
        self.t_client = cfg.client_timeout_s
        self.t_up = cfg.upstream_timeout_s
        self.transport: asyncio.Transport | None = None
        self.parser = HttpRequestParser(self)
        self.peer = "unknown"
        self.fwd = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.in_head = False  # between the first byte of a request and the end of its head
        self.fed = 0
        self.parsing: Exchange | None = None  # request whose body the parser is reading
        self.active: Exchange | None = None  # request being served
        self.queue: deque[Exchange] = deque()
        self.ws_pending: Exchange | None = None
        self.upgrade_buf: list[bytes] | None = None
        self.tunnel: Tunnel | None = None
        self.out: list[bytes] = []
        self.paused = 0
        self.write_paused = False
        self.deadline = 0.0
        self.dkind = _D_NONE
        self.closed = False
        self.eof = False
        self.conn_id: ConnIdentity | None = None
        self.heads = 0  # request heads read
        self.last_head: RequestHead | None = None
        self.clean = True  # the parser holds no bytes of a message it has not finished
        # The last read that was exactly one whole bodiless request, and that request's head.
        self.repeat: tuple[bytes, RequestHead] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0])
        self.fwd = b"X-Forwarded-For: " + self.peer.encode() + b"\r\n" + self.core.proto_line + _VIA
        core = self.core
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            sni = sni_of(ssl_object)
            if core.gate is not None:
                self.conn_id = core.gate.identify_connection(ssl_object.getpeercert(binary_form=True), sni)
            else:
                self.conn_id = ConnIdentity(sni=sni)
        core.conns.add(self)
        core.connections_total += 1
        if core.draining:
            self.close()
            return
        self._arm(_D_HEAD, self.t_head)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.to_upstream(data)
            return
        if self.upgrade_buf is not None:  # waiting for the app to accept a WebSocket
            self.upgrade_buf.append(data)
            if sum(map(len, self.upgrade_buf)) > _WAIT_LIMIT:
                self._pause(_P_UPGRADE)
            return
        if self.closed:
            return
        boundary = False
        clean = self.clean
        if self.parsing is None:
            if self.active is None and not self.in_head:  # these bytes start a request head
                if clean:
                    repeat = self.repeat
                    if repeat is not None and data == repeat[0]:
                        self._serve_again(repeat[1])
                        return
                    boundary = True
                self.in_head = True
                if self.dkind == _D_IDLE:
                    self.dkind = _D_HEAD
                    self.deadline = self.core.clock + self.t_head
        elif self.dkind == _D_BODY:
            self.deadline = self.core.clock + self.t_client
        was_in_head = self.in_head
        heads = self.heads
        self.clean = upgraded = False
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            upgraded = True  # a tunnel, or a new parser for the rest (it keeps .clean up to date)
            self._parser_upgrade(data[exc.args[0]:])
        except HttpParserCallbackError as exc:
            err = exc.__context__
            if isinstance(err, BadRequest):
                self._reject(err.status)
            else:
                log.error("front door: unexpected error on a request", exc_info=err)  # noqa: TRY400 - not in an except block of err
                self._reject(500)
            return
        except HttpParserError:
            self._reject(400)
            return
        if was_in_head and self.in_head:  # the whole read was head bytes: bound the buffering
            self.fed += len(data)
            if self.fed > self.cfg.max_header_bytes:
                self._reject(400)
                return
        elif not upgraded and self.parsing is None and data[-4:] == b"\r\n\r\n":
            # The parser holds nothing: this read ended a message (no body is being read) with
            # CRLF CRLF, and bytes of a next head ending so would have completed that head.
            self.clean = True
            head = self.last_head
            if boundary and self.heads == heads + 1 and head is not None and head.repeatable:
                self.repeat = (data, head)  # this read was one whole bodiless request
        ex = self.active
        if ex is not None and ex.up is not None and ex.pending:
            self._send_pending(ex, ex.up)
        if self.out:
            self.flush()

    def _serve_again(self, head: RequestHead) -> None:
        """The client sent its previous request again, byte for byte: serve it without parsing
        (parsing is a function of the bytes; the decision, trace and exchange are new)."""
        self.core.repeated_requests += 1
        try:
            self._serve(head, complete=True)
        except Exception:
            log.exception("front door: unexpected error on a request")
            self._reject(500)
            return
        if self.out:
            self.flush()

    def eof_received(self) -> bool:
        ex = self.active
        if ex is not None and ex.complete and self.tunnel is None and not self.core.tls:
            self.eof = True  # a half-closed client still gets its response
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.core.conns.discard(self)
        if self.tunnel is not None:
            self.tunnel.close()
            return
        ex = self.active
        if ex is not None and not ex.done:
            self._abandon(ex)
        self.active = None
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        up = self._current_upstream()
        if up is not None:
            up.pause_reading()
        if self.active is not None:
            self._arm(_D_SEND, self.t_client)

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self._current_upstream()
        if up is not None:
            up.resume_reading()
        if self.dkind == _D_SEND:
            self._arm(_D_UPSTREAM, self.t_up)

    # -- request parser callbacks -------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > self.cfg.max_header_bytes:
            raise BadRequest

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.cfg.max_header_bytes:
            raise BadRequest
        if self.parsing is None:  # else: trailers of a chunked body, read and dropped
            headers = self.headers
            headers.append((name, value))
            if len(headers) > self.cfg.max_headers:
                raise BadRequest

    def on_headers_complete(self) -> None:
        # No on_message_begin callback (httptools skips undefined ones; each costs a Python
        # call): the state of the next head is reset here, as soon as this one is read.
        headers, target = self.headers, self.url
        self.headers, self.url, self.head_size = [], b"", 0
        self.in_head = False
        self.fed = 0
        if self.closed:
            return
        head = self.last_head = read_head(self.parser, headers, target, self.core, self.conn_id)
        self.heads += 1
        self._serve(head, complete=False)

    def _serve(self, h: RequestHead, complete: bool) -> None:
        """Decide on the request ``h`` and start its exchange (``complete``: its whole message
        has been read, else the parser goes on with its body)."""
        core = self.core
        t0 = time.time_ns() if core.spans is not None else 0
        rid = core.request_id()
        out = [h.forward]
        verdict: Verdict | None = None
        gate = core.gate
        if gate is not None:
            verdict = self._decide(gate, h, rid)
            if verdict.allowed:
                out += (h.credentials, verdict.extra)
        spans = core.spans
        trace = None
        if spans is not None and core.registry.knows(h.host):  # a 404 for any name is not traced
            trace, line = spans.begin(self.conn_id, h.traceparent, h.tracestate)
            out.append(line)
        elif h.trace_lines:
            out.append(h.trace_lines)
        out += (self.fwd, h.forwarded_host, rid, b"\r\n\r\n")
        ex = Exchange(b"".join(out), h.host, rid)
        if trace is not None:
            ex.trace, ex.t0, ex.method, ex.path = trace, t0, h.method.decode(), h.path.decode()
        if verdict is not None:
            ex.verdict = verdict
            if verdict.handler is not None:
                ex.form = []
        if h.accept:
            ex.accept = h.accept
        if h.has_body:
            ex.has_body = True
            ex.chunked = h.chunked
        else:
            ex.retry_safe = h.method in _RETRY_SAFE
        if h.http10:
            ex.http10 = True
        if h.is_head:
            ex.is_head = True
        if not h.keep_alive:
            ex.keep_alive = False
        if complete:
            ex.complete = True
        else:
            self.parsing = ex
        if h.websocket:
            ex.websocket = True
            self.ws_pending = ex
        if self.active is None:
            self._begin(ex)
        else:
            self.queue.append(ex)
            self._pause(_P_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None or ex.done:
            return
        if ex.form is not None:
            ex.form_bytes += len(body)
            if ex.form_bytes <= FORM_LIMIT:
                ex.form.append(body)
            return
        if ex.chunked:
            ex.pending += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            ex.pending.append(body)
        if ex.up is None:
            ex.pending_bytes += len(body)
            if ex.pending_bytes > _WAIT_LIMIT:
                self._pause(_P_WAIT)

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        if ex is None:
            return
        ex.complete = True
        if ex.done:
            return
        if ex.chunked:
            ex.pending.append(b"0\r\n\r\n")
        if ex.local_status:
            self._respond_local(ex, ex.local_status)
        elif ex.pending_answer is not None:
            self._send_answer(ex, ex.pending_answer)
        elif ex.form is not None:
            if ex is self.active:
                self._run_page(ex)
        elif self.dkind == _D_BODY and ex is self.active:
            self._arm(_D_UPSTREAM, self.t_up)

    # -- routing -------------------------------------------------------------------------------
    def _begin(self, ex: Exchange) -> None:
        self.active = ex
        core = self.core
        core.requests += 1
        verdict = ex.verdict
        if verdict is not None and not verdict.allowed:
            if verdict.response is not None:
                self._answer_later(ex, verdict.response)
            elif ex.complete:
                self._run_page(ex)
            return
        eps = core.registry.endpoints(ex.host)
        if not eps:
            self._local(ex, 503 if core.registry.knows(ex.host) else 404)
            return
        ex.eps = eps
        self._route(ex)

    def _route(self, ex: Exchange) -> None:
        eps = ex.eps
        if len(eps) == 1 and ex.tried is None:  # the common case, without the balancing loop
            ep = eps[0]
            pool = self.core.pools.get(ep.socket_path) if ep.ready and not ep.draining else None
            if pool is None or pool.endpoint is not ep:
                pool = self.core.pick(eps, None)
        else:
            pool = self.core.pick(eps, ex.tried)
        if pool is None:
            if ex.tried:
                log.warning("front door: 502 %s: every endpoint of %s refused", ex.request_id.decode(),
                            ex.host)
            self._local(ex, 502 if ex.tried else 503)
            return
        pool.outstanding += 1
        ex.pool = pool
        if ex.trace is not None and not ex.t1:
            ex.t1 = time.time_ns()  # the hop starts: connect (TLS) or a pooled connection
        up = None if ex.fresh else pool.take()
        if up is not None:
            self.core.upstream_reuses += 1
            ex.reused = True
            self._attach(ex, up)
        else:
            ex.reused = False
            self._arm(_D_UPSTREAM, self.t_up)
            self.core.spawn(self._connect(ex, pool))

    async def _connect(self, ex: Exchange, pool: Pool) -> None:
        core = self.core
        delay, waited = 0.002, 0.0
        try:
            while True:
                try:
                    up = await core.open_upstream(pool)
                    break
                except BlockingIOError:
                    # EAGAIN: the app's accept queue is full. It is busy, not gone, and nothing
                    # was sent: wait a little (or for a pooled connection to come back).
                    if ex.done or waited >= self.cfg.connect_busy_s:
                        raise
                    await asyncio.sleep(delay)
                    waited += delay
                    delay = min(delay * 2, 0.05)
                    if ex.done:
                        return
                    idle = pool.take()
                    if idle is not None:
                        core.upstream_reuses += 1
                        ex.reused = True
                        self._attach(ex, idle)
                        return
        except OSError:
            core.connect_failures += 1
            pool.down_until = core.clock + self.cfg.connect_cooloff_s
            if ex.done:
                return
            self._release_pool(ex)
            if ex.tried is None:
                ex.tried = set()
            ex.tried.add(pool.path)  # nothing was sent: another endpoint may take it
            self._route(ex)
            self.flush()
            return
        core.upstream_connects += 1
        if ex.done or self.closed:
            pool.put(up, core.clock)
            return
        self._attach(ex, up)

    def _attach(self, ex: Exchange, up: Upstream) -> None:
        ex.up = up
        up.client = self
        up.got_bytes = False
        if self.write_paused:
            up.pause_reading()
        assert up.transport is not None
        if ex.pending:
            ex.pending.insert(0, ex.head)
            self._send_pending(ex, up)
        else:
            up.transport.write(ex.head)
        ex.pending_bytes = 0
        self._resume(_P_WAIT)
        if ex.complete:
            self.dkind = _D_UPSTREAM
            self.deadline = self.core.clock + self.t_up
        else:
            self.dkind = _D_BODY
            self.deadline = self.core.clock + self.t_client

    def _send_pending(self, ex: Exchange, up: Upstream) -> None:
        assert up.transport is not None
        up.transport.writelines(ex.pending)
        ex.pending.clear()

    # -- response (called by Upstream) -----------------------------------------------------------
    def response_head(self, up: Upstream, status: int) -> None:
        ex = self.active
        if ex is None or ex.up is not up:
            raise _UpstreamProtocolError
        if status < 200:
            if status == 101:
                if not ex.websocket:
                    raise _UpstreamProtocolError
                up.interim = True  # its message end is not the exchange's end:
                return  # HttpParserUpgrade follows, see upgraded()
            up.interim = True
            if not ex.http10:
                out = [status_line(status)]
                scan_response(up.headers, out)
                out.append(b"\r\n")
                self.out.append(b"".join(out))
            up.headers = []
            up.in_head = True
            return
        out = [status_line(status)]  # joined below: one buffer, not one iovec per piece
        length, te, close, _upgrade = scan_response(up.headers, out)
        ex.response_started = True
        ex.status = status
        ex.up_keep = not close and up.keep_alive()
        keep = ex.keep_alive and ex.complete and not self.core.draining and not self.eof
        if ex.is_head or status == 204 or status == 304:
            if length is not None:
                out += (b"Content-Length: ", length, b"\r\n")
        elif te is None and length is not None:
            out += (b"Content-Length: ", length, b"\r\n")
        else:
            ex.close_delimited = te is None or not te.lower().endswith(b"chunked")
            if ex.http10:
                keep = False  # no chunked framing for HTTP/1.0: the close ends the body
            else:
                ex.client_chunked = True
                if te is None:
                    out.append(b"Transfer-Encoding: chunked\r\n")
                elif ex.close_delimited:
                    out += (b"Transfer-Encoding: ", te, b", chunked\r\n")
                else:
                    out += (b"Transfer-Encoding: ", te, b"\r\n")
        if (length is not None and te is None and ex.up_keep
                and status != 204 and status != 304 and not ex.is_head and not ex.websocket):
            head = b"".join(out)
            up.last = RepeatableResponse(status, int(length), head)
            self.out.append(head + (b"\r\n" if keep else b"Connection: close\r\n\r\n"))
        else:
            out.append(b"\r\n" if keep else b"Connection: close\r\n\r\n")
            self.out.append(b"".join(out))
        ex.client_keep = keep
        if ex.is_head:
            raise HeadDone

    def repeated_response(self, up: Upstream, r: RepeatableResponse, body: bytes) -> bool:
        """Relay a whole response whose head is byte for byte the previous one on ``up`` (see
        :meth:`response_head`) with ``body``; False when this exchange needs the parser."""
        ex = self.active
        if ex is None or ex.up is not up or ex.is_head or ex.websocket:
            return False
        self.core.repeated_responses += 1
        ex.response_started = True
        ex.status = r.status
        ex.up_keep = True
        keep = ex.client_keep = ex.keep_alive and ex.complete and not self.core.draining and not self.eof
        end = b"\r\n" if keep else b"Connection: close\r\n\r\n"
        if len(body) < 4096:
            self.out.append(r.head + end + body)
        else:
            self.out += (r.head + end, body)
        self.response_end(up, reusable=True)
        return True

    def response_body(self, body: bytes) -> None:
        ex = self.active
        if ex is None or not body:
            return
        out = self.out
        if ex.client_chunked:
            out += (b"%x\r\n" % len(body), body, b"\r\n")
        elif out and len(body) < 4096 and len(out[-1]) < 16384:
            out[-1] += body  # head and a small body leave in one write(), not a writev()
        else:
            out.append(body)

    def response_end(self, up: Upstream, reusable: bool) -> None:
        ex = self.active
        if ex is None or ex.up is not up:
            up.close()
            return
        if ex.client_chunked:
            self.out.append(b"0\r\n\r\n")
        ex.up = None
        up.client = None
        up.headers = []
        up.in_head = True
        pool = ex.pool
        if reusable and ex.up_keep and ex.complete and not ex.pending and pool is not None:
            up.resume_reading()
            pool.put(up, self.core.clock)
        else:
            up.close()
        self._finish(ex, close=not ex.client_keep)

    def upgraded(self, up: Upstream, rest: bytes) -> None:
        """The app answered 101: from now on this connection is a byte tunnel."""
        ex = self.active
        if ex is None or ex.up is not up or not ex.websocket or ex.pool is None:
            self.upstream_failed(up, None)
            return
        out = [status_line(101)]
        upgrade = scan_response(up.headers, out)[3]
        out += (b"Connection: upgrade\r\nUpgrade: ", upgrade or b"websocket", b"\r\n\r\n")
        self.out.append(b"".join(out))
        if rest:
            self.out.append(rest)
        endpoint = ex.pool.endpoint
        v = ex.verdict
        info = TunnelInfo(request_id=ex.request_id.decode(), app=endpoint.app, host=ex.host,
                          endpoint_id=endpoint.id, client=self.peer, opened_at=time.time(),
                          user=v.user if v else None, session_id=v.session_id if v else None,
                          device_serial=v.device_serial if v else None)
        up.interim = False
        tunnel = Tunnel(self.core, self, up, info)
        self.tunnel = up.tunnel = tunnel
        up.client = None
        ex.up = None
        ex.response_started = True
        self._release_pool(ex)
        ex.done = True
        self._span_end(ex, 101)
        self.active = None
        self.core.responses += 1
        self.deadline, self.dkind = 0.0, _D_NONE  # tunnels have no idle timeout
        buffered, self.upgrade_buf = self.upgrade_buf, None
        if buffered:
            assert up.transport is not None
            up.transport.writelines(buffered)
        self._resume(_P_UPGRADE)

    def upstream_failed(self, up: Upstream, err: BaseException | None) -> None:
        """The app sent an invalid response."""
        if err is not None and not isinstance(err, (HttpParserError, _UpstreamProtocolError)):
            log.error("front door: unexpected error on a response", exc_info=err)
        ex = self.active
        up.client = None
        up.abort()
        if ex is None or ex.up is not up:
            return
        ex.up = None
        self._upstream_error(ex, 502, "invalid response")

    def upstream_lost(self, up: Upstream, exc: Exception | None) -> None:
        """The app's connection closed while bound to a request."""
        ex = self.active
        up.client = None
        if ex is None or ex.up is not up:
            return
        ex.up = None
        if ex.response_started and ex.close_delimited and exc is None:
            if ex.client_chunked:
                self.out.append(b"0\r\n\r\n")
            self._finish(ex, close=not ex.client_keep)
            return
        if (not ex.response_started and ex.reused and ex.retry_safe and not up.got_bytes
                and not ex.retried):
            # A kept-alive connection the app closed as we reused it: the request cannot have
            # been processed (no byte came back) and is safe to repeat, on a new connection.
            self.core.retries += 1
            ex.retried = ex.fresh = True
            self._release_pool(ex)
            self._route(ex)
            self.flush()
            return
        self._upstream_error(ex, 502, f"connection lost ({exc or 'closed'}; reused={ex.reused}, "
                                      f"bytes back={up.got_bytes})")

    # -- endings ----------------------------------------------------------------------------------
    def _upstream_error(self, ex: Exchange, status: int, why: str) -> None:
        pool = ex.pool
        log.warning("front door: %s %s on %s: %s", status, ex.request_id.decode(),
                    pool.endpoint.id if pool is not None else "-", why)
        self.core.errors += 1
        if ex.response_started:  # too late for an error page: cut the response short
            self._release_pool(ex)
            ex.done = True
            self._span_end(ex, status)
            self.active = None
            self.flush()
            self.close()
        else:
            self._respond_local(ex, status)
        self.flush()

    def _local(self, ex: Exchange, status: int) -> None:
        """Answer ``ex`` from the proxy (404, 502, 503)."""
        if status >= 500:
            self.core.errors += 1
        if not ex.complete and not ex.has_body:
            ex.local_status = status  # the end of the head is the end of the request: answer then
        else:
            self._respond_local(ex, status)

    def _respond_local(self, ex: Exchange, status: int) -> None:
        if ex.up is not None:
            ex.up.client = None
            ex.up.abort()
            ex.up = None
        close = not (ex.keep_alive and ex.complete) or self.core.draining or self.eof
        ex.status = status
        as_json = b"application/json" in ex.accept.lower()
        retry = self.cfg.retry_after_s if status == 503 else None
        self.out.append(error_response(status, as_json=as_json, request_id=ex.request_id,
                                       close=close, retry_after_s=retry))
        self._finish(ex, close)

    def _finish(self, ex: Exchange, close: bool) -> None:
        self._release_pool(ex)
        ex.done = True
        self._span_end(ex, ex.status)
        self.active = None
        self.core.responses += 1
        self.flush()
        if close or self.core.draining or self.eof:
            self.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            if not self.queue:
                self._resume(_P_PIPELINE)
            self._begin(nxt)
        elif self.in_head:
            self._arm(_D_HEAD, self.t_head)
        else:
            self.dkind = _D_IDLE
            self.deadline = self.core.clock + self.t_keep

    def _abandon(self, ex: Exchange) -> None:
        if ex.up is not None:
            ex.up.client = None
            ex.up.abort()
            ex.up = None
        self._release_pool(ex)
        ex.done = True
        self._span_end(ex, 499)  # nobody left to answer (nginx's "client closed request")

    def _span_end(self, ex: Exchange, status: int) -> None:
        """Hand ``ex``'s span(s) to the recorder, once."""
        if ex.trace is not None:
            self.core.spans.end(ex, status)  # type: ignore[union-attr]  # set with trace
            ex.trace = None

    def _release_pool(self, ex: Exchange) -> None:
        pool = ex.pool
        if pool is not None:
            pool.outstanding -= 1
            ex.pool = None

    def _reject(self, status: int) -> None:
        """A protocol violation by the client: answer ``status`` if nothing else is in flight,
        then close."""
        self.core.rejected += 1
        ex = self.active
        if ex is not None and not ex.done:
            # e.g. a broken chunked body: the app saw a truncated request, its connection goes
            self._abandon(ex)
            self.active = None
            if ex.response_started:
                self.abort()
                return
            self.out.clear()
        self.out.append(error_response(status, as_json=False, request_id=b"", close=True))
        self.flush()
        self.close()

    def on_timeout(self) -> None:
        kind, self.dkind, self.deadline = self.dkind, _D_NONE, 0.0
        self.core.timeouts += 1
        ex = self.active
        if kind == _D_IDLE or (kind == _D_HEAD and not self.in_head and ex is None):
            self.close()
        elif kind == _D_HEAD and ex is None:
            self.out.append(error_response(408, as_json=False, request_id=b"", close=True))
            self.flush()
            self.close()
        elif ex is not None and not ex.response_started and kind in (_D_BODY, _D_UPSTREAM):
            if kind == _D_BODY:
                ex.complete = False
                self._respond_local(ex, 408)
            else:
                self._upstream_error(ex, 504, "timed out")
        else:
            if ex is not None:
                self._abandon(ex)
                self.active = None
            self.abort()

    # -- plumbing ---------------------------------------------------------------------------------
    def _parser_upgrade(self, rest: bytes) -> None:
        ex, self.ws_pending = self.ws_pending, None
        if ex is not None and not ex.done:
            self.upgrade_buf = [rest] if rest else []  # held until the app answers
            return
        # No upgrade was asked of the app (or it is already answered): keep parsing HTTP.
        self.parser = HttpRequestParser(self)
        if rest:
            self.data_received(rest)

    def _current_upstream(self) -> Upstream | None:
        if self.tunnel is not None:
            return self.tunnel.upstream
        ex = self.active
        return ex.up if ex is not None else None

    def pause_for_upstream(self) -> None:
        self._pause(_P_UPSTREAM)

    def resume_for_upstream(self) -> None:
        self._resume(_P_UPSTREAM)

    def _pause(self, flag: int) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused |= flag

    def _resume(self, flag: int) -> None:
        if self.paused & flag:
            self.paused &= ~flag
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def _arm(self, kind: int, seconds: float) -> None:
        self.dkind = kind
        self.deadline = self.core.clock + seconds

    def flush(self) -> None:
        out = self.out
        if out:
            if not self.closed and self.transport is not None:
                if len(out) == 1:
                    self.transport.write(out[0])
                else:
                    self.transport.writelines(out)
            out.clear()

    def close(self) -> None:
        """Close after the buffered output is written."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.out.clear()
        if self.transport is not None:
            self.transport.abort()


# A noops session secret, as pep.session_secret reads it: the scheme in any case, then the
# secret with any whitespace around it (a narrower pattern would forward such a bearer).
