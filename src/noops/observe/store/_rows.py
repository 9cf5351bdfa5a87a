"""Rows in, rows out: exporter-named mappings to Arrow tables and back (shared by backends)."""

from __future__ import annotations

import itertools
import math
import operator
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pyarrow as pa  # type: ignore[import-untyped]

from noops.observe.store.base import (
    GaugePoint,
    HistogramBin,
    Row,
    SlowTrace,
    StoreUsageError,
    TimeseriesPoint,
)
from noops.observe.store.rollup import estimate_quantiles
from noops.observe.store.schema import Column

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE_NS = 60 * 1_000_000_000


def to_ns(value: int | datetime) -> int:
    """Nanoseconds since the epoch for an ``int`` (already ns) or a datetime (naive = UTC)."""
    if isinstance(value, int):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def ch_arrow_type(ch: str) -> pa.DataType:
    """The Arrow type a ClickHouse column type is shipped as."""
    if ch.startswith("Array("):
        return pa.list_(ch_arrow_type(ch[6:-1]))
    if ch.startswith("Map("):
        return pa.map_(pa.string(), pa.string())
    return {
        "String": pa.string(), "LowCardinality(String)": pa.string(),
        "DateTime64(9)": pa.timestamp("ns"), "DateTime": pa.timestamp("s"),
        "UInt8": pa.uint8(), "UInt16": pa.uint16(), "UInt32": pa.uint32(),
        "UInt64": pa.uint64(), "Int32": pa.int32(), "Float64": pa.float64(), "Bool": pa.bool_(),
    }[ch]


def _zero(ch: str) -> Any:
    if ch.startswith("Array("):
        return []
    if ch.startswith("Map("):
        return {}
    if "String" in ch:
        return ""
    if ch == "Bool":
        return False
    return 0


_MAP_TYPE = pa.map_(pa.string(), pa.string())


def _map_array(table: str, name: str, values: Sequence[Any]) -> pa.Array:
    """``Map(String, String)`` from dicts, built from flat key/value arrays and offsets (several
    times faster than converting dict by dict; the same dict object repeated, as a resource's
    attributes are, costs one C-level iteration per row)."""
    try:
        offsets = [0, *itertools.accumulate(map(len, values))]
        keys = pa.array(list(itertools.chain.from_iterable(values)), type=pa.string())
        vals = pa.array(list(itertools.chain.from_iterable(d.values() for d in values)),
                        type=pa.string())
        return pa.MapArray.from_arrays(pa.array(offsets, type=pa.int32()), keys, vals,
                                       type=_MAP_TYPE)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, AttributeError):
        pass  # not all dicts of strings: let Arrow convert (and explain) value by value
    try:
        return pa.array(values, type=_MAP_TYPE)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise StoreUsageError(f"{table}.{name}: values must be str -> str maps: {exc}") from exc


def to_arrow(table: str, columns: Sequence[Column], rows: Sequence[Row]) -> pa.Table:
    """Build an Arrow table with every column of ``columns`` from exporter-named rows."""
    known = {name for name, _ in columns}
    for row in rows[:1]:
        extra = set(row) - known
        if extra:
            raise StoreUsageError(f"{table} has no column(s) {sorted(extra)}; "
                                  f"use the OTel ClickHouse exporter column names")
    names = [name for name, _ in columns]
    try:  # rows from the OTLP decoder carry every column: transpose them in C
        by_column: list[Sequence[Any]] = list(zip(*map(operator.itemgetter(*names), rows),
                                                  strict=True))
    except KeyError:
        by_column = [[row.get(name, _zero(ch)) for row in rows] for name, ch in columns]
    arrays: list[pa.Array] = []
    for (name, ch), values in zip(columns, by_column, strict=True):
        if ch.startswith("Map("):
            arrays.append(_map_array(table, name, values))
            continue
        if ch.startswith("Array(") and not any(values):
            arrays.append(pa.array(values, type=ch_arrow_type(ch)))  # all empty: nothing to convert
            continue
        if ch == "DateTime64(9)":
            if not all(type(v) is int for v in values):
                values = [v if type(v) is int else to_ns(v) for v in values]
        elif ch == "Array(DateTime64(9))":
            values = [[t if type(t) is int else to_ns(t) for t in v] for v in values]
        try:
            arrays.append(pa.array(values, type=ch_arrow_type(ch)))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
            raise StoreUsageError(f"{table}.{name}: values do not fit {ch}: {exc}") from exc
    return pa.Table.from_arrays(arrays, names=[name for name, _ in columns])


_EDGE_INPUT = ("TraceId", "SpanId", "ParentSpanId", "SpanKind", "ServiceName", "Timestamp",
               "Duration", "StatusCode")
# The span attributes the service-map derivation reads (:func:`.edges.peer_of`, ``noops.mtls``).
EDGE_ATTRIBUTES = ("server.address", "server.port", "net.peer.name", "net.peer.port", "url.full",
                   "http.url", "noops.mtls")


def edge_rows(spans: pa.Table) -> list[dict[str, Any]]:
    """The rows the service-map derivation (:func:`.edges.edge_batch`) reads, from an
    ``otel_traces`` Arrow table: only Client spans and Server spans with a parent, only the
    columns it uses (``Timestamp`` as int ns), and ``SpanAttributes`` reduced to
    :data:`EDGE_ATTRIBUTES` (the maps hold no duplicate keys)."""
    import pyarrow.compute as pc  # type: ignore[import-untyped]

    kind = spans.column("SpanKind")
    mask = pc.or_(pc.equal(kind, "Client"),
                  pc.and_(pc.equal(kind, "Server"), pc.not_equal(spans.column("ParentSpanId"), "")))
    part = spans.select([*_EDGE_INPUT, "SpanAttributes"]).filter(mask)
    if part.num_rows == 0:
        return []
    attrs = part.column("SpanAttributes")
    wanted = [(key, pc.map_lookup(attrs, key, "first").to_pylist()) for key in EDGE_ATTRIBUTES]
    columns = [part.column(c).cast(pa.int64()) if c == "Timestamp" else part.column(c)
               for c in _EDGE_INPUT]
    rows: list[dict[str, Any]] = [dict(zip(_EDGE_INPUT, r, strict=True)) for r in
                                  zip(*(c.to_pylist() for c in columns), strict=True)]
    for i, row in enumerate(rows):
        row["SpanAttributes"] = {k: vals[i] for k, vals in wanted if vals[i] is not None}
    return rows


def from_arrow(tbl: pa.Table) -> list[dict[str, Any]]:
    """Arrow result to plain dicts: timestamps as ``int`` ns, maps as ``dict``."""
    cols: dict[str, list[Any]] = {}
    for name, col in zip(tbl.column_names, tbl.columns, strict=True):
        t = col.type
        if pa.types.is_timestamp(t):
            cols[name] = col.cast(pa.timestamp("ns", tz=t.tz)).cast(pa.int64()).to_pylist()
        elif pa.types.is_list(t) and pa.types.is_timestamp(t.value_type):
            cols[name] = col.cast(pa.list_(pa.timestamp("ns", tz=t.value_type.tz))).cast(
                pa.list_(pa.int64())).to_pylist()
        elif pa.types.is_map(t):
            cols[name] = [dict(v) if v is not None else {} for v in col.to_pylist()]
        elif pa.types.is_list(t) and pa.types.is_map(t.value_type):
            cols[name] = [[dict(m) for m in v] for v in col.to_pylist()]
        else:
            cols[name] = col.to_pylist()
    names = list(cols)
    return [dict(zip(names, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]


def window_ns(start: datetime, end: datetime) -> tuple[int, int, float]:
    """``[start, end)`` as ns ints plus its length in seconds; an empty window is an error."""
    s, e = to_ns(start), to_ns(end)
    if e <= s:
        raise StoreUsageError(f"empty time window: end {end} is not after start {start}")
    return s, e, (e - s) / 1e9


def stats(name: str, count: int, errors: int, qs: Sequence[float | None], window_s: float,
          estimated: bool = False) -> dict[str, Any]:
    """The service/endpoint figures from a count, an error count and p50/p95/p99 in ns."""
    p50, p95, p99 = ((q or 0.0) / 1e6 for q in qs)
    return {
        "service": name, "count": int(count), "rate_per_s": count / window_s,
        "error_pct": 100.0 * errors / count if count else 0.0,
        "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "estimated": estimated,
    }


def whole_minutes(s: int, e: int) -> tuple[int, int]:
    """The whole minutes ``[lo, hi)`` (ns) inside the window ``[s, e)``; the rest of the window
    is ``[s, lo)`` and ``[hi, e)``. ``lo == hi == e`` when it holds no whole minute."""
    lo, hi = -(-s // _MINUTE_NS) * _MINUTE_NS, e // _MINUTE_NS * _MINUTE_NS
    return (lo, hi) if lo < hi else (e, e)


def service_buckets(rows: Sequence[Sequence[Any]], window_s: float, exact_max: int
                    ) -> tuple[list[dict[str, Any]], bool]:
    """Per-service rows ``(service, bucket, count, errors, min_ns, max_ns)`` (the window's
    rollup buckets) to ``(figures, exact_needed)``: when the window holds at most
    ``exact_max`` spans the caller reads exact percentiles instead (figures then ``[]``);
    otherwise the figures carry percentiles estimated from the buckets."""
    if sum(int(r[2]) for r in rows) <= exact_max:
        return [], True
    by_service: dict[str, list[Sequence[Any]]] = defaultdict(list)
    for r in rows:
        by_service[str(r[0])].append(r)
    out = []
    for name in sorted(by_service):
        group = by_service[name]
        qs = estimate_quantiles([(int(r[1]), int(r[2])) for r in group], (0.5, 0.95, 0.99),
                                min(float(r[4]) for r in group), max(float(r[5]) for r in group))
        out.append(stats(name, sum(int(r[2]) for r in group), sum(int(r[3]) for r in group),
                         qs, window_s, estimated=True))
    return out, False


def severity_floor(severity: str) -> int:
    from noops.observe.store.schema import SEVERITY_FLOOR

    try:
        return SEVERITY_FLOOR[severity.lower()]
    except KeyError:
        raise StoreUsageError(f"unknown severity {severity!r}; use one of "
                              f"{', '.join(SEVERITY_FLOOR)}") from None


def bins(bounds: Sequence[float], rows: Sequence[tuple[Any, ...]]) -> list[HistogramBin]:
    counts = dict(rows)
    edges = [*bounds, float("inf")]
    return [HistogramBin(le_ms=b, count=int(counts.get(i, 0))) for i, b in enumerate(edges)]


class TraceSearch(NamedTuple):
    failed: bool | None  # only failed (True) or only not failed (False) spans; None: both
    min_ns: int


MAX_SEARCH_ATTRIBUTES = 4


def trace_search(status: str | None, min_ms: float | None,
                 attributes: Mapping[str, str] | None = None) -> TraceSearch:
    """The checked ``status`` (``"error"``, ``"ok"`` or None), ``min_ms`` and ``attributes``
    (at most :data:`MAX_SEARCH_ATTRIBUTES`) filters of ``slowest_traces``."""
    if len(attributes or {}) > MAX_SEARCH_ATTRIBUTES:
        raise StoreUsageError(f"search by at most {MAX_SEARCH_ATTRIBUTES} attributes at once, "
                              f"not {len(attributes or {})}")
    if status not in (None, "", "error", "ok"):
        raise StoreUsageError(f"status {status!r}: use error or ok")
    if min_ms is not None and not (math.isfinite(min_ms) and min_ms >= 0):
        raise StoreUsageError(f"min_ms must be a number >= 0, not {min_ms}")
    return TraceSearch(failed={"error": True, "ok": False}.get(status or ""),
                       min_ns=min(math.ceil((min_ms or 0) * 1e6), 2**63 - 1))


def slow(r: Sequence[Any]) -> SlowTrace:
    return SlowTrace(trace_id=r[0], span_id=r[1], endpoint=r[2], timestamp_ns=int(r[3]),
                     duration_ms=int(r[4]) / 1e6, status_code=r[5])


def points(rows: Sequence[Sequence[Any]]) -> list[TimeseriesPoint]:
    """Rollup rows ``(minute_ns, bucket, count, errors, min_ns, max_ns)`` to minute points."""
    by_minute: dict[int, list[Sequence[Any]]] = defaultdict(list)
    for r in rows:
        by_minute[int(r[0])].append(r)
    out: list[TimeseriesPoint] = []
    for minute in sorted(by_minute):
        group = by_minute[minute]
        qs = estimate_quantiles([(int(r[1]), int(r[2])) for r in group], (0.5, 0.95, 0.99),
                                min(float(r[4]) for r in group), max(float(r[5]) for r in group))
        out.append(TimeseriesPoint(
            minute_ns=minute, count=sum(int(r[2]) for r in group),
            errors=sum(int(r[3]) for r in group),
            p50_ms=qs[0] / 1e6, p95_ms=qs[1] / 1e6, p99_ms=qs[2] / 1e6))
    return out


def gauge_points(step_s: int, rows: Sequence[Sequence[Any]]) -> list[GaugePoint]:
    """Rows ``(bucket_s, group, avg, max, count)`` to points sorted by group, then bucket; a
    ``step_s`` under one second is a :class:`StoreUsageError` (checked before the query)."""
    return sorted((GaugePoint(bucket_s=int(r[0]), group=str(r[1] or ""), avg=float(r[2]),
                              max=float(r[3]), count=int(r[4])) for r in rows),
                  key=lambda p: (p["group"], p["bucket_s"]))


def check_step(step_s: int) -> int:
    if int(step_s) < 1:
        raise StoreUsageError(f"step {step_s!r} s: use a whole number of seconds, at least 1")
    return int(step_s)
