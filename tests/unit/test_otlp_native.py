"""The native trace decoder against the Python one: same table, same errors, no crash on garbage."""

from __future__ import annotations

import functools
import random
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from noops.observe.otlp import native
from noops.observe.otlp.decode import (
    MAX_ATTRIBUTES,
    MAX_KEY_CHARS,
    MAX_SHARED_CHARS,
    MAX_VALUE_CHARS,
    OtlpDecodeError,
    OtlpTooLargeError,
    decode_traces,
)
from noops.observe.store import edges, schema
from noops.observe.store._rows import edge_rows, to_arrow

PB = "application/x-protobuf"

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="_otlpfast not built")

LONG = st.sampled_from(["x" * MAX_VALUE_CHARS, "é" * (MAX_VALUE_CHARS // 2), "y" * (MAX_VALUE_CHARS + 1)])
TEXT = st.text(max_size=12) | st.sampled_from(["", "ü→😀", "\x00", "a\u2028b"])
KEYS = st.text(alphabet="abcé.", max_size=6) | st.sampled_from(["service.name", "k" * MAX_KEY_CHARS,
                                                              "k" * (MAX_KEY_CHARS + 1)])
I64 = st.integers(-(2**63), 2**63 - 1)
U64 = st.integers(0, 2**64 - 1)


@functools.cache
def _scalar(strict: bool) -> st.SearchStrategy[AnyValue]:
    return st.one_of(
        st.just(None).map(lambda _: AnyValue()),
        (TEXT).map(lambda s: AnyValue(string_value=s)),
        (st.booleans()).map(lambda b: AnyValue(bool_value=b)),
        (I64).map(lambda i: AnyValue(int_value=i)),
        (st.floats(allow_nan=True)).map(lambda f: AnyValue(double_value=f)),
        (st.binary(max_size=20)).map(lambda b: AnyValue(bytes_value=b)),
        *([] if strict else [
            (LONG).map(lambda s: AnyValue(string_value=s)),
            (st.sampled_from([12288, 12289])).map(lambda n: AnyValue(bytes_value=b"\xfe" * n)),
        ]),
    )


@functools.cache
def _value(strict: bool) -> st.SearchStrategy[AnyValue]:
    if strict:
        return _scalar(True)

    def nest(children: st.SearchStrategy[AnyValue]) -> st.SearchStrategy[AnyValue]:
        arr = st.lists(children, max_size=3).map(
            lambda vs: AnyValue(array_value={"values": vs}))
        kvl = st.lists(st.tuples(KEYS, children), max_size=3).map(
            lambda kvs: AnyValue(kvlist_value={"values": [KeyValue(key=k, value=v) for k, v in kvs]}))
        return arr | kvl

    return st.recursive(_scalar(False), nest, max_leaves=6)


@functools.cache
def _attrs(strict: bool, max_size: int = 4) -> st.SearchStrategy[list[KeyValue]]:
    keys = st.text(alphabet="abcdefgh", min_size=1, max_size=4) if strict else KEYS
    kvs = st.lists(st.tuples(keys, _value(strict)), max_size=max_size,
                   unique_by=(lambda kv: kv[0]) if strict else None)
    return kvs.map(lambda items: [KeyValue(key=k, value=v) for k, v in items])


@functools.cache
def _ids(n: int, strict: bool) -> st.SearchStrategy[bytes]:
    good = st.binary(min_size=n, max_size=n).filter(any)
    return good if strict else good | st.sampled_from([b"", b"\x00" * n, b"\x01" * (n + 1)])


@st.composite
def requests(draw: Any, strict: bool) -> ExportTraceServiceRequest:
    """Requests of every shape decode.py stores; ``strict`` only those the C decoder takes."""
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0 if not strict else 1, 3))):
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(draw(_attrs(strict)))
        rs.schema_url = draw(TEXT)
        for _ in range(draw(st.integers(0, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name, ss.scope.version = draw(TEXT), draw(TEXT)
            ss.scope.attributes.extend(draw(_attrs(strict, 2)))
            for _ in range(draw(st.integers(0, 4))):
                s = ss.spans.add()
                s.trace_id, s.span_id = draw(_ids(16, strict)), draw(_ids(8, strict))
                s.parent_span_id = draw(st.sampled_from([b""]) | _ids(8, strict))
                s.trace_state = draw(TEXT)
                s.name = draw(st.text(min_size=1, max_size=12) if strict else TEXT | LONG)
                s.kind = draw(st.integers(0, 5) if strict else st.integers(-1, 7))
                start = draw(st.integers(1, 2**62) if strict else U64)
                s.start_time_unix_nano = start
                s.end_time_unix_nano = draw(st.integers(start, 2**63 - 1) if strict and start < 2**63
                                            else U64)
                s.attributes.extend(draw(_attrs(strict)))
                s.status.code = draw(st.integers(0, 2) if strict else st.integers(-1, 4))
                s.status.message = draw(TEXT)
                for _ in range(draw(st.integers(0, 2))):
                    e = s.events.add()
                    e.time_unix_nano = draw(st.integers(0, 2**63 - 1) if strict else U64)
                    e.name = draw(TEXT)
                    e.attributes.extend(draw(_attrs(strict, 2)))
                for _ in range(draw(st.integers(0, 2))):
                    lk = s.links.add()
                    lk.trace_id, lk.span_id = draw(_ids(16, strict)), draw(_ids(8, strict))
                    lk.trace_state = draw(TEXT)
                    lk.attributes.extend(draw(_attrs(strict, 2)))
    return req


def python_table(body: bytes) -> tuple[pa.Table | None, Any]:
    res = decode_traces(body, PB)
    table = to_arrow("otel_traces", schema.TRACES, res.rows) if res.rows else None
    return table, res


def assert_same(table: pa.Table, body: bytes) -> None:
    table.validate(full=True)
    expected, res = python_table(body)
    assert res.rejected == 0 and res.errors == []
    if expected is None:
        assert table.num_rows == 0
        assert [c.name for c in table.schema] == [n for n, _ in schema.TRACES]
        return
    assert table.schema.equals(expected.schema)
    assert table.equals(expected), [c for c in table.column_names
                                    if not table[c].equals(expected[c])]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(strict=True))
def test_native_table_equals_python_rows(req: ExportTraceServiceRequest) -> None:
    body = req.SerializeToString()
    table = native.decode_traces_native(body)
    assert table is not None, "a plain request must be decoded natively"
    assert_same(table, body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(strict=False))
def test_any_request_same_result_either_way(req: ExportTraceServiceRequest) -> None:
    """Rejected spans, truncations, arrays, bad ids: the native path answers exactly like
    decode.py (it hands those requests over), and what it takes itself is identical."""
    body = req.SerializeToString()
    table = native.decode_traces_native(body)
    if table is not None:
        assert_same(table, body)
    res = native.decode_traces(body, PB)
    py = decode_traces(body, PB)
    assert (res.count, res.rejected, res.errors) == (len(py.rows), py.rejected, py.errors)


def _py_outcome(body: bytes) -> tuple[str, Any]:
    try:
        res = decode_traces(body, PB)
    except OtlpDecodeError as exc:
        return "error", str(exc)
    return "ok", (len(res.rows), res.rejected, res.errors)


def _native_outcome(body: bytes) -> tuple[str, Any]:
    try:
        res = native.decode_traces(body, PB)
    except OtlpDecodeError as exc:
        return "error", str(exc)
    return "ok", (res.count, res.rejected, res.errors)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(strict=True), st.data())
def test_truncated_and_corrupted_bodies(req: ExportTraceServiceRequest, data: Any) -> None:
    """Cut or flipped bytes never crash the decoder or read past the body; the answer (table,
    rejected counts, or the OtlpDecodeError the receiver turns into 400) is decode.py's."""
    body = req.SerializeToString()
    cut = data.draw(st.integers(0, max(len(body) - 1, 0)))
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    flipped = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        if flipped:
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
    for bad in (body[:cut], bytes(flipped)):
        table = native.decode_traces_native(bad)
        if table is not None:
            assert_same(table, bad)
        assert _native_outcome(bad) == _py_outcome(bad)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(body: bytes) -> None:
    table = native.decode_traces_native(body)
    if table is not None:
        assert_same(table, body)
    assert _native_outcome(body) == _py_outcome(body)


def sample_request() -> ExportTraceServiceRequest:
    """Two resources, every scalar value type, events and links."""
    req = ExportTraceServiceRequest()
    values = [AnyValue(string_value="é"), AnyValue(bool_value=True), AnyValue(int_value=-7),
              AnyValue(double_value=0.1), AnyValue(bytes_value=b"\x00\xff"), AnyValue()]
    for r in range(2):
        rs = req.resource_spans.add()
        rs.resource.attributes.add(key="service.name", value=AnyValue(string_value=f"svc{r}"))
        ss = rs.scope_spans.add()
        ss.scope.name, ss.scope.version = "lib", "1.0"
        s = ss.spans.add(trace_id=b"\x01" * 16, span_id=bytes([r + 1]) * 8, name="GET /",
                         kind=2, start_time_unix_nano=10**18, end_time_unix_nano=10**18 + 5)
        s.attributes.extend(KeyValue(key=f"k{i}", value=v) for i, v in enumerate(values))
        e = s.events.add(time_unix_nano=10**18 + 1, name="ev")
        e.attributes.add(key="a", value=AnyValue(int_value=1))
        lk = s.links.add(trace_id=b"\x02" * 16, span_id=b"\x03" * 8, trace_state="t=1")
        lk.attributes.add(key="b", value=AnyValue(bool_value=False))
        s.status.code, s.status.message = 2, "boom"
    return req


def test_every_prefix_of_a_request() -> None:
    body = sample_request().SerializeToString()
    table = native.decode_traces_native(body)
    assert table is not None and table.num_rows == 2
    assert_same(table, body)
    for n in range(len(body)):
        assert _native_outcome(body[:n]) == _py_outcome(body[:n])


def test_rare_shapes_go_to_python() -> None:
    """Shapes the C decoder hands over: the result still carries rows (decode.py's)."""
    req = ExportTraceServiceRequest()
    s = req.resource_spans.add().scope_spans.add().spans.add()
    s.trace_id, s.span_id, s.name = b"\x01" * 16, b"\x02" * 8, "n"
    s.start_time_unix_nano, s.end_time_unix_nano = 10, 20
    s.attributes.add(key="tags", value=AnyValue(array_value={"values": [AnyValue(int_value=1)]}))
    body = req.SerializeToString()
    assert native.decode_traces_native(body) is None
    res = native.decode_traces(body, PB)
    assert res.table is None and res.rows[0]["SpanAttributes"] == {"tags": "[1]"}
    del s.attributes[:]
    for i in range(MAX_ATTRIBUTES + 1):
        s.attributes.add(key=f"k{i}", value=AnyValue(string_value="v"))
    body = req.SerializeToString()
    assert native.decode_traces_native(body) is None
    assert native.decode_traces(body, PB).errors == [f"1 attributes dropped beyond {MAX_ATTRIBUTES} per map"]
    del s.attributes[:]
    s.attributes.add(key="k", value=AnyValue(string_value="v"))
    table = native.decode_traces_native(req.SerializeToString())
    assert table is not None and table.column("SpanAttributes").to_pylist() == [[("k", "v")]]


def test_json_bodies_go_to_python() -> None:
    body = (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0101010101010101010101'
            b'0101010101","spanId":"0202020202020202","name":"n","startTimeUnixNano":"5",'
            b'"endTimeUnixNano":"6"}]}]}]}')
    res = native.decode_traces(body, "application/json")
    assert res.table is None and res.rows[0]["SpanName"] == "n"


def test_edge_rows_from_a_table_match_the_rows() -> None:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="web"))
    ss = rs.scope_spans.add()
    for i, (kind, parent) in enumerate([(3, b""), (2, b"\x09" * 8), (2, b""), (1, b"\x03" * 8)]):
        s = ss.spans.add(trace_id=b"\x01" * 16, span_id=bytes([i + 1]) * 8, parent_span_id=parent,
                         name=f"s{i}", kind=kind, start_time_unix_nano=1_700_000_000_000_000_123,
                         end_time_unix_nano=1_700_000_000_000_900_000)
        s.attributes.add(key="server.address", value=AnyValue(string_value="db"))
        s.attributes.add(key="server.port", value=AnyValue(int_value=15001))
        s.attributes.add(key="http.route", value=AnyValue(string_value="/"))
    body = req.SerializeToString()
    table = native.decode_traces_native(body)
    assert table is not None
    rows = decode_traces(body, PB).rows
    mine = edge_rows(table)
    assert [r["SpanId"] for r in mine] == ["01" * 8, "02" * 8]
    assert mine[0]["SpanAttributes"] == {"server.address": "db", "server.port": "15001"}
    want = edges.edge_batch(rows, 1, {"db:15001"})
    assert want is not None and want.column("Mtls").to_pylist() == [1, 0]
    assert edges.edge_batch(mine, 1, {"db:15001"}).equals(want)


def _shared_request(spans: int) -> tuple[ExportTraceServiceRequest, int]:
    """One resource of 8 long attributes shared by ``spans`` small spans (a ~130 kB body)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for i in range(8):
        rs.resource.attributes.add(key=f"r{i}", value=AnyValue(string_value="v" * MAX_VALUE_CHARS))
    ss = rs.scope_spans.add()
    ss.scope.name = "lib"
    for i in range(spans):
        ss.spans.add(trace_id=b"\x01" * 16, span_id=(i + 1).to_bytes(8, "big"), name="n",
                     start_time_unix_nano=10, end_time_unix_nano=20)
    per_row = 8 * (2 + MAX_VALUE_CHARS) + len("lib")
    return req, per_row


def test_a_batch_that_expands_too_far_is_refused_whole_by_both_decoders() -> None:
    _, per_row = _shared_request(0)
    fits = MAX_SHARED_CHARS // per_row
    ok_req, _ = _shared_request(fits)
    table = native.decode_traces_native(ok_req.SerializeToString())
    assert table is not None and table.num_rows == fits
    assert decode_traces(ok_req.SerializeToString(), PB).count == fits
    big_req, _ = _shared_request(fits + 1)
    body = big_req.SerializeToString()
    assert len(body) < 200_000
    assert native.decode_traces_native(body) is None  # the Python decoder decides
    for decode in (native.decode_traces, decode_traces):
        with pytest.raises(OtlpTooLargeError, match="fewer items per request") as err:
            decode(body, PB)
        assert err.value.http_status == 413
