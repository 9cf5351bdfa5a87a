"""Grow a DuckDB telemetry store from a receiver-ingested sample to many spans, in bulk SQL.

``bench/console.py --load sample`` (the default for large stores) first ingests a sample of the
``telemetry.py`` data set through the real OTLP receiver, then calls :func:`grow`, which adds
``copies - 1`` copies of every sampled span inside the store's own DuckDB engine. Each copy is
indistinguishable in shape from what the receiver writes for a trace of that data set:

* ``otel_traces``: every column copied, with fresh ids (``TraceId`` = md5 of the old id and the
  copy number, 32 hex digits; ``SpanId``/``ParentSpanId`` = its first 16 hex digits, so
  parent/child links stay intact inside the copy) and timestamps (span and event) shifted by
  ``k * step / copies``, where ``step`` is the sample's spacing between traces: the grown store
  has its traces evenly spread over the same hour, like ingesting them all would give;
* rows go in, like the receiver's inserts, in "batches" of ``batch_spans`` spans of consecutive
  time, each sorted by ``ServiceName, SpanName, Timestamp`` (``_INSERT_ORDER``);
* the receiver's derived tables get the rows its inserts would add, computed per batch with the
  store's own formulas: the trace-id table (one row per trace and batch), the minute rollup (one
  row per service, span name, kind, minute, latency bucket and batch, ``_BUCKET_SQL``), the
  service-map edges (the sample's pairs found by the store's own code, :func:`.edges.edge_batch`,
  so the mTLS rule is the store's; one row per client, server, minute, bucket and batch) and the
  pairing index (the sample's unpaired client/server spans, copied, then trimmed to
  :data:`.edges.INDEX_KEEP_NS` behind the newest span, as the receiver trims it).

:func:`grow` checks what it wrote: span, rollup and edge counts must be ``copies`` times the
sample's, and each trace id is unique.

:func:`compact` then merges the rollup and edge rows as a running platform's telemetry service
does (:meth:`.DuckDBStore.compact_rollups` over the minutes that closed more than
``COMPACT_LAG`` before the newest span; the newest minutes stay one row per insert).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from noops.observe.service import COMPACT_LAG
from noops.observe.store import edges, schema
from noops.observe.store._rows import edge_rows
from noops.observe.store.duckdb import _BUCKET_SQL, _INSERT_ORDER, DuckDBStore

__all__ = ["compact", "grow", "shift_to_now"]

# A copy of a sampled span: ids hashed with the copy number ``k``, times moved with its trace
# (``m``: the trace's row in ``_map``), durations scaled by the trace's factor ``f``.
_NEW_TS = "make_timestamp_ns(m.new_start + ((epoch_ns({col}) - m.start) * m.f)::BIGINT)"
_COPY = {
    "TraceId": "m.NewId",
    "SpanId": "left(md5(s.SpanId || '-' || m.k), 16)",
    "ParentSpanId": "CASE WHEN s.ParentSpanId = '' THEN '' "
                    "ELSE left(md5(s.ParentSpanId || '-' || m.k), 16) END",
    "Timestamp": _NEW_TS.format(col="s.Timestamp"),
    "Duration": "(s.Duration * m.f)::UBIGINT",
    "Events.Timestamp": "list_transform(s.\"Events.Timestamp\", lambda t: "
                        + _NEW_TS.format(col="t") + ")",
}


_DERIVED_FROM = ["TraceId", "ServiceName", "SpanName", "SpanKind", "Timestamp", "Duration",
                 "StatusCode"]


def _copy_select(columns: list[str]) -> str:
    exprs = [_COPY.get(c, 's."' + c + '"') for c in columns]
    return ", ".join(f'{e} AS "{c}"' for e, c in zip(exprs, columns, strict=True))


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    return con.execute(sql).fetchall()[0][0]


def grow(store: Path, copies: int, t0_ns: int, hour_ns: int, sample_traces: int,
         batch_spans: int = 2000, slice_s: int = 60) -> dict[str, Any]:
    """Make ``store`` (closed, holding only the receiver-ingested sample of ``sample_traces``
    traces spread from ``t0_ns`` over ``hour_ns``) hold ``copies`` times its spans. Returns
    what it did: row counts before/after, seconds."""
    started = time.perf_counter()
    con = duckdb.connect(str(store))
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute("SET memory_limit = '4GB'")
        step = hour_ns // sample_traces
        # Copy k of the sample trace that started at t goes to t + k * hop (wrapped into the
        # hour): neighbours in time come from sample traces far apart, and all copies together
        # sit on an even grid of step / copies.
        hop = (sample_traces // copies) * step + step // copies
        batch_ns = max(hour_ns * batch_spans // (sample_traces * 10 * copies), 1)
        tables = ("otel_traces", "otel_traces_rollup_1m", "otel_traces_edges_1m",
                  "otel_traces_trace_id_ts", "otel_traces_edge_spans")
        before = {t: _one(con, f"SELECT count(*) FROM {t}") for t in tables}
        sample_calls = _one(con, "SELECT sum(Calls) FROM otel_traces_edges_1m")
        sample_rollup = _one(con, "SELECT sum(Count) FROM otel_traces_rollup_1m")
        con.execute("CREATE TEMP TABLE _sample AS SELECT * FROM otel_traces")
        p = {"k": copies, "hop": hop, "t0": t0_ns, "hour": hour_ns}
        con.execute(
            "CREATE TEMP TABLE _map AS SELECT TraceId, k, md5(TraceId || '-' || k) AS NewId, "
            "start, start + k * $hop - CASE WHEN start + k * $hop >= $t0 + $hour "
            "THEN $hour ELSE 0 END AS new_start, 0.8 + 0.4 * random() AS f "
            "FROM (SELECT TraceId, epoch_ns(min(Timestamp)) AS start FROM _sample "
            "GROUP BY TraceId), range(1, $k) r(k)", p)
        # The sample's pairing-index rows, by the store's own code (peer and mTLS rules), and
        # the pairs among them: each copy of a trace has the same calls.
        idx = edges.edge_batch(edge_rows(con.sql(
            "SELECT TraceId, SpanId, ParentSpanId, SpanKind, ServiceName, Timestamp, Duration, "
            "StatusCode, SpanAttributes FROM _sample").to_arrow_table()), 0,
            edges.DEFAULT_EGRESS)
        con.register("_idx_arrow", idx)
        con.execute("CREATE TEMP TABLE _idx AS SELECT * FROM _idx_arrow")
        con.unregister("_idx_arrow")
        con.execute(
            "CREATE TEMP TABLE _pairs AS SELECT c.TraceId, c.LinkId, c.ServiceName AS client, "
            "s.ServiceName AS server, c.Timestamp, c.Duration, "
            "c.IsError + s.IsError > 0 AS error, c.Mtls + s.Mtls > 0 AS mtls "
            "FROM _idx c JOIN _idx s ON s.TraceId = c.TraceId AND s.LinkId = c.LinkId "
            "AND c.Side = 0 AND s.Side = 1 WHERE c.ServiceName <> s.ServiceName")
        pairs = _one(con, "SELECT count(*) FROM _pairs")
        con.execute("CREATE TEMP TABLE _unpaired AS SELECT * FROM _idx i WHERE NOT EXISTS "
                    "(SELECT 1 FROM _pairs p WHERE p.TraceId = i.TraceId AND p.LinkId = i.LinkId)")
        # One trace's spans share a batch, as in one OTLP request.
        bkey = "(m.new_start - $t0) // $bns"
        cols = [n for n, _ in schema.TRACES]
        for lo in range(t0_ns, t0_ns + hour_ns, slice_s * 10**9):
            sp = {"t0": t0_ns, "bns": batch_ns}
            m = "_slice m"
            con.execute("BEGIN")
            con.execute("CREATE OR REPLACE TEMP TABLE _slice AS SELECT * FROM _map "
                        "WHERE new_start >= $lo AND new_start < $hi",
                        {"lo": lo, "hi": lo + slice_s * 10**9})
            con.execute(f"INSERT INTO otel_traces SELECT * EXCLUDE (_b) FROM (SELECT {bkey} AS _b, "
                        f"{_copy_select(cols)} FROM _sample s JOIN {m} USING (TraceId)) "
                        f"ORDER BY _b, {_INSERT_ORDER['otel_traces']}", sp)
            # What the receiver derives from each insert, from the columns it reads.
            con.execute(f"CREATE OR REPLACE TEMP TABLE _chunk AS SELECT {bkey} AS _b, "
                        f"{_copy_select(_DERIVED_FROM)} FROM _sample s JOIN {m} USING (TraceId)",
                        sp)
            con.execute(
                "INSERT INTO otel_traces_trace_id_ts SELECT TraceId, "
                "date_trunc('second', min(Timestamp))::TIMESTAMP_S, "
                "date_trunc('second', max(Timestamp))::TIMESTAMP_S FROM _chunk GROUP BY TraceId")
            con.execute(
                "INSERT INTO otel_traces_rollup_1m SELECT ServiceName, SpanName, SpanKind, "
                f"date_trunc('minute', Timestamp)::TIMESTAMP_S AS Minute, {_BUCKET_SQL} AS Bucket, "
                "count(*), count(*) FILTER (WHERE StatusCode = 'Error'), sum(Duration)::UBIGINT, "
                "min(Duration), max(Duration) FROM _chunk "
                "GROUP BY _b, ServiceName, SpanName, SpanKind, Minute, Bucket")
            con.execute(
                "INSERT INTO otel_traces_edges_1m SELECT client, server, "
                f"date_trunc('minute', Timestamp)::TIMESTAMP_S AS Minute, {_BUCKET_SQL} AS Bucket, "
                "count(*), count(*) FILTER (WHERE error), count(*) FILTER (WHERE mtls), "
                "min(Duration), max(Duration) FROM (SELECT client, server, error, mtls, "
                f"{bkey} AS _b, {_COPY['Duration']} AS Duration, "
                f"{_COPY['Timestamp']} AS Timestamp FROM _pairs s JOIN {m} USING (TraceId)) "
                "GROUP BY _b, client, server, Minute, Bucket", sp)
            con.execute(
                "INSERT INTO otel_traces_edge_spans SELECT s.Batch + m.k, s.Side, m.NewId, "
                "left(md5(s.LinkId || '-' || m.k), 16), s.ServiceName, "
                f"{_COPY['Timestamp']}, {_COPY['Duration']}, s.IsError, s.Mtls "
                f"FROM _unpaired s JOIN {m} USING (TraceId)")
            con.execute("COMMIT")
        # The receiver keeps the pairing index to INDEX_KEEP_NS behind the newest span.
        con.execute("DELETE FROM otel_traces_edge_spans WHERE Timestamp < (SELECT max(Timestamp) "
                    "FROM otel_traces) - to_microseconds(?::BIGINT // 1000)",
                    [edges.INDEX_KEEP_NS])
        for tmp in ("_chunk", "_slice", "_map", "_sample", "_idx", "_pairs", "_unpaired"):
            con.execute(f"DROP TABLE {tmp}")
        con.execute("CHECKPOINT")
        after = {t: _one(con, f"SELECT count(*) FROM {t}") for t in tables}
        # What was written must add up: every copy has the sample's spans, calls and traces.
        checks = {
            "spans": (after["otel_traces"], before["otel_traces"] * copies),
            "rollup count": (_one(con, "SELECT sum(Count) FROM otel_traces_rollup_1m"),
                             sample_rollup * copies),
            "sample pairs (receiver, copy)": (sample_calls, pairs),
            "edge calls": (_one(con, "SELECT sum(Calls) FROM otel_traces_edges_1m"),
                           sample_calls * copies),
            "distinct traces": (_one(con, "SELECT count(DISTINCT TraceId) FROM otel_traces"),
                                sample_traces * copies),
        }
        bad = {k: v for k, v in checks.items() if v[0] != v[1]}
        if bad:
            raise SystemExit(f"growing the store went wrong (got, expected): {bad}")
    finally:
        con.close()
    return {"copies": copies, "before": before, "after": after,
            "batch_spans": batch_spans, "seconds": time.perf_counter() - started}


def compact(store: Path) -> dict[str, Any]:
    """Compact ``store`` (closed) as the telemetry service would with its newest span now.
    Returns the rollup and edge row counts before/after and seconds."""
    started = time.perf_counter()
    tables = tuple(schema.ROLLUP_TABLES)
    db = DuckDBStore(store)
    try:
        before = {t: db._rows(f"SELECT count(*) FROM {t}")[0][0] for t in tables}
        ((newest,),) = db._rows("SELECT epoch_ns(max(Timestamp)) FROM otel_traces")
        if newest is not None:
            db.compact_rollups(datetime.fromtimestamp(newest / 1e9, UTC) - COMPACT_LAG)
        after = {t: db._rows(f"SELECT count(*) FROM {t}")[0][0] for t in tables}
    finally:
        db.close()
    return {"before": before, "after": after, "seconds": time.perf_counter() - started}


# Every time column of the span tables (shifting them all by whole minutes keeps each rollup and
# edge row in the minute of its spans).
_TIME_COLUMNS = (("otel_traces", "Timestamp"), ("otel_traces_trace_id_ts", "Start"),
                 ("otel_traces_trace_id_ts", "End"), ("otel_traces_rollup_1m", "Minute"),
                 ("otel_traces_edges_1m", "Minute"), ("otel_traces_edge_spans", "Timestamp"))


def shift_to_now(store: Path) -> tuple[int, int]:
    """Move every stored span (and its derived rows) forward by whole minutes so the newest
    ends within the last minute: a store filled minutes ago (or by an earlier run) is then "the
    last hour" again. Returns the minutes moved and the spans stored."""
    con = duckdb.connect(str(store))
    try:
        newest = _one(con, "SELECT epoch_ns(max(Timestamp)) FROM otel_traces")
        minutes = max((time.time_ns() - newest) // (60 * 10**9), 0)
        if minutes:
            con.execute("BEGIN")
            for table, col in _TIME_COLUMNS:
                con.execute(f'UPDATE {table} SET "{col}" = "{col}" + to_minutes(?::BIGINT)',
                            [minutes])
            con.execute('UPDATE otel_traces SET "Events.Timestamp" = list_transform('
                        '"Events.Timestamp", lambda t: t + to_minutes(?::BIGINT)) '
                        'WHERE len("Events.Timestamp") > 0', [minutes])
            con.execute("COMMIT")
            con.execute("CHECKPOINT")
        spans = _one(con, "SELECT count(*) FROM otel_traces")
    finally:
        con.close()
    return int(minutes), int(spans)
