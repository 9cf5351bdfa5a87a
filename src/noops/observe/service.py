"""The daemon's telemetry service: store, OTLP receiver, log and metric collection, retention.

:class:`Telemetry` is composed by ``noops up`` (:mod:`noops.daemon`) and owns:

* the store (:func:`open_store`): DuckDB at ``$NOOPS_HOME/telemetry/telemetry.duckdb`` by
  default, embedded ClickHouse (``telemetry_store = "chdb"``) or a ClickHouse server
  (``clickhouse://user:password@host:8123/database``);
* the OTLP/HTTP receiver with its write-ahead log (``$NOOPS_HOME/telemetry/wal``), served on
  ``$NOOPS_HOME/run/otlp.sock`` (mode 0600) — where each instance's monitor forwards its
  in-namespace ``127.0.0.1:4318`` — and on ``127.0.0.1:<otlp_port>`` (0 = off), which also
  answers ``GET /metrics`` (the platform's own metrics, Prometheus text); the same receiver
  answers OTLP/gRPC on ``127.0.0.1:<otlp_grpc_port>`` (4317; 0 = off,
  :mod:`noops.observe.otlp.grpc_server`). A port already in use is logged and skipped: apps
  still report through the socket;
* the collectors it is given: ``logs`` (new stdout/stderr rows, positions committed only after
  the store committed the rows) and ``usage`` (per-instance metric rows every
  ``metrics_interval_s``), each driven by its own loop;
* retention: every hour, rows older than ``retention_{traces,logs,metrics}_days`` are deleted
  (the per-minute span rollups follow the metrics retention);
* rollup compaction: every minute, the minute rollup and service-map rows of minutes that closed
  more than :data:`COMPACT_LAG` ago are merged to one row per group
  (:meth:`~noops.observe.store.base.TelemetryStore.compact_rollups`); a watermark keeps each pass
  to the minutes since the last one plus :data:`COMPACT_LATE` before them, so rows that arrive
  that late are merged too (later ones stay separate rows, still counted);
* the rules (``$NOOPS_HOME/observe/rules.db``): :attr:`Telemetry.markers` (deploy markers; every
  new ``service.version`` in ingested spans is offered to ``observe_spans``),
  :attr:`Telemetry.probes` (run on a one-second tick) and :attr:`Telemetry.alerts` (evaluated
  and delivered every 15 s);
* :meth:`Telemetry.routes`: the APM and rules HTTP routes the daemon API mounts.

:meth:`Telemetry.stop` stops serving, lets the receiver drain its queue into the store (what it
cannot drain stays in the WAL and is replayed on the next start), stops the loops and closes
the store. Collectors are Protocols owned here, so ``observe`` never imports ``runtime``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol, cast
from urllib.parse import urlsplit

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from noops.errors import NoopsError, UsageError
from noops.observe.alerts import Alerts
from noops.observe.api import apm_routes
from noops.observe.markers import DeployMarkers
from noops.observe.otlp import Receiver, peer_protocol
from noops.observe.probes import Probes
from noops.observe.rules_api import rules_routes, status_routes
from noops.observe.status import StatusPages
from noops.observe.store import DuckDBStore, TelemetryStore
from noops.settings import Settings

__all__ = ["COMPACT_LAG", "COMPACT_LATE", "PROMETHEUS_CONTENT_TYPE", "LogSource",
           "PatternCounter", "Sample", "Telemetry", "UsageSource", "open_store", "otlp_socket"]

log = logging.getLogger("noops.observe")

COMPACT_LAG: Final = timedelta(minutes=2)
"""Minutes that closed less than this ago are left as written (spans of them still arrive)."""
COMPACT_LATE: Final = timedelta(minutes=15)
"""Each compaction pass also re-merges this much before its watermark (late spans)."""

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Row = dict[str, Any]
Sample = tuple[str, str, str, float, Mapping[str, str]]
"""A platform metric: ``(name, "gauge"|"counter", help, value, labels)``."""


class LogSource(Protocol):
    """New log rows since the last committed position (:class:`noops.runtime.logship.LogShipper`)."""

    def poll(self) -> list[Row]: ...

    def commit(self) -> None:
        """The rows of the last poll are stored: remember the position after them."""


class UsageSource(Protocol):
    """Metric rows by kind (``gauge``/``sum``/``histogram``) for one sampling moment."""

    def __call__(self) -> Mapping[str, Sequence[Row]]: ...


def otlp_socket(settings: Settings) -> Path:
    """Where the receiver listens for the monitors' forwarded OTLP connections."""
    return settings.home / "run" / "otlp.sock"


def open_store(settings: Settings) -> TelemetryStore:
    """The store named by the ``telemetry_store`` setting (see the module docstring)."""
    choice = str(settings.get("telemetry_store")).strip()
    directory = settings.home / "telemetry"
    directory.mkdir(parents=True, exist_ok=True)
    if choice in ("", "duckdb"):
        return DuckDBStore(directory / "telemetry.duckdb")
    from noops.observe.store.clickhouse import ClickHouseStore

    if choice == "chdb":
        return ClickHouseStore.embedded(directory / "chdb")
    url = urlsplit(choice)
    if url.scheme in ("clickhouse", "clickhouses") and url.hostname:
        return ClickHouseStore.server(
            host=url.hostname, port=url.port or (8443 if url.scheme == "clickhouses" else 8123),
            username=url.username or "default", password=url.password or "",
            database=url.path.strip("/") or "default", secure=url.scheme == "clickhouses")
    shown = url._replace(netloc=url.netloc.rpartition("@")[2]).geturl()  # never the password
    raise UsageError(f"telemetry_store = {shown!r}: use duckdb, chdb or "
                     "clickhouse://user:password@host:8123/database")


class PatternCounter:
    """Counts, by value, the first group of ``pattern`` in the lines appended to ``path`` since
    this object was made (a counter that restarts with the daemon, as Prometheus expects).

    A rotated file (new inode) is read from its start; at most ``max_read_bytes`` are read per
    :meth:`counts` call, the rest the next time. Used for the gateway's decisions
    (``"outcome":"allow"`` in its audit log) without a second copy of its counters.
    """

    def __init__(self, path: Path, pattern: bytes, *, max_read_bytes: int = 8 * 1024 * 1024) -> None:
        self.path, self.pattern = path, re.compile(pattern)
        self.max_read_bytes = max_read_bytes
        self.totals: dict[str, int] = {}
        try:
            st = path.stat()
            self._inode, self._offset = st.st_ino, st.st_size
        except OSError:
            self._inode, self._offset = 0, 0

    def counts(self) -> dict[str, int]:
        try:
            st = self.path.stat()
            if st.st_ino != self._inode or st.st_size < self._offset:
                self._inode, self._offset = st.st_ino, 0
            if st.st_size > self._offset:
                with open(self.path, "rb") as fh:
                    fh.seek(self._offset)
                    data = fh.read(min(st.st_size - self._offset, self.max_read_bytes))
                end = data.rfind(b"\n") + 1
                for match in self.pattern.finditer(data, 0, end):
                    key = match.group(1).decode(errors="replace")
                    self.totals[key] = self.totals.get(key, 0) + 1
                self._offset += end
        except OSError:
            pass
        return dict(self.totals)


class _VersionHook:
    """The receiver's view of the store: spans also tell the deploy markers which
    ``(service.name, service.version)`` pairs arrive (a set lookup after the first)."""

    def __init__(self, store: TelemetryStore, markers: DeployMarkers) -> None:
        self.store, self.markers = store, markers

    def insert_spans(self, rows: list[Row]) -> object:
        written = self.store.insert_spans(rows)
        self._observe({(r.get("ServiceName", ""), (r.get("ResourceAttributes") or {}).get(
            "service.version", "")) for r in rows})
        return written

    def insert_spans_arrow(self, spans: pa.Table) -> object:
        """The native decoder's path (the receiver takes it only when the store offers it)."""
        written = cast(Any, self.store).insert_spans_arrow(spans)
        versions = pc.map_lookup(spans.column("ResourceAttributes"), "service.version", "first")
        pairs = pa.table({"s": spans.column("ServiceName"), "v": versions}).group_by(
            ["s", "v"]).aggregate([])
        self._observe(set(zip(pairs.column("s").to_pylist(), pairs.column("v").to_pylist(),
                              strict=True)))
        return written

    def _observe(self, pairs: set[tuple[str | None, str | None]]) -> None:
        for service, version in pairs:
            if service and version:
                try:
                    self.markers.observe_spans(service, version)
                except NoopsError:
                    log.exception("could not mark %s %s", service, version)

    def insert_logs(self, rows: list[Row]) -> object:
        return self.store.insert_logs(rows)

    def insert_metrics(self, kind: Any, rows: list[Row]) -> object:
        return self.store.insert_metrics(kind, rows)


class _PlatformCollector(Collector):
    def __init__(self, samples: Callable[[], Iterable[Sample]]) -> None:
        self.samples = samples

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for name, kind, help_, value, labels in self.samples():
            family = families.get(name)
            if family is None:
                cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                family = cls(name, help_, labels=sorted(labels))
                families[name] = family
            family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()


class Telemetry:
    """See the module docstring. ``platform_samples`` adds the daemon's own figures
    (instances, restarts, …) to ``/metrics``; the receiver's are always there. ``senders``
    maps the pid of a process on the receiver's socket to the resource attributes the
    platform vouches for (an instance's monitor: its app and instance), which replace what the
    sender claims under those keys (:mod:`noops.observe.otlp.identity`)."""

    def __init__(self, settings: Settings, *, logs: LogSource | None = None,
                 usage: UsageSource | None = None,
                 platform_samples: Callable[[], Iterable[Sample]] | None = None,
                 store: TelemetryStore | None = None,
                 senders: Callable[[int], Mapping[str, str] | None] | None = None) -> None:
        self.settings = settings
        # settings first: a bad value must not leave the store or the rules open
        self.port = int(settings.get("otlp_port"))
        if not 0 <= self.port <= 65535:
            raise UsageError(f"otlp_port = {self.port}: use a port from 1 to 65535, or 0 for none")
        self.grpc_port = int(settings.get("otlp_grpc_port"))
        if not 0 <= self.grpc_port <= 65535:
            raise UsageError(f"otlp_grpc_port = {self.grpc_port}: use a port from 1 to 65535, or 0 "
                             "for none")
        self.interval_s = float(settings.get("metrics_interval_s"))
        if self.interval_s <= 0:
            raise UsageError("metrics_interval_s must be more than 0")
        self.retention = {
            "traces": timedelta(days=float(settings.get("retention_traces_days"))),
            "logs": timedelta(days=float(settings.get("retention_logs_days"))),
            "metrics": timedelta(days=float(settings.get("retention_metrics_days"))),
        }
        self.retention["rollups"] = self.retention["metrics"]
        for signal, age in self.retention.items():
            if age <= timedelta(0):
                raise UsageError(f"retention_{signal}_days must be more than 0")
        self.socket = otlp_socket(settings)
        self.logs, self.usage = logs, usage
        self._compacted: datetime | None = None  # the last compaction pass's ``before``
        with contextlib.ExitStack() as opened:  # a failure half way closes what was opened
            self.store = store or open_store(settings)
            if store is None:
                opened.callback(self.store.close)
            rules_db = settings.home / "observe" / "rules.db"
            rules_db.parent.mkdir(parents=True, exist_ok=True)
            self.markers = DeployMarkers(rules_db, self.store)
            opened.callback(self.markers.close)
            self.probes = Probes(rules_db, self.store)
            opened.callback(self.probes.close)
            self.alerts = Alerts(rules_db, self.store, self.probes)
            opened.callback(self.alerts.close)
            self.status_pages = StatusPages(rules_db, self.probes, self.store)
            opened.callback(self.status_pages.close)
            self.receiver = Receiver(_VersionHook(self.store, self.markers),
                                     settings.home / "telemetry" / "wal", senders=senders)
            opened.pop_all()
        self._platform_samples = platform_samples or (lambda: ())
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_PlatformCollector(self.samples))
        self.counters = {"log_rows": 0, "log_errors": 0, "usage_rows": 0, "usage_errors": 0}
        self._servers: list[Any] = []
        self._grpc: Any = None  # grpc.aio.Server
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop_rules = asyncio.Event()
        self._rule_tasks: list[asyncio.Task[Any]] = []
        self.started = False

    def routes(self) -> list[BaseRoute]:
        """``/api/apm/…``, ``/api/traces/…``, ``/api/logs`` and the deployments, probes and
        alerts routes (``POST /api/deployments`` among them)."""
        return [*apm_routes(self.store), *rules_routes(self.markers, self.probes, self.alerts),
                *status_routes(self.status_pages)]

    # -- metrics ---------------------------------------------------------------------------
    def samples(self) -> Iterator[Sample]:
        st = self.receiver.stats()
        for signal, n in st["accepted"].items():
            yield ("noops_otlp_accepted_items", "counter", "OTLP items acknowledged (durable)",
                   float(n), {"signal": signal})
        for signal, n in st["rejected"].items():
            yield ("noops_otlp_rejected_items", "counter",
                   "OTLP items rejected as invalid (partial success)", float(n), {"signal": signal})
        yield ("noops_otlp_throttled_requests", "counter", "OTLP requests answered 429/503",
               float(st["throttled"]), {})
        yield ("noops_otlp_bad_requests", "counter",
               "OTLP requests answered 400 or 413 (gRPC: INVALID_ARGUMENT)", float(st["bad_requests"]), {})
        yield ("noops_otlp_queue_depth", "gauge", "Acknowledged requests waiting for the store",
               float(st["queue_depth"]), {})
        yield ("noops_otlp_queue_capacity", "gauge", "Requests the queue holds before 429",
               float(st["queue_capacity"]), {})
        yield ("noops_store_rows_stored", "counter", "Rows the receiver committed to the store",
               float(st["stored_rows"]), {})
        yield ("noops_store_insert_errors", "counter", "Failed store inserts (retried)",
               float(st["insert_errors"]), {})
        yield ("noops_store_insert_seconds_mean", "gauge", "Mean store insert latency",
               float(st["insert_latency_s_mean"]), {})
        yield ("noops_store_insert_seconds_max", "gauge", "Slowest store insert",
               float(st["insert_latency_s_max"]), {})
        yield ("noops_otlp_replayed_records", "counter", "WAL records replayed at start",
               float(st["replayed_records"]), {})
        for name, value in self.counters.items():
            yield (f"noops_telemetry_{name}", "counter",
                   f"Instance {name.replace('_', ' ')} collected by the platform", float(value), {})
        yield from self._platform_samples()

    def prometheus(self) -> bytes:
        """The platform's metrics in the Prometheus text exposition format (0.0.4)."""
        return generate_latest(self._registry)

    async def metrics_endpoint(self, _: Request) -> Response:
        return Response(self.prometheus(), media_type=PROMETHEUS_CONTENT_TYPE)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Replay the WAL, serve the socket (and the port), start the loops."""
        await self.receiver.start()
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(str(self.socket))
        os.chmod(self.socket, 0o600)
        await self._serve(self.receiver.app, unix)
        if self.port:
            outer = Starlette(routes=[Route("/metrics", self.metrics_endpoint),
                                      Mount("", app=self.receiver.app)])
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind(("127.0.0.1", self.port))
            except OSError as exc:
                tcp.close()
                log.warning("OTLP receiver not on 127.0.0.1:%s (%s); apps still report through %s",
                            self.port, exc, self.socket)
            else:
                await self._serve(outer, tcp)
        if self.grpc_port:
            from noops.observe.otlp.grpc_server import start_grpc

            try:
                self._grpc, _ = await start_grpc(self.receiver, "127.0.0.1", self.grpc_port)
            except OSError as exc:
                log.warning("OTLP/gRPC receiver not on 127.0.0.1:%s (%s)", self.grpc_port, exc)
        self._tasks.append(asyncio.create_task(self._retention_loop(), name="retention"))
        self._tasks.append(asyncio.create_task(self._compact_loop(), name="rollup-compaction"))
        self._stop_rules.clear()
        self._rule_tasks = [
            asyncio.create_task(self.probes.run_forever(self._stop_rules), name="probes"),
            asyncio.create_task(self.alerts.run_forever(self._stop_rules, every_s=15.0),
                                name="alerts")]
        if self.logs is not None:
            self._tasks.append(asyncio.create_task(self._logs_loop(), name="log-shipping"))
        if self.usage is not None:
            self._tasks.append(asyncio.create_task(self._usage_loop(), name="usage"))
        self.started = True

    async def _serve(self, app: Any, sock: socket.socket) -> None:
        """Serve ``app`` on the bound ``sock`` (binding here, not in uvicorn: a port in use is
        an ``OSError`` to handle, not uvicorn's ``sys.exit``)."""
        import uvicorn

        sock.listen(1024)
        sock.setblocking(False)
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                                http=peer_protocol())  # httptools, knowing each Unix peer's pid
        server = uvicorn.Server(config)
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"otlp {sock.getsockname()}")
        self._servers.append((server, task, sock))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Stop serving, drain into the store (the rest stays in the WAL), close the store."""
        if self._grpc is not None:
            await self._grpc.stop(2.0)  # calls in flight get their answer
            self._grpc = None
        for server, _, _ in self._servers:
            server.should_exit = True
        for _, task, sock in self._servers:
            with contextlib.suppress(Exception):
                await task
            sock.close()
        self._servers.clear()
        self._stop_rules.set()
        for task in self._rule_tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=10)
        self._rule_tasks.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.logs is not None and self.started:
            await self.ship_logs()  # what the instances wrote up to now
        await self.receiver.stop()
        self.socket.unlink(missing_ok=True)
        self.close()
        self.started = False

    def close(self) -> None:
        """Close the rules, the WAL and the store (what :meth:`stop` ends with; for a service
        that was never started, the whole of stopping it)."""
        for rules in (self.status_pages, self.alerts, self.probes, self.markers):
            rules.close()
        self.receiver.wal.close()
        self.store.close()

    # -- loops -----------------------------------------------------------------------------
    async def ship_logs(self) -> int:
        """Store the log lines written since the last call; return how many."""
        assert self.logs is not None
        logs = self.logs
        total = 0
        while True:
            rows = await asyncio.to_thread(logs.poll)
            if rows:
                await asyncio.to_thread(self.store.insert_logs, rows)
            await asyncio.to_thread(logs.commit)
            total += len(rows)
            self.counters["log_rows"] += len(rows)
            if len(rows) < 1000:  # caught up (a burst is read over several polls)
                return total

    async def record_usage(self) -> int:
        """Store one sample of every instance's CPU, memory and restarts; return the rows."""
        assert self.usage is not None
        by_kind = await asyncio.to_thread(self.usage)
        total = 0
        for kind, rows in by_kind.items():
            if rows:
                await asyncio.to_thread(self.store.insert_metrics, kind, list(rows))  # type: ignore[arg-type]
                total += len(rows)
        self.counters["usage_rows"] += total
        return total

    async def _logs_loop(self) -> None:
        while True:
            try:
                await self.ship_logs()
            except (NoopsError, OSError, ValueError):
                self.counters["log_errors"] += 1
                log.exception("shipping instance logs failed; retrying")
            await asyncio.sleep(1.0)

    async def _usage_loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.record_usage()
            except (NoopsError, OSError, ValueError):
                self.counters["usage_errors"] += 1
                log.exception("recording instance usage failed; retrying")
            await asyncio.sleep(max(0.1, self.interval_s - (time.monotonic() - started)))

    async def expire(self) -> None:
        """Apply every signal's retention once."""
        for signal, age in self.retention.items():
            await asyncio.to_thread(self.store.retention, signal, age)  # type: ignore[arg-type]

    async def compact(self, now: datetime | None = None) -> int:
        """One rollup compaction pass (see the module doc); returns the rows it merged away."""
        before = (now or datetime.now(UTC)) - COMPACT_LAG
        after = None if self._compacted is None else self._compacted - COMPACT_LATE
        removed = await asyncio.to_thread(self.store.compact_rollups, before, after)
        self._compacted = before
        return removed

    async def _compact_loop(self, every_s: float = 60.0) -> None:
        while True:
            try:
                await self.compact()
            except Exception:  # reads stay right without it, only slower
                log.exception("telemetry rollup compaction failed; retrying in %ss", every_s)
            await asyncio.sleep(every_s)

    async def _retention_loop(self, every_s: float = 3600.0) -> None:
        while True:
            try:
                await self.expire()
            except Exception:  # the loop must outlive any failure, or the disk fills up
                log.exception("telemetry retention failed; retrying in %ss", every_s)
            await asyncio.sleep(every_s)
