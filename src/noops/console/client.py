"""The console's only way to the platform: the daemon's public HTTP API on a Unix socket.

:class:`ApiClient` is a thin async wrapper over ``httpx`` with a UDS transport. Every read the
pages make goes through :meth:`ApiClient.get` (JSON, or :class:`ApiError` carrying the API's own
message and status) or :meth:`ApiClient.optional` (``None`` when a subsystem's routes are not
mounted, so a page can render an empty state instead of failing). :meth:`ApiClient.gather` runs
several reads concurrently: a page's server time is that of its slowest read, not their sum.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from noops.errors import NoopsError

__all__ = ["ApiClient", "ApiError", "ApiUnavailableError", "problems"]

_TIMEOUT_S = 30.0
_PROBLEMS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("problems",
                                                                              default=None)


def problems() -> list[str]:
    """A fresh list that collects, for the current request (its context and the tasks it
    starts), what :meth:`ApiClient.optional` left out because a served route failed."""
    found: list[str] = []
    _PROBLEMS.set(found)
    return found


class ApiError(NoopsError):
    """The platform API answered with an error; the message is the API's own."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.http_status = status


class ApiUnavailableError(ApiError):
    """The daemon's socket does not answer (``noops up`` not running, or a wrong ``--home``)."""

    def __init__(self, socket_path: Path, exc: Exception) -> None:
        super().__init__(f"the platform API at {socket_path} does not answer ({exc}); start it "
                         "with `noops up` (and pass the same --home to the console)", 503)


class ApiClient:
    """Reads the platform API on ``socket_path``. Use as an async context manager, or call
    :meth:`aclose`. Safe to share between concurrent requests."""

    def __init__(self, socket_path: Path, *, timeout_s: float = _TIMEOUT_S) -> None:
        self.socket_path = socket_path
        transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
        self._http = httpx.AsyncClient(transport=transport, base_url="http://noops",
                                       timeout=timeout_s)

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                      json: Any = None) -> Any:
        """One API call; the decoded JSON body, or :class:`ApiError` with the API's message."""
        try:
            resp = await self._http.request(method, path, params=params, json=json)
        except httpx.TransportError as exc:
            raise ApiUnavailableError(self.socket_path, exc) from exc
        if resp.status_code >= 400:
            try:
                message = str(resp.json().get("error") or resp.text)
            except ValueError:
                message = resp.text or resp.reason_phrase
            raise ApiError(f"{method} {path}: {message}", resp.status_code)
        try:
            return resp.json()
        except ValueError as exc:
            raise ApiError(f"{method} {path} did not answer JSON", 502) from exc

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params={k: v for k, v in params.items()
                                                       if v is not None and v != ""})

    async def optional(self, path: str, **params: Any) -> Any:
        """Like :meth:`get`, but ``None`` when the route is not served (404/405) or answers an
        error: an empty state on the page, never a failed page. An error other than "not
        served" is also added to the request's :func:`problems`, so the page can say that part
        of it is missing and why. An unreachable daemon still raises :class:`ApiUnavailableError`."""
        try:
            return await self.get(path, **params)
        except ApiUnavailableError:
            raise
        except ApiError as exc:
            found = _PROBLEMS.get()
            if exc.http_status not in (404, 405) and found is not None and str(exc) not in found:
                found.append(str(exc))
            return None

    async def gather(self, *calls: Any) -> list[Any]:
        """Await the given coroutines concurrently; results in order."""
        return list(await asyncio.gather(*calls))

    async def stream_lines(self, path: str, **params: Any) -> AsyncIterator[str]:
        """The lines of a streamed text response (``/api/apps/{app}/logs?follow=1``)."""
        try:
            async with self._http.stream("GET", path, params=params, timeout=None) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise ApiError(f"GET {path}: {resp.text}", resp.status_code)
                async for line in resp.aiter_lines():
                    yield line
        except httpx.TransportError as exc:
            raise ApiUnavailableError(self.socket_path, exc) from exc
