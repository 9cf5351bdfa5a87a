"""Telemetry-store harness: every backend behind one fixture, plus a realistic synthetic dataset.

The store fixtures are parametrized over ``BACKENDS``: every test runs on every backend, with no
opt-outs (chdb now also bounds its files under the retention test).
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from noops.observe.store import DuckDBStore, TelemetryStore
from noops.observe.store.duckdb import duck_type

BACKENDS = ("duckdb", "chdb")

_CHDB_DIR = Path(tempfile.mkdtemp(prefix="noops-chdb-"))  # chdb: one data path per process


def open_store(backend: str, tmp: Path) -> TelemetryStore:
    if backend == "duckdb":
        return DuckDBStore(tmp / "telemetry.duckdb")
    from noops.observe.store.clickhouse import ClickHouseStore

    return ClickHouseStore.embedded(_CHDB_DIR, database=f"t_{uuid.uuid4().hex[:12]}")


def describe(backend: str, store: Any, table: str) -> dict[str, str]:
    """Column name -> type as the backend itself reports it."""
    if backend == "duckdb":
        return {r[0]: r[1] for r in store._rows(f"DESCRIBE {table}")}
    return {r[0]: r[1] for r in store._tuples(
        "SELECT name, type FROM system.columns WHERE database = currentDatabase() "
        "AND table = {t:String}", t=table)}


def disk_bytes(backend: str, store: Any, tmp: Path) -> int:
    """What the store occupies on disk: the DuckDB file, or every file under the data paths of
    the ClickHouse database's tables (active parts and replaced ones not yet removed)."""
    if backend == "duckdb":
        return (tmp / "telemetry.duckdb").stat().st_size
    paths = [r[0] for r in store._tuples(
        "SELECT arrayJoin(data_paths) AS p FROM system.tables WHERE database = currentDatabase()")]
    total = 0
    for path in paths:
        for root, _, files in os.walk(path):
            for name in files:
                with contextlib.suppress(FileNotFoundError):  # a part removed meanwhile
                    total += os.stat(os.path.join(root, name)).st_size
    return total


def expected_type(backend: str) -> Callable[[str], str]:
    return duck_type if backend == "duckdb" else (lambda ch: ch)


T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NS = 1_000_000_000


def ns(dt: datetime) -> int:
    return int((dt - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1)) * 1000


@dataclass
class Dataset:
    spans: list[dict[str, Any]] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    gauges: list[dict[str, Any]] = field(default_factory=list)
    sums: list[dict[str, Any]] = field(default_factory=list)
    histograms: list[dict[str, Any]] = field(default_factory=list)


def make_dataset(traces: int = 400, seed: int = 7, t0: datetime = T0, minutes: int = 10) -> Dataset:
    """frontend -> api -> db, with errors, logs carrying trace ids, and a few metrics."""
    rnd = random.Random(seed)
    ds = Dataset()
    res = {"service.version": "1.2.3", "host.name": "node-1"}

    def span(trace: str, parent: str, service: str, name: str, kind: str, start: int, dur: int,
             error: bool = False, attrs: dict[str, str] | None = None, host: str = "node-1",
             exception: bool = True) -> str:
        sid = f"{rnd.getrandbits(64):016x}"
        event = error and exception
        ds.spans.append({
            "Timestamp": start, "TraceId": trace, "SpanId": sid, "ParentSpanId": parent,
            "SpanName": name, "SpanKind": kind, "ServiceName": service,
            "ResourceAttributes": {**res, "service.name": service, "host.name": host},
            "ScopeName": "otel",
            "SpanAttributes": {"http.route": name, **(attrs or {})} if kind == "Server"
            else dict(attrs or {}),
            "Duration": dur, "StatusCode": "Error" if error else "Unset",
            "StatusMessage": f"upstream answered 50{trace[0] in '0123'} after {dur} ns"
            if error else "",
            "Events.Timestamp": [start + 1000] if event else [],
            "Events.Name": ["exception"] if event else [],
            "Events.Attributes": [{"exception.type": "ValueError", "exception.message":
                                   f"no item {dur % 1000} for {uuid.UUID(int=dur)}"}]
            if event else [],
        })
        return sid

    for i in range(traces):
        trace = f"{rnd.getrandbits(128):032x}"
        start = ns(t0) + rnd.randrange(minutes * 60 * NS)
        route = rnd.choice(["GET /", "GET /cart", "POST /checkout"])
        api_dur = int(rnd.lognormvariate(17, 0.8))  # ~25 ms median
        canary = i % 5 == 0  # api on node-2 is ten times slower: what correlations must find
        api_dur *= 10 if canary else 1
        api_err = rnd.random() < 0.1
        front_dur = api_dur + int(rnd.lognormvariate(15, 0.5))
        root = span(trace, "", "frontend", route, "Server", start, front_dur, api_err and i % 2 == 0)
        # frontend calls api through the noops egress endpoint (an mTLS hop) ...
        client = span(trace, root, "frontend", "GET api", "Client", start + 1000, api_dur + 500_000,
                      api_err, attrs={"url.full": "http://127.0.0.1:15001/items"}, exception=False)
        server = span(trace, client, "api", rnd.choice(["GET /items", "GET /items/{id}"]), "Server",
                      start + 250_000, api_dur, api_err, host="node-2" if canary else "node-1")
        if i % 3:
            # ... api calls db directly; only some db spans say they were reached over mTLS.
            db_dur = int(rnd.lognormvariate(14, 1.0))
            c2 = span(trace, server, "api", "SELECT items", "Client", start + 300_000,
                      db_dur + 100_000, attrs={"server.address": "db", "server.port": "5432"})
            span(trace, c2, "db", "query", "Server", start + 350_000, db_dur, i % 41 == 0,
                 attrs={"noops.mtls": "true"} if i % 2 else {})
        span(trace, server, "api", "render", "Internal", start + 400_000, 1_000_000)
        for j, (sev, num) in enumerate([("INFO", 9), ("ERROR", 17) if api_err else ("DEBUG", 5)]):
            ds.logs.append({
                "Timestamp": start + j * 1000, "TraceId": trace, "SpanId": server,
                "TraceFlags": 1, "SeverityText": sev, "SeverityNumber": num, "ServiceName": "api",
                "Body": f"request {i} {'failed: Connection Refused' if num == 17 else 'handled'}",
                "ResourceAttributes": res, "LogAttributes": {"i": str(i)},
            })
    for m in range(minutes):
        t = ns(t0) + m * 60 * NS
        common = {"ServiceName": "api", "ResourceAttributes": res, "StartTimeUnix": ns(t0),
                  "TimeUnix": t, "Attributes": {"route": "GET /items"}}
        ds.gauges.append({**common, "MetricName": "cpu", "MetricUnit": "1", "Value": 0.5 + m / 100})
        ds.sums.append({**common, "MetricName": "requests", "Value": float(m * 10),
                        "AggregationTemporality": 2, "IsMonotonic": True})
        ds.histograms.append({**common, "MetricName": "latency", "Count": 3, "Sum": 0.3,
                              "BucketCounts": [1, 2, 0], "ExplicitBounds": [0.1, 1.0],
                              "Min": 0.05, "Max": 0.2, "AggregationTemporality": 2,
                              "Exemplars.TimeUnix": [t], "Exemplars.Value": [0.2],
                              "Exemplars.SpanId": ["ab"], "Exemplars.TraceId": ["cd"],
                              "Exemplars.FilteredAttributes": [{}]})
    rnd.shuffle(ds.spans)  # the store must not depend on arrival order
    return ds


def load(store: TelemetryStore, ds: Dataset) -> None:
    half = len(ds.spans) // 2  # two inserts: rollups must merge partial rows
    store.insert_spans(ds.spans[:half])
    store.insert_spans(ds.spans[half:])
    store.insert_logs(ds.logs)
    store.insert_metrics("gauge", ds.gauges)
    store.insert_metrics("sum", ds.sums)
    store.insert_metrics("histogram", ds.histograms)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return make_dataset()


@pytest.fixture(scope="module", params=BACKENDS)
def loaded(request: pytest.FixtureRequest, dataset: Dataset,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TelemetryStore]]:
    backend: str = request.param
    store = open_store(backend, tmp_path_factory.mktemp(backend))
    load(store, dataset)
    yield backend, store
    store.close()


@pytest.fixture(params=BACKENDS)
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, TelemetryStore, Path]]:
    backend: str = request.param
    store = open_store(backend, tmp_path)
    yield backend, store, tmp_path
    store.close()


@dataclass
class ApmApi:
    """The APM routes of a real DuckDB store, served by uvicorn on ``home/noops.sock`` (where the
    CLI looks for the daemon), filled with SDK-recorded traffic (:mod:`sdk_traffic`)."""

    home: Path
    store: TelemetryStore
    traffic: Any

    def get(self, path: str, **params: Any) -> Any:
        import httpx

        transport = httpx.HTTPTransport(uds=str(self.home / "noops.sock"))
        with httpx.Client(transport=transport, base_url="http://noops", timeout=30) as client:
            return client.get(path, params=params)


@pytest.fixture(scope="module")
def apm_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApmApi]:
    import threading
    import time

    import uvicorn
    from sdk_traffic import record_shop_traffic
    from starlette.applications import Starlette

    from noops.observe.api import apm_routes

    home = tmp_path_factory.mktemp("home")
    store = DuckDBStore(home / "telemetry.duckdb")
    traffic = record_shop_traffic(store)
    config = uvicorn.Config(Starlette(routes=apm_routes(store)), uds=str(home / "noops.sock"),
                            log_level="warning", lifespan="off", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "API server did not start"
        time.sleep(0.01)
    yield ApmApi(home, store, traffic)
    server.should_exit = True
    thread.join(15)
    store.close()
