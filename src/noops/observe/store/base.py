"""The ``TelemetryStore`` Protocol: what the OTLP receiver and the APM API need from storage.

The consumer owns this interface; DuckDB (:mod:`.duckdb`, the default, one file) and ClickHouse
(:mod:`.clickhouse`, embedded chdb or a server) implement it, and
``tests/integration/observe/test_store_conformance.py`` holds every backend to it.

Contract
--------
Rows
    Each row is a mapping keyed by **exactly** the column names of the OTel Collector ClickHouse
    exporter tables (:mod:`.schema`), e.g. ``Timestamp``, ``TraceId``, ``SpanAttributes``,
    ``Events.Name``. Missing keys take the column's zero value (``''``, ``0``, ``{}``, ``[]``);
    unknown keys are an error. Time columns take ``int`` nanoseconds since the Unix epoch (UTC) or
    an aware :class:`~datetime.datetime`; ``Duration`` is ``int`` nanoseconds; maps are
    ``dict[str, str]``.
Durability
    An ``insert_*`` call that returned has committed: the rows, the trace-id lookup rows and the
    minute rollup rows are visible to every later query and survive a process crash. A call
    that raised wrote nothing (DuckDB: one transaction) or, on ClickHouse, possibly a prefix of
    whole parts; the caller may retry (duplicates are then possible, as with the exporter).
Ordering
    Rows need not arrive in time order. Queries order their results explicitly (documented per
    method); no query depends on insert order.
Windows
    ``start``/``end`` are aware datetimes (naive means UTC) and form the half-open window
    ``[start, end)`` on the span/log start ``Timestamp``.
Returned data
    Plain ``dict``/``list`` values owned by the caller; times come back as ``int`` ns.
Errors
    Every failure is a :class:`StoreError` (``NoopsError``, exit 13) with the backend's message;
    a bad argument (unknown signal, metric kind or column) is a :class:`StoreUsageError`.
Concurrency
    One store object per process owns its file or session; methods are thread-safe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Protocol, TypedDict, runtime_checkable

from noops.errors import NoopsError
from noops.observe.store.schema import MetricKind, Signal

__all__ = [
    "EXACT_PERCENTILES_MAX",
    "Correlation",
    "Edge",
    "EndpointStats",
    "ErrorGroup",
    "HistogramBin",
    "Row",
    "ServiceStats",
    "SlowTrace",
    "StoreError",
    "StoreUsageError",
    "TelemetryStore",
    "TimeseriesPoint",
]

Row = Mapping[str, Any]

EXACT_PERCENTILES_MAX: Final = 200_000
"""Entry spans in a window above which :meth:`TelemetryStore.services` estimates percentiles."""


class StoreError(NoopsError):
    """The telemetry store failed to write, read or expire data."""

    exit_code = 13
    http_status = 503


class StoreUsageError(StoreError):
    """A caller passed something the store cannot take (unknown column, signal, kind)."""

    http_status = 400


class ServiceStats(TypedDict):
    service: str
    count: int
    rate_per_s: float
    error_pct: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    estimated: bool  # percentiles from the minute rollup (±4.4 %), not exact; see ``services``


class EndpointStats(ServiceStats):
    endpoint: str
    folded: int  # 0; for the ``other`` bucket: how many span names it stands for


class HistogramBin(TypedDict):
    le_ms: float  # upper bound, inclusive; ``inf`` for the last bin
    count: int


class SlowTrace(TypedDict):
    trace_id: str
    span_id: str
    endpoint: str
    timestamp_ns: int
    duration_ms: float
    status_code: str


class Edge(TypedDict):
    client: str
    server: str
    calls: int
    rate_per_s: float
    errors: int
    p95_ms: float  # client-side duration, from log buckets (within ±4.4 %)
    mtls: bool  # every call in the window was an mTLS hop (see :mod:`.edges`)
    mtls_calls: int


class ErrorGroup(TypedDict):
    service: str
    endpoint: str  # the span name
    exception_type: str  # ``exception.type``; '' for an Error span without an exception event
    message: str  # normalised: numbers, hex ids and UUIDs replaced (see :func:`.analysis.normalise`)
    count: int
    first_seen_ns: int
    last_seen_ns: int
    sample_trace_id: str  # a trace of the most recent occurrence
    sample_message: str  # that occurrence's message as recorded


class Correlation(TypedDict):
    cohort: str  # 'slow' or 'failed': the spans compared with the rest
    source: str  # 'span' (SpanAttributes) or 'resource' (ResourceAttributes)
    key: str
    value: str
    cohort_pct: float  # share of the slow/failed spans that carry key=value
    baseline_pct: float  # share of the other spans that carry it
    score: float  # (cohort_pct - baseline_pct) / 100, in (0, 1]; higher is more telling


class GaugePoint(TypedDict):
    bucket_s: int  # start of the step, epoch seconds (aligned to a multiple of the step)
    group: str     # the ``by`` attribute's value; '' without ``by`` or where it is missing
    avg: float
    max: float
    count: int


class TimeseriesPoint(TypedDict):
    minute_ns: int
    count: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


@runtime_checkable
class TelemetryStore(Protocol):
    """Storage for spans, logs and metrics in the OTel exporter schema. See the module contract."""

    # -- writes -------------------------------------------------------------------------------
    def insert_spans(self, rows: Sequence[Row]) -> int:
        """Insert ``otel_traces`` rows; also maintain the trace-id table and minute rollup.
        Returns the number of spans written."""
        ...

    def insert_logs(self, rows: Sequence[Row]) -> int:
        """Insert ``otel_logs`` rows. Returns the number written."""
        ...

    def insert_metrics(self, kind: MetricKind, rows: Sequence[Row]) -> int:
        """Insert ``otel_metrics_{kind}`` rows (``gauge``, ``sum``, ``histogram``)."""
        ...

    # -- APM reads (entry spans: SpanKind Server or Consumer) --------------------------------
    def services(self, start: datetime, end: datetime, *,
                 exact_max: int = EXACT_PERCENTILES_MAX) -> list[ServiceStats]:
        """Per service: entry-span count, rate (count / window seconds), error % (StatusCode
        'Error') and p50/p95/p99. Sorted by service name.

        Count and errors are always exact: whole minutes of the window are read from the
        minute rollup, its partial first and last minutes from the spans. While the window
        holds at most ``exact_max`` entry spans the percentiles are exact (linear
        interpolation) and ``estimated`` is false; above that they are estimated from the
        same log buckets (within ±4.4 %, clamped to the observed min/max, see :mod:`.rollup`)
        and every row has ``estimated`` true. Endpoint rows (:meth:`endpoints`) are exact.
        The rollup is kept for the ``rollups`` retention (the metrics', 30 days by default, the
        spans' 7): for minutes whose spans have expired, an estimated read still counts them
        from the rollup, an exact one only what spans remain."""
        ...

    def endpoints(self, service: str, start: datetime, end: datetime,
                  max_endpoints: int = 200) -> list[EndpointStats]:
        """The same figures per entry-span name of one service, sorted by count desc, name.
        Cardinality guard: a service with more than ``max_endpoints`` distinct names gets the
        ``max_endpoints - 1`` busiest plus one ``other`` row (exact figures over the rest,
        ``folded`` = how many names it holds, sorted last); every other row has ``folded`` 0."""
        ...

    def latency_histogram(
        self, service: str, endpoint: str | None, start: datetime, end: datetime,
        buckets_ms: Sequence[float],
    ) -> list[HistogramBin]:
        """Entry-span durations counted into ``(prev, le]`` bins of ascending ``buckets_ms``
        plus a final ``inf`` bin; ``endpoint=None`` takes every endpoint of the service."""
        ...

    def slowest_traces(self, service: str, start: datetime, end: datetime, limit: int = 20, *,
                       endpoint: str | None = None, status: str | None = None,
                       min_ms: float | None = None, attributes: Mapping[str, str] | None = None,
                       ) -> list[SlowTrace]:
        """The service's slowest entry spans, by Duration desc then TraceId: those whose span
        name contains ``endpoint`` (any case), with ``status`` ``"error"`` (StatusCode Error)
        or ``"ok"`` (anything else), at least ``min_ms`` long, and carrying every
        ``attributes`` ``key=value`` as a span or a resource attribute (each filter when
        given; a bad ``status`` or ``min_ms`` is a :class:`StoreUsageError`)."""
        ...

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Every span of one trace (all exporter columns), by Timestamp then SpanId; ``[]`` if
        unknown. Bounded by ``otel_traces_trace_id_ts`` so it never scans all time."""
        ...

    def logs(
        self, query: str | None = None, service: str | None = None, severity: str | None = None,
        start: datetime | None = None, end: datetime | None = None, trace_id: str | None = None,
        limit: int = 100, span_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Log rows, newest first. ``query`` is a case-insensitive substring of Body;
        ``severity`` ('info', 'warn', 'error', …) keeps that level and above by SeverityNumber;
        each ``attributes`` item must equal a LogAttributes or a ResourceAttributes entry."""
        ...

    def service_map(self, start: datetime, end: datetime) -> list[Edge]:
        """Edges from a Client span in service A to its child Server span in service B != A,
        read from the edge table kept on insert (:mod:`.edges`), by the client span's minute
        (whole minutes ``[floor(start), end)``). ``errors`` counts pairs where either span has
        status Error; ``p95_ms`` is over the client-side durations. Sorted by client, server."""
        ...

    def error_groups(self, start: datetime, end: datetime, service: str | None = None,
                     limit: int = 50) -> list[ErrorGroup]:
        """Occurrences grouped by service, span name, exception type and normalised message.
        An occurrence is an ``exception`` span event (``exception.type``/``.message``), or an
        Error span without one (type '', its StatusMessage). Sorted by count desc, last seen desc."""
        ...

    def correlations(self, service: str, endpoint: str | None, start: datetime, end: datetime,
                     *, slow_ms: float | None = None, failed: bool = False, limit: int = 10,
                     ) -> list[Correlation]:
        """What is different about the slow (``Duration >= slow_ms``) or failed (status Error)
        entry spans of a service (one endpoint, or all with ``None``): the span and resource
        attribute ``key=value`` pairs over-represented in that cohort against the rest, by score
        desc. At least one of ``slow_ms`` and ``failed`` is given (else
        :class:`StoreUsageError`); with both, the answer holds each cohort's (``limit`` each,
        slow first), read in one pass.
        A window with more than :data:`~.analysis.CORRELATION_SAMPLE` such spans (by the minute
        rollup's counts, :func:`~.analysis.minute_slices`) is read in whole time slices picked
        by :func:`~.analysis.sample_slices`, and both shares are those within the slices read
        (estimates for the window)."""
        ...

    def timeseries(self, service: str, start: datetime, end: datetime,
                   endpoint: str | None = None) -> list[TimeseriesPoint]:
        """Per-minute entry-span count, errors and estimated percentiles, read from the minute
        rollup only (percentiles within ±4.4 %, see :mod:`.rollup`). Sorted by minute."""
        ...

    def gauge_series(self, metric: str, start: datetime, end: datetime, *,
                     service: str | None = None, by: str | None = None, step_s: int = 60,
                     ) -> list[GaugePoint]:
        """``otel_metrics_gauge`` points named ``metric`` in ``[start, end)`` (one service's, or
        every service's with ``None``), averaged and maxed per ``step_s`` bucket (epoch-aligned)
        and per value of the data-point attribute ``by``. ``step_s`` < 1 is a
        :class:`StoreUsageError`. Sorted by group, then bucket."""
        ...

    # -- housekeeping -------------------------------------------------------------------------
    def compact_rollups(self, before: datetime, after: datetime | None = None) -> int:
        """Merge the rows of the minute rollup and the service-map edge table whose minute is
        in ``[after, before)`` (whole minutes: both bounds rounded down; ``after=None``: from
        the oldest) into one row per group key, so later reads scan fewer rows; every read
        returns the same answer before and after. Rows that arrive later for a merged minute
        are simply added (and merged by a later call over that minute). Returns how many rows
        fewer the tables hold. ClickHouse's AggregatingMergeTree merges on its own: there it
        does nothing and returns 0."""
        ...

    def retention(self, signal: Signal, max_age: timedelta, now: datetime | None = None) -> None:
        """Delete ``signal`` rows older than ``now - max_age`` for good and reclaim space so the
        store stops growing under a steady insert/expire cycle."""
        ...

    def close(self) -> None:
        ...
