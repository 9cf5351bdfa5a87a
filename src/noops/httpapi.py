"""What every HTTP API of noops shares (the daemon's, the telemetry, rules and access routes):
a failure is ``{"error": message, "kind": class name}`` with the ``NoopsError``'s
``http_status``, a request body is one JSON object, and a time window (``since``) is a
duration such as ``90s``, ``15m``, ``2h`` or ``7d`` ending now."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from noops.durations import parse_since
from noops.errors import NoopsError, UsageError

__all__ = ["Handler", "json_errors", "json_object", "parse_since"]

Handler = Callable[[Request], Awaitable[Response]]


def json_errors(handler: Handler) -> Handler:
    """``handler``, with a ``NoopsError`` answered as JSON with its HTTP status."""
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except NoopsError as exc:
            return JSONResponse({"error": str(exc), "kind": type(exc).__name__},
                                status_code=exc.http_status)
    return wrapped


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object; a ``UsageError`` (400) for anything else."""
    try:
        data = await request.json()
    except ValueError as exc:
        raise UsageError("the request body must be JSON") from exc
    if not isinstance(data, dict):
        raise UsageError("the request body must be a JSON object")
    return data
