"""Rows → Arrow for the telemetry store: the transposed fast path and the sparse-row path agree."""

from __future__ import annotations

from typing import Any

import pytest

from noops.observe.store import StoreUsageError, schema
from noops.observe.store._rows import from_arrow, to_arrow

RESOURCE = {"service.name": "shop", "host.name": "h1"}  # one object shared by many rows


def full_row(i: int) -> dict[str, Any]:
    return {
        "Timestamp": 1_700_000_000_000_000_000 + i, "TraceId": f"{i + 1:032x}", "SpanId": f"{i + 1:016x}",
        "ParentSpanId": "", "TraceState": "", "SpanName": f"op{i % 3}", "SpanKind": "Server",
        "ServiceName": "shop", "ResourceAttributes": RESOURCE, "ScopeName": "s", "ScopeVersion": "",
        "SpanAttributes": {f"k{j}": str(i * j) for j in range(i % 4)}, "Duration": i * 1000,
        "StatusCode": "Error" if i % 5 == 0 else "Unset", "StatusMessage": "",
        "Events.Timestamp": [i] if i % 2 else [], "Events.Name": ["e"] if i % 2 else [],
        "Events.Attributes": [{"a": "b"}] if i % 2 else [],
        "Links.TraceId": [], "Links.SpanId": [], "Links.TraceState": [], "Links.Attributes": [],
    }


def test_complete_and_sparse_rows_give_the_same_table() -> None:
    rows = [full_row(i) for i in range(50)]
    sparse = [{k: v for k, v in r.items() if v not in ("", [], {})} for r in rows]
    fast = to_arrow("otel_traces", schema.TRACES, rows)
    slow = to_arrow("otel_traces", schema.TRACES, sparse)
    assert fast.equals(slow)
    assert from_arrow(fast) == rows


def test_map_columns_accept_pairs_and_refuse_non_strings() -> None:
    rows = [full_row(0), {**full_row(1), "SpanAttributes": [("a", "b")]}]
    assert from_arrow(to_arrow("otel_traces", schema.TRACES, rows))[1]["SpanAttributes"] == {"a": "b"}
    with pytest.raises(StoreUsageError, match="SpanAttributes"):
        to_arrow("otel_traces", schema.TRACES, [{**full_row(0), "SpanAttributes": {"a": 1}}])
    with pytest.raises(StoreUsageError, match="no column"):
        to_arrow("otel_traces", schema.TRACES, [{**full_row(0), "Nope": 1}])
