"""``DuckDBStore``: the default telemetry store, one DuckDB file under NOOPS_HOME.

Type mapping from the exporter's ClickHouse types (:func:`duck_type`):

==============================  =======================  ====================================
ClickHouse                      DuckDB                   why
==============================  =======================  ====================================
DateTime64(9)                   TIMESTAMP_NS             same nanosecond precision, UTC
DateTime                        TIMESTAMP_S              same second precision
String, LowCardinality(String)  VARCHAR                  DuckDB dictionary-compresses itself
Map(LowCardinality(String), S)  MAP(VARCHAR, VARCHAR)
UInt8/16/32/64, Int32           UTINYINT/USMALLINT/UINTEGER/UBIGINT, INTEGER
Float64, Bool                   DOUBLE, BOOLEAN
Array(T)                        T[]
Nested(a T, …)                  one ``"Name.a" T[]`` column per field (ClickHouse's own layout)
==============================  =======================  ====================================

Writes go in as Arrow tables (measured faster than ``executemany``, which binds row by row),
each ``insert_*`` in one transaction together with its trace-id and rollup rows and, for
spans, the service-map pairing (its rows built column-wise from the same Arrow table, see
:mod:`.edges`). DuckDB's own insert of the ``otel_traces`` columns and its commit (mostly the two
``MAP`` columns, ~40 µs of CPU per span) dominate the cost of a span insert.
Reads have no index: DuckDB scans with zone maps, so every query is
bounded by time (``trace`` through ``otel_traces_trace_id_ts``).
"""

# SQL text is assembled only from schema constants and fixed clauses; every value is a bound
# parameter (DuckDB ?, ClickHouse {name:Type}), so S608 does not apply here.
# ruff: noqa: S608

from __future__ import annotations

import functools
import secrets
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

import duckdb
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from noops.observe.store import analysis, edges, schema
from noops.observe.store._duck_reads import ReadCursors
from noops.observe.store._rows import (
    bins,
    check_step,
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
from noops.observe.store.rollup import BUCKETS_PER_OCTAVE, MAX_BUCKET, top_floor_ns

__all__ = ["DuckDBStore", "duck_type"]

_SCALARS: Final = {
    "String": "VARCHAR", "LowCardinality(String)": "VARCHAR", "DateTime64(9)": "TIMESTAMP_NS",
    "DateTime": "TIMESTAMP_S", "UInt8": "UTINYINT", "UInt16": "USMALLINT", "UInt32": "UINTEGER",
    "UInt64": "UBIGINT", "Int32": "INTEGER", "Float64": "DOUBLE", "Bool": "BOOLEAN",
}
# Rows go in sorted like the exporter's ClickHouse ORDER BY: runs of equal service, span name and
# attribute values compress (dictionary/RLE per segment) and zone maps on Timestamp stay tight.
_INSERT_ORDER: Final = {
    "otel_traces": "ServiceName, SpanName, Timestamp",
    "otel_logs": "ServiceName, Timestamp",
}
_ENTRY: Final = "SpanKind IN ('Server', 'Consumer')"
# DuckDB checkpoints its WAL into the file when the WAL reaches this size. Each checkpoint
# writes the tables' last, partly filled row groups; rows appended to them later make the next
# checkpoint rewrite them, and the blocks they leave stay in the file as free space (the file
# never shrinks). At DuckDB's 16 MiB default a 122,880-row group of spans (~55 MB in the WAL) was
# rewritten several times: the file came out ~1.5x the size of a compact copy of its data.
_CHECKPOINT_AT: Final = "256MB"
_BUCKET_SQL: Final = (f"CAST(least(floor({BUCKETS_PER_OCTAVE} * log2(greatest(Duration, 1))), "
                      f"{MAX_BUCKET}) AS USMALLINT)")
# Service-map pairing (see :mod:`.edges`): index rows near the batch that pair up, one of them
# new. Paired rows leave the index, so it holds only spans still waiting for their partner and
# each scan stays small; a client span is paired with its first server child only.
_EDGE_SIDE: Final = ("(SELECT * FROM otel_traces_edge_spans WHERE Side = {side} "
                     "AND Timestamp >= $lo AND Timestamp < $hi "
                     "AND TraceId IN (SELECT TraceId FROM _edge_batch))")
_PAIR_SQL: Final = (
    "CREATE OR REPLACE TEMP TABLE _edge_pairs AS SELECT c.TraceId, c.LinkId, "
    "c.ServiceName AS client, s.ServiceName AS server, c.Timestamp, c.Duration, "
    "c.IsError + s.IsError > 0 AS error, c.Mtls + s.Mtls > 0 AS mtls "
    f"FROM {_EDGE_SIDE.format(side=0)} c JOIN {_EDGE_SIDE.format(side=1)} s "
    "ON s.TraceId = c.TraceId AND s.LinkId = c.LinkId "
    "WHERE (c.Batch = $b OR s.Batch = $b) AND c.ServiceName <> s.ServiceName")
_EDGE_SQL: Final = (
    "INSERT INTO otel_traces_edges_1m SELECT client, server, "
    f"date_trunc('minute', Timestamp)::TIMESTAMP_S, {_BUCKET_SQL}, count(*), "
    "count(*) FILTER (WHERE error), count(*) FILTER (WHERE mtls), min(Duration), max(Duration) "
    "FROM _edge_pairs GROUP BY ALL")
_UNINDEX_SQL: Final = (
    "DELETE FROM otel_traces_edge_spans USING _edge_pairs p "
    "WHERE otel_traces_edge_spans.TraceId = p.TraceId "
    "AND otel_traces_edge_spans.LinkId = p.LinkId")


# Run with each span insert, in its transaction: the trace-id table and the minute rollup.
_SPANS_AFTER: Final = (
    "INSERT INTO otel_traces_trace_id_ts SELECT TraceId, "
    "date_trunc('second', min(Timestamp))::TIMESTAMP_S, "
    "date_trunc('second', max(Timestamp))::TIMESTAMP_S FROM _batch GROUP BY TraceId",
    "INSERT INTO otel_traces_rollup_1m SELECT ServiceName, SpanName, SpanKind, "
    f"date_trunc('minute', Timestamp)::TIMESTAMP_S AS Minute, {_BUCKET_SQL} AS Bucket, "
    "count(*), count(*) FILTER (WHERE StatusCode = 'Error'), sum(Duration)::UBIGINT, "
    "min(Duration), max(Duration) FROM _batch GROUP BY ALL",
)


# ``Minute`` (TIMESTAMP_S) against bounds of its own type: a TIMESTAMP bound would cast the
# column on every row and lose the zone maps that skip minutes outside the window.
_MINUTES: Final = "Minute >= ?::TIMESTAMP_S AND Minute < ?::TIMESTAMP_S"
# Per service and latency bucket over a window: its whole minutes from the rollup, its partial
# first and last minutes from the spans (exact counts either way; see ``services``).
_SERVICE_BUCKETS: Final = (
    "SELECT ServiceName, Bucket, sum(n), sum(x), min(lo), max(hi) FROM ("
    "SELECT ServiceName, Bucket, Count AS n, ErrorCount AS x, DurationMin AS lo, "
    f"DurationMax AS hi FROM otel_traces_rollup_1m WHERE {_MINUTES} AND {_ENTRY} UNION ALL "
    f"SELECT ServiceName, {_BUCKET_SQL}, 1, (StatusCode = 'Error')::INTEGER, Duration, Duration "
    f"FROM otel_traces WHERE {_ENTRY} AND ((Timestamp >= ? AND Timestamp < ?) "
    "OR (Timestamp >= ? AND Timestamp < ?))) GROUP BY ALL")


def _whole_s(ns: int) -> datetime:
    """``ns`` rounded up to a whole second: for whole-second values ``m``, ``m >= ns`` and
    ``m < ns`` hold exactly when they hold against this bound (so it casts to TIMESTAMP_S
    without changing what a window holds)."""
    return _ts(-(-ns // 1_000_000_000) * 1_000_000_000)


def duck_type(ch: str) -> str:
    """The DuckDB type noops stores a ClickHouse exporter column type as."""
    if ch.startswith("Array("):
        return duck_type(ch[6:-1]) + "[]"
    if ch.startswith("Map("):
        return "MAP(VARCHAR, VARCHAR)"
    return _SCALARS[ch]


def _index_traces(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The trace ids that have rows in the service-map pairing index."""
    return {r[0] for r in con.execute(
        "SELECT DISTINCT TraceId FROM otel_traces_edge_spans").fetchall()}


def _self_contained(batch_traces: set[str], index_traces: set[str]) -> bool:
    """True when no index row can pair with the batch (no trace id in common): the batch's
    pairs are then the ones it completes by itself."""
    return batch_traces.isdisjoint(index_traces)


def _append(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    con.register("_append", rows)
    try:
        con.execute(f"INSERT INTO {table} SELECT * FROM _append")
    finally:
        con.unregister("_append")


def _ts(ns: int) -> datetime:
    # DuckDB binds datetimes at microsecond precision; window bounds need no more.
    return datetime.fromtimestamp(ns // 1000 / 1e6, tz=UTC).replace(tzinfo=None)


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _one_snapshot(method: Callable[Concatenate[DuckDBStore, _P], _T]
                  ) -> Callable[Concatenate[DuckDBStore, _P], _T]:
    """A read method of several statements, run in one read transaction (``_snapshot``)."""
    def wrapped(self: DuckDBStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        with self._snapshot():
            return method(self, *args, **kwargs)

    functools.update_wrapper(wrapped, method)
    return wrapped


class DuckDBStore:
    """A :class:`~noops.observe.store.base.TelemetryStore` in one DuckDB file (``":memory:"``
    for tests). ``threads`` caps DuckDB's worker threads (``None``: one per core);
    ``egress_endpoints`` are the ``host:port`` peers that make a client span an mTLS hop on the
    service map (:mod:`.edges`)."""

    def __init__(self, path: Path | str, threads: int | None = None,
                 egress_endpoints: Collection[str] = edges.DEFAULT_EGRESS) -> None:
        self.path = path
        self.egress_endpoints = frozenset(egress_endpoints)
        self._lock = threading.Lock()  # writes: one at a time, on ``self._con``
        self._edge_high_ns = self._edge_trimmed_ns = 0
        # Trace ids with rows in the pairing index, a superset (a rolled-back insert or paired
        # rows may leave some until the next trim rebuilds it): a span batch sharing none of
        # them is paired in Arrow alone (see ``_deriver``).
        self._edge_traces: set[str] = set()
        try:
            self._con = duckdb.connect(str(path), config={"wal_autocheckpoint": _CHECKPOINT_AT})
            if threads:
                self._con.execute(f"SET threads = {int(threads)}")
            for table, columns in schema.TABLES.items():
                cols = ", ".join(f'"{n}" {duck_type(t)}' for n, t in columns)
                self._con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols})")
            self._edge_traces = _index_traces(self._con)
            self._reads = ReadCursors(self._con, str(path))  # reads: a cursor per thread
        except duckdb.Error as exc:
            raise StoreError(f"cannot open the telemetry store {path}: {exc}") from exc

    @contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            try:
                yield self._con
            except duckdb.Error as exc:
                raise StoreError(f"telemetry store ({self.path}): {exc}") from exc

    def _reader(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        return self._reads.cursor()

    def _snapshot(self) -> AbstractContextManager[None]:
        return self._reads.snapshot()

    def _rows(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
              ) -> list[tuple[Any, ...]]:
        with self._reader() as con:
            return con.execute(sql, dict(params) if isinstance(params, Mapping)
                               else list(params)).fetchall()

    # -- writes -------------------------------------------------------------------------------
    def _insert(self, table: str, columns: Sequence[schema.Column], rows: Sequence[Row],
                after: Sequence[str] = (),
                then: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> int:
        """Insert ``rows`` into ``table``, then run the ``after`` statements (which may read the
        batch as ``_batch``) and ``then(con)``, all in one transaction."""
        if not rows:
            return 0
        return self._insert_arrow(table, to_arrow(table, columns, rows), after, then)

    def _insert_arrow(self, table: str, batch: pa.Table, after: Sequence[str] = (),
                      then: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> int:
        with self._cursor() as con:
            con.register("_batch", batch)
            try:
                con.execute("BEGIN")
                try:
                    order = _INSERT_ORDER.get(table)
                    con.execute(f"INSERT INTO {table} SELECT * FROM _batch"
                                + (f" ORDER BY {order}" if order else ""))
                    for sql in after:
                        con.execute(sql)
                    if then is not None:
                        then(con)
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            finally:
                con.unregister("_batch")
        return int(batch.num_rows)

    def insert_spans(self, rows: Sequence[Row]) -> int:
        if not rows:
            return 0
        return self.insert_spans_arrow(to_arrow("otel_traces", schema.TRACES, rows))

    def insert_spans_arrow(self, spans: pa.Table) -> int:
        """Like :meth:`insert_spans` for an Arrow table with exactly the ``otel_traces`` columns
        and types :func:`~._rows.to_arrow` builds (what :mod:`noops.observe.otlp.native` makes)."""
        if spans.num_rows == 0:
            return 0
        return self._insert_arrow("otel_traces", spans, after=_SPANS_AFTER,
                                  then=self._deriver(spans))

    def _deriver(self, spans: pa.Table) -> Callable[[duckdb.DuckDBPyConnection], None] | None:
        """The service-map step for a span insert, run inside the insert's transaction (one
        COMMIT; a failed pairing rolls the spans back with it): index the batch's client/server
        spans and count the pairs they complete into the edge table (see :mod:`.edges`)."""
        batch_id = secrets.randbits(63)
        batch = edges.edge_batch_arrow(spans, batch_id, self.egress_endpoints)
        if batch is None:
            return None
        mm = pc.min_max(batch.column("Timestamp").cast(pa.int64()))
        lo, hi = int(mm["min"].as_py()), int(mm["max"].as_py())
        params = {"b": batch_id, "lo": _ts(lo - edges.PAIR_HORIZON_NS),
                  "hi": _ts(hi + edges.PAIR_HORIZON_NS)}
        traces = set(batch.column("TraceId").to_pylist())

        def derive(con: duckdb.DuckDBPyConnection) -> None:
            if _self_contained(traces, self._edge_traces):
                # No index row shares a trace with the batch: its pairs are the ones it
                # completes by itself, found in Arrow without scanning the index.
                pairs, rest = edges.pair_in_batch(batch)
                if pairs.num_rows:
                    _append(con, "otel_traces_edges_1m", edges.edge_minutes(pairs))
                if rest.num_rows:
                    _append(con, "otel_traces_edge_spans", rest)
                    self._edge_traces |= set(rest.column("TraceId").to_pylist())
            else:
                con.register("_edge_batch", batch)
                try:
                    con.execute("INSERT INTO otel_traces_edge_spans SELECT * FROM _edge_batch")
                    con.execute(_PAIR_SQL, params)
                    con.execute(_EDGE_SQL)
                    con.execute(_UNINDEX_SQL)
                    con.execute("DROP TABLE _edge_pairs")
                finally:
                    con.unregister("_edge_batch")
                self._edge_traces |= traces
            high = max(self._edge_high_ns, hi)
            if high - self._edge_trimmed_ns > edges.PAIR_HORIZON_NS:
                con.execute("DELETE FROM otel_traces_edge_spans WHERE Timestamp < ?",
                            [_ts(high - edges.INDEX_KEEP_NS)])
                self._edge_trimmed_ns = high
                self._edge_traces = _index_traces(con)
            self._edge_high_ns = high
        return derive

    def insert_logs(self, rows: Sequence[Row]) -> int:
        return self._insert("otel_logs", schema.LOGS, rows)

    def insert_metrics(self, kind: schema.MetricKind, rows: Sequence[Row]) -> int:
        if kind not in schema.METRICS:
            raise StoreUsageError(f"unknown metric kind {kind!r}; use gauge, sum or histogram")
        return self._insert(schema.metric_table(kind), schema.METRICS[kind], rows)

    # -- reads --------------------------------------------------------------------------------
    def _stats(self, key: str, where: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._rows(
            f"SELECT {key}, count(*), count(*) FILTER (WHERE StatusCode = 'Error'), "
            "quantile_cont(Duration::DOUBLE, [0.5, 0.95, 0.99]) FROM otel_traces "
            f"WHERE Timestamp >= ? AND Timestamp < ? AND {_ENTRY} {where} "
            "GROUP BY 1 ORDER BY 1", params)

    @_one_snapshot
    def services(self, start: datetime, end: datetime, *,
                 exact_max: int = EXACT_PERCENTILES_MAX) -> list[ServiceStats]:
        s, e, win = window_ns(start, end)
        lo, hi = whole_minutes(s, e)
        estimated, exact = service_buckets(self._rows(_SERVICE_BUCKETS, [
            _whole_s(lo), _whole_s(hi), _ts(s), _ts(lo), _ts(hi), _ts(e)]), win, exact_max)
        if not exact:
            return estimated  # type: ignore[return-value]
        rows = self._stats("ServiceName", "", [_ts(s), _ts(e)])
        return [ServiceStats(**stats(n, c, err, q, win)) for n, c, err, q in rows]  # type: ignore[typeddict-item]

    @_one_snapshot
    def endpoints(self, service: str, start: datetime, end: datetime,
                  max_endpoints: int = 200) -> list[EndpointStats]:
        s, e, win = window_ns(start, end)
        base = [_ts(s), _ts(e), service]
        names = self._rows(f"SELECT SpanName, count(*) FROM otel_traces WHERE Timestamp >= ? "
                           f"AND Timestamp < ? AND {_ENTRY} AND ServiceName = ? GROUP BY 1", base)
        keep = analysis.top_names(names, max_endpoints)
        if keep is None:
            rows = self._stats("SpanName", "AND ServiceName = ?", base)
        else:
            rows = self._stats(f"CASE WHEN list_contains(?, SpanName) THEN SpanName "
                               f"ELSE '{analysis.OTHER}' END", "AND ServiceName = ?",
                               [keep, *base])
        folded = len(names) - len(keep or names)
        out = [EndpointStats(**stats(service, c, err, q, win), endpoint=n,  # type: ignore[typeddict-item]
                             folded=folded if keep is not None and n == analysis.OTHER else 0)
               for n, c, err, q in rows]
        return sorted(out, key=lambda r: (r["folded"] > 0, -r["count"], r["endpoint"]))

    def latency_histogram(self, service: str, endpoint: str | None, start: datetime,
                          end: datetime, buckets_ms: Sequence[float]) -> list[HistogramBin]:
        s, e, _ = window_ns(start, end)
        bounds = [float(b) for b in buckets_ms]
        params: list[Any] = [bounds, _ts(s), _ts(e), service]
        extra = ""
        if endpoint is not None:
            extra, params = "AND SpanName = ?", [*params, endpoint]
        rows = self._rows(
            "SELECT len(list_filter(?::DOUBLE[], lambda b: b < Duration / 1e6)) AS bin, count(*) "
            f"FROM otel_traces WHERE Timestamp >= ? AND Timestamp < ? AND {_ENTRY} "
            f"AND ServiceName = ? {extra} GROUP BY bin", params)
        return bins(bounds, rows)

    @_one_snapshot
    def slowest_traces(self, service: str, start: datetime, end: datetime, limit: int = 20, *,
                       endpoint: str | None = None, status: str | None = None,
                       min_ms: float | None = None, attributes: Mapping[str, str] | None = None,
                       ) -> list[SlowTrace]:
        s, e, _ = window_ns(start, end)
        search = trace_search(status, min_ms, attributes)
        where = f"Timestamp >= ? AND Timestamp < ? AND {_ENTRY} AND ServiceName = ?"
        params: list[Any] = [_ts(s), _ts(e), service]
        named, named_params = "", list[Any]()
        if endpoint:
            named, named_params = "AND contains(lower(SpanName), lower(?))", [endpoint]
        if search.failed is not None:
            where += f" AND StatusCode {'=' if search.failed else '!='} 'Error'"
        # A floor the limit-th longest duration is at or above, from the latency buckets of the
        # window's whole minutes in the rollup (spans all inside the window): the ids and names
        # are then read and sorted for the spans at least that long, not for every span. The
        # rollup knows span names and errors, not attributes. (A first pass over only the
        # longest spans does not help an attribute search: DuckDB decodes the attribute maps
        # of every vector that holds one of them, i.e. of nearly all.)
        lo, hi = -(-s // edges.MINUTE_NS) * edges.MINUTE_NS, e // edges.MINUTE_NS * edges.MINUTE_NS
        count = {None: "Count", True: "ErrorCount", False: "Count - ErrorCount"}[search.failed]
        buckets = self._rows(
            f"SELECT Bucket, sum({count}) FROM otel_traces_rollup_1m "
            f"WHERE {_MINUTES} AND {_ENTRY} AND ServiceName = ? {named} GROUP BY 1",
            [_whole_s(lo), _whole_s(hi), service, *named_params]
        ) if hi > lo and not attributes else []
        floor = max(top_floor_ns(buckets, max(int(limit), 1)), search.min_ns)
        # Each attribute is a span or a resource attribute: one branch per choice, UNIONed, so
        # that no branch reads both maps, and a branch whose key is in none of the blocks'
        # maps is skipped by DuckDB's statistics (resource keys are few and fixed).
        branches = [("SELECT TraceId, SpanId, SpanName, epoch_ns(Timestamp) AS t, Duration, "
                     f"StatusCode FROM otel_traces WHERE Duration >= ? AND {where} {named}",
                     [*params, *named_params])]
        for key, value in (attributes or {}).items():
            branches = [(f"{sql} AND {m}[?] = ?", [*args, key, value]) for sql, args in branches
                        for m in ("SpanAttributes", "ResourceAttributes")]
        union = " UNION ".join(sql for sql, _ in branches)

        def longest(at_least: int) -> list[tuple[Any, ...]]:
            return self._rows(f"SELECT * FROM ({union}) ORDER BY Duration DESC, TraceId LIMIT ?",
                              [*(x for _, a in branches for x in (at_least, *a)), int(limit)])

        rows = longest(floor)
        # The rollup may count spans no longer stored (it is kept as long as metrics, spans as
        # long as traces): short of ``limit`` above the floor, the floor was too high.
        if len(rows) < int(limit) and floor > search.min_ns:
            rows = longest(search.min_ns)
        return [slow(r) for r in rows]

    @_one_snapshot
    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        ((lo, hi),) = self._rows("SELECT min(Start), max(\"End\") FROM otel_traces_trace_id_ts "
                                 "WHERE TraceId = ?", [trace_id])
        if lo is None:
            return []
        with self._reader() as con:
            tbl = con.sql(
                "SELECT * FROM otel_traces WHERE TraceId = ? AND Timestamp >= ?::TIMESTAMP_NS "
                "AND Timestamp < ?::TIMESTAMP_NS + INTERVAL 1 SECOND ORDER BY Timestamp, SpanId",
                params=[trace_id, lo, hi]).to_arrow_table()
        return from_arrow(tbl)

    def logs(self, query: str | None = None, service: str | None = None,
             severity: str | None = None, start: datetime | None = None,
             end: datetime | None = None, trace_id: str | None = None, limit: int = 100,
             span_id: str | None = None, attributes: Mapping[str, str] | None = None,
             ) -> list[dict[str, Any]]:
        where, params = ["TRUE"], list[Any]()
        if query:
            where.append("contains(lower(Body), lower(?))")
            params.append(query)
        if service is not None:
            where.append("ServiceName = ?")
            params.append(service)
        if severity is not None:
            where.append("SeverityNumber >= ?")
            params.append(severity_floor(severity))
        if start is not None:
            where.append("Timestamp >= ?")
            params.append(_ts(to_ns(start)))
        if end is not None:
            where.append("Timestamp < ?")
            params.append(_ts(to_ns(end)))
        if trace_id is not None:
            where.append("TraceId = ?")
            params.append(trace_id)
        if span_id is not None:
            where.append("SpanId = ?")
            params.append(span_id)
        for key, value in (attributes or {}).items():
            where.append("(LogAttributes[?] = ? OR ResourceAttributes[?] = ?)")
            params += [key, value, key, value]
        with self._reader() as con:
            tbl = con.sql(f"SELECT * FROM otel_logs WHERE {' AND '.join(where)} "
                          "ORDER BY Timestamp DESC, SpanId LIMIT ?",
                          params=[*params, int(limit)]).to_arrow_table()
        return from_arrow(tbl)

    def service_map(self, start: datetime, end: datetime) -> list[Edge]:
        s, e, _ = window_ns(start, end)
        lo = s // edges.MINUTE_NS * edges.MINUTE_NS
        rows = self._rows(
            "SELECT ClientService, ServerService, Bucket, sum(Calls), sum(ErrorCount), "
            "sum(MtlsCount), min(DurationMin), max(DurationMax) FROM otel_traces_edges_1m "
            f"WHERE {_MINUTES} GROUP BY ALL", [_whole_s(lo), _whole_s(e)])
        return edges.edges_from_rows(rows, (e - lo) / 1e9)

    def error_groups(self, start: datetime, end: datetime, service: str | None = None,
                     limit: int = 50) -> list[ErrorGroup]:
        s, e, _ = window_ns(start, end)
        where = "Timestamp >= $s AND Timestamp < $e"
        params: dict[str, Any] = {"s": _ts(s), "e": _ts(e)}
        if service is not None:
            where, params = f"{where} AND ServiceName = $svc", {**params, "svc": service}
        rows = self._rows(
            "SELECT ServiceName, SpanName, etype, msg, count(*), epoch_ns(min(Timestamp)), "
            "epoch_ns(max(Timestamp)), arg_max(TraceId, (Timestamp, TraceId)) FROM ("
            "SELECT ServiceName, SpanName, Timestamp, TraceId, "
            "coalesce(a['exception.type'], '') AS etype, coalesce(a['exception.message'], '') AS msg "
            "FROM (SELECT ServiceName, SpanName, Timestamp, TraceId, unnest(\"Events.Name\") AS n, "
            f"unnest(\"Events.Attributes\") AS a FROM otel_traces WHERE {where} "
            "AND len(\"Events.Name\") > 0) WHERE n = 'exception' UNION ALL "
            "SELECT ServiceName, SpanName, Timestamp, TraceId, '', StatusMessage FROM otel_traces "
            f"WHERE {where} AND StatusCode = 'Error' "
            "AND NOT list_contains(\"Events.Name\", 'exception')) GROUP BY ALL", params)
        return analysis.error_groups(rows, limit)

    @_one_snapshot
    def correlations(self, service: str, endpoint: str | None, start: datetime, end: datetime,
                     *, slow_ms: float | None = None, failed: bool = False, limit: int = 10,
                     ) -> list[Correlation]:
        cohorts = analysis.cohorts_of(slow_ms, failed)
        s, e, _ = window_ns(start, end)
        params: dict[str, Any] = {"s": _ts(s), "e": _ts(e), "svc": service}
        hits = []
        for kind, slow_ns in cohorts:
            if kind == "slow":
                hits.append("Duration >= $slow")
                params["slow"] = slow_ns
            else:
                hits.append("StatusCode = 'Error'")
        where = f"Timestamp >= $s AND Timestamp < $e AND {_ENTRY} AND ServiceName = $svc"
        if endpoint is not None:
            where, params["ep"] = f"{where} AND SpanName = $ep", endpoint
        # Which time slices to read, from the minute rollup's counts (not the spans).
        n, ep = analysis.CORRELATION_SLICES, endpoint is not None
        minutes = self._rows(
            "SELECT epoch_ns(Minute), sum(Count) FROM otel_traces_rollup_1m "
            f"WHERE {_MINUTES} AND {_ENTRY} AND ServiceName = ? "
            f"{'AND SpanName = ?' if ep else ''} GROUP BY 1",
            [_whole_s(s // edges.MINUTE_NS * edges.MINUTE_NS), _whole_s(e), service,
             *([endpoint] if ep else [])])
        keep = analysis.sample_slices(analysis.minute_slices(minutes, s, e, n),
                                      analysis.CORRELATION_SAMPLE, n)
        if keep is not None:  # read whole time slices only (see sample_slices)
            where += " AND (" + " OR ".join(
                f"(Timestamp >= make_timestamp_ns($lo{i}) AND Timestamp < make_timestamp_ns($hi{i}))"
                for i in keep) + ")"
            for i in keep:
                params[f"lo{i}"], params[f"hi{i}"] = (s + (e - s) * j // n for j in (i, i + 1))
        # Every cohort from one read of the attribute maps (what a correlation costs).
        flags = ", ".join(f"{h} AS h{j}" for j, h in enumerate(hits))
        names = ", ".join(f"h{j}" for j in range(len(hits)))
        counts = ", ".join(f"count(*) FILTER (WHERE h{j}), count(*) FILTER (WHERE NOT h{j})"
                           for j in range(len(hits)))
        base = f"WITH base AS (SELECT {flags}, SpanAttributes, ResourceAttributes " \
               f"FROM otel_traces WHERE {where}) "
        (totals,) = self._rows(base + f"SELECT {counts} FROM base", params)
        rows = self._rows(
            base + f"SELECT src, k, v, {counts} FROM (SELECT {names}, 'span' AS src, "
            "unnest(map_keys(SpanAttributes)) AS k, unnest(map_values(SpanAttributes)) AS v "
            f"FROM base UNION ALL SELECT {names}, 'resource', "
            "unnest(map_keys(ResourceAttributes)), unnest(map_values(ResourceAttributes)) "
            "FROM base) GROUP BY ALL HAVING "
            + " OR ".join(f"count(*) FILTER (WHERE h{j}) > 0" for j in range(len(hits))), params)
        return analysis.cohort_correlations(rows, totals, [k for k, _ in cohorts], limit)

    def timeseries(self, service: str, start: datetime, end: datetime,
                   endpoint: str | None = None) -> list[TimeseriesPoint]:
        s, e, _ = window_ns(start, end)
        params: list[Any] = [_whole_s(s), _whole_s(e), service]
        extra = ""
        if endpoint is not None:
            extra, params = "AND SpanName = ?", [*params, endpoint]
        rows = self._rows(
            "SELECT epoch_ns(Minute), Bucket, sum(Count), sum(ErrorCount), min(DurationMin), "
            f"max(DurationMax) FROM otel_traces_rollup_1m WHERE {_MINUTES} "
            f"AND {_ENTRY} AND ServiceName = ? {extra} GROUP BY ALL", params)
        return points(rows)

    def gauge_series(self, metric: str, start: datetime, end: datetime, *,
                     service: str | None = None, by: str | None = None, step_s: int = 60,
                     ) -> list[GaugePoint]:
        step = check_step(step_s)
        s, e, _ = window_ns(start, end)
        group = "coalesce(Attributes[?], '')" if by else "''"
        params: list[Any] = [step, step, *([by] if by else []), metric, _ts(s), _ts(e)]
        extra = ""
        if service is not None:
            extra, params = "AND ServiceName = ?", [*params, service]
        rows = self._rows(
            f"SELECT epoch(TimeUnix)::BIGINT // ? * ?, {group}, avg(Value), max(Value), count(*) "
            "FROM otel_metrics_gauge WHERE MetricName = ? AND TimeUnix >= ? AND TimeUnix < ? "
            f"{extra} GROUP BY ALL", params)
        return gauge_points(step, rows)

    # -- housekeeping -------------------------------------------------------------------------
    def compact_rollups(self, before: datetime, after: datetime | None = None) -> int:
        """Merge the rollup and edge-table rows of the minutes in ``[after, before)`` into one
        row per group key, in one transaction (see the Protocol). The receiver writes one row
        per group and insert, ~0.7 rollup rows per span; merged, a minute holds one per group."""
        b = to_ns(before) // edges.MINUTE_NS * edges.MINUTE_NS
        where, params = "Minute < ?::TIMESTAMP_S", [_whole_s(b)]
        if after is not None:
            a = to_ns(after) // edges.MINUTE_NS * edges.MINUTE_NS
            where, params = f"{where} AND Minute >= ?::TIMESTAMP_S", [*params, _whole_s(a)]
        removed = 0
        with self._cursor() as con:
            con.execute("BEGIN")
            try:
                for table, agg in schema.ROLLUP_TABLES.items():
                    cols = [n for n, _ in schema.TABLES[table]]
                    keys = [n for n in cols if n not in agg]
                    select = ", ".join(
                        f"{agg[n]}({n})::{duck_type(t)} AS {n}" if n in agg else n
                        for n, t in schema.TABLES[table])
                    con.execute(f"CREATE OR REPLACE TEMP TABLE _merged AS SELECT {select} "
                                f"FROM {table} WHERE {where} GROUP BY ALL "
                                f"ORDER BY Minute, {', '.join(k for k in keys if k != 'Minute')}",
                                params)
                    ((rows,),) = con.execute(f"SELECT count(*) FROM {table} WHERE {where}",
                                             params).fetchall()
                    ((groups,),) = con.execute("SELECT count(*) FROM _merged").fetchall()
                    if rows > groups:  # else the minutes are merged already: leave them
                        con.execute(f"DELETE FROM {table} WHERE {where}", params)
                        con.execute(f"INSERT INTO {table} SELECT * FROM _merged")
                        removed += int(rows) - int(groups)
                    con.execute("DROP TABLE _merged")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return removed

    def retention(self, signal: schema.Signal, max_age: timedelta, now: datetime | None = None
                  ) -> None:
        if signal not in schema.SIGNAL_TABLES:
            raise StoreUsageError(f"unknown signal {signal!r}; use {', '.join(schema.SIGNAL_TABLES)}")
        cutoff = _ts(to_ns(now or datetime.now(UTC)) - max_age // timedelta(microseconds=1) * 1000)
        with self._cursor() as con:
            for table in schema.SIGNAL_TABLES[signal]:
                con.execute(f'DELETE FROM {table} WHERE "{schema.TIME_COLUMN[table]}" < ?',
                            [cutoff])
            # Deleted rows only give their blocks back at a checkpoint; without it the file grows.
            con.execute("CHECKPOINT")

    def close(self) -> None:
        """Close the store: reads still running (a page's thread after its request went away)
        are interrupted and waited for (up to 10 s), then every connection is closed."""
        with self._lock:
            failed = self._reads.close()
            try:
                self._con.close()
            except duckdb.Error as exc:
                failed.append(str(exc))
        if failed:
            raise StoreError(f"telemetry store ({self.path}): closing: {'; '.join(failed)}")
