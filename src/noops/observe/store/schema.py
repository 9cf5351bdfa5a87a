"""The table contract: the OpenTelemetry Collector ClickHouse exporter schema, written once.

Column names and ClickHouse types follow ``exporter/clickhouseexporter`` (see
``reference/observability.md`` §3). ``Nested`` columns appear flattened, the way ClickHouse
stores and describes them (``Events.Timestamp Array(DateTime64(9))``), which is also the key a
row mapping uses. Both backends build their DDL from these tuples, and the conformance suite
introspects each backend against them, so a drift shows up as a failing test.

Two tables are noops' own: ``otel_traces_trace_id_ts`` mirrors the exporter's trace-id lookup
table, and ``otel_traces_rollup_1m`` is the per-minute rollup described in :mod:`.rollup`.
"""

from __future__ import annotations

from typing import Final, Literal

Column = tuple[str, str]
MetricKind = Literal["gauge", "sum", "histogram"]
Signal = Literal["traces", "logs", "metrics", "rollups"]

_MAP: Final = "Map(LowCardinality(String), String)"
_LC: Final = "LowCardinality(String)"
_TS: Final = "DateTime64(9)"

TRACES: Final[tuple[Column, ...]] = (
    ("Timestamp", _TS),
    ("TraceId", "String"),
    ("SpanId", "String"),
    ("ParentSpanId", "String"),
    ("TraceState", "String"),
    ("SpanName", _LC),
    ("SpanKind", _LC),
    ("ServiceName", _LC),
    ("ResourceAttributes", _MAP),
    ("ScopeName", "String"),
    ("ScopeVersion", "String"),
    ("SpanAttributes", _MAP),
    ("Duration", "UInt64"),  # nanoseconds
    ("StatusCode", _LC),  # 'Unset' | 'Ok' | 'Error'
    ("StatusMessage", "String"),
    ("Events.Timestamp", f"Array({_TS})"),
    ("Events.Name", f"Array({_LC})"),
    ("Events.Attributes", f"Array({_MAP})"),
    ("Links.TraceId", "Array(String)"),
    ("Links.SpanId", "Array(String)"),
    ("Links.TraceState", "Array(String)"),
    ("Links.Attributes", f"Array({_MAP})"),
)

TRACE_ID_TS: Final[tuple[Column, ...]] = (
    ("TraceId", "String"),
    ("Start", "DateTime"),
    ("End", "DateTime"),
)

LOGS: Final[tuple[Column, ...]] = (
    ("Timestamp", _TS),
    ("TraceId", "String"),
    ("SpanId", "String"),
    ("TraceFlags", "UInt8"),
    ("SeverityText", _LC),
    ("SeverityNumber", "UInt8"),
    ("ServiceName", _LC),
    ("Body", "String"),
    ("ResourceSchemaUrl", _LC),
    ("ResourceAttributes", _MAP),
    ("ScopeSchemaUrl", _LC),
    ("ScopeName", "String"),
    ("ScopeVersion", _LC),
    ("ScopeAttributes", _MAP),
    ("LogAttributes", _MAP),
    ("EventName", "String"),
)

_METRIC_HEAD: Final[tuple[Column, ...]] = (
    ("ResourceAttributes", _MAP),
    ("ResourceSchemaUrl", "String"),
    ("ScopeName", "String"),
    ("ScopeVersion", "String"),
    ("ScopeAttributes", _MAP),
    ("ScopeDroppedAttrCount", "UInt32"),
    ("ScopeSchemaUrl", "String"),
    ("ServiceName", _LC),
    ("MetricName", "String"),
    ("MetricDescription", "String"),
    ("MetricUnit", "String"),
    ("Attributes", _MAP),
    ("StartTimeUnix", _TS),
    ("TimeUnix", _TS),
)
_EXEMPLARS: Final[tuple[Column, ...]] = (
    ("Exemplars.FilteredAttributes", f"Array({_MAP})"),
    ("Exemplars.TimeUnix", f"Array({_TS})"),
    ("Exemplars.Value", "Array(Float64)"),
    ("Exemplars.SpanId", "Array(String)"),
    ("Exemplars.TraceId", "Array(String)"),
)

METRICS: Final[dict[MetricKind, tuple[Column, ...]]] = {
    "gauge": (*_METRIC_HEAD, ("Value", "Float64"), ("Flags", "UInt32"), *_EXEMPLARS),
    "sum": (
        *_METRIC_HEAD,
        ("Value", "Float64"),
        ("Flags", "UInt32"),
        *_EXEMPLARS,
        ("AggregationTemporality", "Int32"),
        ("IsMonotonic", "Bool"),
    ),
    "histogram": (
        *_METRIC_HEAD,
        ("Count", "UInt64"),
        ("Sum", "Float64"),
        ("BucketCounts", "Array(UInt64)"),
        ("ExplicitBounds", "Array(Float64)"),
        *_EXEMPLARS,
        ("Flags", "UInt32"),
        ("Min", "Float64"),
        ("Max", "Float64"),
        ("AggregationTemporality", "Int32"),
    ),
}

# noops' own rollup: one row per (service, span name, kind, minute, latency bucket) and insert.
ROLLUP: Final[tuple[Column, ...]] = (
    ("ServiceName", _LC),
    ("SpanName", _LC),
    ("SpanKind", _LC),
    ("Minute", "DateTime"),
    ("Bucket", "UInt16"),
    ("Count", "UInt64"),
    ("ErrorCount", "UInt64"),
    ("DurationSum", "UInt64"),
    ("DurationMin", "UInt64"),
    ("DurationMax", "UInt64"),
)

# How each rollup measure merges: rows of one (service, span name, kind, minute, bucket) add up
# to one row with these aggregations (ClickHouse's SimpleAggregateFunction, DuckDB's compaction).
ROLLUP_AGG: Final[dict[str, str]] = {"Count": "sum", "ErrorCount": "sum", "DurationSum": "sum",
                                     "DurationMin": "min", "DurationMax": "max"}

TABLES: Final[dict[str, tuple[Column, ...]]] = {
    "otel_traces": TRACES,
    "otel_traces_trace_id_ts": TRACE_ID_TS,
    "otel_logs": LOGS,
    "otel_metrics_gauge": METRICS["gauge"],
    "otel_metrics_sum": METRICS["sum"],
    "otel_metrics_histogram": METRICS["histogram"],
    "otel_traces_rollup_1m": ROLLUP,
}
EXPORTER_TABLES: Final = ("otel_traces", "otel_traces_trace_id_ts", "otel_logs",
                          "otel_metrics_gauge", "otel_metrics_sum", "otel_metrics_histogram")

# The time column each signal's retention deletes by.
TIME_COLUMN: Final[dict[str, str]] = {
    "otel_traces": "Timestamp",
    "otel_traces_trace_id_ts": "End",
    "otel_logs": "Timestamp",
    "otel_metrics_gauge": "TimeUnix",
    "otel_metrics_sum": "TimeUnix",
    "otel_metrics_histogram": "TimeUnix",
    "otel_traces_rollup_1m": "Minute",
}
SIGNAL_TABLES: Final[dict[Signal, tuple[str, ...]]] = {
    "traces": ("otel_traces", "otel_traces_trace_id_ts"),
    "logs": ("otel_logs",),
    "metrics": ("otel_metrics_gauge", "otel_metrics_sum", "otel_metrics_histogram"),
    "rollups": ("otel_traces_rollup_1m",),
}

# Spans that stand for a request a service served: what APM rates and latencies count.
ENTRY_KINDS: Final = ("Server", "Consumer")
ERROR_STATUS: Final = "Error"

# OTLP SeverityNumber ranges: a severity filter keeps that level and everything above it.
SEVERITY_FLOOR: Final[dict[str, int]] = {
    "trace": 1, "debug": 5, "info": 9, "warn": 13, "warning": 13, "error": 17, "fatal": 21,
}


def metric_table(kind: str) -> str:
    return f"otel_metrics_{kind}"


# -- the service map (noops' own, maintained on insert; see :mod:`.edges`) ---------------------
# The pairing index: every Client span and every Server span with a parent, slimmed to what
# pairing needs. ``LinkId`` is the client's SpanId or the server's ParentSpanId; ``Batch`` tells
# the spans of one insert apart from earlier ones, so each pair is counted exactly once, when
# its second span arrives.
EDGE_SPANS: Final[tuple[Column, ...]] = (
    ("Batch", "UInt64"),
    ("Side", "UInt8"),  # 0 client, 1 server
    ("TraceId", "String"),
    ("LinkId", "String"),
    ("ServiceName", _LC),
    ("Timestamp", _TS),
    ("Duration", "UInt64"),
    ("IsError", "UInt8"),
    ("Mtls", "UInt8"),
)
# One row per (client service, server service, minute, latency bucket) and insert.
EDGES: Final[tuple[Column, ...]] = (
    ("ClientService", _LC),
    ("ServerService", _LC),
    ("Minute", "DateTime"),
    ("Bucket", "UInt16"),
    ("Calls", "UInt64"),
    ("ErrorCount", "UInt64"),
    ("MtlsCount", "UInt64"),
    ("DurationMin", "UInt64"),
    ("DurationMax", "UInt64"),
)
EDGES_AGG: Final[dict[str, str]] = {"Calls": "sum", "ErrorCount": "sum", "MtlsCount": "sum",
                                    "DurationMin": "min", "DurationMax": "max"}
# The rollup tables by their measures' aggregations: what compaction merges.
ROLLUP_TABLES: Final[dict[str, dict[str, str]]] = {
    "otel_traces_rollup_1m": ROLLUP_AGG, "otel_traces_edges_1m": EDGES_AGG}
TABLES["otel_traces_edge_spans"] = EDGE_SPANS
TABLES["otel_traces_edges_1m"] = EDGES
TIME_COLUMN["otel_traces_edge_spans"] = "Timestamp"
TIME_COLUMN["otel_traces_edges_1m"] = "Minute"
SIGNAL_TABLES["traces"] = (*SIGNAL_TABLES["traces"], "otel_traces_edge_spans")
SIGNAL_TABLES["rollups"] = (*SIGNAL_TABLES["rollups"], "otel_traces_edges_1m")
