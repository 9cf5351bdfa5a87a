"""Fixtures for the observe-rules tests: a real DuckDB telemetry store, the rules database path,
a webhook receiver and a small HTTP app on 127.0.0.1 (all stopped by the tests' teardown)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from noops.observe.store import DuckDBStore
from rules_helpers import Served, app_routes, serve, webhook_routes


@pytest.fixture
def tstore(tmp_path: Path) -> Iterator[DuckDBStore]:
    store = DuckDBStore(tmp_path / "telemetry.duckdb", threads=1)
    yield store
    store.close()


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
