"""The platform's HTTP API (JSON), served by the daemon on ``$NOOPS_HOME/noops.sock``.

Routes (every error is ``{"error": message}`` with the error's HTTP status):

=======  =====================================  ============================================
GET      /api/health                             the daemon is up
GET      /api/apps                               apps with their active release
POST     /api/apps                               ``{"name"}`` → create
GET      /api/apps/{app}                         one app: release, instances, url
POST     /api/apps/{app}/deploy                  ``{"image"}`` or ``{"path"}`` (built first)
GET      /api/apps/{app}/releases                releases, newest first
GET      /api/apps/{app}/image                   the active image: stack, distro, base release
                                                 date, ``rebase_available``
POST     /api/apps/{app}/rollback                ``{"version"}`` (optional)
GET      /api/apps/{app}/config                  config vars and secret *names*
PATCH    /api/apps/{app}/config                  ``{"set": {}, "unset": []}`` → new release
PATCH    /api/apps/{app}/secrets                 same, for secrets (values never returned)
GET      /api/apps/{app}/ps                      instances with health and restarts
POST     /api/apps/{app}/scale                   ``{"web": 3}`` → new release
GET      /api/apps/{app}/logs                    ``?process=&lines=&follow=1`` (text stream)
GET      /api/apps/{app}/export/kubernetes       manifests (JSON list)
POST     /api/gc                                 remove unpinned images and layers
GET      /api/events                             ``?app=&since=`` platform events
GET      /metrics                                the platform's metrics, Prometheus text format
=======  =====================================  ============================================

The gateway's read-only access API (``/api/access/…``: audit decisions, trust scores, the
Safety summary, users, devices, certificates, policy; :mod:`noops.gate.api`) reads
``$NOOPS_HOME/gate``.

Telemetry routes come from :meth:`noops.observe.service.Telemetry.routes`: the APM API
(``/api/apm/…``, ``/api/traces/{id}``, ``/api/logs``; :mod:`noops.observe.api`) and deploy
markers, probes and alerts (``/api/deployments``, ``/api/probes``, ``/api/alerts``;
:mod:`noops.observe.rules_api`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from noops.daemon import Platform, release_json
from noops.errors import UsageError
from noops.gate.api import access_routes
from noops.gate.pep import GateFiles
from noops.httpapi import json_errors, json_object

__all__ = ["make_app"]


def make_app(platform: Platform) -> Starlette:
    state = platform.state
    port = platform.settings.get("frontdoor_port")

    async def health(_: Request) -> Response:
        return JSONResponse({"ok": True, "pid": __import__("os").getpid()})

    async def apps(request: Request) -> Response:
        if request.method == "POST":
            body = await json_object(request)
            app = state.create_app(platform.check_app_name(str(body.get("name", ""))))
            return JSONResponse({"name": app.name}, status_code=201)
        out = []
        for app in state.apps():
            rel = state.active_release(app.name)
            slots = platform.supervisor.for_app(app.name)
            out.append({"name": app.name, "release": release_json(rel) if rel else None,
                        "instances": len(slots), "ready": sum(1 for s in slots if s.ready),
                        "url": f"https://{app.name}.localhost:{port}/"})
        return JSONResponse(out)

    async def app_detail(request: Request) -> Response:
        name = request.path_params["app"]
        state.app(name)
        rel = state.active_release(name)
        return JSONResponse({"name": name, "release": release_json(rel) if rel else None,
                             "instances": [s.to_json() for s in platform.supervisor.for_app(name)],
                             "url": f"https://{name}.localhost:{port}/"})

    async def image(request: Request) -> Response:
        """The active release's image: stack, distro, base release date, rebase available."""
        from noops.build.inspect import freshness

        name = request.path_params["app"]
        state.app(name)
        rel = state.active_release(name)
        if rel is None:
            raise UsageError(f"{name} has no release yet: deploy it first")
        data = await asyncio.to_thread(freshness, platform.store, rel.image_digest)
        return JSONResponse({"app": name, "release": rel.version, "image": rel.image_ref, **data})

    async def deploy(request: Request) -> Response:
        name = request.path_params["app"]
        body = await json_object(request)
        state.app(name)
        spec = None
        if body.get("path"):
            from noops.appspec import load_appspec
            from noops.build.lifecycle import build_image

            path = Path(str(body["path"]))
            report = await asyncio.to_thread(build_image, platform.settings, path,
                                             tag=f"{name}:latest")
            image = report.name
            spec = load_appspec(path)
        elif body.get("image"):
            image = str(body["image"])
        else:
            raise UsageError("deploy needs {\"image\": NAME} or {\"path\": FOLDER}")
        result = await platform.release_image(name, image, spec=spec,
                                              description=str(body.get("description", "")))
        return JSONResponse(result.to_json())

    async def releases(request: Request) -> Response:
        name = request.path_params["app"]
        return JSONResponse([release_json(r) for r in state.releases(name)])

    async def rollback(request: Request) -> Response:
        body = await json_object(request) if await request.body() else {}
        version = body.get("version")
        result = await platform.rollback(request.path_params["app"],
                                         int(version) if version is not None else None)
        return JSONResponse(result.to_json())

    async def config(request: Request) -> Response:
        name = request.path_params["app"]
        if request.method == "PATCH":
            body = await json_object(request)
            result = await platform.change_config(
                name, set_={str(k): str(v) for k, v in (body.get("set") or {}).items()},
                unset=[str(k) for k in body.get("unset") or []])
            if result is None:
                return JSONResponse({"changed": False})
            return JSONResponse({"changed": True, **result.to_json()})
        return JSONResponse({"config": state.config(name), "secrets": state.secret_keys(name),
                             "version": state.config_version(name)})

    async def secrets(request: Request) -> Response:
        name = request.path_params["app"]
        body = await json_object(request)
        result = await platform.change_config(
            name, set_={str(k): str(v) for k, v in (body.get("set") or {}).items()},
            unset=[str(k) for k in body.get("unset") or []], secrets=True)
        return JSONResponse({"changed": result is not None, "secrets": state.secret_keys(name),
                             **(result.to_json() if result else {})})

    async def ps(request: Request) -> Response:
        name = request.path_params["app"]
        state.app(name)
        return JSONResponse([s.to_json() for s in platform.supervisor.for_app(name)])

    async def scale(request: Request) -> Response:
        body = await json_object(request)
        counts = {}
        for k, v in body.items():
            if not isinstance(v, int) or isinstance(v, bool):
                raise UsageError(f"{k}: the count must be a whole number")
            counts[str(k)] = v
        result = await platform.scale(request.path_params["app"], counts)
        return JSONResponse(result.to_json())

    async def logs(request: Request) -> Response:
        name = request.path_params["app"]
        state.app(name)
        process = request.query_params.get("process")
        lines = int(request.query_params.get("lines", "100"))
        follow = request.query_params.get("follow") in ("1", "true")
        log_dir = platform.settings.home / "logs" / name
        files = sorted((p for p in log_dir.glob("*.log")
                        if not process or p.name.startswith(f"{process}-")),
                       key=lambda p: p.stat().st_mtime)

        async def stream() -> AsyncIterator[bytes]:
            records: list[tuple[str, str]] = []
            for path in files:
                label = path.name.removesuffix(".log")
                records += [(line, label) for line in path.read_text(errors="replace").splitlines()]
            records.sort(key=lambda r: r[0][:24])
            for line, label in records[-lines:]:
                yield f"{label} {line}\n".encode()
            if not follow:
                return
            offsets = {p: p.stat().st_size for p in files}
            while True:
                await asyncio.sleep(0.3)
                for path in sorted(log_dir.glob("*.log")):
                    if process and not path.name.startswith(f"{process}-"):
                        continue
                    size = path.stat().st_size
                    start = offsets.get(path, 0)
                    if size < start:
                        start = 0
                    if size > start:
                        with open(path, "rb") as fh:
                            fh.seek(start)
                            chunk = fh.read(size - start).decode(errors="replace")
                        offsets[path] = size
                        label = path.name.removesuffix(".log")
                        for line in chunk.splitlines():
                            yield f"{label} {line}\n".encode()

        return StreamingResponse(stream(), media_type="text/plain")

    async def export_k8s(request: Request) -> Response:
        from noops.runtime.kubernetes import ReleaseInfo, export_manifests

        name = request.path_params["app"]
        rel = state.active_release(name)
        if rel is None:
            raise UsageError(f"{name} has no release yet; deploy it first")
        image = request.query_params.get("image") or rel.image_ref
        if "@" not in image:
            raise UsageError("Kubernetes needs a pushed image: push the release with "
                             "`noops push` and pass --image REGISTRY/NAME@sha256:…")
        info = ReleaseInfo(name, rel.version, image, platform._spec_of(rel), state.config(name),
                           tuple(state.secret_keys(name)))
        return JSONResponse(export_manifests(info, domain=request.query_params.get("domain")))

    async def gc(_: Request) -> Response:
        return JSONResponse(await platform.collect_garbage())

    async def events(request: Request) -> Response:
        app = request.query_params.get("app")
        since = int(request.query_params.get("since", "0"))
        return JSONResponse([{"id": e.id, "app": e.app, "kind": e.kind, "message": e.message,
                              "data": e.data, "at": str(e.created_at)}
                             for e in state.events(app, since_id=since)])

    routes = [
        Route("/metrics", platform.telemetry.metrics_endpoint),
        Route("/api/health", json_errors(health)),
        Route("/api/apps", json_errors(apps), methods=["GET", "POST"]),
        Route("/api/apps/{app}", json_errors(app_detail)),
        Route("/api/apps/{app}/deploy", json_errors(deploy), methods=["POST"]),
        Route("/api/apps/{app}/releases", json_errors(releases)),
        Route("/api/apps/{app}/image", json_errors(image)),
        Route("/api/apps/{app}/rollback", json_errors(rollback), methods=["POST"]),
        Route("/api/apps/{app}/config", json_errors(config), methods=["GET", "PATCH"]),
        Route("/api/apps/{app}/secrets", json_errors(secrets), methods=["PATCH"]),
        Route("/api/apps/{app}/ps", json_errors(ps)),
        Route("/api/apps/{app}/scale", json_errors(scale), methods=["POST"]),
        Route("/api/apps/{app}/logs", json_errors(logs)),
        Route("/api/apps/{app}/export/kubernetes", json_errors(export_k8s)),
        Route("/api/gc", json_errors(gc), methods=["POST"]),
        Route("/api/events", json_errors(events)),
        *platform.telemetry.routes(),
        *access_routes(GateFiles(platform.settings.home / "gate"), ca=platform.ca,
                       workloads=platform.issued_certificates, hosts=platform.route_hosts,
                       frontdoor=("127.0.0.1", int(port))),
    ]
    return Starlette(routes=routes)
