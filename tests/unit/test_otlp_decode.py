"""OTLP decoding: real SDK output in both encodings, the JSON mapping, rejections, hostile input."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.json.common._log_encoder import encode_logs as json_logs
from opentelemetry.exporter.otlp.json.common.metrics_encoder import encode_metrics as json_metrics
from opentelemetry.exporter.otlp.json.common.trace_encoder import encode_spans as json_spans
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs as pb_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics as pb_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as pb_spans
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from noops.observe.otlp import decode as d
from noops.observe.otlp.decode import (
    MAX_SHARED_CHARS,
    OtlpDecodeError,
    OtlpTooLargeError,
    decode_logs,
    decode_metrics,
    decode_traces,
)

PB, JS = "application/x-protobuf", "application/json"
RESOURCE = Resource.create({"service.name": "shop", "deployment.environment": "test"})


def sdk_spans() -> list[Any]:
    exp = InMemorySpanExporter()
    tp = TracerProvider(resource=RESOURCE)
    tp.add_span_processor(SimpleSpanProcessor(exp))
    tracer = tp.get_tracer("shop.web", "2.1")
    with tracer.start_as_current_span(
        "GET /cart", kind=SpanKind.SERVER, attributes={"http.status": 500, "ok": False, "ratio": 0.25}
    ) as root:
        root.add_event("cache.miss", {"key": "cart:7"})
        root.set_attribute("tags", ["a", "b"])
        with tracer.start_as_current_span(
            "db", kind=SpanKind.CLIENT, links=[Link(root.get_span_context())]
        ) as c:
            c.set_status(Status(StatusCode.ERROR, "timeout"))
    tp.shutdown()
    return list(exp.get_finished_spans())


def sdk_logs() -> list[Any]:
    exp = InMemoryLogRecordExporter()
    lp = LoggerProvider(resource=RESOURCE)
    lp.add_log_record_processor(SimpleLogRecordProcessor(exp))
    logger = lp.get_logger("shop.log", "1.0")
    logger.emit(
        body="hello",
        severity_number=SeverityNumber.WARN,
        severity_text="WARN",
        attributes={"n": 3},
        timestamp=time.time_ns(),
        event_name="cart.viewed",
    )
    logger.emit(
        body={"structured": [1, "two"]}, severity_number=SeverityNumber.INFO, timestamp=time.time_ns()
    )
    lp.shutdown()
    return list(exp.get_finished_logs())


def sdk_metrics() -> Any:
    reader = InMemoryMetricReader()
    mp = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    meter = mp.get_meter("shop.metrics", "3.0")
    meter.create_counter("requests", unit="1", description="reqs").add(5, {"route": "/cart"})
    meter.create_histogram("latency", unit="ms").record(12.5, {"route": "/cart"})
    meter.create_gauge("temp").set(21.5)
    meter.create_up_down_counter("inflight").add(-2)
    data = reader.get_metrics_data()
    mp.shutdown()
    return data


# --- real SDK output -------------------------------------------------------------------------


def test_traces_from_sdk_protobuf_and_json_decode_identically() -> None:
    spans = sdk_spans()
    pb = decode_traces(pb_spans(spans).SerializeToString(), PB)
    js = decode_traces(json_spans(spans).to_json().encode(), JS)
    assert pb.rejected == js.rejected == 0 and not pb.errors
    assert pb.rows == js.rows
    by_name = {r["SpanName"]: r for r in pb.rows}
    root, child = by_name["GET /cart"], by_name["db"]
    ctx = spans[1].context if spans[1].name == "GET /cart" else spans[0].context
    assert root["TraceId"] == format(ctx.trace_id, "032x") and root["SpanId"] == format(ctx.span_id, "016x")
    assert child["ParentSpanId"] == root["SpanId"] and root["ParentSpanId"] == ""
    assert root["SpanKind"] == "Server" and child["SpanKind"] == "Client"
    assert child["StatusCode"] == "Error" and child["StatusMessage"] == "timeout"
    assert root["ServiceName"] == "shop" and root["ResourceAttributes"]["deployment.environment"] == "test"
    assert (root["ScopeName"], root["ScopeVersion"]) == ("shop.web", "2.1")
    assert root["SpanAttributes"] == {
        "http.status": "500",
        "ok": "false",
        "ratio": "0.25",
        "tags": '["a","b"]',
    }
    assert root["Events.Name"] == ["cache.miss"] and root["Events.Attributes"] == [{"key": "cart:7"}]
    assert root["Events.Timestamp"][0] >= root["Timestamp"]
    assert child["Links.TraceId"] == [root["TraceId"]] and child["Links.SpanId"] == [root["SpanId"]]
    assert root["Duration"] > 0 and isinstance(root["Timestamp"], int)


def test_logs_from_sdk_protobuf_and_json_decode_identically() -> None:
    logs = sdk_logs()
    pb = decode_logs(pb_logs(logs).SerializeToString(), PB)
    js = decode_logs(json_logs(logs).to_json().encode(), JS)
    assert pb.rejected == js.rejected == 0
    assert pb.rows == js.rows
    first, second = pb.rows
    assert first["Body"] == "hello" and first["SeverityNumber"] == 13 and first["SeverityText"] == "WARN"
    assert first["LogAttributes"] == {"n": "3"} and first["EventName"] == "cart.viewed"
    assert first["ServiceName"] == "shop" and first["ScopeName"] == "shop.log"
    assert json.loads(second["Body"]) == {"structured": [1, "two"]}
    assert first["TraceId"] == "" and first["SpanId"] == ""


def test_metrics_from_sdk_protobuf_and_json_decode_identically() -> None:
    data = sdk_metrics()
    pb = decode_metrics(pb_metrics(data).SerializeToString(), PB)
    js = decode_metrics(json_metrics(data).to_json().encode(), JS)
    assert pb.rejected == js.rejected == 0, (pb.errors, js.errors)
    assert pb.by_kind == js.by_kind
    rows = {r["MetricName"]: r for r in pb.rows}
    assert rows["requests"]["Value"] == 5.0 and rows["requests"]["IsMonotonic"] is True
    assert rows["requests"]["AggregationTemporality"] == 2 and rows["requests"]["Attributes"] == {
        "route": "/cart"
    }
    assert rows["requests"]["MetricUnit"] == "1" and rows["requests"]["MetricDescription"] == "reqs"
    assert rows["inflight"]["Value"] == -2.0 and rows["inflight"]["IsMonotonic"] is False
    assert rows["temp"]["Value"] == 21.5 and rows["temp"] in pb.by_kind["gauge"]
    h = rows["latency"]
    assert h in pb.by_kind["histogram"] and h["Count"] == 1 and h["Sum"] == 12.5
    assert sum(h["BucketCounts"]) == 1 and len(h["BucketCounts"]) == len(h["ExplicitBounds"]) + 1
    assert h["Min"] == h["Max"] == 12.5 and h["ServiceName"] == "shop" and h["TimeUnix"] > 0


# --- JSON mapping edge cases -------------------------------------------------------------------

TID, SID = "5B8EFFF798038103D269B633813FC60C", "EEE19B7EC3C1B174"


def span(**over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "traceId": TID,
        "spanId": SID,
        "name": "op",
        "kind": "SPAN_KIND_CONSUMER",
        "startTimeUnixNano": 1_700_000_000_000_000_000,
        "endTimeUnixNano": "1700000000000000500",
    }
    s.update(over)
    return s


def traces_json(*spans: dict[str, Any], resource: Any = None) -> bytes:
    rs: dict[str, Any] = {"scopeSpans": [{"scope": {"name": "s"}, "spans": list(spans)}], "unknownField": 1}
    if resource is not None:
        rs["resource"] = resource
    return json.dumps({"resourceSpans": [rs]}).encode()


def test_json_mapping_hex_case_enum_names_int64_forms_unknown_fields() -> None:
    r = decode_traces(traces_json(span(status={"code": "STATUS_CODE_OK"}, extra={"x": 1})), JS)
    row = r.rows[0]
    assert row["TraceId"] == TID.lower() and row["SpanId"] == SID.lower()
    assert row["SpanKind"] == "Consumer" and row["StatusCode"] == "Ok"
    assert row["Timestamp"] == 1_700_000_000_000_000_000 and row["Duration"] == 500
    r2 = decode_traces(traces_json(span(kind=3, status={"code": 2})), JS)
    assert (r2.rows[0]["SpanKind"], r2.rows[0]["StatusCode"]) == ("Client", "Error")


def test_json_attribute_flattening() -> None:
    attrs = [
        {"key": "s", "value": {"stringValue": "x"}},
        {"key": "i", "value": {"intValue": "-9223372036854775808"}},
        {"key": "d", "value": {"doubleValue": "NaN"}},
        {"key": "b", "value": {"boolValue": True}},
        {"key": "raw", "value": {"bytesValue": base64.b64encode(b"\x00\x01").decode()}},
        {
            "key": "kv",
            "value": {
                "kvlistValue": {
                    "values": [
                        {"key": "a", "value": {"intValue": 1}},
                        {
                            "key": "n",
                            "value": {"arrayValue": {"values": [{"boolValue": False}, {"stringValue": "z"}]}},
                        },
                    ]
                }
            },
        },
        {"key": "empty", "value": {}},
    ]
    row = decode_traces(traces_json(span(attributes=attrs)), JS).rows[0]
    assert row["SpanAttributes"] == {
        "s": "x",
        "i": "-9223372036854775808",
        "d": "nan",
        "b": "true",
        "raw": "AAE=",
        "kv": '{"a":1,"n":[false,"z"]}',
        "empty": "",
    }


def test_protobuf_flattening_matches_json() -> None:
    kv = AnyValue()
    kv.kvlist_value.values.add(key="a", value=AnyValue(int_value=1))
    inner = kv.kvlist_value.values.add(key="n").value
    inner.array_value.values.add(bool_value=False)
    inner.array_value.values.add(string_value="z")
    req = ExportTraceServiceRequest()
    sp = (
        req.resource_spans.add()
        .scope_spans.add()
        .spans.add(
            trace_id=bytes.fromhex(TID),
            span_id=bytes.fromhex(SID),
            name="op",
            start_time_unix_nano=1,
            end_time_unix_nano=2,
        )
    )
    sp.attributes.extend(
        [KeyValue(key="kv", value=kv), KeyValue(key="raw", value=AnyValue(bytes_value=b"\0\1"))]
    )
    row = decode_traces(req.SerializeToString(), PB).rows[0]
    assert row["SpanAttributes"] == {"kv": '{"a":1,"n":[false,"z"]}', "raw": "AAE="}
    assert row["SpanKind"] == "Unspecified" and row["StatusCode"] == "Unset"


# --- rejections (partial success) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (span(traceId="abcd"), "traceId must be 16 bytes"),
        (span(spanId="00" * 9), "spanId must be 8 bytes"),
        (span(traceId="00" * 16), "all zeroes"),
        (span(traceId="zz" * 16), "hex"),
        (span(parentSpanId="01"), "parentSpanId"),
        (span(endTimeUnixNano=1), "before"),
        (span(startTimeUnixNano=0), "missing startTimeUnixNano"),
        (span(name=""), "missing name"),
        (span(kind=99), "unknown span kind"),
        (span(startTimeUnixNano="12x"), "integer"),
        (span(startTimeUnixNano=-5), "integer"),
        (span(attributes="nope"), "must be an array"),
        (span(attributes=[{"key": 1}]), "must be a string"),
        (span(links=[{"traceId": TID, "spanId": ""}]), "link spanId"),
        ("not an object", "must be objects"),
    ],
)
def test_invalid_spans_are_rejected_individually(bad: Any, reason: str) -> None:
    r = decode_traces(traces_json(span(), bad, span(name="ok2")), JS)
    assert r.rejected == 1 and [x["SpanName"] for x in r.rows] == ["op", "ok2"]
    assert any(reason in e for e in r.errors), r.errors


def test_protobuf_span_rejections() -> None:
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    good = {"trace_id": b"\1" * 16, "span_id": b"\2" * 8, "name": "x", "start_time_unix_nano": 5}
    spans.add(**good, end_time_unix_nano=6)
    spans.add(**{**good, "trace_id": b"\1" * 15}, end_time_unix_nano=6)
    spans.add(**good, end_time_unix_nano=4)
    r = decode_traces(req.SerializeToString(), PB)
    assert (len(r.rows), r.rejected) == (1, 2)


def test_malformed_resource_rejects_its_items() -> None:
    r = decode_traces(traces_json(span(), span(), resource={"attributes": 7}), JS)
    assert r.rows == [] and r.rejected == 2


def test_log_rejections() -> None:
    base = {"timeUnixNano": "1", "body": {"stringValue": "b"}}
    recs = [
        base,
        {"body": {"stringValue": "no time"}},
        {**base, "traceId": "ab"},
        {**base, "severityNumber": 99},
        {**base, "observedTimeUnixNano": "2", "timeUnixNano": 0, "severityNumber": "SEVERITY_NUMBER_ERROR2"},
    ]
    body = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": recs}]}]}).encode()
    r = decode_logs(body, JS)
    assert r.rejected == 3 and len(r.rows) == 2
    assert r.rows[1]["Timestamp"] == 2 and r.rows[1]["SeverityNumber"] == 18


def test_metric_rejections_and_unstored_types() -> None:
    def metric(**m: Any) -> dict[str, Any]:
        return {"name": "m", **m}

    pt = {"timeUnixNano": "10", "asInt": "3"}
    metrics = [
        metric(gauge={"dataPoints": [pt, {"timeUnixNano": "10"}, {"asDouble": 1.0}]}),  # 2 bad points
        metric(
            histogram={
                "dataPoints": [
                    {
                        "timeUnixNano": "1",
                        "count": "3",
                        "bucketCounts": ["1", "2"],
                        "explicitBounds": [1.0, 2.0],
                    }
                ]
            }
        ),
        metric(summary={"dataPoints": [pt, pt]}),
        metric(exponentialHistogram={"dataPoints": [pt]}),
        {"gauge": {"dataPoints": [pt]}},  # no name
    ]
    body = json.dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": metrics}]}]}).encode()
    r = decode_metrics(body, JS)
    assert len(r.rows) == 1 and r.rows[0]["Value"] == 3.0
    assert r.rejected == 2 + 1 + 2 + 1 + 1, r.errors
    assert any("summary" in e for e in r.errors) and any("exponentialHistogram" in e for e in r.errors)
    req = ExportMetricsServiceRequest()
    m = req.resource_metrics.add().scope_metrics.add().metrics.add(name="e")
    m.exponential_histogram.data_points.add(time_unix_nano=1)
    m.exponential_histogram.data_points.add(time_unix_nano=2)
    assert decode_metrics(req.SerializeToString(), PB).rejected == 2


# --- limits and hostile input ----------------------------------------------------------------------


def test_value_and_attribute_caps() -> None:
    big = "x" * (d.MAX_VALUE_CHARS + 10)
    many = [{"key": f"k{i}", "value": {"stringValue": "v"}} for i in range(d.MAX_ATTRIBUTES + 5)]
    r = decode_traces(
        traces_json(span(attributes=[{"key": "big", "value": {"stringValue": big}}]), span(attributes=many)),
        JS,
    )
    assert r.rejected == 0
    assert len(r.rows[0]["SpanAttributes"]["big"]) == d.MAX_VALUE_CHARS
    assert len(r.rows[1]["SpanAttributes"]) == d.MAX_ATTRIBUTES
    assert any("truncated" in e for e in r.errors) and any("dropped" in e for e in r.errors)


def test_item_size_cap_rejects_the_item(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(d, "MAX_ITEM_CHARS", 1000)
    attrs = [{"key": f"k{i}", "value": {"stringValue": "v" * 100}} for i in range(20)]
    r = decode_traces(traces_json(span(attributes=attrs), span()), JS)
    assert r.rejected == 1 and len(r.rows) == 1


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"[" * 100_000 + b"]" * 100_000, JS),
        (b'{"resourceSpans": "x"}', JS),
        (b"[]", JS),
        (b'{"a": "\xff\xfe"}', JS),
        (b"\xff" * 64, PB),
        (b"\x0a\xff\xff\xff\xff\x0f", PB),
        (gzip.compress(b"x"), PB),
        (b"{}", "text/plain"),
    ],
)
def test_undecodable_bodies_raise_the_documented_error(body: bytes, ctype: str) -> None:
    with pytest.raises(OtlpDecodeError) as info:
        decode_traces(body, ctype)
    assert info.value.http_status == 400 and str(info.value)


def test_deep_anyvalue_nesting_is_bounded() -> None:
    v: dict[str, Any] = {"stringValue": "leaf"}
    for _ in range(200):
        v = {"arrayValue": {"values": [v]}}
    row = decode_traces(traces_json(span(attributes=[{"key": "deep", "value": v}])), JS).rows[0]
    assert row["SpanAttributes"]["deep"].count("[") == d.MAX_DEPTH and "null" in row["SpanAttributes"]["deep"]


def test_lone_surrogates_are_replaced() -> None:
    body = traces_json(span(name="\ud800bad"))
    row = decode_traces(body, JS).rows[0]
    row["SpanName"].encode()  # must be valid UTF-8 from here on


def test_empty_and_content_type_parameters() -> None:
    assert decode_traces(b"", PB).rows == []
    assert decode_traces(b"{}", "application/json; charset=utf-8").rows == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=15), inner, max_size=4),
    max_leaves=30,
)
otlp_keys = st.sampled_from(
    [
        "resourceSpans",
        "resourceLogs",
        "resourceMetrics",
        "scopeSpans",
        "scopeLogs",
        "scopeMetrics",
        "spans",
        "logRecords",
        "metrics",
        "traceId",
        "spanId",
        "name",
        "attributes",
        "gauge",
        "sum",
        "histogram",
        "dataPoints",
        "timeUnixNano",
    ]
)
otlp_like = st.recursive(
    json_values,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(otlp_keys, inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(doc=otlp_like, which=st.sampled_from([decode_traces, decode_logs, decode_metrics]))
def test_fuzz_json_never_crashes(doc: Any, which: Any) -> None:
    try:
        r = which(json.dumps(doc).encode(), JS)
    except OtlpDecodeError:
        return
    assert r.rejected >= 0


@settings(max_examples=300, deadline=1000)
@given(body=st.binary(max_size=512), which=st.sampled_from([decode_traces, decode_logs, decode_metrics]))
def test_fuzz_protobuf_never_crashes(body: bytes, which: Any) -> None:
    with contextlib.suppress(OtlpDecodeError):
        which(body, PB)


@settings(max_examples=200, deadline=1000)
@given(cut=st.integers(min_value=0, max_value=10_000), flip=st.integers(min_value=0, max_value=255))
def test_fuzz_mutated_real_protobuf(cut: int, flip: int) -> None:
    body = bytearray(pb_spans(SPANS).SerializeToString())
    pos = cut % len(body)
    body[pos] ^= flip
    with contextlib.suppress(OtlpDecodeError):
        decode_traces(bytes(body[: max(pos, len(body) - cut)]), PB)


SPANS = sdk_spans()


# --- hostile values inside a well-formed request: every item is a row or counted as rejected ------

hostile_scalars = (
    st.integers(min_value=-(2**70), max_value=2**70)  # beyond 64 bits both ways
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)  # non-hex ids, lone surrogates, NUL
    | st.sampled_from(["", "zz" * 16, "0" * 32, "F" * 33, "-1", "1e30", "18446744073709551616",
                       "NaN", "SPAN_KIND_NOPE", "\ud800", "\x00"])
    | st.booleans()
    | st.none()
)
hostile_values = st.recursive(
    hostile_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
deep_any = st.integers(min_value=1, max_value=60).map(
    lambda n: json.loads('{"arrayValue":{"values":[' * n + '{"intValue":"1"}' + "]}}" * n)
)
SPAN_FIELDS = ["traceId", "spanId", "parentSpanId", "name", "kind", "startTimeUnixNano",
               "endTimeUnixNano", "attributes", "events", "links", "status", "traceState"]


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=4),
    edits=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(SPAN_FIELDS), hostile_values),
                   max_size=6),
    attr=hostile_values | deep_any,
)
def test_fuzz_json_hostile_values_account_for_every_span(n: int, edits: Any, attr: Any) -> None:
    spans = [span(attributes=[{"key": "k", "value": attr}]) for _ in range(n)]
    for i, key, value in edits:
        spans[i % n][key] = value
    try:
        r = decode_traces(traces_json(*spans), JS)
    except OtlpDecodeError as exc:
        assert str(exc)
        return
    assert len(r.rows) + r.rejected == n, "a span was neither stored nor counted as rejected"
    for row in r.rows:
        assert len(row["TraceId"]) == 32 and int(row["TraceId"], 16) > 0
        assert 0 <= row["Duration"] < 2**64 and 0 < row["Timestamp"] < 2**64
        for k, v in row["SpanAttributes"].items():
            assert isinstance(k, str) and isinstance(v, str)
            (k + v).encode()  # storable: valid UTF-8, no lone surrogates


@settings(max_examples=300, deadline=None)
@given(
    trace_id=st.binary(max_size=20), span_id=st.binary(max_size=10), name=st.text(max_size=30),
    kind=st.integers(-5, 2**31 - 1), start=st.integers(0, 2**64 - 1), end=st.integers(0, 2**64 - 1),
    status=st.integers(-5, 2**31 - 1), int_attr=st.integers(-(2**63), 2**63 - 1),
    depth=st.integers(0, 40), raw=st.binary(max_size=64),
)
def test_fuzz_protobuf_hostile_values_account_for_every_span(
    trace_id: bytes, span_id: bytes, name: str, kind: int, start: int, end: int, status: int,
    int_attr: int, depth: int, raw: bytes,
) -> None:
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    nested = AnyValue(int_value=int_attr)
    for _ in range(depth):
        nested = AnyValue(array_value={"values": [nested]})
    s = ss.spans.add(trace_id=trace_id, span_id=span_id, name=name, kind=kind,  # type: ignore[arg-type]
                     start_time_unix_nano=start, end_time_unix_nano=end)
    s.status.code = status  # type: ignore[assignment]
    s.attributes.extend([KeyValue(key="i", value=AnyValue(int_value=int_attr)),
                         KeyValue(key="deep", value=nested),
                         KeyValue(key="b", value=AnyValue(bytes_value=raw))])
    ss.spans.add().CopyFrom(s)
    try:
        r = decode_traces(req.SerializeToString(), PB)
    except OtlpDecodeError as exc:
        assert str(exc)
        return
    assert len(r.rows) + r.rejected == 2
    for row in r.rows:
        assert row["SpanAttributes"]["i"] == str(int_attr)
        assert row["Duration"] == end - start >= 0


@pytest.mark.parametrize("body", [
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "\xff\xfe"}]}]}]}',  # invalid UTF-8
    b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the parser allows
    b'{"resourceSpans": 1e999}',
    b"\xef\xbb\xbf" + b"{}" * 3,
])
def test_hostile_json_bodies_are_a_400_error(body: bytes) -> None:
    with pytest.raises(OtlpDecodeError) as err:
        decode_traces(body, JS)
    assert str(err.value)


def test_json_logs_repeating_a_large_resource_are_refused_whole() -> None:
    value = "v" * 16_000
    per_row = 8 * (2 + len(value))
    records = MAX_SHARED_CHARS // per_row + 1
    doc = {"resourceLogs": [{
        "resource": {"attributes": [{"key": f"r{i}", "value": {"stringValue": value}}
                                    for i in range(8)]},
        "scopeLogs": [{"logRecords": [{"timeUnixNano": "1", "body": {"stringValue": "x"}}] * records}],
    }]}
    body = json.dumps(doc).encode()
    assert len(body) < 200_000
    with pytest.raises(OtlpTooLargeError, match="fewer items per request"):
        decode_logs(body, JS)
    doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"] = [{"timeUnixNano": "1"}] * (records - 1)
    assert decode_logs(json.dumps(doc).encode(), JS).count == records - 1
