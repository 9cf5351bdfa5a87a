"""State shared by every connection of one front door: settings, routing, pools, counters,
tunnels, and the coarse clock the timeouts run on."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from noops.gate._upstream import Pool, Upstream
from noops.gate.endpoints import Endpoint, EndpointRegistry, normalize_host

if TYPE_CHECKING:
    from noops.gate._client import ClientConnection
    from noops.gate._tracing import GatewaySpans
    from noops.gate._tunnel import Tunnel
    from noops.gate.mtls import UpstreamTLS
    from noops.gate.pep import Gatekeeper

__all__ = ["Core", "FrontDoorConfig"]


@dataclass(frozen=True)
class FrontDoorConfig:
    """Limits and timeouts of the front door (all times in seconds).

    Timeouts are checked by a sweeper every ``min(0.5, shortest timeout / 4)`` s, so they fire
    within that slack.
    """

    header_timeout_s: float = 15.0
    """From the first byte of a request (or the connection) to the end of its head: else 408."""
    keepalive_timeout_s: float = 75.0
    """An idle client keep-alive connection is closed (silently) after this."""
    client_timeout_s: float = 60.0
    """Longest pause while reading a request body (408) or writing to a stalled client (close)."""
    upstream_timeout_s: float = 60.0
    """Longest wait for the app: for the response head once the request is sent, then between
    two reads of the response body. Exceeded before the head: 504; after: the connection is cut."""
    upstream_idle_s: float = 1.5
    """Idle pooled upstream connections are closed after this. Kept below the keep-alive timeout
    of common app servers (gunicorn 2 s, uvicorn 5 s) so the proxy, not the app, closes them;
    otherwise a request may race the app's close."""
    max_idle_per_endpoint: int = 64
    """Idle upstream connections kept per endpoint."""
    max_header_bytes: int = 64 * 1024
    """Largest request line + header section; more is a 400."""
    max_headers: int = 100
    """Most request header fields; more is a 400."""
    retry_after_s: int = 5
    """``Retry-After`` of the 503 sent when no endpoint is ready."""
    connect_busy_s: float = 1.0
    """How long to retry a connect refused with EAGAIN (the app's accept queue is full)."""
    connect_cooloff_s: float = 1.0
    """An endpoint that refused a connection is tried last for this long."""
    tls_handshake_timeout_s: float = 10.0
    backlog: int = 1024


class Core:
    """Everything connections share. Lives on the event loop thread only."""

    def __init__(self, registry: EndpointRegistry, config: FrontDoorConfig, tls: bool) -> None:
        self.registry = registry
        self.config = config
        self.tls = tls
        self.loop = asyncio.get_running_loop()
        self.clock = self.loop.time()
        self.pools: dict[str, Pool] = {}
        self.conns: set[ClientConnection] = set()
        self.tunnels: dict[int, Tunnel] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        self.gate: Gatekeeper | None = None  # the policy enforcement point (None: a plain proxy)
        self.spans: GatewaySpans | None = None  # the gateway's own spans (None: not recorded)
        self.rr = 0
        self.hosts: dict[bytes, str] = {}  # raw Host value -> routing key ("" = invalid)
        # mTLS to instances (no TLS offload): set by the front door; None = plain Unix sockets
        self.upstream_tls: UpstreamTLS | None = None
        self._rid_prefix = os.urandom(6).hex().encode() + b"-"
        self._rid = 0
        self.proto_line = b"X-Forwarded-Proto: https\r\n" if tls else b"X-Forwarded-Proto: http\r\n"
        # counters (see FrontDoor.stats)
        self.connections_total = 0
        self.requests = 0
        self.responses = 0
        self.errors = 0
        self.rejected = 0
        self.timeouts = 0
        self.upstream_connects = 0
        self.upstream_reuses = 0
        self.connect_failures = 0
        self.retries = 0
        self.tunnels_total = 0
        self.repeated_requests = 0  # served without parsing: the connection's previous head again
        self.repeated_responses = 0  # relayed without parsing: the upstream's previous head again

    def request_id(self) -> bytes:
        self._rid += 1
        return self._rid_prefix + b"%08x" % self._rid

    def route_key(self, host: bytes) -> str | None:
        """Normalised host for a raw ``Host`` value (cached in :attr:`hosts`), None when invalid."""
        cached = self.hosts.get(host)
        if cached is not None:
            return cached or None
        try:
            key = normalize_host(host.decode("ascii"))
        except UnicodeDecodeError:
            key = None
        if len(self.hosts) > 4096:
            self.hosts.clear()
        self.hosts[host] = key or ""
        return key

    def pick(self, endpoints: Sequence[Endpoint], exclude: set[str] | None) -> Pool | None:
        """The routable endpoint with the fewest outstanding requests.

        The scan starts one place further on each call and keeps the first of equals, so equally
        loaded endpoints are used round-robin, while a slow or stuck instance (its outstanding
        count grows) stops getting new work. Endpoints that recently refused a connection come
        last; draining ones are skipped and their idle connections closed.
        """
        n = len(endpoints)
        if n == 0:
            return None
        self.rr += 1
        start = self.rr % n if n > 1 else 0
        best: Pool | None = None
        best_load = 0
        pools = self.pools
        clock = self.clock
        for i in range(n):
            ep = endpoints[(start + i) % n] if n > 1 else endpoints[0]
            if not ep.ready or ep.draining:
                if ep.draining:
                    stale = pools.get(ep.socket_path)
                    if stale is not None and stale.idle:
                        stale.close_idle()
                continue
            if exclude is not None and ep.socket_path in exclude:
                continue
            pool = pools.get(ep.socket_path)
            if pool is None:
                pool = pools[ep.socket_path] = Pool(ep, self.config.max_idle_per_endpoint)
            elif pool.endpoint is not ep:
                pool.endpoint = ep
            load = pool.outstanding + (1 << 20 if pool.down_until > clock else 0)
            if best is None or load < best_load:
                best, best_load = pool, load
        if best is not None:
            best.seen = clock
        return best

    async def open_upstream(self, pool: Pool) -> Upstream:
        """A new connection to ``pool``'s endpoint (raises OSError when it cannot be opened).

        With :attr:`upstream_tls` the connection is mTLS as ``spiffe://<td>/gateway``, and the
        instance must prove exactly the SPIFFE ID its endpoint pins; an endpoint that pins none
        is refused. A failed handshake (``ssl.SSLError``) or a wrong ID
        (:class:`~noops.gate.mtls.PeerIdentityError`) is an OSError, so the request is retried on
        another endpoint, or answered 502, before anything was sent.
        """
        tls = self.upstream_tls
        if tls is None:
            _, up = await self.loop.create_unix_connection(lambda: Upstream(pool), pool.path)
            return up
        from noops.gate.mtls import PeerIdentityError

        expected = pool.endpoint.spiffe_id
        if not expected:
            raise PeerIdentityError(f"endpoint {pool.endpoint.id} pins no SPIFFE ID; the front "
                                    "door only dials instances whose identity it knows.")
        transport, up = await self.loop.create_unix_connection(
            lambda: Upstream(pool), pool.path, ssl=tls.context(),
            server_hostname=tls.server_hostname,
            ssl_handshake_timeout=self.config.tls_handshake_timeout_s)
        if not tls.check(transport.get_extra_info("ssl_object"), expected):
            up.abort()
            raise PeerIdentityError(f"endpoint {pool.endpoint.id} is not {expected}; refused.")
        return up

    def spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = self.loop.create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def sweep(self) -> None:
        """Fire expired deadlines; close expired idle upstream connections and forgotten pools."""
        now = self.clock = self.loop.time()
        for conn in [c for c in self.conns if 0.0 < c.deadline < now]:
            conn.on_timeout()
        idle_before = now - self.config.upstream_idle_s
        for path, pool in list(self.pools.items()):
            if pool.idle and pool.idle[0].idle_since < idle_before:
                pool.close_idle(idle_before)
            if not pool.idle and pool.outstanding == 0 and pool.seen < now - 60.0:
                del self.pools[path]
