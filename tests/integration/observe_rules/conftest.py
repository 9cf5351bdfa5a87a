"""Fixtures for the observe-rules tests: a real DuckDB telemetry store, the rules database path,
a webhook receiver and a small HTTP app on 127.0.0.1 (all stopped by the tests' teardown)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from rules_helpers import RulesApi, Served, app_routes, serve, webhook_routes
from starlette.applications import Starlette

from noops.observe.alerts import Alerts
from noops.observe.markers import DeployMarkers
from noops.observe.probes import Probes
from noops.observe.rules_api import rules_routes, status_routes
from noops.observe.status import StatusPages
from noops.observe.store import DuckDBStore


@pytest.fixture
def tstore(tmp_path: Path) -> Iterator[DuckDBStore]:
    store = DuckDBStore(tmp_path / "telemetry.duckdb", threads=1)
    yield store
    store.close()


@pytest.fixture
def probes(rules_db: Path, tstore: DuckDBStore) -> Iterator[Probes]:
    p = Probes(rules_db, tstore, jitter=0)
    yield p
    p.close()


@pytest.fixture
def rules_db(tmp_path: Path) -> Path:
    return tmp_path / "home" / "observe" / "rules.db"


@pytest.fixture
def webhook() -> Iterator[Served]:
    served = serve(webhook_routes)
    yield served
    served.stop()


@pytest.fixture
def app_server() -> Iterator[Served]:
    served = serve(app_routes)
    yield served
    served.stop()


@pytest.fixture
def rules_api(tmp_path: Path, rules_db: Path, tstore: DuckDBStore) -> Iterator[RulesApi]:
    home = rules_db.parent.parent
    markers, probes = DeployMarkers(rules_db, tstore), Probes(rules_db, tstore, jitter=0)
    alerts = Alerts(rules_db, tstore, probes)
    pages = StatusPages(rules_db, probes, tstore)
    sock = home / "noops.sock"
    routes = [*rules_routes(markers, probes, alerts), *status_routes(pages)]
    config = uvicorn.Config(Starlette(routes=routes),
                            uds=str(sock), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(400):
        if server.started:
            break
        time.sleep(0.025)
    assert server.started, "uvicorn did not start"
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://noops")
    try:
        yield RulesApi(home, http, markers, probes, alerts)
    finally:
        http.close()
        server.should_exit = True
        thread.join()
        for owner in (pages, markers, probes, alerts):
            owner.close()
