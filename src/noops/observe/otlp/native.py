"""The native protobuf trace decoder: ``ExportTraceServiceRequest`` → an ``otel_traces`` Arrow table.

:func:`decode_traces` has :func:`noops.observe.otlp.decode.decode_traces`'s signature and
results, but for a protobuf body whose spans are all accepted as they are it parses the wire
format in C (``_otlpfast``) straight into column buffers and returns them as
``DecodeResult.table`` (a ``pyarrow.Table`` with :data:`noops.observe.store.schema.TRACES`'s
columns and the types the stores' row path builds; ``rows`` stays empty). The buffers are
wrapped without copying.

Everything else goes to the Python decoder, which then decides: JSON bodies, bodies that do not
parse, requests with a span it rejects or a value it truncates, duplicate attribute keys,
``arrayValue``/``kvlistValue`` attributes (flattened to JSON by ``decode.py``), maps over its
attribute cap. Rows and table hold the same values byte for byte (tested property), so which
path a request took is invisible downstream.

:data:`AVAILABLE` is false when the extension was not built or ``NOOPS_OTLP_NATIVE=0`` is set;
:func:`decode_traces` then always uses the Python decoder.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

from noops.observe.otlp.decode import CONTENT_TYPE_PROTOBUF, DecodeResult
from noops.observe.otlp.decode import decode_traces as decode_traces_py

try:
    from noops.observe.otlp import _otlpfast  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - the extension is built by pip install
    _otlpfast = None

__all__ = ["AVAILABLE", "decode_traces", "decode_traces_native"]

if os.environ.get("NOOPS_OTLP_NATIVE", "1") == "0":  # the Python decoder only (benchmark peer)
    _otlpfast = None
AVAILABLE = _otlpfast is not None

_STR = pa.string()
_TS = pa.timestamp("ns")
_MAP = pa.map_(pa.string(), pa.string())
_STRING_COLUMNS = ("TraceId", "SpanId", "ParentSpanId", "TraceState", "SpanName", "SpanKind",
                   "ServiceName", "ScopeName", "ScopeVersion", "StatusCode", "StatusMessage")
_ORDER = ("Timestamp", "TraceId", "SpanId", "ParentSpanId", "TraceState", "SpanName", "SpanKind",
          "ServiceName", "ResourceAttributes", "ScopeName", "ScopeVersion", "SpanAttributes",
          "Duration", "StatusCode", "StatusMessage", "Events.Timestamp", "Events.Name",
          "Events.Attributes", "Links.TraceId", "Links.SpanId", "Links.TraceState",
          "Links.Attributes")


def _strings(n: int, bufs: list[bytes]) -> pa.Array:
    off, data = bufs.pop(0), bufs.pop(0)
    return pa.Array.from_buffers(_STR, n, [None, pa.py_buffer(off), pa.py_buffer(data)])


def _maps(n: int, bufs: list[bytes]) -> pa.Array:
    off = bufs.pop(0)
    keys = _strings(len(bufs[0]) // 4 - 1, bufs)
    vals = _strings(len(bufs[0]) // 4 - 1, bufs)
    offsets = pa.Array.from_buffers(pa.int32(), n + 1, [None, pa.py_buffer(off)])
    return pa.MapArray.from_arrays(offsets, keys, vals, type=_MAP)


def _lists(n: int, off: bytes, child: pa.Array) -> pa.Array:
    return pa.Array.from_buffers(pa.list_(child.type), n, [None, pa.py_buffer(off)],
                                 children=[child])


def _table(n: int, n_events: int, n_links: int, bufs: list[bytes]) -> pa.Table:
    cols: dict[str, pa.Array] = {}
    cols["Timestamp"] = pa.Array.from_buffers(_TS, n, [None, pa.py_buffer(bufs.pop(0))])
    cols["Duration"] = pa.Array.from_buffers(pa.uint64(), n, [None, pa.py_buffer(bufs.pop(0))])
    for name in _STRING_COLUMNS:
        cols[name] = _strings(n, bufs)
    cols["ResourceAttributes"] = _maps(n, bufs)
    cols["SpanAttributes"] = _maps(n, bufs)
    ev_off = bufs.pop(0)
    ev_ts = pa.Array.from_buffers(_TS, n_events, [None, pa.py_buffer(bufs.pop(0))])
    cols["Events.Timestamp"] = _lists(n, ev_off, ev_ts)
    cols["Events.Name"] = _lists(n, ev_off, _strings(n_events, bufs))
    cols["Events.Attributes"] = _lists(n, ev_off, _maps(n_events, bufs))
    ln_off = bufs.pop(0)
    for name in ("Links.TraceId", "Links.SpanId", "Links.TraceState"):
        cols[name] = _lists(n, ln_off, _strings(n_links, bufs))
    cols["Links.Attributes"] = _lists(n, ln_off, _maps(n_links, bufs))
    assert not bufs, "buffer layout out of step with _otlpfast.c"
    return pa.Table.from_arrays([cols[c] for c in _ORDER], names=list(_ORDER))


def decode_traces_native(body: bytes) -> pa.Table | None:
    """The ``otel_traces`` table for a protobuf body, or ``None`` when the Python decoder has to
    decide (see the module doc). Raises nothing for bad input; ``MemoryError`` only."""
    if _otlpfast is None:
        return None
    out: Any = _otlpfast.decode_traces(body)
    if out is None:
        return None
    n, n_events, n_links, bufs = out
    return _table(n, n_events, n_links, bufs)


def decode_traces(body: bytes, content_type: str) -> DecodeResult:
    """Like :func:`noops.observe.otlp.decode.decode_traces`; ``table`` set when decoded natively."""
    if content_type.split(";", 1)[0].strip().lower() == CONTENT_TYPE_PROTOBUF:
        table = decode_traces_native(body)
        if table is not None:
            return DecodeResult(table=table)
    return decode_traces_py(body, content_type)
