"""OTLP export requests → rows named like the OTel Collector ClickHouse exporter's columns.

``decode_traces``/``decode_logs``/``decode_metrics`` take a request body (already decompressed)
and its ``Content-Type`` (``application/x-protobuf`` or ``application/json``) and return a
:class:`DecodeResult`. A body that cannot be parsed at all raises :class:`OtlpDecodeError`
(HTTP 400); an invalid *item* (span, log record, data point) is only counted in
``DecodeResult.rejected`` with a reason in ``errors`` (OTLP partial success).

Row conventions (one ``dict`` per row, keys are the exporter's column names):

* timestamps (``Timestamp``, ``TimeUnix``, ``StartTimeUnix``, ``Events.Timestamp``,
  ``Exemplars.TimeUnix``) are **int nanoseconds since the epoch** (``DateTime64(9)`` ready);
* ids are lowercase hex (``""`` when absent); ``Duration`` is ns;
* ``SpanKind``/``StatusCode`` are written as the current exporter writes them (pdata's
  ``String()``): ``Server``, ``Client``, … and ``Unset``/``Ok``/``Error``;
* ``Nested`` columns are parallel lists under dotted keys (``Events.Name`` …);
* attribute maps are ``dict[str, str]``. Values are flattened like pdata's ``Value.AsString``:
  strings as is, bools ``true``/``false``, ints in decimal, doubles via ``repr``, bytes base64,
  ``arrayValue``/``kvlistValue`` as compact JSON of their raw values (nested deeper than
  :data:`MAX_DEPTH` becomes ``null``). The log ``Body`` is flattened the same way.

Limits (hostile input): each flattened value is cut to :data:`MAX_VALUE_CHARS` (log bodies to
:data:`MAX_BODY_CHARS`), a map keeps its first :data:`MAX_ATTRIBUTES` entries, keys are cut to
:data:`MAX_KEY_CHARS`; cuts are reported in ``errors`` as warnings. An item whose flattened
strings exceed :data:`MAX_ITEM_CHARS` in total is rejected. JSON nesting deeper than Python's
parser allows, invalid UTF-8 and protobuf garbage raise :class:`OtlpDecodeError`.

Every row repeats its resource's attributes and its scope's name, version and attributes, so a
small body whose many items share one large resource would expand to a very large table. The
characters repeated that way are counted over the whole request; past
:data:`MAX_SHARED_CHARS` the request is refused whole with :class:`OtlpTooLargeError` (HTTP
413), before anything is stored.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from noops.errors import UsageError

__all__ = [
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_PROTOBUF",
    "MAX_ATTRIBUTES",
    "MAX_BODY_CHARS",
    "MAX_DEPTH",
    "MAX_ITEM_CHARS",
    "MAX_KEY_CHARS",
    "MAX_SHARED_CHARS",
    "MAX_VALUE_CHARS",
    "METRIC_KINDS",
    "DecodeResult",
    "OtlpDecodeError",
    "OtlpTooLargeError",
    "decode_logs",
    "decode_metrics",
    "decode_traces",
]

CONTENT_TYPE_PROTOBUF = "application/x-protobuf"
CONTENT_TYPE_JSON = "application/json"
MAX_VALUE_CHARS = 16 * 1024
MAX_BODY_CHARS = 64 * 1024
MAX_KEY_CHARS = 256
MAX_ATTRIBUTES = 128
MAX_DEPTH = 8
MAX_ITEM_CHARS = 1024 * 1024
MAX_SHARED_CHARS = 64 * 1024 * 1024
MAX_ERRORS = 8  # distinct messages kept per request; the rest are only counted
METRIC_KINDS = ("gauge", "sum", "histogram")

Row = dict[str, Any]
Attrs = dict[str, str]

# Stored spellings: pdata's ``String()``, which the current exporter writes (older exporters
# wrote the proto names, ``SPAN_KIND_SERVER``); the proto names are what OTLP JSON may carry.
_SPAN_KINDS = ("Unspecified", "Internal", "Server", "Client", "Producer", "Consumer")
_STATUS_CODES = ("Unset", "Ok", "Error")
_SPAN_KIND_NAMES = tuple(f"SPAN_KIND_{k.upper()}" for k in _SPAN_KINDS)
_STATUS_CODE_NAMES = tuple(f"STATUS_CODE_{c.upper()}" for c in _STATUS_CODES)
_TEMPORALITIES = (
    "AGGREGATION_TEMPORALITY_UNSPECIFIED",
    "AGGREGATION_TEMPORALITY_DELTA",
    "AGGREGATION_TEMPORALITY_CUMULATIVE",
)
_U64_MAX = 2**64 - 1


class OtlpDecodeError(UsageError):
    """The whole body is undecodable (HTTP 400, not retryable); the message says why."""


class OtlpTooLargeError(OtlpDecodeError):
    """The body would expand past :data:`MAX_SHARED_CHARS` of repeated resource and scope data
    (HTTP 413, not retryable as is)."""

    http_status = 413


@dataclass
class DecodeResult:
    """Rows that passed validation, and how many items were rejected and why.

    For metrics, ``by_kind`` maps ``gauge``/``sum``/``histogram`` to that table's rows and
    ``rows`` is their concatenation; for traces and logs ``by_kind`` is empty. The native trace
    decoder (:mod:`.native`) leaves ``rows`` empty and sets ``table`` instead (a
    ``pyarrow.Table`` with the ``otel_traces`` columns); :attr:`count` is right for both.
    """

    rows: list[Row] = field(default_factory=list)
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    by_kind: dict[str, list[Row]] = field(default_factory=dict)
    table: Any = None

    @property
    def count(self) -> int:
        """Accepted items: rows, or the rows of ``table``."""
        return self.table.num_rows if self.table is not None else len(self.rows)


class _Reject(Exception):
    """One item is invalid; carries the reason."""


class _Ctx:
    """Per-request bookkeeping: rejections, warnings, the current item's size budget."""

    def __init__(self) -> None:
        self.result = DecodeResult()
        self.item_chars = 0
        self.truncated = 0
        self.dropped_attrs = 0
        self.shared_chars = 0

    def charge(self, sc: _Scope, rows: int) -> None:
        """Count ``rows`` new rows repeating ``sc``'s shared columns; refuse the request past
        :data:`MAX_SHARED_CHARS`."""
        self.shared_chars += rows * sc.shared
        if self.shared_chars > MAX_SHARED_CHARS:
            raise OtlpTooLargeError(
                f"the batch repeats its resource and scope attributes ({sc.shared} characters) "
                f"in every item: over {MAX_SHARED_CHARS} characters once expanded. Send fewer "
                "items per request, or fewer resource attributes")

    def reject(self, what: str, reason: str, n: int = 1) -> None:
        self.result.rejected += n
        msg = f"{what}: {reason}"
        errs = self.result.errors
        if msg not in errs and len(errs) < MAX_ERRORS:
            errs.append(msg)

    def cut(self, s: str, limit: int) -> str:
        if len(s) > limit:
            self.truncated += 1
            s = s[:limit]
        self.item_chars += len(s)
        return s

    def finish(self) -> DecodeResult:
        if self.truncated:
            self.result.errors.append(f"{self.truncated} attribute keys/values or bodies were truncated")
        if self.dropped_attrs:
            self.result.errors.append(
                f"{self.dropped_attrs} attributes dropped beyond {MAX_ATTRIBUTES} per map"
            )
        return self.result


def _check_size(ctx: _Ctx) -> None:
    if ctx.item_chars > MAX_ITEM_CHARS:
        raise _Reject(f"item larger than {MAX_ITEM_CHARS} characters once flattened")


def _hex_id(raw: bytes, size: int, what: str, *, required: bool) -> str:
    if not raw:
        if required:
            raise _Reject(f"missing {what}")
        return ""
    if len(raw) != size:
        raise _Reject(f"{what} must be {size} bytes, got {len(raw)}")
    if required and not any(raw):
        raise _Reject(f"{what} is all zeroes")
    return raw.hex()


def _enum(names: tuple[str, ...], value: int, what: str) -> str:
    if 0 <= value < len(names):
        return names[value]
    raise _Reject(f"unknown {what} {value}")


def _dumps(raw: object) -> str:
    return json.dumps(raw, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


# --- protobuf -----------------------------------------------------------------------------------


def _pb_raw(v: Any, depth: int) -> object:
    """An AnyValue as a JSON-able raw value (for arrays and kvlists)."""
    kind = v.WhichOneof("value")
    if depth > MAX_DEPTH or kind is None:
        return None
    if kind == "array_value":
        return [_pb_raw(x, depth + 1) for x in v.array_value.values[:MAX_ATTRIBUTES]]
    if kind == "kvlist_value":
        return {kv.key: _pb_raw(kv.value, depth + 1) for kv in v.kvlist_value.values[:MAX_ATTRIBUTES]}
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, kind)


def _pb_str(ctx: _Ctx, v: Any, limit: int = MAX_VALUE_CHARS) -> str:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        s: str = v.string_value
    elif kind is None:
        s = ""
    elif kind == "bool_value":
        s = "true" if v.bool_value else "false"
    elif kind == "int_value":
        s = str(v.int_value)
    elif kind == "double_value":
        s = repr(v.double_value)
    elif kind == "bytes_value":
        s = base64.b64encode(v.bytes_value[:limit]).decode()
    else:
        s = _dumps(_pb_raw(v, 1))
    return ctx.cut(s, limit)


def _pb_attrs(ctx: _Ctx, kvs: Any) -> Attrs:
    if len(kvs) > MAX_ATTRIBUTES:
        ctx.dropped_attrs += len(kvs) - MAX_ATTRIBUTES
        kvs = kvs[:MAX_ATTRIBUTES]
    out: Attrs = {}
    chars = 0
    for kv in kvs:
        key, v = kv.key, kv.value
        # The common case, kept inline for speed: a non-empty string_value can only be the set
        # member of the oneof, so WhichOneof is only asked when it is empty.
        val = v.string_value
        if not val and v.WhichOneof("value") != "string_value":
            val = _pb_str(ctx, v)
        elif len(val) > MAX_VALUE_CHARS:
            val = ctx.cut(val, MAX_VALUE_CHARS)
        else:
            chars += len(val)
        if len(key) > MAX_KEY_CHARS:
            key = ctx.cut(key, MAX_KEY_CHARS)
        else:
            chars += len(key)
        out[key] = val
    ctx.item_chars += chars
    return out


def _parse_pb(msg: Any, body: bytes) -> None:
    try:
        msg.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise OtlpDecodeError(f"body is not a valid protobuf {type(msg).__name__}: {exc}") from exc


# --- JSON ---------------------------------------------------------------------------------------


def _need_obj(v: object, what: str) -> None:
    if not isinstance(v, dict):
        raise _Reject(f"{what} must be objects")


def _jlist(obj: Mapping[str, Any], key: str) -> list[Any]:
    v = obj.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise _Reject(f"{key} must be an array")
    return v


def _jdict(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = obj.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _Reject(f"{key} must be an object")
    return v


def _jstr(obj: Mapping[str, Any], key: str) -> str:
    v = obj.get(key, "")
    if not isinstance(v, str):
        raise _Reject(f"{key} must be a string")
    return v


def _jint(obj: Mapping[str, Any], key: str, lo: int = 0, hi: int = _U64_MAX) -> int:
    """A 64-bit integer given as a JSON number or a decimal string."""
    v = obj.get(key, 0)
    if isinstance(v, bool):
        raise _Reject(f"{key} must be an integer")
    if isinstance(v, str):
        if not (v.isascii() and v.lstrip("-").isdigit() and len(v) <= 21):
            raise _Reject(f"{key} must be an integer")
        v = int(v)
    elif isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or not lo <= v <= hi:
        raise _Reject(f"{key} must be an integer in [{lo}, {hi}]")
    return v


def _jdouble(obj: Mapping[str, Any], key: str) -> float:
    v = obj.get(key, 0.0)
    if isinstance(v, bool):
        raise _Reject(f"{key} must be a number")
    if isinstance(v, int | float):
        return float(v)
    if v in ("NaN", "Infinity", "-Infinity"):
        return float(v)
    raise _Reject(f"{key} must be a number")


def _jenum(obj: Mapping[str, Any], key: str, names: tuple[str, ...]) -> int:
    v = obj.get(key, 0)
    if isinstance(v, str) and v in names:
        return names.index(v)
    return _jint(obj, key, 0, 2**31 - 1)


def _jid(obj: Mapping[str, Any], key: str) -> bytes:
    v = _jstr(obj, key)
    if len(v) > 64:
        raise _Reject(f"{key} is too long")
    try:
        return binascii.unhexlify(v)
    except (binascii.Error, ValueError) as exc:
        raise _Reject(f"{key} must be a hex string") from exc


def _jsafe(ctx: _Ctx, s: str, limit: int) -> str:
    s = ctx.cut(s, limit)
    if not s.isascii():
        try:
            s.encode()
        except UnicodeEncodeError:  # lone surrogates from "\ud800" escapes
            s = s.encode("utf-8", "replace").decode()
    return s


def _jraw(v: Any, depth: int) -> object:
    if not isinstance(v, dict) or depth > MAX_DEPTH:
        return None
    if "stringValue" in v:
        return v["stringValue"] if isinstance(v["stringValue"], str) else None
    if "boolValue" in v:
        return v["boolValue"] is True
    if "intValue" in v:
        try:
            return _jint(v, "intValue", -(2**63), 2**63 - 1)
        except _Reject:
            return None
    if "doubleValue" in v:
        try:
            return _jdouble(v, "doubleValue")
        except _Reject:
            return None
    if "bytesValue" in v:
        return v["bytesValue"] if isinstance(v["bytesValue"], str) else None
    if "arrayValue" in v:
        vals = v["arrayValue"].get("values") if isinstance(v["arrayValue"], dict) else None
        return [_jraw(x, depth + 1) for x in vals[:MAX_ATTRIBUTES]] if isinstance(vals, list) else []
    if "kvlistValue" in v:
        vals = v["kvlistValue"].get("values") if isinstance(v["kvlistValue"], dict) else None
        out: dict[str, object] = {}
        for kv in vals[:MAX_ATTRIBUTES] if isinstance(vals, list) else []:
            if isinstance(kv, dict) and isinstance(kv.get("key"), str):
                out[kv["key"]] = _jraw(kv.get("value"), depth + 1)
        return out
    return None


def _jvalue_str(ctx: _Ctx, v: Any, limit: int = MAX_VALUE_CHARS) -> str:
    if v is None:
        return ""
    if not isinstance(v, dict):
        raise _Reject("an AnyValue must be an object")
    if "stringValue" in v:
        s = v["stringValue"]
        if not isinstance(s, str):
            raise _Reject("stringValue must be a string")
    elif "arrayValue" in v or "kvlistValue" in v:
        s = _dumps(_jraw(v, 1))
    else:
        raw = _jraw(v, 1)
        if raw is None:
            s = ""
        elif isinstance(raw, bool):
            s = "true" if raw else "false"
        elif isinstance(raw, float):
            s = repr(raw)
        else:
            s = str(raw)
    return _jsafe(ctx, s, limit)


def _jattrs(ctx: _Ctx, obj: Mapping[str, Any], key: str = "attributes") -> Attrs:
    kvs = _jlist(obj, key)
    if len(kvs) > MAX_ATTRIBUTES:
        ctx.dropped_attrs += len(kvs) - MAX_ATTRIBUTES
        kvs = kvs[:MAX_ATTRIBUTES]
    out: Attrs = {}
    for kv in kvs:
        if not isinstance(kv, dict):
            raise _Reject(f"{key} entries must be objects")
        v = kv.get("value")
        if type(v) is dict and len(v) == 1 and type(sv := v.get("stringValue")) is str:
            val = _jsafe(ctx, sv, MAX_VALUE_CHARS)  # the common case, kept short for speed
        else:
            val = _jvalue_str(ctx, v)
        out[_jsafe(ctx, _jstr(kv, "key"), MAX_KEY_CHARS)] = val
    return out


def _parse_json(body: bytes) -> Mapping[str, Any]:
    try:
        doc = json.loads(body)
    except RecursionError as exc:
        raise OtlpDecodeError("JSON body is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise OtlpDecodeError(f"body is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise OtlpDecodeError("JSON body must be an object")
    return doc


# --- shared walking ------------------------------------------------------------------------------


@dataclass
class _Scope:
    """Resource and scope columns shared by every row under one ScopeSpans/ScopeLogs/…"""

    service: str
    resource_attrs: Attrs
    resource_schema: str
    scope_name: str
    scope_version: str
    scope_attrs: Attrs
    scope_dropped: int
    scope_schema: str
    shared: int = 0  # characters every row under this scope repeats

    def __post_init__(self) -> None:
        self.shared = (sum(len(k) + len(v) for k, v in self.resource_attrs.items())
                       + sum(len(k) + len(v) for k, v in self.scope_attrs.items())
                       + len(self.scope_name) + len(self.scope_version))


def _decode(
    body: bytes,
    content_type: str,
    pb_request: Any,
    res_key: tuple[str, str],
    scope_key: tuple[str, str],
    items_key: tuple[str, str],
    what: str,
    item_pb: Callable[[_Ctx, _Scope, Any], None],
    item_json: Callable[[_Ctx, _Scope, Mapping[str, Any]], None],
) -> DecodeResult:
    """Walk resource → scope → item for either encoding, rejecting items one by one."""
    ctx = _Ctx()
    media = content_type.split(";", 1)[0].strip().lower()
    if media == CONTENT_TYPE_PROTOBUF:
        _parse_pb(pb_request, body)
        for rs in getattr(pb_request, res_key[0]):
            ra = _pb_attrs(ctx, rs.resource.attributes)
            for ss in getattr(rs, scope_key[0]):
                sc = _Scope(
                    ra.get("service.name", ""), ra, rs.schema_url, ss.scope.name, ss.scope.version,
                    _pb_attrs(ctx, ss.scope.attributes), ss.scope.dropped_attributes_count, ss.schema_url,
                )  # fmt: skip
                for item in getattr(ss, items_key[0]):
                    ctx.item_chars = 0
                    before = len(ctx.result.rows)
                    try:
                        item_pb(ctx, sc, item)
                    except _Reject as exc:
                        ctx.reject(what, str(exc))
                    ctx.charge(sc, len(ctx.result.rows) - before)
    elif media == CONTENT_TYPE_JSON:
        doc = _parse_json(body)
        groups = doc.get(res_key[1], [])
        if not isinstance(groups, list):
            raise OtlpDecodeError(f"{res_key[1]} must be an array")
        for rs in groups:
            _json_group(ctx, rs, scope_key[1], items_key[1], what, item_json)
    else:
        raise OtlpDecodeError(f"unsupported content type {content_type!r}")
    return ctx.finish()


def _count(obj: object, *path: str) -> int:
    """How many items sit under ``obj`` (for rejecting a whole malformed group)."""
    if not path:
        return 1
    if isinstance(obj, dict):
        seq = obj.get(path[0])
        if isinstance(seq, list):
            return sum(_count(x, *path[1:]) for x in seq) if len(path) > 1 else len(seq)
    return 0


def _json_group(
    ctx: _Ctx,
    rs: Any,
    scope_key: str,
    items_key: str,
    what: str,
    item_json: Callable[[_Ctx, _Scope, Mapping[str, Any]], None],
) -> None:
    try:
        _need_obj(rs, "resource entries")
        res = _jdict(rs, "resource")
        ra = _jattrs(ctx, res)
        res_schema = _jstr(rs, "schemaUrl")
        scopes = _jlist(rs, scope_key)
    except _Reject as exc:
        ctx.reject(what, str(exc), _count(rs, scope_key, items_key))
        return
    for ss in scopes:
        try:
            _need_obj(ss, "scope entries")
            scope = _jdict(ss, "scope")
            sc = _Scope(
                ra.get("service.name", ""), ra, res_schema, _jstr(scope, "name"), _jstr(scope, "version"),
                _jattrs(ctx, scope), _jint(scope, "droppedAttributesCount", 0, 2**32 - 1),
                _jstr(ss, "schemaUrl"),
            )  # fmt: skip
            items = _jlist(ss, items_key)
        except _Reject as exc:
            ctx.reject(what, str(exc), _count(ss, items_key))
            continue
        for item in items:
            ctx.item_chars = 0
            before = len(ctx.result.rows)
            try:
                _need_obj(item, "items")
                item_json(ctx, sc, item)
            except _Reject as exc:
                ctx.reject(what, str(exc))
            except (TypeError, ValueError, OverflowError, AttributeError) as exc:
                ctx.reject(what, f"malformed item ({type(exc).__name__})")
            ctx.charge(sc, len(ctx.result.rows) - before)


# --- traces --------------------------------------------------------------------------------------


def _span_row(
    ctx: _Ctx,
    sc: _Scope,
    *,
    trace_id: bytes,
    span_id: bytes,
    parent: bytes,
    trace_state: str,
    name: str,
    kind: int,
    start: int,
    end: int,
    attrs: Attrs,
    status_code: int,
    status_msg: str,
    events: Iterable[tuple[int, str, Attrs]],
    links: Iterable[tuple[bytes, bytes, str, Attrs]],
) -> None:
    if not name:
        raise _Reject("missing name")
    if start <= 0:
        raise _Reject("missing startTimeUnixNano")
    if end < start:
        raise _Reject("endTimeUnixNano before startTimeUnixNano")
    ev: list[tuple[Any, ...]] = list(events) if events else []
    _check_size(ctx)
    ln: list[tuple[Any, ...]] = [
        (_hex_id(t, 16, "link traceId", required=True), _hex_id(s, 8, "link spanId", required=True), ts, a)
        for t, s, ts, a in links
    ] if links else []
    ctx.result.rows.append(
        {
            "Timestamp": start,
            "TraceId": _hex_id(trace_id, 16, "traceId", required=True),
            "SpanId": _hex_id(span_id, 8, "spanId", required=True),
            "ParentSpanId": _hex_id(parent, 8, "parentSpanId", required=False),
            "TraceState": trace_state,
            "SpanName": name,
            "SpanKind": _enum(_SPAN_KINDS, kind, "span kind"),
            "ServiceName": sc.service,
            "ResourceAttributes": sc.resource_attrs,
            "ScopeName": sc.scope_name,
            "ScopeVersion": sc.scope_version,
            "SpanAttributes": attrs,
            "Duration": end - start,
            "StatusCode": _enum(_STATUS_CODES, status_code, "status code"),
            "StatusMessage": status_msg,
            **(_nested(_EVENT_COLUMNS, ev) if ev else _empty(_EVENT_COLUMNS)),
            **(_nested(_LINK_COLUMNS, ln) if ln else _empty(_LINK_COLUMNS)),
        }
    )


_EVENT_COLUMNS = ("Events.Timestamp", "Events.Name", "Events.Attributes")
_LINK_COLUMNS = ("Links.TraceId", "Links.SpanId", "Links.TraceState", "Links.Attributes")


def _nested(columns: tuple[str, ...], items: list[tuple[Any, ...]]) -> dict[str, list[Any]]:
    """Parallel lists (ClickHouse ``Nested``) from one tuple per item."""
    return {c: [it[i] for it in items] for i, c in enumerate(columns)}


def _empty(columns: tuple[str, ...]) -> dict[str, list[Any]]:
    return {c: [] for c in columns}


def _span_pb(ctx: _Ctx, sc: _Scope, s: Any) -> None:
    _span_row(
        ctx, sc, trace_id=s.trace_id, span_id=s.span_id, parent=s.parent_span_id,
        trace_state=ctx.cut(s.trace_state, MAX_VALUE_CHARS), name=ctx.cut(s.name, MAX_VALUE_CHARS),
        kind=s.kind, start=s.start_time_unix_nano, end=s.end_time_unix_nano,
        attrs=_pb_attrs(ctx, s.attributes), status_code=s.status.code,
        status_msg=ctx.cut(s.status.message, MAX_VALUE_CHARS),
        events=[(e.time_unix_nano, ctx.cut(e.name, MAX_VALUE_CHARS), _pb_attrs(ctx, e.attributes))
                for e in s.events] if s.events else (),
        links=[(lk.trace_id, lk.span_id, ctx.cut(lk.trace_state, MAX_VALUE_CHARS),
                _pb_attrs(ctx, lk.attributes)) for lk in s.links] if s.links else (),
    )  # fmt: skip


def _span_json(ctx: _Ctx, sc: _Scope, s: Mapping[str, Any]) -> None:
    def _objs(key: str) -> list[Mapping[str, Any]]:
        out = _jlist(s, key)
        if not all(isinstance(x, dict) for x in out):
            raise _Reject(f"{key} entries must be objects")
        return out

    status = _jdict(s, "status")
    _span_row(
        ctx, sc, trace_id=_jid(s, "traceId"), span_id=_jid(s, "spanId"), parent=_jid(s, "parentSpanId"),
        trace_state=_jsafe(ctx, _jstr(s, "traceState"), MAX_VALUE_CHARS),
        name=_jsafe(ctx, _jstr(s, "name"), MAX_VALUE_CHARS), kind=_jenum(s, "kind", _SPAN_KIND_NAMES),
        start=_jint(s, "startTimeUnixNano"), end=_jint(s, "endTimeUnixNano"), attrs=_jattrs(ctx, s),
        status_code=_jenum(status, "code", _STATUS_CODE_NAMES),
        status_msg=_jsafe(ctx, _jstr(status, "message"), MAX_VALUE_CHARS),
        events=[(_jint(e, "timeUnixNano"), _jsafe(ctx, _jstr(e, "name"), MAX_VALUE_CHARS), _jattrs(ctx, e))
                for e in _objs("events")],
        links=[(_jid(lk, "traceId"), _jid(lk, "spanId"),
                _jsafe(ctx, _jstr(lk, "traceState"), MAX_VALUE_CHARS), _jattrs(ctx, lk))
               for lk in _objs("links")],
    )  # fmt: skip


def decode_traces(body: bytes, content_type: str) -> DecodeResult:
    """Decode an ``ExportTraceServiceRequest`` into ``otel_traces`` rows."""
    return _decode(
        body, content_type, ExportTraceServiceRequest(), ("resource_spans", "resourceSpans"),
        ("scope_spans", "scopeSpans"), ("spans", "spans"), "span", _span_pb, _span_json,
    )  # fmt: skip


# --- logs ----------------------------------------------------------------------------------------


def _log_row(
    ctx: _Ctx, sc: _Scope, *, ts: int, observed: int, trace_id: bytes, span_id: bytes, flags: int,
    sev_text: str, sev_num: int, body: str, attrs: Attrs, event_name: str,
) -> None:  # fmt: skip
    ts = ts or observed
    if ts <= 0:
        raise _Reject("missing timeUnixNano and observedTimeUnixNano")
    if not 0 <= sev_num <= 24:
        raise _Reject(f"severityNumber {sev_num} out of range")
    _check_size(ctx)
    ctx.result.rows.append(
        {
            "Timestamp": ts,
            "TraceId": _hex_id(trace_id, 16, "traceId", required=False),
            "SpanId": _hex_id(span_id, 8, "spanId", required=False),
            "TraceFlags": flags & 0xFF,
            "SeverityText": sev_text,
            "SeverityNumber": sev_num,
            "ServiceName": sc.service,
            "Body": body,
            "ResourceSchemaUrl": sc.resource_schema,
            "ResourceAttributes": sc.resource_attrs,
            "ScopeSchemaUrl": sc.scope_schema,
            "ScopeName": sc.scope_name,
            "ScopeVersion": sc.scope_version,
            "ScopeAttributes": sc.scope_attrs,
            "LogAttributes": attrs,
            "EventName": event_name,
        }
    )


def _log_pb(ctx: _Ctx, sc: _Scope, r: Any) -> None:
    _log_row(
        ctx, sc, ts=r.time_unix_nano, observed=r.observed_time_unix_nano, trace_id=r.trace_id,
        span_id=r.span_id, flags=r.flags, sev_text=ctx.cut(r.severity_text, MAX_KEY_CHARS),
        sev_num=r.severity_number, body=_pb_str(ctx, r.body, MAX_BODY_CHARS),
        attrs=_pb_attrs(ctx, r.attributes), event_name=ctx.cut(r.event_name, MAX_VALUE_CHARS),
    )  # fmt: skip


_SEVERITIES = (
    "SEVERITY_NUMBER_UNSPECIFIED",
    *(
        f"SEVERITY_NUMBER_{level}{'' if i == 1 else i}"
        for level in ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
        for i in range(1, 5)
    ),
)


def _log_json(ctx: _Ctx, sc: _Scope, r: Mapping[str, Any]) -> None:
    _log_row(
        ctx, sc, ts=_jint(r, "timeUnixNano"), observed=_jint(r, "observedTimeUnixNano"),
        trace_id=_jid(r, "traceId"), span_id=_jid(r, "spanId"), flags=_jint(r, "flags", 0, 2**32 - 1),
        sev_text=_jsafe(ctx, _jstr(r, "severityText"), MAX_KEY_CHARS),
        sev_num=_jenum(r, "severityNumber", _SEVERITIES),
        body=_jvalue_str(ctx, r.get("body"), MAX_BODY_CHARS), attrs=_jattrs(ctx, r),
        event_name=_jsafe(ctx, _jstr(r, "eventName"), MAX_VALUE_CHARS),
    )  # fmt: skip


def decode_logs(body: bytes, content_type: str) -> DecodeResult:
    """Decode an ``ExportLogsServiceRequest`` into ``otel_logs`` rows."""
    return _decode(
        body, content_type, ExportLogsServiceRequest(), ("resource_logs", "resourceLogs"),
        ("scope_logs", "scopeLogs"), ("log_records", "logRecords"), "log record", _log_pb, _log_json,
    )  # fmt: skip


# --- metrics -------------------------------------------------------------------------------------


def _metric_base(sc: _Scope, name: str, desc: str, unit: str) -> Row:
    if not name:
        raise _Reject("metric without a name")
    return {
        "ResourceAttributes": sc.resource_attrs,
        "ResourceSchemaUrl": sc.resource_schema,
        "ScopeName": sc.scope_name,
        "ScopeVersion": sc.scope_version,
        "ScopeAttributes": sc.scope_attrs,
        "ScopeDroppedAttrCount": sc.scope_dropped,
        "ScopeSchemaUrl": sc.scope_schema,
        "ServiceName": sc.service,
        "MetricName": name,
        "MetricDescription": desc,
        "MetricUnit": unit,
    }


Exemplar = tuple[Attrs, int, float, bytes, bytes]


def _point_row(base: Row, *, attrs: Attrs, start: int, ts: int, flags: int, exemplars: list[Exemplar]) -> Row:
    if ts <= 0:
        raise _Reject("data point without timeUnixNano")
    return {
        **base,
        "Attributes": attrs,
        "StartTimeUnix": start,
        "TimeUnix": ts,
        "Exemplars.FilteredAttributes": [e[0] for e in exemplars],
        "Exemplars.TimeUnix": [e[1] for e in exemplars],
        "Exemplars.Value": [e[2] for e in exemplars],
        "Exemplars.SpanId": [_hex_id(e[3], 8, "exemplar spanId", required=False) for e in exemplars],
        "Exemplars.TraceId": [_hex_id(e[4], 16, "exemplar traceId", required=False) for e in exemplars],
        "Flags": flags,
    }


def _histogram_fields(count: int, total: float, buckets: list[int], bounds: list[float]) -> Row:
    if buckets and len(buckets) != len(bounds) + 1:
        raise _Reject("histogram bucketCounts must have len(explicitBounds) + 1 entries")
    if buckets and sum(buckets) != count:
        raise _Reject("histogram count differs from the sum of bucketCounts")
    if any(not math.isfinite(b) for b in bounds) or any(a >= b for a, b in itertools.pairwise(bounds)):
        raise _Reject("histogram explicitBounds must be finite and strictly increasing")
    return {"Count": count, "Sum": total, "BucketCounts": buckets, "ExplicitBounds": bounds}


def _emit(ctx: _Ctx, kind: str, row: Row) -> None:
    ctx.result.rows.append(row)
    ctx.result.by_kind.setdefault(kind, []).append(row)


def _each_point(ctx: _Ctx, points: Iterable[Any], build: Callable[[Any], Row], kind: str) -> None:
    for p in points:
        ctx.item_chars = 0
        try:
            row = build(p)
            _check_size(ctx)
        except _Reject as exc:
            ctx.reject("data point", str(exc))
        except (TypeError, ValueError, OverflowError, AttributeError) as exc:
            ctx.reject("data point", f"malformed data point ({type(exc).__name__})")
        else:
            _emit(ctx, kind, row)


def _metric_pb(ctx: _Ctx, sc: _Scope, m: Any) -> None:
    kind = m.WhichOneof("data")
    if kind not in METRIC_KINDS:
        raise _Reject(f"metric type {kind or 'unset'} is not stored")
    base = _metric_base(sc, ctx.cut(m.name, MAX_VALUE_CHARS), ctx.cut(m.description, MAX_VALUE_CHARS),
                        ctx.cut(m.unit, MAX_KEY_CHARS))  # fmt: skip
    data = getattr(m, kind)

    def exemplars(p: Any) -> list[Exemplar]:
        return [
            (_pb_attrs(ctx, e.filtered_attributes), e.time_unix_nano,
             e.as_double if e.WhichOneof("value") == "as_double" else float(e.as_int), e.span_id, e.trace_id)
            for e in p.exemplars
        ]  # fmt: skip

    def build(p: Any) -> Row:
        row = _point_row(base, attrs=_pb_attrs(ctx, p.attributes), start=p.start_time_unix_nano,
                         ts=p.time_unix_nano, flags=p.flags, exemplars=exemplars(p))  # fmt: skip
        if kind == "histogram":
            row.update(_histogram_fields(p.count, p.sum, list(p.bucket_counts), list(p.explicit_bounds)))
            row.update(Min=p.min, Max=p.max, AggregationTemporality=data.aggregation_temporality)
            return row
        which = p.WhichOneof("value")
        if which is None:
            raise _Reject("number data point without a value")
        row["Value"] = p.as_double if which == "as_double" else float(p.as_int)
        if kind == "sum":
            row.update(AggregationTemporality=data.aggregation_temporality, IsMonotonic=data.is_monotonic)
        return row

    _each_point(ctx, data.data_points, build, kind)


_JSON_KINDS = {"gauge": "gauge", "sum": "sum", "histogram": "histogram"}
_JSON_UNSTORED = ("exponentialHistogram", "summary")


def _metric_json(ctx: _Ctx, sc: _Scope, m: Mapping[str, Any]) -> None:
    kind = next((k for k in _JSON_KINDS if k in m), None)
    if kind is None:
        other = next((k for k in _JSON_UNSTORED if k in m), "unset")
        n = _count(m.get(other), "dataPoints") if other != "unset" else 0
        ctx.result.rejected += max(n - 1, 0)  # the caller counts one
        raise _Reject(f"metric type {other} is not stored")
    base = _metric_base(sc, _jsafe(ctx, _jstr(m, "name"), MAX_VALUE_CHARS),
                        _jsafe(ctx, _jstr(m, "description"), MAX_VALUE_CHARS),
                        _jsafe(ctx, _jstr(m, "unit"), MAX_KEY_CHARS))  # fmt: skip
    data = _jdict(m, kind)

    def exemplars(p: Mapping[str, Any]) -> list[Exemplar]:
        out: list[Exemplar] = []
        for e in _jlist(p, "exemplars"):
            if not isinstance(e, dict):
                raise _Reject("exemplars entries must be objects")
            if "asDouble" in e:
                val = _jdouble(e, "asDouble")
            else:
                val = float(_jint(e, "asInt", -(2**63), 2**63 - 1))
            out.append((_jattrs(ctx, e, "filteredAttributes"), _jint(e, "timeUnixNano"), val,
                        _jid(e, "spanId"), _jid(e, "traceId")))  # fmt: skip
        return out

    def build(p: Any) -> Row:
        if not isinstance(p, dict):
            raise _Reject("dataPoints entries must be objects")
        row = _point_row(base, attrs=_jattrs(ctx, p), start=_jint(p, "startTimeUnixNano"),
                         ts=_jint(p, "timeUnixNano"), flags=_jint(p, "flags", 0, 2**32 - 1),
                         exemplars=exemplars(p))  # fmt: skip
        temporality = _jenum(data, "aggregationTemporality", _TEMPORALITIES)
        if kind == "histogram":
            buckets = [_jint({"v": b}, "v") for b in _jlist(p, "bucketCounts")]
            bounds = [_jdouble({"v": b}, "v") for b in _jlist(p, "explicitBounds")]
            row.update(_histogram_fields(_jint(p, "count"), _jdouble(p, "sum"), buckets, bounds))
            row.update(Min=_jdouble(p, "min"), Max=_jdouble(p, "max"), AggregationTemporality=temporality)
            return row
        if "asDouble" in p:
            row["Value"] = _jdouble(p, "asDouble")
        elif "asInt" in p:
            row["Value"] = float(_jint(p, "asInt", -(2**63), 2**63 - 1))
        else:
            raise _Reject("number data point without a value")
        if kind == "sum":
            row.update(AggregationTemporality=temporality, IsMonotonic=data.get("isMonotonic") is True)
        return row

    _each_point(ctx, _jlist(data, "dataPoints"), build, kind)


def decode_metrics(body: bytes, content_type: str) -> DecodeResult:
    """Decode an ``ExportMetricsServiceRequest`` into ``otel_metrics_{gauge,sum,histogram}`` rows.

    Exponential histograms and summaries are rejected (counted per data point) with a message.
    A metric-level problem (no name, unknown type) rejects all of its data points.
    """
    return _decode(
        body, content_type, ExportMetricsServiceRequest(), ("resource_metrics", "resourceMetrics"),
        ("scope_metrics", "scopeMetrics"), ("metrics", "metrics"), "metric", _metric_pb_counted,
        _metric_json,
    )  # fmt: skip


def _metric_pb_counted(ctx: _Ctx, sc: _Scope, m: Any) -> None:
    """Like ``_metric_pb`` but a metric-level reject counts every data point it carries."""
    try:
        _metric_pb(ctx, sc, m)
    except _Reject:
        kind = m.WhichOneof("data")
        n = len(getattr(m, kind).data_points) if kind else 0
        ctx.result.rejected += max(n - 1, 0)
        raise
