"""The console against a real platform: ``noops up -d`` with the Flask example deployed twice,
plus the observe routes (APM, deploy markers, probes, alerts) over a real DuckDB store filled with
OpenTelemetry SDK spans, all behind one Unix socket the console reads; the console runs as its own
process (``python -m noops.console``) and Debian's Chromium drives it through Playwright.

The daemon on this branch does not mount the observe routes yet, so :func:`api` serves them itself
(``apm_routes`` + ``rules_routes``, as the daemon will) and forwards every other ``/api`` call to
the daemon's own socket. When the daemon serves them, point the console at
``$NOOPS_HOME/noops.sock`` directly.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from console_harness import APP, CHROMIUM, CHROMIUM_ARGS, FAST_TOML, Api, Console, Platform
from console_traffic import record_traffic
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from helpers import EXAMPLES, free_port, wait_http
from noops.observe.alerts import Alerts
from noops.observe.api import apm_routes
from noops.observe.markers import DeployMarkers
from noops.observe.probes import Probes
from noops.observe.rules_api import rules_routes
from noops.observe.store import DuckDBStore


def _flask(tmp: Path, version: str) -> Path:
    app = tmp / f"flask-{version}"
    shutil.copytree(EXAMPLES / "flask", app)
    (app / "noops.toml").write_text(FAST_TOML)
    source = (app / "app.py").read_text()
    (app / "app.py").write_text(source.replace('VERSION = "1.0.0"', f'VERSION = "{version}"'))
    return app


@pytest.fixture(scope="session")
def platform(noops_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """``noops up -d`` on a home of its own (sharing the machine's image store) with ``shop``
    deployed at 1.0.0 then 2.0.0 (releases v1 and v2)."""
    home = tmp_path_factory.mktemp("console-home")
    for shared in ("images", "layers", "cache"):
        (noops_home / shared).mkdir(parents=True, exist_ok=True)
        (home / shared).symlink_to(noops_home / shared)
    env = dict(os.environ, NOOPS_HOME=str(home), NOOPS_FRONTDOOR_PORT=str(free_port()),
               NOOPS_RESTART_BACKOFF_S="1", NOOPS_OTLP_PORT=str(free_port()),
               NOOPS_OTLP_GRPC_PORT="0")
    env.pop("SOURCE_DATE_EPOCH", None)
    p = Platform(home, env)
    policy = home / "open-policy.toml"
    policy.write_text('[[route]]\nid = "open"\nhost = "*.localhost"\nauthenticated = false\n')
    p.noops("policy", "apply", str(policy))
    p.noops("up", "-d")
    try:
        p.noops("apps", "create", APP)
        src = tmp_path_factory.mktemp("src")
        p.noops("deploy", str(_flask(src, "1.0.0")), "--app", APP)
        p.noops("config", "set", APP, "COLOR=blue")
        p.noops("secrets", "set", APP, "API_TOKEN=console-test-secret-value")
        p.noops("deploy", str(_flask(src, "2.0.0")), "--app", APP)
        yield p
    finally:
        p.noops("down", "--apps", check=False)


def _proxy_to(daemon_socket: Path) -> Route:
    """Every other ``/api`` call goes to the daemon, streamed (the log tail is a stream)."""

    async def forward(request: Request) -> Response:
        client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(daemon_socket)),
                                   base_url="http://noops", timeout=None)
        upstream = client.build_request(
            request.method, request.url.path, params=request.query_params,
            content=await request.body(),
            headers={"content-type": request.headers.get("content-type", "application/json")})
        resp = await client.send(upstream, stream=True)

        async def close() -> None:
            await resp.aclose()
            await client.aclose()

        return StreamingResponse(resp.aiter_raw(), status_code=resp.status_code,
                                 media_type=resp.headers.get("content-type"),
                                 background=BackgroundTask(close))

    return Route("/api/{rest:path}", forward, methods=["GET", "POST", "PATCH", "DELETE"])


@pytest.fixture(scope="session")
def api(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The observe routes over a real store with SDK traffic for ``shop``, the rest forwarded to
    the daemon; served by uvicorn on a Unix socket."""
    tmp = tmp_path_factory.mktemp("console-api")
    store = DuckDBStore(tmp / "telemetry.duckdb")
    facts = record_traffic(store, APP)
    db = tmp / "rules.db"
    markers, probes = DeployMarkers(db, store), Probes(db, store)
    alerts = Alerts(db, store, probes)
    minute = 60 * 10**9
    markers.record(APP, "v1", "deploy", at=(facts.start_ns + 2 * minute) / 1e9,
                   description="1.0.0 from examples/flask")
    markers.record(APP, "v2", "deploy", at=(facts.start_ns + 5 * minute) / 1e9,
                   description="2.0.0 from examples/flask")
    sock = tmp / "api.sock"
    app = Starlette(routes=[*apm_routes(store), *rules_routes(markers, probes, alerts),
                            _proxy_to(platform.home / "noops.sock")])
    server = uvicorn.Server(uvicorn.Config(app, uds=str(sock), log_level="warning",
                                           lifespan="off", loop="asyncio"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "API server did not start"
        time.sleep(0.01)
    try:
        yield Api(sock, store, facts, markers, probes, alerts)
    finally:
        server.should_exit = True
        thread.join(15)
        for closable in (markers, alerts, probes, store):
            closable.close()


@pytest.fixture(scope="session")
def console(api: Api) -> Iterator[Console]:
    """``python -m noops.console`` on a free port, reading ``api``; a probe watches it and an
    error-rate alert on ``shop`` has been evaluated."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "noops.console", "--api-socket",
                             str(api.socket), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", 30)
        probe = api.probes.add(f"{url}/healthz", name="console health", app=APP, every="1m")

        async def checks() -> None:
            for _ in range(5):
                await api.probes.check(probe.id)

        asyncio.run(checks())
        api.alerts.add("error_rate", APP, threshold=5, window="15m", name="shop errors > 5 %")
        api.alerts.evaluate()
        yield Console(url, api)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly
        assert proc.returncode in (0, -signal.SIGTERM), err.decode()
        assert b"Traceback" not in err, err.decode()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API keeps an event loop running in this thread while it
    is open, which would break every later test that calls ``asyncio.run``."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `apt-get install chromium` (make deps installs it)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A 1280x800 page in a time zone that is not the server's (UTC)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800},
                                  timezone_id="America/New_York", locale="en-US")
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        yield pg
        assert not errors, f"the page logged errors: {errors}"
    finally:
        context.close()
