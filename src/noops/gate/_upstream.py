"""Upstream side: one HTTP/1.1 connection to an instance's Unix socket, and the per-endpoint pool.

An :class:`Upstream` carries one request at a time. It parses responses with httptools and
hands every event to the client connection bound to it (``client``); between requests it sits
idle in its :class:`Pool`. A connection is pooled again only when both messages ended cleanly
and the app did not ask to close.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, cast

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser

from noops.gate.endpoints import Endpoint

if TYPE_CHECKING:
    from noops.gate._client import ClientConnection
    from noops.gate._tunnel import Tunnel

__all__ = ["HeadDone", "Pool", "RepeatableResponse", "Upstream"]


class HeadDone(Exception):
    """Raised from the header callback of a response to HEAD (llhttp would wait for a body)."""


class RepeatableResponse:
    """A response head that can be relayed again without parsing: a final status (not 204 or
    304), a body framed by ``Content-Length`` only, and a connection the app keeps open.
    ``head`` is what the client gets of it, without the line that ends the head."""

    __slots__ = ("head", "length", "status")

    def __init__(self, status: int, length: int, head: bytes) -> None:
        self.status = status
        self.length = length
        self.head = head


class Pool:
    """Idle connections and load figures of one endpoint (keyed by its socket path)."""

    __slots__ = ("down_until", "endpoint", "idle", "max_idle", "outstanding", "path", "seen")

    def __init__(self, endpoint: Endpoint, max_idle: int) -> None:
        self.endpoint = endpoint
        self.path = endpoint.socket_path
        self.idle: list[Upstream] = []  # LIFO: the warmest connection is reused first
        self.max_idle = max_idle
        self.outstanding = 0  # requests routed here and not finished
        self.down_until = 0.0  # refused a connection: tried last until then
        self.seen = 0.0

    def take(self) -> Upstream | None:
        idle = self.idle
        while idle:
            up = idle.pop()
            if not up.closed and up.transport is not None and not up.transport.is_closing():
                return up
        return None

    def put(self, up: Upstream, now: float) -> None:
        if len(self.idle) < self.max_idle and not up.closed:
            up.idle_since = now
            self.idle.append(up)
        else:
            up.close()

    def discard(self, up: Upstream) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(up)

    def close_idle(self, older_than: float | None = None) -> None:
        """Close idle connections (all, or those idle since before ``older_than``)."""
        keep: list[Upstream] = []
        for up in self.idle:
            if older_than is None or up.idle_since < older_than:
                up.close()
            else:
                keep.append(up)
        self.idle = keep


class Upstream(asyncio.Protocol):
    """One connection to an app instance."""

    __slots__ = ("clean", "client", "closed", "ended", "got_bytes", "headers", "idle_since", "in_head",
                 "interim", "last", "parser", "pool", "reading_paused", "repeat", "transport", "tunnel")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.client: ClientConnection | None = None
        self.tunnel: Tunnel | None = None
        # Reset by the client connection when a response ends (no on_message_begin callback:
        # httptools skips callbacks a protocol does not define, and each costs a Python call).
        self.headers: list[tuple[bytes, bytes]] = []
        self.in_head = True
        self.interim = False
        self.got_bytes = False
        self.closed = False
        self.reading_paused = False
        self.idle_since = 0.0
        self.ended = 0  # responses read
        self.clean = True  # the parser holds no bytes of a response it has not finished
        # What the last response head meant, when it can be repeated (see ClientConnection.
        # response_head), and the last read that was exactly one such response with that meaning.
        self.last: RepeatableResponse | None = None
        self.repeat: tuple[bytes, int, RepeatableResponse] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.to_client(data)
            return
        client = self.client
        if client is None:  # an idle connection must stay silent
            self.close()
            return
        self.got_bytes = True
        boundary = self.clean and self.in_head and not self.interim
        if boundary:
            repeat = self.repeat
            # The app sent its previous response head again, with a body of the same length:
            # this read is one whole response that means what the last one meant.
            if repeat is not None and len(data) == repeat[1] and data.startswith(repeat[0]) \
                    and client.repeated_response(self, repeat[2], data[len(repeat[0]):]):
                client.flush()
                return
            self.last = None
        if client.dkind == 4:  # waiting on the app (_D_UPSTREAM): it is alive
            client.deadline = client.core.clock + client.t_up
        ended = self.ended
        self.clean = False
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            client.upgraded(self, data[exc.args[0]:])
        except HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HeadDone):
                # Reuse only if the head ended exactly at the end of this read.
                self.parser = HttpResponseParser(self)
                self.in_head = self.clean = True
                client.response_end(self, reusable=data.endswith(b"\r\n\r\n"))
            else:
                client.upstream_failed(self, exc.__context__)
        except HttpParserError as exc:
            client.upstream_failed(self, exc)
        else:
            # Whether the parser holds nothing now: proven when this read was exactly one whole
            # response (its head and Content-Length body), or ended a response with CRLF CRLF
            # (bytes of a next head ending so would have completed that head).
            last = self.last
            if self.in_head and not self.interim and self.ended > ended:
                head_end = data.find(b"\r\n\r\n") + 4
                if (boundary and last is not None and self.ended == ended + 1 and head_end > 3
                        and len(data) - head_end == last.length):
                    self.repeat = (data[:head_end], len(data), last)
                    self.clean = True
                else:
                    self.clean = data[-4:] == b"\r\n\r\n"
        client.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.tunnel is not None:
            self.tunnel.close()
        elif self.client is not None:
            self.client.upstream_lost(self, exc)
        else:
            self.pool.discard(self)

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client.pause_for_upstream()
        elif self.client is not None:
            self.client.pause_for_upstream()

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client.resume_for_upstream()
        elif self.client is not None:
            self.client.resume_for_upstream()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:  # trailers (after a chunked body) are not forwarded
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        assert self.client is not None
        self.client.response_head(self, self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        assert self.client is not None
        self.client.response_body(body)

    def on_message_complete(self) -> None:
        if self.interim:  # a 1xx: the final response follows on the same connection
            self.interim = False
            return
        self.ended += 1
        assert self.client is not None
        self.client.response_end(self, reusable=True)

    # -- helpers -------------------------------------------------------------------------------
    def keep_alive(self) -> bool:
        """Whether the app allows another request on this connection (valid after the head)."""
        return self.parser.should_keep_alive()

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
