"""Where the front door learns which instance sockets serve a host.

``gate`` owns the :class:`EndpointRegistry` Protocol; the runtime implements it and the daemon
hands it to :class:`noops.gate.proxy.FrontDoor` (``gate`` never imports ``runtime``).
:class:`StaticEndpointRegistry` is the in-memory implementation the tests and the daemon use.

Host matching is exact: the proxy passes :func:`normalize_host` of the request's ``Host``
(lower-cased, port stripped, nothing else: a trailing dot or a look-alike name is a different,
usually unknown, host). ``APP.localhost`` names are ordinary hosts the registry knows.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from noops.gate._errors import GateError

__all__ = ["Endpoint", "EndpointRegistry", "StaticEndpointRegistry", "normalize_host"]

# reg-name (letters, digits, "-", ".", "_", "~"), an IPv4 address, or a bracketed IPv6 literal;
# then an optional port. No userinfo, no percent-encoding: anything else is a 400.
_HOST_RE = re.compile(r"(?:[a-z0-9\-._~]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")


def normalize_host(raw: str) -> str | None:
    """Return the routing key of a ``Host`` value (lower-cased, port removed), or None if invalid.

    ``"App.LocalHost:8443"`` -> ``"app.localhost"``; ``"[::1]:8443"`` -> ``"[::1]"``. An empty
    value, userinfo (``a@b``), spaces or any other character outside reg-name / IP literal syntax
    give None, which the proxy answers with 400.
    """
    host = raw.strip().lower()
    if not _HOST_RE.fullmatch(host):
        return None
    if host.startswith("["):
        return host[: host.index("]") + 1]
    colon = host.find(":")
    return host if colon < 0 else host[:colon]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One app instance, reachable only through the Unix socket the platform owns.

    ``ready`` comes from the readiness probe; ``draining`` marks an instance on its way out: it
    gets no new request, but requests already sent to it finish. Only ``ready and not draining``
    endpoints receive traffic. ``id`` is unique among all endpoints (the proxy keys its
    connection pools and counters by ``socket_path``, its tunnels by ``id``). ``spiffe_id`` is
    the identity the instance must prove when the front door dials it over mTLS (empty: none
    pinned, and an mTLS front door refuses to dial it).
    """

    id: str
    app: str
    socket_path: str
    ready: bool = True
    draining: bool = False
    spiffe_id: str = ""

    @property
    def routable(self) -> bool:
        """True when the proxy may send a new request here."""
        return self.ready and not self.draining


class EndpointRegistry(Protocol):
    """The routing table the front door reads on every request.

    Contract:

    * ``endpoints(host)`` is called on the proxy's event-loop thread for every request, so it
      must not block or do I/O (a dict lookup). ``host`` is already normalised
      (:func:`normalize_host`). It returns every endpoint of the app serving that host, routable
      or not, in a stable order, as a snapshot: the caller may keep it, the registry must not
      mutate it afterwards (publish a new sequence instead). An unknown host gives ``()``.
    * ``knows(host)`` is only asked when ``endpoints`` returned nothing, to tell an unknown host
      (404) from an app that currently has no instance (503).
    * Updates may come from any thread; a reader sees either the old or the new table of an app,
      never a mix.
    """

    def endpoints(self, host: str) -> Sequence[Endpoint]:
        """Every endpoint of the app that serves ``host`` (normalised), or ``()``."""
        ...

    def knows(self, host: str) -> bool:
        """True when ``host`` belongs to an app, even one with no endpoint right now."""
        ...


class StaticEndpointRegistry:
    """Thread-safe in-memory :class:`EndpointRegistry`.

    Writers (:meth:`set`, :meth:`remove`) serialise on a lock and publish a fresh host table
    (copy-on-write); readers do one dict lookup without locking, so the proxy never waits on a
    writer. A host belongs to at most one app.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_host: dict[str, tuple[Endpoint, ...]] = {}
        self._apps: dict[str, tuple[tuple[str, ...], tuple[Endpoint, ...]]] = {}

    def set(self, app: str, hosts: Iterable[str], endpoints: Iterable[Endpoint]) -> None:
        """Make ``hosts`` route to ``endpoints`` of ``app``, replacing what ``app`` had.

        Raises :class:`GateError` (nothing changed) when a host is invalid or served by another
        app, or an endpoint belongs to another app.
        """
        eps = tuple(endpoints)
        keys: list[str] = []
        for raw in hosts:
            key = normalize_host(raw)
            if key is None or key != raw.strip().lower():
                raise GateError(f"{raw!r} is not a valid host name for app {app!r}; "
                                "use a bare DNS name such as APP.localhost (no port, no scheme).")
            keys.append(key)
        for ep in eps:
            if ep.app != app:
                raise GateError(f"endpoint {ep.id!r} belongs to app {ep.app!r}, not {app!r}.")
        with self._lock:
            for key in keys:
                owner = self._owner(key)
                if owner is not None and owner != app:
                    raise GateError(f"host {key!r} already routes to app {owner!r}; "
                                    f"remove it there before giving it to {app!r}.")
            table = dict(self._by_host)
            old = self._apps.get(app)
            if old is not None:
                for key in old[0]:
                    table.pop(key, None)
            for key in keys:
                table[key] = eps
            self._apps = {**self._apps, app: (tuple(keys), eps)}
            self._by_host = table

    def remove(self, app: str) -> None:
        """Forget ``app`` and its hosts (they answer 404 afterwards). Unknown apps are ignored."""
        with self._lock:
            old = self._apps.get(app)
            if old is None:
                return
            table = dict(self._by_host)
            for key in old[0]:
                table.pop(key, None)
            self._apps = {name: v for name, v in self._apps.items() if name != app}
            self._by_host = table

    def apps(self) -> dict[str, tuple[tuple[str, ...], tuple[Endpoint, ...]]]:
        """A snapshot: app -> (hosts, endpoints)."""
        return dict(self._apps)

    def endpoints(self, host: str) -> Sequence[Endpoint]:
        return self._by_host.get(host, ())

    def knows(self, host: str) -> bool:
        return host in self._by_host

    def _owner(self, host: str) -> str | None:
        for name, (hosts, _eps) in self._apps.items():
            if host in hosts:
                return name
        return None
