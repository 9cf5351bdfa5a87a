"""The console's pages: a Starlette app that renders Jinja2 templates from the platform API.

Every page makes a few API reads concurrently (:meth:`ApiClient.gather`), so its server time is
that of its slowest read; per-app extras on the overview (sparkline, restarts) are fragments the
browser loads after the page, so the overview costs the same for 1 app or 50. Reads of optional
subsystems (APM, probes, alerts, deploy markers, the gateway's access API) go through
:meth:`ApiClient.optional`: a platform without them renders empty states, not errors.

Routes (HTML unless noted)::

    GET  /                          overview: every app across the lifecycle
    GET  /apps/{app}                charts with deploy markers, releases, instances, config, logs
    GET  /apps/{app}/spark          fragment: the overview row's p95 sparkline
    GET  /apps/{app}/restarts       fragment: the overview row's restart count
    GET  /apps/{app}/image          fragment: the overview row's OS base (stack, age, rebase)
    GET  /apps/{app}/instances      fragment: the instances table (polled during a rollback)
    GET  /apps/{app}/logs/stream    server-sent events: the live log tail (text/event-stream)
    GET  /apps/{app}/logs/search    fragment: log search (``q``, ``severity``)
    POST /apps/{app}/rollback       fragment: roll back (``version`` optional); htmx only
    GET  /deployments/{id}          fragment: a deploy marker's before/after comparison
    GET  /traces                    search (service, endpoint, min_ms, status, since), scatter
    GET  /traces/{trace_id}         waterfall, span details, linked logs
    GET  /services/{s}/correlations fragment: slow (``slow_ms``) and failed cohorts' attributes
    GET  /map                       service map
    GET  /uptime                    probes, alert rules and events
    GET  /status/{app}              the app's public status page, when published (standalone:
                                    no console links, no scripts; the default policy lets
                                    anyone GET ``/status``)
    GET  /access                    gateway decisions (``user``, ``app``, ``outcome``,
                                    ``route``, ``since``), trust scores per route, users, devices,
                                    certificates, policy history
    GET  /access/chain              fragment: the audit chain's verification (loaded after)
    GET  /healthz                   ``ok`` (text)

A POST must come from the console's own pages: it needs the ``HX-Request`` header (a cross-site
form cannot send it without a CORS preflight, which the console never grants) and a same-origin
``Sec-Fetch-Site`` when the browser sends one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from noops.console.client import ApiClient, ApiError, ApiUnavailableError, problems
from noops.console.views import (
    app_row,
    base_age_days,
    chart_series,
    expiry_text,
    iso_ns,
    map_layout,
    policy_edges,
    resource_series,
    restarts,
    score_bars,
    spark,
    trace_rows,
)
from noops.errors import NoopsError, UsageError

__all__ = ["make_console"]

_HERE = Path(__file__).parent
_SINCE = ("15m", "1h", "6h", "24h", "7d")
_OUTCOMES = ("allow", "deny", "step_up", "read_only", "login", "logout", "policy_applied",
             "trust_config_applied", "trust_config_rejected")
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_BY_INST = "noops.instance.id"

Handler = Callable[[Request], Awaitable[Response]]


def _since(request: Request, default: str = "15m") -> str:
    since = request.query_params.get("since") or default
    if since not in _SINCE:
        raise UsageError(f"since={since!r}: pick one of {', '.join(_SINCE)}")
    return since


def _float(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} must be a number") from None


def _seg(value: str) -> str:
    """``value`` as one URL path segment of an API call (never a way to another route)."""
    if value in ("", ".", ".."):
        raise UsageError(f"{value!r} is not an app or service name")
    return quote(value, safe="")


def make_console(api: ApiClient) -> Starlette:
    """The console app reading ``api``; closes it on shutdown."""
    env = Environment(loader=FileSystemLoader(_HERE / "templates"), autoescape=select_autoescape(),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson_attr"] = lambda v: json.dumps(v, separators=(",", ":"))
    env.filters["iso_ns"] = iso_ns
    env.filters["expiry"] = expiry_text

    def render(request: Request, name: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(
            request=request, path=request.url.path,
            problems=getattr(request.state, "problems", None) or [], **ctx)
        return HTMLResponse(html, status_code=status_code, headers=_SECURITY_HEADERS)

    def page(handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            request.state.problems = problems()
            try:
                return await handler(request)
            except NoopsError as exc:
                fragment = request.headers.get("hx-request") == "true"
                return render(request, "_error.html" if fragment else "error.html",
                              status_code=exc.http_status, message=str(exc))
        return wrapped

    async def overview(request: Request) -> Response:
        since = _since(request)
        apps, services, alerts, probes, access = await api.gather(
            api.get("/api/apps"), api.optional("/api/apm/services", since=since),
            api.optional("/api/alerts"), api.optional("/api/probes"),
            api.optional("/api/access/summary", since="1h"))
        stats = {s["service"]: s for s in services or []}
        rows = [app_row(a, stats.get(a["name"]), alerts or [], probes or [], access)
                for a in apps]
        return render(request, "overview.html", rows=rows, since=since, sinces=_SINCE,
                      apm=services is not None, other_services=sorted(
                          set(stats) - {a["name"] for a in apps}))

    async def row_spark(request: Request) -> Response:
        """Fragment: an overview row's p95 sparkline (loaded after the page, one read)."""
        seg = _seg(request.path_params["app"])
        series = await api.optional(f"/api/apm/services/{seg}/timeseries", since=_since(request))
        return render(request, "_spark.html", spark=spark(series or []))

    async def row_restarts(request: Request) -> Response:
        """Fragment: an overview row's restart count (loaded after the page, one read)."""
        ps = await api.optional(f"/api/apps/{_seg(request.path_params['app'])}/ps")
        return render(request, "_restarts.html", restarts=restarts(ps or []))

    async def row_image(request: Request) -> Response:
        """Fragment: an overview row's OS base: stack, distro, age, rebase available."""
        data = await api.optional(f"/api/apps/{_seg(request.path_params['app'])}/image")
        return render(request, "_image.html", image=data, age_days=base_age_days(data))

    async def app_page(request: Request) -> Response:
        name = request.path_params["app"]
        seg = _seg(name)
        since = _since(request)
        gauge = "/api/metrics/gauge/container.{}"
        (detail, releases, config, series, markers, stats, probes, cpu, memory) = await api.gather(
            api.get(f"/api/apps/{seg}"), api.get(f"/api/apps/{seg}/releases"),
            api.get(f"/api/apps/{seg}/config"),
            api.optional(f"/api/apm/services/{seg}/timeseries", since=since),
            api.optional("/api/deployments", service=name, limit=50),
            api.optional("/api/apm/services", since=since), api.optional("/api/probes", app=name),
            api.optional(gauge.format("cpu.utilization"), service=name, since=since, by=_BY_INST),
            api.optional(gauge.format("memory.usage"), service=name, since=since, by=_BY_INST))
        charts = chart_series(series or [])
        start = charts["x"][0] if charts["x"] else None
        marks = [m for m in markers or [] if start is None or m["at_epoch_s"] >= start - 60]
        mine = next((s for s in stats or [] if s["service"] == name), None)
        return render(request, "app.html", app=detail, releases=releases, config=config,
                      charts=charts, markers=marks, stats=mine, since=since, sinces=_SINCE,
                      probes=probes or [], active=(detail.get("release") or {}).get("version"),
                      usage=resource_series(cpu or [], memory or []))

    async def instances(request: Request) -> Response:
        """Fragment: the instances table (polled while a rollback rolls out)."""
        rows = await api.get(f"/api/apps/{_seg(request.path_params['app'])}/ps")
        return render(request, "_instances.html", instances=rows)

    async def logs_stream(request: Request) -> Response:
        name = request.path_params["app"]
        seg = _seg(name)
        await api.get(f"/api/apps/{seg}")  # a clear 404 before the stream starts

        async def events() -> AsyncIterator[bytes]:
            with contextlib.suppress(ApiError):
                async for line in api.stream_lines(f"/api/apps/{seg}/logs", follow="1",
                                                   lines="100"):
                    yield f"data: {line}\n\n".encode()
            yield b"event: end\ndata: the log stream ended\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def logs_search(request: Request) -> Response:
        name = request.path_params["app"]
        q = request.query_params
        rows = await api.get("/api/logs", service=name, q=q.get("q"), severity=q.get("severity"),
                             since=q.get("since", "24h"), limit=100)
        return render(request, "_logs.html", rows=rows, query=q.get("q", ""))

    async def rollback(request: Request) -> Response:
        if request.headers.get("hx-request") != "true" or request.headers.get(
                "sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise UsageError("a rollback must be started from the console's own page")
        name = request.path_params["app"]
        seg = _seg(name)
        form = parse_qs((await request.body()).decode(errors="replace"))
        version = (form.get("version") or [""])[0]
        body: dict[str, Any] = {}
        if version:
            if not version.isdigit():
                raise UsageError(f"version {version!r} must be a release number")
            body["version"] = int(version)
        result = await api.request("POST", f"/api/apps/{seg}/rollback", json=body)
        return render(request, "_rollback.html", app=name, result=result)

    async def deployment(request: Request) -> Response:
        marker = await api.get(f"/api/deployments/{request.path_params['id']}")
        return render(request, "_deployment.html", m=marker)

    async def traces(request: Request) -> Response:
        since = _since(request)
        q = request.query_params
        status = q.get("status") or ""
        if status not in ("", "ok", "error"):
            raise UsageError(f"status={status!r}: use ok or error")
        min_ms = _float(request, "min_ms")
        attr = (q.get("attr") or "").strip()
        if attr and "=" not in attr.strip("="):
            raise UsageError(f"attribute {attr!r}: write it as key=value, e.g. http.route=/pay")
        service = q.get("service") or ""
        search = {"endpoint": q.get("endpoint") or None, "status": status or None,
                  "min_ms": min_ms, "attr": attr or None}

        async def slowest(name: str) -> Any:
            return await api.get(f"/api/apm/services/{_seg(name)}/slowest", since=since,
                                 limit=_TRACES, **search)

        if service:  # both reads at once
            services, found = await api.gather(api.optional("/api/apm/services", since=since),
                                               slowest(service))
        else:
            services = await api.optional("/api/apm/services", since=since)
            service = services[0]["service"] if services else ""
            found = await slowest(service) if service else []
        rows = trace_rows(found)
        rows.sort(key=lambda r: r["timestamp_ns"])
        scatter = {"x": [r["timestamp_ns"] / 1e9 for r in rows],
                   "ids": [r["trace_id"] for r in rows],
                   "ok": [None if r["failed"] else r["duration_ms"] for r in rows],
                   "error": [r["duration_ms"] if r["failed"] else None for r in rows]}
        rows.reverse()
        mine = next((s for s in services or [] if s["service"] == service), None)
        return render(request, "traces.html", services=services or [], service=service,
                      rows=rows[:50], total=len(rows), limit=_TRACES, scatter=scatter,
                      since=since, sinces=_SINCE, status=status, min_ms=q.get("min_ms", ""),
                      endpoint=q.get("endpoint", ""), attr=attr, mine=mine)

    async def correlations(request: Request) -> Response:
        """Fragment: what the slow (``slow_ms``) and the failed requests have in common."""
        seg = _seg(request.path_params["service"])
        since = _since(request)
        slow_ms = _float(request, "slow_ms")
        both = await api.optional(f"/api/apm/services/{seg}/correlations", since=since,
                                  failed="1", **({"slow_ms": slow_ms} if slow_ms else {}))
        return render(request, "_correlations.html",
                      slow=[c for c in both or [] if c["cohort"] == "slow"],
                      failed=[c for c in both or [] if c["cohort"] == "failed"])

    async def trace(request: Request) -> Response:
        tree = await api.get(f"/api/traces/{_seg(request.path_params['trace_id'])}")
        return render(request, "trace.html", t=tree)

    async def service_map(request: Request) -> Response:
        since = _since(request)
        traced, calls = await api.gather(api.optional("/api/apm/map", since=since),
                                         api.optional("/api/access/calls", since=since))
        edges = policy_edges(traced or [], calls)
        return render(request, "map.html", layout=map_layout(edges), edges=edges, since=since,
                      sinces=_SINCE, policy_served=calls is not None)

    async def uptime(request: Request) -> Response:
        probes, alerts, events = await api.gather(
            api.optional("/api/probes"), api.optional("/api/alerts"),
            api.optional("/api/alerts/events", limit=50))
        results = await api.gather(*(api.get(f"/api/probes/{p['id']}/results", limit=60)
                                     for p in probes or []))
        cards = []
        for p, res in zip(probes or [], results, strict=True):
            ordered = list(reversed(res))
            ups = sum(1 for r in ordered if r["ok"])
            cards.append({"probe": p, "results": ordered,
                          "uptime_pct": round(100.0 * ups / len(ordered), 2) if ordered else None,
                          "chart": {"x": [r["at_epoch_s"] for r in ordered],
                                    "ms": [r["duration_ms"] for r in ordered]}})
        return render(request, "uptime.html", cards=cards, alerts=alerts or [],
                      events=events or [], probes_served=probes is not None)

    async def status_page(request: Request) -> Response:
        """Public: reads only the published page's figures; every failure looks the same from
        outside (no status page / unavailable), never the API's own message."""
        try:
            data = await api.get(f"/api/status-pages/{_seg(request.path_params['app'])}/page")
        except (ApiError, UsageError) as exc:
            missing = getattr(exc, "http_status", 400) in (400, 404)
            return render(request, "status.html", status_code=404 if missing else 503, s=None,
                          missing=missing)
        return render(request, "status.html", s=data)

    async def access(request: Request) -> Response:
        since = _since(request, "1h")
        q = request.query_params
        user, route = (q.get("user") or "").strip(), (q.get("route") or "").strip()
        app = (q.get("app") or "").strip()
        outcome = q.get("outcome") or ""
        if outcome and outcome not in _OUTCOMES:
            raise UsageError(f"outcome={outcome!r}: pick one of {', '.join(_OUTCOMES)}")
        decisions, scores, users, devices, certs, policy, history = await api.gather(
            _served(api.get("/api/access/audit", user=user, outcome=outcome, route=route,
                            app=app, since=since, limit=_DECISIONS)),
            api.optional("/api/access/scores", since=since), api.optional("/api/access/users"),
            api.optional("/api/access/devices"), api.optional("/api/access/certificates"),
            api.optional("/api/access/policy"), api.optional("/api/access/policy/history"))
        return render(request, "access.html", served=decisions is not None,
                      decisions=decisions or [], scores=score_bars(scores or []),
                      users=users or [], devices=devices or [],
                      certs=(certs or {}).get("certificates") or [],
                      trust_domain=(certs or {}).get("trust_domain"), policy=policy,
                      history=history or [], since=since, sinces=_SINCE, outcomes=_OUTCOMES,
                      user=user, app=app, outcome=outcome, route=route, limit=_DECISIONS)

    async def access_chain(request: Request) -> Response:
        """Fragment: the audit chain verified end to end (it reads the whole log, so the page
        loads it after itself)."""
        return render(request, "_chain.html", chain=await api.optional("/api/access/audit/verify"))

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await api.aclose()

    routes = [
        Route("/", page(overview)),
        Route("/apps/{app}", page(app_page)),
        Route("/apps/{app}/spark", page(row_spark)),
        Route("/apps/{app}/instances", page(instances)),
        Route("/apps/{app}/restarts", page(row_restarts)),
        Route("/apps/{app}/image", page(row_image)),
        Route("/apps/{app}/logs/stream", page(logs_stream)),
        Route("/apps/{app}/logs/search", page(logs_search)),
        Route("/apps/{app}/rollback", page(rollback), methods=["POST"]),
        Route("/deployments/{id:int}", page(deployment)),
        Route("/traces", page(traces)),
        Route("/traces/{trace_id}", page(trace)),
        Route("/services/{service}/correlations", page(correlations)),
        Route("/map", page(service_map)),
        Route("/uptime", page(uptime)),
        Route("/status/{app}", status_page),
        Route("/access", page(access)),
        Route("/access/chain", page(access_chain)),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


_DECISIONS = 50
_TRACES = 1000  # the traces page's search: the slowest this many matches


async def _served(call: Awaitable[Any]) -> Any:
    """``call``'s answer, or None when the route is not served (404/405): the page shows an
    empty state. Any other error (a bad filter: 400) is the page's error."""
    try:
        return await call
    except ApiUnavailableError:
        raise
    except ApiError as exc:
        if exc.http_status in (404, 405):
            return None
        raise
