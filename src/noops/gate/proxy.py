"""The front door: an HTTP/1.1 reverse proxy from clients to app instances on Unix sockets.

Built on asyncio protocols (not streams) with httptools parsing both directions; run it on
uvloop (:func:`run_forever` does). Every request is routed by its ``Host`` through an
:class:`~noops.gate.endpoints.EndpointRegistry` to a ``ready`` and not ``draining`` endpoint,
over a kept-alive connection from that endpoint's pool.

Behaviour in short (details where the code lives):

* keep-alive both sides; bodies streamed with backpressure (Content-Length, chunked,
  close-delimited); ``Expect: 100-continue`` forwarded and the app's ``100`` relayed; HEAD; 1xx.
* WebSocket upgrades become byte tunnels, listed by :meth:`FrontDoor.tunnels` and closed by
  :meth:`FrontDoor.close_tunnels` (revocation). Other upgrades (h2c...) are not tunnelled.
* balancing: least outstanding requests, round-robin among equals (:meth:`Core.pick`); a refused
  connection moves the request to another endpoint (nothing was sent yet); a kept-alive
  connection the app closed under a safe, bodiless request (no byte back) is retried once.
* header hygiene and smuggling defences: :mod:`noops.gate._http`.
* proxy answers: 400 malformed, 404 unknown host, 408 slow client, 502 app failed, 503 (with
  ``Retry-After``) nothing ready, 504 app too slow; HTML, or JSON for ``Accept:
  application/json``; never an exception text or a socket path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from noops.gate._client import ClientConnection
from noops.gate._core import Core, FrontDoorConfig
from noops.gate._errors import GateError
from noops.gate._tunnel import TunnelInfo
from noops.gate.endpoints import EndpointRegistry

if TYPE_CHECKING:
    from noops.gate._tracing import GatewaySpans
    from noops.gate.mtls import UpstreamTLS
    from noops.gate.pep import Gatekeeper

__all__ = ["FrontDoor", "FrontDoorConfig", "TunnelInfo", "run_forever"]

log = logging.getLogger("noops.gate")


class FrontDoor:
    """One listening socket and everything behind it.

    Every method runs on the event loop that called :meth:`start`; from another thread use
    ``loop.call_soon_threadsafe`` (or ``asyncio.run_coroutine_threadsafe`` for :meth:`stop`).
    """

    def __init__(self, registry: EndpointRegistry, config: FrontDoorConfig | None = None, *,
                 gate: Gatekeeper | None = None, upstream_tls: UpstreamTLS | None = None,
                 spans: GatewaySpans | None = None) -> None:
        self.registry = registry
        self.config = config or FrontDoorConfig()
        self.gate = gate
        self.upstream_tls = upstream_tls
        self.spans = spans
        self._core: Core | None = None
        self._server: asyncio.AbstractServer | None = None
        self._extra: list[asyncio.AbstractServer] = []
        self._ticker: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._address: tuple[str, int] | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 8443,
                    tls: ssl.SSLContext | None = None) -> None:
        """Listen on ``host:port`` (``port=0`` picks a free one; see :attr:`port`), HTTPS when
        ``tls`` is given. Raises :class:`GateError` if the address cannot be bound."""
        if self._server is not None:
            raise GateError("the front door is already started; stop() it first.")
        core = Core(self.registry, self.config, tls is not None)
        core.gate, core.upstream_tls, core.spans = self.gate, self.upstream_tls, self.spans
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: ClientConnection(core), host, port, ssl=tls, backlog=self.config.backlog,
                reuse_address=True,
                ssl_handshake_timeout=self.config.tls_handshake_timeout_s if tls else None)
        except OSError as exc:
            raise GateError(f"the front door cannot listen on {host}:{port}: {exc.strerror or exc}; "
                            "choose another port or stop what holds it.") from exc
        sock = server.sockets[0].getsockname()
        self._address = (str(sock[0]), int(sock[1]))
        self._core, self._server = core, server
        self._sweeper = loop.create_task(self._sweep(core))
        if self.gate is not None:
            self.gate.close_tunnels = self.close_tunnels
            self.gate.knows_host = self.registry.knows
            self._ticker = loop.create_task(self._tick(self.gate))

    async def listen_unix(self, path: str, tls: ssl.SSLContext) -> None:
        """Also accept on the Unix socket ``path`` (0666: reachable from every instance's
        namespace; the TLS context must require client certificates — workloads' SVIDs)."""
        core = self._core
        if core is None:
            raise GateError("start() the front door before adding a listener.")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server = await asyncio.get_running_loop().create_unix_server(
            lambda: ClientConnection(core), path, ssl=tls, backlog=self.config.backlog,
            ssl_handshake_timeout=self.config.tls_handshake_timeout_s)
        os.chmod(path, 0o666)
        self._extra.append(server)

    @property
    def port(self) -> int:
        """The bound TCP port (useful after ``start(port=0)``)."""
        if self._address is None:
            raise GateError("the front door is not started.")
        return self._address[1]

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        if self._address is None:
            raise GateError("the front door is not started.")
        return self._address

    async def stop(self, drain_s: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish for up to ``drain_s`` seconds, then
        close every connection (idle keep-alive ones at once, tunnels after the drain) and the
        upstream pools. Idempotent."""
        core, server = self._core, self._server
        if core is None or server is None:
            return
        self._server = None
        server.close()
        for extra in self._extra:
            extra.close()
        self._extra.clear()
        if self._ticker is not None:
            self._ticker.cancel()
        core.draining = True
        for conn in list(core.conns):
            if conn.active is None and conn.tunnel is None and not conn.in_head:
                conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while loop.time() < deadline and any(c.active is not None or c.in_head for c in core.conns
                                             if c.tunnel is None):
            await asyncio.sleep(0.02)
        for tunnel in list(core.tunnels.values()):
            tunnel.close()
        for conn in list(core.conns):
            conn.abort()
        for pool in core.pools.values():
            pool.close_idle()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(core.tasks):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2.0)
        self._core = None
        self._address = None

    def stats(self) -> dict[str, int]:
        """Counters since start: connections, requests, responses, errors (5xx the proxy sent or
        responses cut short), rejected (malformed requests), timeouts, upstream connects/reuses,
        connect failures, retries, tunnels, and the requests and responses that repeated the
        previous head on their connection byte for byte (handled without parsing it again)."""
        core = self._core
        if core is None:
            return {}
        return {
            "connections_open": len(core.conns),
            "connections_total": core.connections_total,
            "requests": core.requests,
            "responses": core.responses,
            "errors": core.errors,
            "rejected": core.rejected,
            "timeouts": core.timeouts,
            "upstream_connects": core.upstream_connects,
            "upstream_reuses": core.upstream_reuses,
            "upstream_idle": sum(len(p.idle) for p in core.pools.values()),
            "connect_failures": core.connect_failures,
            "retries": core.retries,
            "tunnels_open": len(core.tunnels),
            "tunnels_total": core.tunnels_total,
            "repeated_requests": core.repeated_requests,
            "repeated_responses": core.repeated_responses,
        }

    def in_flight(self, socket_path: str) -> int:
        """Requests sent (or being sent) to the endpoint at ``socket_path`` and not finished.

        Draining an endpoint: mark it ``draining`` in the registry, wait until this is 0 (ask on
        the loop thread, so no routing decision is half-made), then remove it and stop the
        instance. Open tunnels are not counted (see :meth:`close_tunnels`).
        """
        core = self._core
        pool = None if core is None else core.pools.get(socket_path)
        return 0 if pool is None else pool.outstanding

    def tunnels(self) -> list[TunnelInfo]:
        """The open tunnels (WebSockets), oldest first."""
        core = self._core
        return [] if core is None else sorted((t.info for t in core.tunnels.values()),
                                              key=lambda i: i.opened_at)

    def close_tunnels(self, predicate: Callable[[TunnelInfo], bool]) -> int:
        """Close every open tunnel whose info satisfies ``predicate`` (e.g. all of an app, or of a
        revoked user's requests); both sides are closed at once. Returns how many were closed."""
        core = self._core
        if core is None:
            return 0
        chosen = [t for t in core.tunnels.values() if predicate(t.info)]
        for tunnel in chosen:
            tunnel.close()
        return len(chosen)

    async def _tick(self, gate: Gatekeeper) -> None:
        while True:
            await asyncio.sleep(0.05)
            try:
                gate.tick()
            except Exception:
                log.exception("gateway housekeeping failed")

    async def _sweep(self, core: Core) -> None:
        cfg = self.config
        shortest = min(cfg.header_timeout_s, cfg.keepalive_timeout_s, cfg.client_timeout_s,
                       cfg.upstream_timeout_s, cfg.upstream_idle_s)
        interval = max(0.02, min(0.5, shortest / 4))
        while True:
            await asyncio.sleep(interval)
            core.sweep()


def run_forever(registry: EndpointRegistry, *, host: str = "127.0.0.1", port: int = 8443,
                tls: ssl.SSLContext | None = None, config: FrontDoorConfig | None = None,
                drain_s: float = 10.0, gate: Gatekeeper | None = None,
                upstream_tls: UpstreamTLS | None = None,
                workload: tuple[str, ssl.SSLContext] | None = None,
                on_started: Callable[[FrontDoor], None] | None = None,
                spans: GatewaySpans | None = None) -> None:
    """Serve on uvloop until SIGINT or SIGTERM, then :meth:`FrontDoor.stop` with ``drain_s``.

    ``workload`` adds the Unix socket (path, mTLS context) instances call other apps through.
    ``on_started`` is called on the loop once listening (e.g. to print the port); ``spans``
    records the gateway's own spans.
    """
    import uvloop

    async def main() -> None:
        door = FrontDoor(registry, config, gate=gate, upstream_tls=upstream_tls, spans=spans)
        await door.start(host, port, tls)
        if workload is not None:
            await door.listen_unix(*workload)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        if on_started is not None:
            on_started(door)
        await stopping.wait()
        await door.stop(drain_s)

    uvloop.run(main())
