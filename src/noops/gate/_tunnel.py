"""Byte tunnels: what a connection becomes after the app answers an Upgrade with ``101``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from noops.gate._client import ClientConnection
    from noops.gate._core import Core
    from noops.gate._upstream import Upstream

__all__ = ["Tunnel", "TunnelInfo"]


@dataclass(frozen=True, slots=True)
class TunnelInfo:
    """An open upgraded connection (a WebSocket, usually), as callers of
    :meth:`noops.gate.proxy.FrontDoor.close_tunnels` see it."""

    request_id: str
    app: str
    host: str
    endpoint_id: str
    client: str  # the client's IP address
    opened_at: float  # time.time() when the app answered 101
    user: str | None = None  # who the gateway let through (user or SPIFFE ID)
    session_id: str | None = None  # the session it rode on: revoking it closes the tunnel
    device_serial: int | None = None  # the device certificate's serial: revoking it closes too


class Tunnel:
    """Copies bytes both ways until either side closes; then closes the other side."""

    __slots__ = ("client", "core", "info", "open", "upstream")

    def __init__(self, core: Core, client: ClientConnection, upstream: Upstream,
                 info: TunnelInfo) -> None:
        self.core = core
        self.client = client
        self.upstream = upstream
        self.info = info
        self.open = True
        core.tunnels[id(self)] = self
        core.tunnels_total += 1

    def to_client(self, data: bytes) -> None:
        transport = self.client.transport
        if transport is not None:
            transport.write(data)

    def to_upstream(self, data: bytes) -> None:
        transport = self.upstream.transport
        if transport is not None:
            transport.write(data)

    def close(self) -> None:
        """Close both sides (buffered bytes are still flushed). Idempotent."""
        if not self.open:
            return
        self.open = False
        self.core.tunnels.pop(id(self), None)
        self.upstream.close()
        self.client.close()
