"""HTTP routes for deploy markers, probes and alerts (JSON), mounted into the daemon API.

=======  ==============================  ====================================================
GET      /api/deployments                ``?service=&since=&limit=&compare=1`` newest first
POST     /api/deployments                ``{service, version, description?, fingerprint?,
                                         kind?, at?, attributes?}`` → 201, or 200 with
                                         ``"deduplicated": true`` for a repeat
GET      /api/deployments/{id}           one marker with its before/after ``comparison``
GET      /api/probes                     probes with their last result
POST     /api/probes                     ``{url, every?, expect_status?, expect_text?,
                                         json_path?, json_expect?, kind?, name?, app?,
                                         timeout?, tls_warn_days?}`` → 201
DELETE   /api/probes/{id}                remove a probe and its results
GET      /api/probes/{id}/results        ``?limit=`` newest first
GET      /api/alerts                     rules with their state
POST     /api/alerts                     ``{kind, service?, threshold?, endpoint?, probe_id?,
                                         for?, window?, min_requests?, webhooks?, name?}`` → 201
DELETE   /api/alerts/{id}                remove a rule (its events stay)
GET      /api/alerts/events              ``?alert=&limit=`` notifications, newest first
GET      /api/status-pages               published status pages
PUT      /api/status-pages/{app}         ``{title?}`` publish the app's public status page
DELETE   /api/status-pages/{app}         stop publishing it
GET      /api/status-pages/{app}/page    what the public page shows (404 when unpublished)
=======  ==============================  ====================================================

The status-page routes come from :func:`status_routes` (:class:`~noops.observe.status.StatusPages`).

Every error is ``{"error": message, "kind": ErrorClass}`` with the error's ``http_status``.
Every call into the rule objects (SQLite) and the store (DuckDB) runs in a worker thread, so
the event loop never waits on either.

Wiring (what the daemon does)::

    db = settings.home / "observe" / "rules.db"          # one SQLite file, WAL
    markers = DeployMarkers(db, store)
    probes = Probes(db, store, client_cert=(svid_crt, svid_key), ca_file=ca_bundle)
    alerts = Alerts(db, store, probes)
    routes += rules_routes(markers, probes, alerts)      # before any catch-all route
    stop = asyncio.Event()
    tasks = [probes.run_forever(stop), alerts.run_forever(stop, every_s=15)]
    # per release / config change / scale / rollback / rebase:
    markers.record(app, version, "deploy", fingerprint=f"{app}:{kind}:{version}", description=...)
    # per app, idempotent:
    probes.ensure(f"https://{app}.localhost:{port}/", name=f"{app} front door", app=app)
    # in the OTLP ingest path, per (service.name, service.version) of a batch:
    markers.observe_spans(service, version)
    # on shutdown: stop.set(); await the tasks; close() each of the three

Rewriting the certificate files (``Issued.write``) is enough for the prober to present a
renewed SVID on its next check; :meth:`Probes.set_tls` switches to other files.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from noops.httpapi import json_errors, json_object
from noops.observe._rules_common import RuleUsageError, epoch, parse_duration
from noops.observe.alerts import Alerts
from noops.observe.markers import DeployMarkers
from noops.observe.probes import Probes
from noops.observe.status import StatusPages

__all__ = ["rules_routes", "status_routes"]


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise RuleUsageError(f"{what} must be a whole number, not {value!r}") from exc


def _limit(request: Request, default: int = 100) -> int:
    limit = _int(request.query_params.get("limit", default), "limit")
    if not 1 <= limit <= 1000:
        raise RuleUsageError("limit must be between 1 and 1000")
    return limit


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RuleUsageError(f"{key!r} must be a string")
    return value


def _since(value: str | None) -> float | None:
    """``since`` as epoch seconds: ``2h`` (ago) or seconds since the epoch."""
    if not value:
        return None
    if value[-1].isalpha():
        return epoch(None) - parse_duration(value, "since")
    try:
        return float(value)
    except ValueError as exc:
        raise RuleUsageError(f"since {value!r} is neither a duration (2h) nor epoch seconds") from exc


def rules_routes(markers: DeployMarkers, probes: Probes, alerts: Alerts) -> list[BaseRoute]:
    """The routes above, bound to the daemon's three rule objects."""

    async def deployments(request: Request) -> Response:
        if request.method == "POST":
            body = await json_object(request)
            at = body.get("at")
            if at is not None and not isinstance(at, int | float):
                raise RuleUsageError("'at' must be seconds since the epoch")
            attributes = body.get("attributes")
            marker = await asyncio.to_thread(
                markers.record,
                str(body.get("service") or ""), str(body.get("version") or ""),
                str(body.get("kind") or "external"), at=at, source=str(body.get("source") or "api"),
                fingerprint=_text(body, "fingerprint"),
                description=_text(body, "description") or "", attributes=attributes)
            return JSONResponse(marker.to_json(), status_code=200 if marker.deduplicated else 201)
        q = request.query_params
        found = await asyncio.to_thread(markers.list, service=q.get("service") or None,
                                        since=_since(q.get("since")), limit=_limit(request, 50))
        out = [m.to_json() for m in found]
        if q.get("compare") in ("1", "true"):
            for item, marker in zip(out, found, strict=True):
                item["comparison"] = await asyncio.to_thread(markers.compare, marker)
        return JSONResponse(out)

    async def deployment(request: Request) -> Response:
        marker = await asyncio.to_thread(markers.get, _int(request.path_params["id"], "marker id"))
        window = parse_duration(request.query_params.get("window", "15m"), "window")
        comparison = await asyncio.to_thread(markers.compare, marker, timedelta(seconds=window))
        return JSONResponse({**marker.to_json(), "comparison": comparison})

    async def probe_list(request: Request) -> Response:
        if request.method == "POST":
            body = await json_object(request)
            options: dict[str, Any] = {}
            for key in ("every", "expect_status", "timeout", "tls_warn_days"):
                if body.get(key) is not None:
                    options[key] = body[key]
            for key in ("expect_text", "json_path", "kind", "name", "app"):
                if body.get(key) is not None:
                    options[key] = _text(body, key)
            if "json_expect" in body:
                options["json_expect"] = body["json_expect"]
            probe = await asyncio.to_thread(
                probes.add, str(body.get("url") or body.get("target") or ""), **options)
            return JSONResponse(probe.to_json(), status_code=201)
        def listing(app: str | None) -> list[dict[str, Any]]:
            out = []
            for probe in probes.list(app=app):
                last = probes.results(probe.id, limit=1)
                out.append({**probe.to_json(), "last": last[0].to_json() if last else None})
            return out

        return JSONResponse(await asyncio.to_thread(listing,
                                                    request.query_params.get("app") or None))

    async def probe_delete(request: Request) -> Response:
        probe_id = _int(request.path_params["id"], "probe id")
        await asyncio.to_thread(probes.remove, probe_id)
        return JSONResponse({"removed": probe_id})

    async def probe_results(request: Request) -> Response:
        probe_id = _int(request.path_params["id"], "probe id")
        results = await asyncio.to_thread(probes.results, probe_id, _limit(request))
        return JSONResponse([r.to_json() for r in results])

    async def alert_list(request: Request) -> Response:
        if request.method == "POST":
            body = await json_object(request)
            hooks = body.get("webhooks") or ([body["webhook"]] if body.get("webhook") else [])
            if not isinstance(hooks, list):
                raise RuleUsageError("'webhooks' must be a list of URLs")
            rule = await asyncio.to_thread(
                alerts.add,
                str(body.get("kind") or ""), _text(body, "service"),
                threshold=body.get("threshold"), endpoint=_text(body, "endpoint"),
                probe_id=None if body.get("probe_id") is None else _int(body["probe_id"], "probe_id"),
                for_=body.get("for") or "0s", window=body.get("window") or "5m",
                min_requests=_int(body.get("min_requests", 10), "min_requests"),
                webhooks=[str(h) for h in hooks], name=_text(body, "name"))
            return JSONResponse(rule.to_json(), status_code=201)
        return JSONResponse(await asyncio.to_thread(alerts.states))

    async def alert_delete(request: Request) -> Response:
        alert_id = _int(request.path_params["id"], "alert id")
        await asyncio.to_thread(alerts.remove, alert_id)
        return JSONResponse({"removed": alert_id})

    async def alert_events(request: Request) -> Response:
        alert = request.query_params.get("alert")
        return JSONResponse(await asyncio.to_thread(
            alerts.events, None if not alert else _int(alert, "alert"), _limit(request)))

    return [
        Route("/api/deployments", json_errors(deployments), methods=["GET", "POST"]),
        Route("/api/deployments/{id}", json_errors(deployment), methods=["GET"]),
        Route("/api/probes", json_errors(probe_list), methods=["GET", "POST"]),
        Route("/api/probes/{id}", json_errors(probe_delete), methods=["DELETE"]),
        Route("/api/probes/{id}/results", json_errors(probe_results), methods=["GET"]),
        Route("/api/alerts", json_errors(alert_list), methods=["GET", "POST"]),
        Route("/api/alerts/events", json_errors(alert_events), methods=["GET"]),
        Route("/api/alerts/{id}", json_errors(alert_delete), methods=["DELETE"]),
    ]


def status_routes(pages: StatusPages) -> list[BaseRoute]:
    """Publish, list and read public status pages (see the table above)."""

    async def page_list(_: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(pages.list))

    async def page_one(request: Request) -> Response:
        app = request.path_params["app"]
        if request.method == "PUT":
            body = await json_object(request)
            return JSONResponse(await asyncio.to_thread(pages.enable, app, _text(body, "title")))
        await asyncio.to_thread(pages.disable, app)
        return JSONResponse({"removed": app})

    async def page_view(request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(pages.page, request.path_params["app"]))

    return [
        Route("/api/status-pages", json_errors(page_list), methods=["GET"]),
        Route("/api/status-pages/{app}", json_errors(page_one), methods=["PUT", "DELETE"]),
        Route("/api/status-pages/{app}/page", json_errors(page_view), methods=["GET"]),
    ]
