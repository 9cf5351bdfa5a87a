"""``ClickHouseStore``: the scale-out telemetry store, in the exporter's own tables.

The DDL is the OTel Collector ClickHouse exporter's (``reference/observability.md`` §3): MergeTree,
``PARTITION BY toDate(Timestamp)``, ``ORDER BY (ServiceName, SpanName, toDateTime(Timestamp),
Timestamp)``, the same columns, types and skip indexes, so a Collector with
``create_schema: false`` can write into the same database. Codecs (ZSTD(3), Delta, T64) and
``otel_traces``' granule size are noops' own (:data:`_POINT_READ`): a Collector only names
columns in its INSERTs. The trace-id table and the minute rollup are materialized views:
ClickHouse maintains them on every insert, whoever inserts.

Two ways to reach ClickHouse, behind :class:`Executor`:

* :meth:`ClickHouseStore.embedded` — chdb (in-process ClickHouse) with a data directory. This is
  what the conformance suite runs.
* :meth:`ClickHouseStore.server` — a real server through ``clickhouse-connect`` (HTTP).
  **Not exercised by the tests**: Debian's clickhouse-server (18.16) predates ``Map`` and cannot
  hold this schema; point it at ClickHouse >= 23 to use it.
"""

# SQL text is assembled only from schema constants and fixed clauses; every value is a bound
# parameter (DuckDB ?, ClickHouse {name:Type}) or, for the service-map pairing's trace ids, an
# array literal escaped by ``_array_literal``, so S608 does not apply here.
# ruff: noqa: S608

from __future__ import annotations

import secrets
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

import pyarrow as pa  # type: ignore[import-untyped]

from noops.observe.store import analysis, edges, schema
from noops.observe.store._rows import (
    bins,
    check_step,
    edge_rows,
    from_arrow,
    gauge_points,
    points,
    service_buckets,
    severity_floor,
    slow,
    stats,
    to_arrow,
    to_ns,
    trace_search,
    whole_minutes,
    window_ns,
)
from noops.observe.store.base import (
    EXACT_PERCENTILES_MAX,
    Correlation,
    Edge,
    EndpointStats,
    ErrorGroup,
    GaugePoint,
    HistogramBin,
    Row,
    ServiceStats,
    SlowTrace,
    StoreError,
    StoreUsageError,
    TimeseriesPoint,
)
from noops.observe.store.rollup import BUCKETS_PER_OCTAVE, MAX_BUCKET

__all__ = ["ClickHouseStore", "Executor", "create_statements"]

_ENTRY: Final = "SpanKind IN ('Server', 'Consumer')"
_WIN: Final = ("Timestamp >= fromUnixTimestamp64Nano({s:Int64}) "
               "AND Timestamp < fromUnixTimestamp64Nano({e:Int64})")
_BUCKET: Final = (f"toUInt16(least(floor({BUCKETS_PER_OCTAVE} * log2(greatest(Duration, 1))), "
                  f"{MAX_BUCKET}))")
# Per service and latency bucket over a window: its whole minutes ``[lo, hi)`` from the rollup,
# its partial first and last minutes from the spans (the same as DuckDB's; see ``services``).
_SERVICE_BUCKETS: Final = (
    "SELECT toString(ServiceName) AS k, b, sum(n), sum(x), min(mn), max(mx) FROM ("
    "SELECT ServiceName, Bucket AS b, toUInt64(Count) AS n, toUInt64(ErrorCount) AS x, "
    "toUInt64(DurationMin) AS mn, toUInt64(DurationMax) AS mx FROM otel_traces_rollup_1m "
    "WHERE Minute >= toDateTime({lo_s:Int64}) AND Minute < toDateTime({hi_s:Int64}) "
    f"AND {_ENTRY} UNION ALL SELECT ServiceName, {_BUCKET}, toUInt64(1), "
    "toUInt64(StatusCode = 'Error'), Duration, Duration FROM otel_traces "
    f"WHERE {_ENTRY} AND ((Timestamp >= fromUnixTimestamp64Nano({{s:Int64}}) "
    "AND Timestamp < fromUnixTimestamp64Nano({lo:Int64})) "
    "OR (Timestamp >= fromUnixTimestamp64Nano({hi:Int64}) "
    "AND Timestamp < fromUnixTimestamp64Nano({e:Int64})))) GROUP BY k, b")
# Codecs are not part of the exporter's contract (its INSERTs name columns, not codecs): every
# column gets ZSTD(3) (measured ~10 % smaller than the exporter's ZSTD(1) on span maps, at a CPU
# cost that is noise next to decoding), times Delta, durations and counters T64 first.
_ZSTD: Final = "ZSTD(3)"


def _codec(name: str, ch: str) -> str:
    if ch == "DateTime64(9)":
        return f"CODEC(Delta(8), {_ZSTD})"
    if ch == "DateTime":
        return f"CODEC(Delta(4), {_ZSTD})"
    if ch.startswith("UInt") or ch.startswith("Int"):
        return f"CODEC(T64, {_ZSTD})"
    return f"CODEC({_ZSTD})"


# otel_traces is read two ways: scans by service/endpoint/time (the ORDER BY) and point lookups
# by trace id (the bloom filter finds the granules that hold a trace's ~10 spans, spread over
# as many services and endpoints). A lookup decompresses every column's block around each such
# granule, so granules of 256 rows and compressed blocks of 8-32 KiB (instead of 8192 rows and
# 64 KiB-1 MiB) cut its CPU ~3x; with ZSTD(3) the table stays as small as the exporter's.
_POINT_READ: Final = ("index_granularity = 256, min_compress_block_size = 8192, "
                      "max_compress_block_size = 32768")
_MAP_INDEXES: Final = {
    "otel_traces": ("ResourceAttributes", "SpanAttributes"),
    "otel_logs": ("ResourceAttributes", "ScopeAttributes", "LogAttributes"),
}


class Executor(Protocol):
    """The three things the store asks of a ClickHouse connection."""

    def command(self, sql: str) -> None: ...
    def arrow(self, sql: str, params: dict[str, Any]) -> pa.Table: ...
    def insert_arrow(self, table: str, batch: pa.Table) -> None: ...


_SESSIONS: dict[str, Any] = {}


def _array_literal(values: Sequence[Any]) -> str:
    def one(v: Any) -> str:
        if isinstance(v, str):
            return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return repr(v)
    return "[" + ",".join(one(v) for v in values) + "]"


class _Chdb:
    """chdb runs one embedded server per process with one data path; stores share its session
    and keep apart by database (every statement is prefixed with ``USE``)."""

    def __init__(self, data_path: Path, database: str) -> None:
        from chdb import session  # ~180 MB: only loaded when the embedded backend is chosen

        if not database.isidentifier():
            raise StoreUsageError(f"invalid ClickHouse database name {database!r}")
        key = str(data_path)
        if key not in _SESSIONS:
            _SESSIONS[key] = session.Session(key)  # type: ignore[no-untyped-call]
        self._s = _SESSIONS[key]
        self._s.query(f"CREATE DATABASE IF NOT EXISTS {database}")
        self._use = f"USE {database}; "

    def command(self, sql: str) -> None:
        self._s.query(self._use + sql)

    def arrow(self, sql: str, params: dict[str, Any]) -> pa.Table:
        # chdb passes parameters as text: an array of strings needs ClickHouse's quoting.
        params = {k: _array_literal(v) if isinstance(v, list | tuple) else v
                  for k, v in params.items()}
        result: pa.Table = self._s.query(self._use + sql, "ArrowTable", params=params)
        return result

    def insert_arrow(self, table: str, batch: pa.Table) -> None:
        cols = ", ".join(f"`{c}`" for c in batch.column_names)
        # chdb's Python() table function reads the local variable ``batch`` zero-copy.
        self._s.query(f"{self._use}INSERT INTO {table} ({cols}) SELECT {cols} FROM Python(batch)")


class _Server:  # pragma: no cover - needs a ClickHouse >= 23 server, see the module docstring
    def __init__(self, **kwargs: Any) -> None:
        import clickhouse_connect  # type: ignore[import-not-found,unused-ignore]

        self._c = clickhouse_connect.get_client(**kwargs)

    def command(self, sql: str) -> None:
        self._c.command(sql)

    def arrow(self, sql: str, params: dict[str, Any]) -> pa.Table:
        result: pa.Table = self._c.query_arrow(sql, parameters=params)
        return result

    def insert_arrow(self, table: str, batch: pa.Table) -> None:
        self._c.insert_arrow(table, batch)

    def close(self) -> None:
        self._c.close()


def _column_ddl(table: str, columns: Sequence[schema.Column]) -> list[str]:
    out: list[str] = []
    nested: dict[str, list[str]] = {}
    for name, ch in columns:
        if "." in name:
            parent, field = name.split(".", 1)
            if parent not in nested:
                nested[parent] = []
                out.append(parent)  # placeholder, keeps the column order
            nested[parent].append(f"{field} {ch[6:-1]}")
            continue
        out.append(f"`{name}` {ch} {_codec(name, ch)}")
    return [f"`{c}` Nested({', '.join(nested[c])})" if c in nested else c for c in out]


def create_statements(ttl_days: int | None = None) -> list[str]:
    """The exporter's tables (plus noops' rollup and both views) as ``CREATE … IF NOT EXISTS``."""
    def ttl(col: str) -> str:
        return f"TTL toDateTime({col}) + toIntervalDay({ttl_days}) " if ttl_days else ""

    def cols(table: str, extra: Sequence[str] = ()) -> str:
        return ",\n  ".join([*_column_ddl(table, schema.TABLES[table]), *extra])

    def map_idx(table: str) -> list[str]:
        return [f"INDEX idx_{c}_{part} map{part.title()}s({c}) TYPE bloom_filter(0.01) GRANULARITY 1"
                for c in _MAP_INDEXES[table] for part in ("key", "value")]

    trace_idx = "INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1"
    stmts = [
        f"""CREATE TABLE IF NOT EXISTS otel_traces (
  {cols("otel_traces", [trace_idx, *map_idx("otel_traces"),
                        "INDEX idx_duration Duration TYPE minmax GRANULARITY 1",
                        "INDEX idx_lower_span_name lower(SpanName) TYPE tokenbf_v1(32768, 3, 0) "
                        "GRANULARITY 8"])}
) ENGINE = MergeTree PARTITION BY toDate(Timestamp)
PRIMARY KEY (ServiceName, SpanName, toDateTime(Timestamp))
ORDER BY (ServiceName, SpanName, toDateTime(Timestamp), Timestamp)
{ttl("Timestamp")}SETTINGS {_POINT_READ}, ttl_only_drop_parts = 1""",
        f"""CREATE TABLE IF NOT EXISTS otel_traces_trace_id_ts (
  {cols("otel_traces_trace_id_ts", [trace_idx])}
) ENGINE = MergeTree PARTITION BY toDate(Start) ORDER BY (TraceId, Start)
{ttl("Start")}SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1""",
        """CREATE MATERIALIZED VIEW IF NOT EXISTS otel_traces_trace_id_ts_mv
TO otel_traces_trace_id_ts AS SELECT TraceId, toDateTime(min(Timestamp)) AS Start,
  toDateTime(max(Timestamp)) AS End FROM otel_traces WHERE TraceId != '' GROUP BY TraceId""",
        f"""CREATE TABLE IF NOT EXISTS otel_logs (
  {cols("otel_logs", [trace_idx, *map_idx("otel_logs"),
                      "INDEX idx_lower_body lower(Body) TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8"])}
) ENGINE = MergeTree PARTITION BY toDate(Timestamp)
ORDER BY (toStartOfFiveMinutes(Timestamp), ServiceName, Timestamp)
{ttl("Timestamp")}SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1""",
    ]
    for kind in schema.METRICS:
        table = schema.metric_table(kind)
        stmts.append(f"""CREATE TABLE IF NOT EXISTS {table} (
  {cols(table, ["INDEX idx_time TimeUnix TYPE minmax GRANULARITY 1"])}
) ENGINE = MergeTree PARTITION BY toDate(TimeUnix)
ORDER BY (ServiceName, MetricName, toStartOfHour(TimeUnix), cityHash64(Attributes), TimeUnix)
{ttl("TimeUnix")}SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1""")
    agg = schema.ROLLUP_AGG
    rollup_cols = ",\n  ".join(
        f"`{n}` SimpleAggregateFunction({agg[n]}, {t}) {_codec(n, t)}" if n in agg
        else f"`{n}` {t} {_codec(n, t)}"
        for n, t in schema.ROLLUP)
    stmts += [
        f"""CREATE TABLE IF NOT EXISTS otel_traces_rollup_1m (
  {rollup_cols}
) ENGINE = AggregatingMergeTree PARTITION BY toDate(Minute)
ORDER BY (ServiceName, SpanName, SpanKind, Minute, Bucket)""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS otel_traces_rollup_1m_mv
TO otel_traces_rollup_1m AS SELECT ServiceName, SpanName, SpanKind,
  toDateTime(toStartOfMinute(Timestamp)) AS Minute,
  toUInt16(least(floor({BUCKETS_PER_OCTAVE} * log2(greatest(Duration, 1))), {MAX_BUCKET})) AS Bucket,
  count() AS Count, countIf(StatusCode = 'Error') AS ErrorCount, sum(Duration) AS DurationSum,
  min(Duration) AS DurationMin, max(Duration) AS DurationMax
FROM otel_traces GROUP BY ServiceName, SpanName, SpanKind, Minute, Bucket""",
    ]
    edge_agg = schema.EDGES_AGG
    edge_cols = ",\n  ".join(
        f"`{n}` SimpleAggregateFunction({edge_agg[n]}, {t}) {_codec(n, t)}" if n in edge_agg
        else f"`{n}` {t} {_codec(n, t)}"
        for n, t in schema.EDGES)
    stmts += [
        f"""CREATE TABLE IF NOT EXISTS otel_traces_edge_spans (
  {cols("otel_traces_edge_spans")}
) ENGINE = MergeTree PARTITION BY toStartOfHour(Timestamp) ORDER BY (TraceId, LinkId)""",
        f"""CREATE TABLE IF NOT EXISTS otel_traces_edges_1m (
  {edge_cols}
) ENGINE = AggregatingMergeTree PARTITION BY toDate(Minute)
ORDER BY (ClientService, ServerService, Minute, Bucket)""",
    ]
    return stmts


# Service-map pairing (see :mod:`.edges`); {b}, {lo}, {hi} are integers the store computes and
# {tids} the insert's trace ids as an escaped array literal. One read of the index (a primary-key
# lookup by TraceId, bounded by time): each (TraceId, LinkId) group's client rows times its
# server rows are the pairs (an inner join's result, without the join), kept when one side is new.
_PAIR_SQL: Final = (
    "INSERT INTO otel_traces_edges_1m SELECT c.1 AS client, s.1 AS server, "
    "toDateTime(toStartOfMinute(c.2)) AS m, toUInt16(least(floor("
    f"{BUCKETS_PER_OCTAVE} * log2(greatest(c.3, 1))), {MAX_BUCKET})) AS bk, count(), "
    "countIf(c.4 + s.2 > 0), countIf(c.5 + s.3 > 0), min(c.3), max(c.3) FROM ("
    "SELECT groupArrayIf((toString(ServiceName), Timestamp, Duration, IsError, Mtls, "
    "Batch = {b}), Side = 0) AS cs, groupArrayIf((toString(ServiceName), IsError, Mtls, "
    "Batch = {b}), Side = 1) AS ss FROM otel_traces_edge_spans WHERE TraceId IN {tids} "
    "AND Timestamp >= fromUnixTimestamp64Nano(toInt64({lo})) "
    "AND Timestamp < fromUnixTimestamp64Nano(toInt64({hi})) "
    "GROUP BY TraceId, LinkId HAVING notEmpty(cs) AND notEmpty(ss)) "
    "ARRAY JOIN cs AS c ARRAY JOIN ss AS s WHERE (c.6 OR s.4) AND c.1 != s.1 "
    "GROUP BY client, server, m, bk")


class ClickHouseStore:
    """A :class:`~noops.observe.store.base.TelemetryStore` on ClickHouse. Build it with
    :meth:`embedded` (chdb) or :meth:`server` (clickhouse-connect); ``ttl_days`` adds the
    exporter's table TTL on top of :meth:`retention`; ``egress_endpoints`` are the ``host:port``
    peers that make a client span an mTLS hop on the service map (:mod:`.edges`)."""

    def __init__(self, executor: Executor, ttl_days: int | None = None,
                 egress_endpoints: Collection[str] = edges.DEFAULT_EGRESS) -> None:
        self._x = executor
        self._lock = threading.Lock()
        self.egress_endpoints = frozenset(egress_endpoints)
        self._edge_high_ns = self._edge_trimmed_ns = 0
        with self._guard():
            for sql in create_statements(ttl_days):
                self._x.command(sql)

    @classmethod
    def embedded(cls, data_path: Path, database: str = "noops", ttl_days: int | None = None,
                 egress_endpoints: Collection[str] = edges.DEFAULT_EGRESS) -> ClickHouseStore:
        """chdb in this process. chdb allows a single ``data_path`` per process; several stores
        share it through distinct ``database`` names."""
        try:
            return cls(_Chdb(data_path, database), ttl_days, egress_endpoints)
        except ImportError as exc:
            raise StoreError("the embedded ClickHouse backend needs chdb: pip install 'chdb>=3.0'"
                             ) from exc

    @classmethod
    def server(cls, ttl_days: int | None = None,
               egress_endpoints: Collection[str] = edges.DEFAULT_EGRESS, **client_kwargs: Any
               ) -> ClickHouseStore:  # pragma: no cover
        """``client_kwargs`` go to ``clickhouse_connect.get_client`` (host, port, username, …)."""
        return cls(_Server(**client_kwargs), ttl_days, egress_endpoints)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except StoreError:
                raise
            except Exception as exc:  # chdb and clickhouse-connect raise assorted types
                raise StoreError(f"telemetry store (ClickHouse): {exc}") from exc

    def _q(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self._guard():
            tbl = self._x.arrow(sql, params)
        return from_arrow(tbl)

    def _tuples(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        return [tuple(r.values()) for r in self._q(sql, **params)]

    # -- writes -------------------------------------------------------------------------------
    def _insert(self, table: str, columns: Sequence[schema.Column], rows: Sequence[Row]) -> int:
        if not rows:
            return 0
        batch = to_arrow(table, columns, rows)
        with self._guard():
            self._x.insert_arrow(table, batch)
        return len(rows)

    def insert_spans(self, rows: Sequence[Row]) -> int:
        n = self._insert("otel_traces", schema.TRACES, rows)
        self._derive(rows)
        return n

    def insert_spans_arrow(self, spans: pa.Table) -> int:
        """Like :meth:`insert_spans` for an Arrow table with exactly the ``otel_traces`` columns
        and types :func:`~._rows.to_arrow` builds (what :mod:`noops.observe.otlp.native` makes)."""
        if spans.num_rows == 0:
            return 0
        with self._guard():
            self._x.insert_arrow("otel_traces", spans)
        self._derive(edge_rows(spans))
        return int(spans.num_rows)

    def _derive(self, rows: Sequence[Row]) -> None:
        """After a span insert: index its client/server spans and count the pairs they complete
        into the service-map edge table (see :mod:`.edges`). The trace-id table and the minute
        rollup need nothing here: their materialized views run on every insert."""
        batch_id = secrets.randbits(63)
        batch = edges.edge_batch(rows, batch_id, self.egress_endpoints)
        if batch is None:
            return
        stamps = batch.column("Timestamp").cast("int64").to_pylist()
        lo, hi = min(stamps), max(stamps)
        with self._guard():
            self._x.insert_arrow("otel_traces_edge_spans", batch)
            tids = _array_literal(sorted(set(batch.column("TraceId").to_pylist())))
            self._x.command(_PAIR_SQL.format(b=batch_id, lo=lo - edges.PAIR_HORIZON_NS,
                                             hi=hi + edges.PAIR_HORIZON_NS, tids=tids))
            self._edge_high_ns = max(self._edge_high_ns, hi)
        self._trim_edge_index()

    def _trim_edge_index(self) -> None:
        """Drop the pairing index's hour partitions that lie wholly more than
        :data:`~.edges.INDEX_KEEP_NS` behind the newest span seen: a partition drop, never a
        mutation (an ``ALTER … DELETE`` would rewrite the index's parts on every trim)."""
        cutoff_s = (self._edge_high_ns - edges.INDEX_KEEP_NS) // 1_000_000_000
        if cutoff_s // 3600 <= self._edge_trimmed_ns // 1_000_000_000 // 3600:
            return  # no new whole hour behind the cutoff since the last trim
        old = self._tuples(
            "SELECT DISTINCT partition_id FROM system.parts WHERE database = currentDatabase() "
            "AND table = 'otel_traces_edge_spans' AND active "
            "AND toUInt32OrZero(partition_id) > 1000000000 AND toUInt32OrZero(partition_id) % 3600 = 0 "
            "AND toUInt32OrZero(partition_id) + 3600 <= {c:UInt32}", c=cutoff_s)
        with self._guard():
            for (partition,) in old:
                if str(partition).isdigit():
                    self._x.command("ALTER TABLE otel_traces_edge_spans "
                                    f"DROP PARTITION ID '{partition}'")
        self._edge_trimmed_ns = cutoff_s * 1_000_000_000

    def insert_logs(self, rows: Sequence[Row]) -> int:
        return self._insert("otel_logs", schema.LOGS, rows)

    def insert_metrics(self, kind: schema.MetricKind, rows: Sequence[Row]) -> int:
        if kind not in schema.METRICS:
            raise StoreUsageError(f"unknown metric kind {kind!r}; use gauge, sum or histogram")
        return self._insert(schema.metric_table(kind), schema.METRICS[kind], rows)

    # -- reads --------------------------------------------------------------------------------
    def _stats(self, key: str, where: str, **params: Any) -> list[tuple[Any, ...]]:
        return self._tuples(
            f"SELECT toString({key}) AS k, count() AS n, countIf(StatusCode = 'Error') AS x, "
            "quantilesExactInclusive(0.5, 0.95, 0.99)(toFloat64(Duration)) AS q "
            f"FROM otel_traces WHERE {_WIN} AND {_ENTRY} {where} GROUP BY k ORDER BY k", **params)

    def services(self, start: datetime, end: datetime, *,
                 exact_max: int = EXACT_PERCENTILES_MAX) -> list[ServiceStats]:
        s, e, win = window_ns(start, end)
        lo, hi = whole_minutes(s, e)
        estimated, exact = service_buckets(self._tuples(
            _SERVICE_BUCKETS, s=s, e=e, lo=lo, hi=hi, lo_s=lo // 10**9, hi_s=hi // 10**9),
            win, exact_max)
        if not exact:
            return estimated  # type: ignore[return-value]
        return [ServiceStats(**stats(n, c, x, q, win))  # type: ignore[typeddict-item]
                for n, c, x, q in self._stats("ServiceName", "", s=s, e=e)]

    def endpoints(self, service: str, start: datetime, end: datetime,
                  max_endpoints: int = 200) -> list[EndpointStats]:
        s, e, win = window_ns(start, end)
        names = self._tuples(f"SELECT toString(SpanName) AS n, count() AS c FROM otel_traces "
                             f"WHERE {_WIN} AND {_ENTRY} AND ServiceName = {{svc:String}} "
                             "GROUP BY n", s=s, e=e, svc=service)
        keep = analysis.top_names(names, max_endpoints)
        key = "SpanName" if keep is None else (
            f"if(has({{keep:Array(String)}}, SpanName), SpanName, '{analysis.OTHER}')")
        rows = self._stats(key, "AND ServiceName = {svc:String}", s=s, e=e, svc=service,
                           keep=keep or [])
        folded = len(names) - len(keep or names)
        out = [EndpointStats(**stats(service, c, x, q, win), endpoint=n,  # type: ignore[typeddict-item]
                             folded=folded if keep is not None and n == analysis.OTHER else 0)
               for n, c, x, q in rows]
        return sorted(out, key=lambda r: (r["folded"] > 0, -r["count"], r["endpoint"]))

    def latency_histogram(self, service: str, endpoint: str | None, start: datetime,
                          end: datetime, buckets_ms: Sequence[float]) -> list[HistogramBin]:
        s, e, _ = window_ns(start, end)
        bounds = [float(b) for b in buckets_ms]
        extra = "AND SpanName = {ep:String}" if endpoint is not None else ""
        rows = self._tuples(
            "SELECT arrayCount(b -> b < Duration / 1e6, {bounds:Array(Float64)}) AS bin, "
            f"count() AS n FROM otel_traces WHERE {_WIN} AND {_ENTRY} "
            f"AND ServiceName = {{svc:String}} {extra} GROUP BY bin",
            s=s, e=e, svc=service, bounds=bounds, ep=endpoint or "")
        return bins(bounds, rows)

    def slowest_traces(self, service: str, start: datetime, end: datetime, limit: int = 20, *,
                       endpoint: str | None = None, status: str | None = None,
                       min_ms: float | None = None, attributes: Mapping[str, str] | None = None,
                       ) -> list[SlowTrace]:
        s, e, _ = window_ns(start, end)
        search = trace_search(status, min_ms, attributes)
        where = f"{_WIN} AND {_ENTRY} AND ServiceName = {{svc:String}} AND Duration >= {{min:UInt64}}"
        params: dict[str, Any] = {"s": s, "e": e, "svc": service, "n": int(limit),
                                  "min": search.min_ns}
        if endpoint:
            where += " AND positionCaseInsensitiveUTF8(SpanName, {ep:String}) > 0"
            params["ep"] = endpoint
        if search.failed is not None:
            where += f" AND StatusCode {'=' if search.failed else '!='} 'Error'"
        for i, (key, value) in enumerate((attributes or {}).items()):
            # a missing key reads as '' in ClickHouse: "k=" matches only where k is set to ''
            where += (f" AND ((mapContains(SpanAttributes, {{k{i}:String}}) "
                      f"AND SpanAttributes[{{k{i}:String}}] = {{v{i}:String}}) "
                      f"OR (mapContains(ResourceAttributes, {{k{i}:String}}) "
                      f"AND ResourceAttributes[{{k{i}:String}}] = {{v{i}:String}}))")
            params[f"k{i}"], params[f"v{i}"] = key, value
        rows = self._tuples(
            "SELECT TraceId, SpanId, toString(SpanName), toUnixTimestamp64Nano(Timestamp) AS t, "
            f"Duration, toString(StatusCode) FROM otel_traces WHERE {where} "
            "ORDER BY Duration DESC, TraceId LIMIT {n:UInt32}", **params)
        return [slow(r) for r in rows]

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        # One statement: the trace's (Start, End) from the trace-id table (ordered by TraceId: a
        # primary-key range) bound the read of otel_traces, found through partitions, the minmax
        # and primary indexes on time and the TraceId bloom filter. An unknown id gives
        # (1970, 1970): no rows.
        return self._q(
            "WITH (SELECT (min(Start), max(End)) FROM otel_traces_trace_id_ts "
            "PREWHERE TraceId = {t:String}) AS b "
            "SELECT * FROM otel_traces PREWHERE TraceId = {t:String} "
            "WHERE Timestamp >= b.1 AND Timestamp < b.2 + 1 ORDER BY Timestamp, SpanId",
            t=trace_id)

    def logs(self, query: str | None = None, service: str | None = None,
             severity: str | None = None, start: datetime | None = None,
             end: datetime | None = None, trace_id: str | None = None, limit: int = 100,
             span_id: str | None = None, attributes: Mapping[str, str] | None = None,
             ) -> list[dict[str, Any]]:
        where, params = ["1"], dict[str, Any]()
        if query:
            where.append("positionCaseInsensitiveUTF8(Body, {q:String}) > 0")
            params["q"] = query
        if service is not None:
            where.append("ServiceName = {svc:String}")
            params["svc"] = service
        if severity is not None:
            where.append("SeverityNumber >= {sev:UInt8}")
            params["sev"] = severity_floor(severity)
        if start is not None:
            where.append("Timestamp >= fromUnixTimestamp64Nano({s:Int64})")
            params["s"] = to_ns(start)
        if end is not None:
            where.append("Timestamp < fromUnixTimestamp64Nano({e:Int64})")
            params["e"] = to_ns(end)
        if trace_id is not None:
            where.append("TraceId = {t:String}")
            params["t"] = trace_id
        if span_id is not None:
            where.append("SpanId = {sp:String}")
            params["sp"] = span_id
        for i, (key, value) in enumerate((attributes or {}).items()):
            # A missing map key reads as '': require the key so that k= does not match absence.
            where.append(f"((mapContains(LogAttributes, {{k{i}:String}}) AND "
                         f"LogAttributes[{{k{i}:String}}] = {{v{i}:String}}) OR "
                         f"(mapContains(ResourceAttributes, {{k{i}:String}}) AND "
                         f"ResourceAttributes[{{k{i}:String}}] = {{v{i}:String}}))")
            params[f"k{i}"], params[f"v{i}"] = key, value
        return self._q(f"SELECT * FROM otel_logs WHERE {' AND '.join(where)} "
                       "ORDER BY Timestamp DESC, SpanId LIMIT {n:UInt32}", n=int(limit), **params)

    def service_map(self, start: datetime, end: datetime) -> list[Edge]:
        s, e, _ = window_ns(start, end)
        lo = s // edges.MINUTE_NS * edges.MINUTE_NS
        rows = self._tuples(
            "SELECT toString(ClientService) AS a, toString(ServerService) AS b, Bucket, "
            "sum(Calls) AS n, sum(ErrorCount) AS x, sum(MtlsCount) AS m, min(DurationMin) AS mn, "
            "max(DurationMax) AS mx FROM otel_traces_edges_1m "
            "WHERE Minute >= toDateTime(intDiv({lo:Int64}, 1000000000)) "
            "AND Minute < fromUnixTimestamp64Nano({e:Int64}) GROUP BY a, b, Bucket", lo=lo, e=e)
        return edges.edges_from_rows(rows, (e - lo) / 1e9)

    def error_groups(self, start: datetime, end: datetime, service: str | None = None,
                     limit: int = 50) -> list[ErrorGroup]:
        s, e, _ = window_ns(start, end)
        where = _WIN + (" AND ServiceName = {svc:String}" if service is not None else "")
        rows = self._tuples(
            "SELECT toString(svc) AS svc_, toString(ep) AS ep_, etype, msg, count() AS n, "
            "toUnixTimestamp64Nano(min(ts)) AS lo, toUnixTimestamp64Nano(max(ts)) AS hi, "
            "argMax(tid, (ts, tid)) AS sample FROM ("
            "SELECT ServiceName AS svc, SpanName AS ep, Timestamp AS ts, TraceId AS tid, "
            "a['exception.type'] AS etype, a['exception.message'] AS msg FROM otel_traces "
            "ARRAY JOIN `Events.Name` AS en, `Events.Attributes` AS a "
            f"WHERE {where} AND en = 'exception' UNION ALL "
            "SELECT ServiceName, SpanName, Timestamp, TraceId, '', StatusMessage FROM otel_traces "
            f"WHERE {where} AND StatusCode = 'Error' AND NOT has(`Events.Name`, 'exception')) "
            "GROUP BY svc_, ep_, etype, msg", s=s, e=e, svc=service or "")
        return analysis.error_groups(rows, limit)

    def correlations(self, service: str, endpoint: str | None, start: datetime, end: datetime,
                     *, slow_ms: float | None = None, failed: bool = False, limit: int = 10,
                     ) -> list[Correlation]:
        cohorts = analysis.cohorts_of(slow_ms, failed)
        s, e, _ = window_ns(start, end)
        hits = ["StatusCode = 'Error'" if kind == "failed" else "Duration >= {slow:Float64}"
                for kind, _ in cohorts]
        extra = "AND SpanName = {ep:String}" if endpoint is not None else ""
        params: dict[str, Any] = {"s": s, "e": e, "svc": service, "ep": endpoint or "",
                                  "slow": next((ns for k, ns in cohorts if k == "slow"), 0.0)}
        where = f"{_WIN} AND {_ENTRY} AND ServiceName = {{svc:String}} {extra}"
        # Which time slices to read, from the minute rollup's counts (not the spans).
        n = analysis.CORRELATION_SLICES
        minutes = self._tuples(
            "SELECT toUnixTimestamp(Minute) * 1000000000 AS m, sum(Count) AS c "
            "FROM otel_traces_rollup_1m WHERE Minute >= toDateTime({lo_s:Int64}) "
            f"AND Minute < fromUnixTimestamp64Nano({{e:Int64}}) AND {_ENTRY} "
            f"AND ServiceName = {{svc:String}} {extra} GROUP BY m",
            **params, lo_s=s // edges.MINUTE_NS * 60)
        keep = analysis.sample_slices(analysis.minute_slices(minutes, s, e, n),
                                      analysis.CORRELATION_SAMPLE, n)
        if keep is not None:  # read whole time slices only (see sample_slices)
            where += " AND (" + " OR ".join(
                f"(Timestamp >= fromUnixTimestamp64Nano({{lo{i}:Int64}}) "
                f"AND Timestamp < fromUnixTimestamp64Nano({{hi{i}:Int64}}))" for i in keep) + ")"
            for i in keep:
                params[f"lo{i}"], params[f"hi{i}"] = (s + (e - s) * j // n for j in (i, i + 1))
        # Every cohort from one read of the attribute maps (what a correlation costs).
        flags = ", ".join(f"{h} AS h{j}" for j, h in enumerate(hits))
        counts = ", ".join(f"countIf(h{j}) AS c{j}, countIf(NOT h{j}) AS r{j}"
                           for j in range(len(hits)))
        (totals,) = self._tuples(f"SELECT {counts} FROM (SELECT {flags} FROM otel_traces "
                                 f"WHERE {where})", **params)
        rows = self._tuples(
            f"SELECT kv.1 AS src, kv.2 AS k, kv.3 AS v, {counts} FROM (SELECT {flags}, arrayConcat("
            "arrayMap((k, v) -> ('span', k, v), mapKeys(SpanAttributes), mapValues(SpanAttributes)), "
            "arrayMap((k, v) -> ('resource', k, v), mapKeys(ResourceAttributes), "
            f"mapValues(ResourceAttributes))) AS kvs FROM otel_traces WHERE {where}) "
            "ARRAY JOIN kvs AS kv GROUP BY src, k, v HAVING "
            + " OR ".join(f"c{j} > 0" for j in range(len(hits))), **params)
        return analysis.cohort_correlations(rows, totals, [k for k, _ in cohorts], limit)

    def timeseries(self, service: str, start: datetime, end: datetime,
                   endpoint: str | None = None) -> list[TimeseriesPoint]:
        s, e, _ = window_ns(start, end)
        extra = "AND SpanName = {ep:String}" if endpoint is not None else ""
        rows = self._tuples(
            "SELECT toUnixTimestamp(Minute) * 1000000000 AS m, Bucket, sum(Count) AS n, "
            "sum(ErrorCount) AS x, min(DurationMin) AS lo, max(DurationMax) AS hi "
            "FROM otel_traces_rollup_1m WHERE Minute >= toDateTime(intDiv({s:Int64}, 1000000000)) "
            "AND Minute < fromUnixTimestamp64Nano({e:Int64}) "
            f"AND {_ENTRY} AND ServiceName = {{svc:String}} {extra} GROUP BY Minute, Bucket",
            s=s, e=e, svc=service, ep=endpoint or "")
        return points(rows)

    def gauge_series(self, metric: str, start: datetime, end: datetime, *,
                     service: str | None = None, by: str | None = None, step_s: int = 60,
                     ) -> list[GaugePoint]:
        step = check_step(step_s)
        s, e, _ = window_ns(start, end)
        group = "Attributes[{by:String}]" if by else "''"
        extra = "AND ServiceName = {svc:String}" if service is not None else ""
        rows = self._tuples(
            "SELECT intDiv(toUnixTimestamp(TimeUnix), {step:UInt32}) * {step:UInt32} AS b, "
            f"{group} AS g, avg(Value) AS a, max(Value) AS m, count() AS n "
            "FROM otel_metrics_gauge WHERE MetricName = {name:String} "
            "AND TimeUnix >= fromUnixTimestamp64Nano({s:Int64}) "
            f"AND TimeUnix < fromUnixTimestamp64Nano({{e:Int64}}) {extra} GROUP BY b, g",
            step=step, s=s, e=e, name=metric, by=by or "", svc=service or "")
        return gauge_points(step, rows)

    # -- housekeeping -------------------------------------------------------------------------
    def compact_rollups(self, before: datetime, after: datetime | None = None) -> int:
        """Nothing to do: the rollup and edge tables are AggregatingMergeTrees, whose background
        merges fold rows of one key into one (reads ``GROUP BY`` either way)."""
        to_ns(before)  # the same argument check as DuckDB's
        return 0

    def retention(self, signal: schema.Signal, max_age: timedelta, now: datetime | None = None
                  ) -> None:
        if signal not in schema.SIGNAL_TABLES:
            raise StoreUsageError(f"unknown signal {signal!r}; use {', '.join(schema.SIGNAL_TABLES)}")
        cutoff = to_ns(now or datetime.now(UTC)) - max_age // timedelta(microseconds=1) * 1000
        for table in schema.SIGNAL_TABLES[signal]:
            # Whole days well before the cutoff go as partitions (no rewrite; every table here is
            # PARTITION BY toDate(…), so ``partition`` reads as a date); the day margin covers
            # otel_traces_trace_id_ts, partitioned by Start but expired by End.
            old = self._tuples(
                "SELECT DISTINCT partition_id FROM system.parts WHERE database = currentDatabase() "
                "AND table = {t:String} AND active AND toDateOrNull(partition) < "
                "toDate(fromUnixTimestamp64Nano({c:Int64})) - 1", t=table, c=cutoff)
            with self._guard():
                for (partition,) in old:
                    if not str(partition).isalnum():
                        continue
                    self._x.command(f"ALTER TABLE {table} DROP PARTITION ID '{partition}'")
        with self._guard():
            for table in schema.SIGNAL_TABLES[signal]:
                # A synchronous mutation: parts are rewritten without the rows before returning.
                self._x.command(
                    f"ALTER TABLE {table} DELETE WHERE `{schema.TIME_COLUMN[table]}` < "
                    f"fromUnixTimestamp64Nano(toInt64({cutoff})) SETTINGS mutations_sync = 2")

    def close(self) -> None:
        # The embedded chdb session lives as long as the process (it cannot be reopened elsewhere).
        with self._lock:
            close = getattr(self._x, "close", None)
            if close is not None:
                close()
