"""Stamping the verified sender identity over an OTLP request's resources
(:func:`noops.observe.otlp.identity.stamp`), for every signal and both encodings, checked by
parsing the result with the official protobuf classes and by the receiver's decoders."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from noops.observe.otlp import native
from noops.observe.otlp.decode import (
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_PROTOBUF,
    MAX_ATTRIBUTES,
    OtlpDecodeError,
    OtlpTooLargeError,
    decode_logs,
    decode_traces,
)
from noops.observe.otlp.identity import MAX_GROUPS, stamp

VERIFIED = {"service.name": "shop", "noops.app": "shop", "noops.instance.id": "shop-web-1",
            "noops.process": "web"}
keys = st.sampled_from(["service.name", "noops.app", "noops.instance.id", "host.name", "a", "b"])
values = st.text(max_size=8)


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _attrs(kvs: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for kv in kvs:  # the last of a duplicated key wins, as in the decoders
        out[kv.key] = kv.value.string_value
    return out


def _traces(groups: list[list[tuple[str, str]]], spans: int) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    for n, attrs in enumerate(groups):
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(_kv(k, v) for k, v in attrs)
        rs.schema_url = f"https://schema/{n}"
        ss = rs.scope_spans.add()
        ss.scope.name = "lib"
        for i in range(spans):
            sp = ss.spans.add()
            sp.trace_id, sp.span_id = bytes([n + 1]) * 16, bytes([i + 1]) * 8
            sp.name, sp.kind = f"GET /{i}", 2
            sp.start_time_unix_nano, sp.end_time_unix_nano = 10**18 + i, 10**18 + i + 5
            sp.attributes.append(_kv("service.name", "inside-a-span-stays"))
    return req


@given(st.lists(st.lists(st.tuples(keys, values), max_size=6), min_size=1, max_size=3),
       st.integers(0, 3))
@settings(max_examples=60)
def test_protobuf_resources_get_the_verified_attributes_and_nothing_else_changes(
        groups: list[list[tuple[str, str]]], spans: int) -> None:
    req = _traces(groups, spans)
    out = ExportTraceServiceRequest.FromString(
        stamp(req.SerializeToString(), CONTENT_TYPE_PROTOBUF, VERIFIED))
    assert len(out.resource_spans) == len(req.resource_spans)
    for before, after in zip(req.resource_spans, out.resource_spans, strict=True):
        claimed = {k: v for k, v in _attrs(before.resource.attributes).items()
                   if k not in VERIFIED}
        assert _attrs(after.resource.attributes) == {**claimed, **VERIFIED}
        assert after.scope_spans == before.scope_spans  # spans copied byte for byte
        assert after.schema_url == before.schema_url


def test_a_group_without_a_resource_and_repeated_resources_are_merged() -> None:
    req = _traces([[("a", "1")]], 1)
    raw = req.SerializeToString()
    # A second Resource field in the group: protobuf merges it (attributes appended).
    extra = ExportTraceServiceRequest()
    extra.resource_spans.add().resource.attributes.append(_kv("noops.app", "forged"))
    bare = ExportTraceServiceRequest()
    bare.resource_spans.add().scope_spans.add()
    out = ExportTraceServiceRequest.FromString(stamp(raw, CONTENT_TYPE_PROTOBUF, VERIFIED)
                                               + stamp(bare.SerializeToString(),
                                                       CONTENT_TYPE_PROTOBUF, VERIFIED))
    assert [_attrs(g.resource.attributes) for g in out.resource_spans] == [
        {"a": "1", **VERIFIED}, VERIFIED]


def test_logs_and_metrics_are_stamped_the_same_way() -> None:
    logs = ExportLogsServiceRequest()
    rl = logs.resource_logs.add()
    rl.resource.attributes.extend([_kv("service.name", "bank"), _kv("host.name", "h")])
    rl.scope_logs.add().log_records.add(time_unix_nano=10**18).body.string_value = "hi"
    out = ExportLogsServiceRequest.FromString(
        stamp(logs.SerializeToString(), CONTENT_TYPE_PROTOBUF, VERIFIED))
    assert _attrs(out.resource_logs[0].resource.attributes) == {"host.name": "h", **VERIFIED}
    metrics = ExportMetricsServiceRequest()
    metrics.resource_metrics.add().resource.attributes.append(_kv("noops.instance.id", "x"))
    out_m = ExportMetricsServiceRequest.FromString(
        stamp(metrics.SerializeToString(), CONTENT_TYPE_PROTOBUF, VERIFIED))
    assert _attrs(out_m.resource_metrics[0].resource.attributes) == VERIFIED


def test_json_bodies() -> None:
    req = _traces([[("service.name", "bank"), ("a", "1")], []], 2)
    doc = json_format.MessageToDict(req)
    for group in doc["resourceSpans"]:  # OTLP/JSON ids are hex, not protobuf JSON's base64
        for span in group["scopeSpans"][0]["spans"]:
            for key in ("traceId", "spanId"):
                span[key] = base64.b64decode(span[key]).hex()
    body = json.dumps(doc).encode()
    doc = json.loads(stamp(body, CONTENT_TYPE_JSON, VERIFIED))
    for group in doc["resourceSpans"]:
        attrs = {a["key"]: a["value"]["stringValue"] for a in group["resource"]["attributes"]}
        assert attrs.items() >= VERIFIED.items() and attrs.get("service.name") == "shop"
    rows = decode_traces(stamp(body, CONTENT_TYPE_JSON, VERIFIED), CONTENT_TYPE_JSON).rows
    assert {r["ServiceName"] for r in rows} == {"shop"}
    assert rows[0]["SpanAttributes"]["service.name"] == "inside-a-span-stays"
    for bad in (b"not json", b"[1]", b'{"resourceSpans": 3}'):  # left for the decoder to refuse
        with pytest.raises(OtlpDecodeError):
            decode_traces(stamp(bad, CONTENT_TYPE_JSON, VERIFIED), CONTENT_TYPE_JSON)


@pytest.mark.parametrize("decode", [decode_traces, native.decode_traces])
def test_the_decoders_store_the_verified_service(decode: Any) -> None:
    req = _traces([[("service.name", "bank"), ("noops.instance.id", "bank-web-1")]], 3)
    result = decode(stamp(req.SerializeToString(), CONTENT_TYPE_PROTOBUF, VERIFIED),
                    CONTENT_TYPE_PROTOBUF)
    rows = result.rows or result.table.to_pylist()
    assert len(rows) == 3
    for row in rows:
        assert row["ServiceName"] == "shop"
        resource = dict(row["ResourceAttributes"])
        assert resource["noops.instance.id"] == "shop-web-1" and resource["noops.app"] == "shop"


def test_logs_decoder_sees_the_verified_service() -> None:
    logs = ExportLogsServiceRequest()
    rl = logs.resource_logs.add()
    rl.resource.attributes.append(_kv("service.name", "bank"))
    rl.scope_logs.add().log_records.add(time_unix_nano=10**18).body.string_value = "hi"
    rows = decode_logs(stamp(logs.SerializeToString(), CONTENT_TYPE_PROTOBUF, VERIFIED),
                       CONTENT_TYPE_PROTOBUF).rows
    assert [r["ServiceName"] for r in rows] == ["shop"]


@given(st.binary(max_size=200))
def test_any_bytes_are_refused_as_bad_protobuf_or_stamped_for_good(body: bytes) -> None:
    """No other error, whatever the bytes; and stamping twice changes nothing more."""
    try:
        once = stamp(body, CONTENT_TYPE_PROTOBUF, VERIFIED)
    except OtlpDecodeError:
        return
    assert stamp(once, CONTENT_TYPE_PROTOBUF, VERIFIED) == once


@pytest.mark.parametrize("media", [CONTENT_TYPE_PROTOBUF, CONTENT_TYPE_JSON])
def test_many_claimed_attributes_cannot_push_the_verified_ones_out(media: str) -> None:
    """The decoders keep a map's first MAX_ATTRIBUTES entries: the verified ones come first."""
    claims = [(f"k{i}", "v") for i in range(MAX_ATTRIBUTES + 5)]
    req = _traces([[*claims, ("service.name", "bank")]], 1)
    if media == CONTENT_TYPE_JSON:
        doc = json_format.MessageToDict(req)
        span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        for key in ("traceId", "spanId"):
            span[key] = base64.b64decode(span[key]).hex()
        body = json.dumps(doc).encode()
    else:
        body = req.SerializeToString()
    for decode in (decode_traces, native.decode_traces):
        result = decode(stamp(body, media, VERIFIED), media)
        (row,) = result.rows or result.table.to_pylist()
        assert row["ServiceName"] == "shop"
        assert dict(row["ResourceAttributes"]).items() >= VERIFIED.items()


@pytest.mark.parametrize("media", [CONTENT_TYPE_PROTOBUF, CONTENT_TYPE_JSON])
def test_many_resource_groups_are_refused_not_blown_up(media: str) -> None:
    """Each group gains the verified attributes: thousands of empty ones are a 413."""
    body = (b"\x0a\x00" * (MAX_GROUPS + 1) if media == CONTENT_TYPE_PROTOBUF
            else json.dumps({"resourceSpans": [{}] * (MAX_GROUPS + 1)}).encode())
    with pytest.raises(OtlpTooLargeError):
        stamp(body, media, VERIFIED)
    ok = b"\x0a\x00" * MAX_GROUPS if media == CONTENT_TYPE_PROTOBUF else \
        json.dumps({"resourceSpans": [{}] * MAX_GROUPS}).encode()
    assert len(stamp(ok, media, VERIFIED)) < 400 * MAX_GROUPS
