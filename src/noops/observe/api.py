"""The APM, trace and log HTTP API (JSON), mounted into the daemon's API by :func:`apm_routes`.

Every route is ``GET``; every error is ``{"error": message, "kind": …}`` with the error's HTTP
status (bad input 400, unknown trace 404, store failure 503). ``since`` is a duration such as
``90s``, ``15m``, ``2h`` or ``7d`` (default ``15m``) ending now.

=====================================================  ======================================
/api/apm/services?since=                               per service: rate, error %, p50/p95/p99
                                                       (``estimated``: see below)
/api/apm/services/{service}/endpoints?since=&max=      ``{"endpoints": […], "warning": …}``
/api/apm/services/{service}/histogram?endpoint=&le=    latency bins (``le`` = ``5,10,50`` ms)
/api/apm/services/{service}/slowest?since=&limit=      slowest entry spans (traces), search:
  &endpoint=&status=error|ok&min_ms=&attr=k=v          name contains, status, duration,
                                                       span/resource attribute (repeatable)
/api/apm/services/{service}/timeseries?endpoint=       per-minute count/errors/percentiles
/api/apm/services/{service}/errors?since=&limit=       error groups
/api/apm/services/{service}/correlations?endpoint=     ``&slow_ms=N`` and/or ``&failed=1``
/api/apm/map?since=                                    service-map edges (calls, errors, mTLS)
/api/apm/errors?since=&limit=                          error groups of every service
/api/traces/{trace_id}                                 waterfall + linked logs
/api/logs?q=&service=&severity=&trace_id=&span_id=     log records, newest first
  &attr=k=v (repeatable)&since=&limit=
/api/metrics/gauge/{metric}?service=&by=&step=&since=  gauge avg/max per ``step`` s and per
                                                       value of attribute ``by``
=====================================================  ======================================

Gauges the platform writes for every instance: ``container.cpu.utilization`` (0…1 of its CPU
limit) and ``container.memory.usage`` (bytes), ``by=noops.instance.id``; probes write
``noops.probe.up`` and ``noops.probe.duration_ms`` (``by=probe.name``). ``step`` defaults to
the window divided into about 120 points (at least 10 s).

``/api/apm/services`` counts exactly; its percentiles are exact while the window holds at most
:data:`~noops.observe.store.base.EXACT_PERCENTILES_MAX` entry spans, above that estimated from
the minute rollup (within ±4.4 %) and every row says ``"estimated": true``.

Store calls block (DuckDB, chdb), so each runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from noops.errors import UsageError
from noops.httpapi import json_errors, parse_since
from noops.observe.store import TelemetryStore
from noops.observe.waterfall import load_waterfall

__all__ = ["DEFAULT_HISTOGRAM_MS", "apm_routes", "parse_since"]

DEFAULT_HISTOGRAM_MS: Final = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
                               2500.0, 5000.0, 10000.0)
_MAX_LIMIT: Final = 10_000


def _window(request: Request) -> tuple[datetime, datetime]:
    end = datetime.now(UTC)
    return end - parse_since(request.query_params.get("since", "15m")), end


def _int(request: Request, name: str, default: int, lo: int = 1, hi: int = _MAX_LIMIT) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} must be a whole number") from None
    if not lo <= value <= hi:
        raise UsageError(f"{name}={value} must be between {lo} and {hi}")
    return value


def _attributes(request: Request) -> dict[str, str] | None:
    """``attr=KEY=VALUE`` parameters (repeatable)."""
    attributes: dict[str, str] = {}
    for item in request.query_params.getlist("attr"):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"attr={item!r} is not KEY=VALUE")
        if key in attributes:
            raise UsageError(f"attr {key!r} is given twice: a request carries one value of it")
        attributes[key] = value
    return attributes or None


def _float(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name) or None
    try:
        value = None if raw is None else float(raw)
    except ValueError:
        value = math.nan
    if value is not None and not math.isfinite(value):
        raise UsageError(f"{name}={raw!r} must be a number")
    return value


def _floats(raw: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{name}={raw!r} must be comma-separated numbers (ms)") from None
    if not values or values != sorted(values) or len(set(values)) != len(values) \
            or not all(math.isfinite(v) for v in values):
        raise UsageError(f"{name}={raw!r} must be ascending, distinct, finite numbers (ms)")
    return values


def _json(data: Any) -> Any:
    """JSON has no infinity: the open last histogram bin's bound becomes ``null``."""
    if isinstance(data, float) and math.isinf(data):
        return None
    if isinstance(data, list):
        return [_json(v) for v in data]
    if isinstance(data, dict):
        return {k: _json(v) for k, v in data.items()}
    return data


def apm_routes(store: TelemetryStore) -> list[BaseRoute]:
    """The routes above, reading ``store``; mount them into a Starlette app's route list."""

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> JSONResponse:
        return JSONResponse(_json(await asyncio.to_thread(fn, *args, **kwargs)))

    async def services(request: Request) -> Response:
        return await call(store.services, *_window(request))

    async def endpoints(request: Request) -> Response:
        service = request.path_params["service"]
        limit = _int(request, "max", 200, lo=2)
        rows = await asyncio.to_thread(store.endpoints, service, *_window(request),
                                       max_endpoints=limit)
        folded = sum(r["folded"] for r in rows)
        warning = (f"{service} has {len(rows) - 1 + folded} distinct span names in this window, "
                   f"more than {limit}: the {folded} least busy are folded into 'other'. Name "
                   "spans by route template (/users/{id}), not by URL."
                   if folded else None)
        return JSONResponse({"service": service, "endpoints": _json(rows), "warning": warning})

    async def histogram(request: Request) -> Response:
        bounds = _floats(request.query_params["le"], "le") if "le" in request.query_params \
            else list(DEFAULT_HISTOGRAM_MS)
        return await call(store.latency_histogram, request.path_params["service"],
                          request.query_params.get("endpoint"), *_window(request), bounds)

    async def slowest(request: Request) -> Response:
        params = request.query_params
        return await call(store.slowest_traces, request.path_params["service"],
                          *_window(request), limit=_int(request, "limit", 20),
                          endpoint=params.get("endpoint") or None,
                          status=params.get("status") or None, min_ms=_float(request, "min_ms"),
                          attributes=_attributes(request))

    async def timeseries(request: Request) -> Response:
        return await call(store.timeseries, request.path_params["service"], *_window(request),
                          endpoint=request.query_params.get("endpoint"))

    async def errors(request: Request) -> Response:
        start, end = _window(request)
        return await call(store.error_groups, start, end,
                          service=request.path_params.get("service"),
                          limit=_int(request, "limit", 50))

    async def correlations(request: Request) -> Response:
        params = request.query_params
        return await call(store.correlations, request.path_params["service"],
                          params.get("endpoint"), *_window(request),
                          slow_ms=_float(request, "slow_ms"),
                          failed=params.get("failed") in ("1", "true"),
                          limit=_int(request, "limit", 10))

    async def service_map(request: Request) -> Response:
        return await call(store.service_map, *_window(request))

    async def trace(request: Request) -> Response:
        trace_id = request.path_params["trace_id"]
        if not re.fullmatch(r"[0-9a-fA-F]{32}", trace_id):
            raise UsageError(f"{trace_id!r} is not a trace id (32 hex digits)")
        return await call(load_waterfall, store, trace_id.lower())

    async def logs(request: Request) -> Response:
        params = request.query_params
        start, end = _window(request)
        return await call(store.logs, query=params.get("q") or None,
                          service=params.get("service") or None,
                          severity=params.get("severity") or None, start=start, end=end,
                          trace_id=(params.get("trace_id") or "").lower() or None,
                          span_id=(params.get("span_id") or "").lower() or None,
                          attributes=_attributes(request), limit=_int(request, "limit", 100))

    async def gauge(request: Request) -> Response:
        start, end = _window(request)
        auto = max(10, math.ceil((end - start).total_seconds() / 120))
        params = request.query_params
        return await call(store.gauge_series, request.path_params["metric"], start, end,
                          service=params.get("service") or None, by=params.get("by") or None,
                          step_s=_int(request, "step", auto, hi=86_400))

    svc = "/api/apm/services/{service}"
    return [
        Route("/api/apm/services", json_errors(services)),
        Route(f"{svc}/endpoints", json_errors(endpoints)),
        Route(f"{svc}/histogram", json_errors(histogram)),
        Route(f"{svc}/slowest", json_errors(slowest)),
        Route(f"{svc}/timeseries", json_errors(timeseries)),
        Route(f"{svc}/errors", json_errors(errors)),
        Route(f"{svc}/correlations", json_errors(correlations)),
        Route("/api/apm/map", json_errors(service_map)),
        Route("/api/apm/errors", json_errors(errors)),
        Route("/api/traces/{trace_id}", json_errors(trace)),
        Route("/api/logs", json_errors(logs)),
        Route("/api/metrics/gauge/{metric}", json_errors(gauge)),
    ]
