"""A trace as a waterfall: its spans as a tree (depth, offset and duration per span) plus the
log records linked to it by TraceId.

:func:`waterfall` is pure: it takes the rows ``TelemetryStore.trace`` and ``TelemetryStore.logs``
return and lays them out; :func:`load_waterfall` asks a store for both, bounded by the trace's
own time range.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from noops.errors import NoopsError
from noops.observe.store import TelemetryStore

__all__ = ["TraceNotFoundError", "load_waterfall", "waterfall"]

_LOG_SLACK_NS: Final = 60 * 1_000_000_000  # logs written a little before/after their spans
_LOG_LIMIT: Final = 1000


class TraceNotFoundError(NoopsError):
    """No span of that trace id is stored (never sent, or expired by retention)."""

    exit_code = 2
    http_status = 404


def waterfall(spans: Sequence[dict[str, Any]], logs: Sequence[dict[str, Any]] = ()
              ) -> dict[str, Any]:
    """Spans in depth-first order, children by start time; a span whose parent is not stored
    is a root, and so is the earliest span of a parent-id cycle. Each span gets ``depth``,
    ``offset_ms`` (from the trace's first start) and ``duration_ms``; the trace gets
    ``start_ns``, ``duration_ms`` (first start to last end), ``services`` and ``logs`` (oldest
    first, each with the ``offset_ms`` of its timestamp)."""
    if not spans:
        raise TraceNotFoundError("no spans for this trace")
    ids = {s["SpanId"] for s in spans}
    children: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in spans:
        parent = s["ParentSpanId"] if s["ParentSpanId"] in ids and s["ParentSpanId"] != s[
            "SpanId"] else ""
        children[parent].append(s)
    for group in children.values():
        group.sort(key=lambda s: (s["Timestamp"], s["SpanId"]))
    t0 = min(s["Timestamp"] for s in spans)
    t1 = max(s["Timestamp"] + s["Duration"] for s in spans)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    # Spans in a cycle of parent ids are reachable from no root: each such cycle is then laid
    # out from its earliest span, so no stored span goes missing.
    rest = sorted(spans, key=lambda s: (s["Timestamp"], s["SpanId"]), reverse=True)
    stack = [(s, 0) for s in reversed(children[""])]
    while stack or rest:
        if not stack:
            first = rest.pop()
            if first["SpanId"] not in seen:
                stack.append((first, 0))
            continue
        span, depth = stack.pop()
        if span["SpanId"] in seen:  # duplicated span ids: show each once
            continue
        seen.add(span["SpanId"])
        out.append({
            "span_id": span["SpanId"], "parent_span_id": span["ParentSpanId"],
            "service": span["ServiceName"], "name": span["SpanName"], "kind": span["SpanKind"],
            "status": span["StatusCode"], "status_message": span["StatusMessage"],
            "depth": depth, "offset_ms": (span["Timestamp"] - t0) / 1e6,
            "duration_ms": span["Duration"] / 1e6, "attributes": span["SpanAttributes"],
            "resource": span["ResourceAttributes"],
            "events": [{"name": n, "offset_ms": (t - t0) / 1e6, "attributes": a}
                       for n, t, a in zip(span["Events.Name"], span["Events.Timestamp"],
                                          span["Events.Attributes"], strict=False)],
        })
        stack += [(c, depth + 1) for c in reversed(children[span["SpanId"]])]
    return {
        "trace_id": spans[0]["TraceId"], "start_ns": t0, "duration_ms": (t1 - t0) / 1e6,
        "services": sorted({s["ServiceName"] for s in spans}), "spans": out,
        "logs": [{"timestamp_ns": r["Timestamp"], "offset_ms": (r["Timestamp"] - t0) / 1e6,
                  "service": r["ServiceName"], "severity": r["SeverityText"],
                  "span_id": r["SpanId"], "body": r["Body"], "attributes": r["LogAttributes"]}
                 for r in sorted(logs, key=lambda r: (r["Timestamp"], r["SpanId"]))],
    }


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def load_waterfall(store: TelemetryStore, trace_id: str) -> dict[str, Any]:
    """The waterfall of ``trace_id`` with its logs; :class:`TraceNotFoundError` if unknown."""
    trace_id = trace_id.lower()
    spans = store.trace(trace_id)
    if not spans:
        raise TraceNotFoundError(f"trace {trace_id} is not stored (never received, or older "
                                 "than the trace retention); `noops traces` lists recent ones")
    t0 = min(s["Timestamp"] for s in spans)
    t1 = max(s["Timestamp"] + s["Duration"] for s in spans)
    logs = store.logs(trace_id=trace_id, start=_dt(t0 - _LOG_SLACK_NS),
                      end=_dt(t1 + _LOG_SLACK_NS), limit=_LOG_LIMIT)
    return waterfall(spans, logs)
