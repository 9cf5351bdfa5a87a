"""The OTLP receiver against the real OTel SDK exporters, real sockets, and kill -9."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.common.http import Compression as JsonCompression
from opentelemetry.exporter.otlp.json.http._log_exporter import OTLPLogExporter as JsonLogExporter
from opentelemetry.exporter.otlp.json.http.metric_exporter import OTLPMetricExporter as JsonMetricExporter
from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter as JsonSpanExporter
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from otlp_harness import MemoryStore, ReceiverProcess, RunningReceiver, check_spans, emit_spans

from noops.observe.otlp.receiver import Receiver
from noops.observe.otlp.wal import WAL, WalError
from noops.observe.store import DuckDBStore

PB, JS = "application/x-protobuf", "application/json"
Server = Callable[..., RunningReceiver]


def exporters(url: str, encoding: str, gzip_on: bool) -> tuple[Any, Any, Any]:
    if encoding == "json":
        comp: Any = JsonCompression.GZIP if gzip_on else JsonCompression.NONE
        return (
            JsonSpanExporter(endpoint=f"{url}/v1/traces", compression=comp),
            JsonLogExporter(endpoint=f"{url}/v1/logs", compression=comp),
            JsonMetricExporter(endpoint=f"{url}/v1/metrics", compression=comp),
        )
    comp = Compression.Gzip if gzip_on else Compression.NoCompression
    return (
        OTLPSpanExporter(endpoint=f"{url}/v1/traces", compression=comp),
        OTLPLogExporter(endpoint=f"{url}/v1/logs", compression=comp),
        OTLPMetricExporter(endpoint=f"{url}/v1/metrics", compression=comp),
    )


@pytest.mark.parametrize(
    ("encoding", "gzip_on"), [("protobuf", False), ("protobuf", True), ("json", False), ("json", True)]
)
def test_sdk_exporters_deliver_every_item(otlp_server: Server, encoding: str, gzip_on: bool) -> None:
    srv = otlp_server()
    span_exp, log_exp, metric_exp = exporters(srv.url, encoding, gzip_on)
    resource = Resource.create({"service.name": f"svc-{encoding}", "region": "eu"})

    tp = TracerProvider(resource=resource)
    tp.add_span_processor(SimpleSpanProcessor(span_exp))
    tracer = tp.get_tracer("it.tracer", "0.1")
    contexts = emit_spans(tracer)
    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(SimpleLogRecordProcessor(log_exp))
    logger = lp.get_logger("it.logger")
    with tracer.start_as_current_span("logging") as ls:
        for i in range(10):
            logger.emit(
                body=f"line {i}",
                severity_number=SeverityNumber.ERROR,
                attributes={"i": i},
                timestamp=time.time_ns(),
            )
    reader = PeriodicExportingMetricReader(metric_exp, export_interval_millis=3_600_000)
    mp = MeterProvider(resource=resource, metric_readers=[reader])
    meter = mp.get_meter("it.meter")
    meter.create_counter("hits").add(7, {"route": "/"})
    meter.create_histogram("lat").record(3.0)
    meter.create_gauge("g").set(1.5)
    assert mp.force_flush()
    for p in (tp, lp, mp):
        p.shutdown()

    store = srv.store
    store.wait(lambda: len(store.spans) == 21 and len(store.logs) == 10 and len(store.metrics) == 3)
    check_spans(store, contexts, f"svc-{encoding}")
    logs = sorted(store.logs, key=lambda r: int(r["LogAttributes"]["i"]))
    assert [r["Body"] for r in logs] == [f"line {i}" for i in range(10)]
    assert all(r["TraceId"] == format(ls.get_span_context().trace_id, "032x") for r in logs)
    assert all(r["SeverityNumber"] == 17 and r["ServiceName"] == f"svc-{encoding}" for r in logs)
    assert store.metrics["sum"][0]["Value"] == 7.0 and store.metrics["sum"][0]["Attributes"] == {"route": "/"}
    assert store.metrics["histogram"][0]["Count"] == 1 and store.metrics["gauge"][0]["Value"] == 1.5
    stats = srv.receiver.stats()
    # shutdown() exports the cumulative metrics once more: every accepted point must be stored
    store.wait(lambda: sum(map(len, store.metrics.values())) == stats["accepted"]["metrics"] >= 3)
    assert stats["accepted"]["traces"] == 21 and stats["accepted"]["logs"] == 10
    assert stats["rejected"] == {"traces": 0, "logs": 0, "metrics": 0}


def span_json(i: int, *, bad: bool = False) -> dict[str, Any]:
    return {
        "traceId": f"{i + 1:032x}",
        "spanId": f"{i + 1:016x}" if not bad else "01",
        "name": f"s{i}",
        "startTimeUnixNano": "1000",
        "endTimeUnixNano": "2000",
    }


def body_of(*spans: dict[str, Any]) -> bytes:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]}).encode()


def test_partial_success_in_the_request_encoding(otlp_server: Server) -> None:
    srv = otlp_server()
    r = httpx.post(
        f"{srv.url}/v1/traces",
        content=body_of(span_json(1), span_json(2, bad=True)),
        headers={"content-type": JS},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith(JS)
    ps = r.json()["partialSuccess"]
    assert ps["rejectedSpans"] == "1" and "spanId" in ps["errorMessage"]
    req = ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\1" * 16, span_id=b"\1" * 3, name="x")
    r = httpx.post(f"{srv.url}/v1/traces", content=req.SerializeToString(), headers={"content-type": PB})
    resp = ExportTraceServiceResponse.FromString(r.content)
    assert r.status_code == 200 and resp.partial_success.rejected_spans == 1
    ok = httpx.post(f"{srv.url}/v1/traces", content=body_of(span_json(3)), headers={"content-type": JS})
    assert ok.status_code == 200 and ok.json() == {}
    srv.store.wait(lambda: len(srv.store.spans) == 2)


def test_limits_and_refusals(otlp_server: Server) -> None:
    srv = otlp_server(max_body_bytes=4096, max_decompressed_bytes=64 * 1024)
    with httpx.Client(base_url=srv.url) as client:
        refusals(srv, client.post)


def test_a_batch_that_expands_too_far_is_refused_and_stores_nothing(otlp_server: Server) -> None:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    from noops.observe.otlp.decode import MAX_SHARED_CHARS

    srv = otlp_server()
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for i in range(8):
        rs.resource.attributes.add(key=f"r{i}", value=AnyValue(string_value="v" * 16_000))
    spans = rs.scope_spans.add().spans
    for i in range(MAX_SHARED_CHARS // (8 * 16_002) + 1):
        spans.add(trace_id=b"\1" * 16, span_id=(i + 1).to_bytes(8, "big"), name="n",
                  start_time_unix_nano=10, end_time_unix_nano=20)
    body = gzip.compress(req.SerializeToString())
    assert len(body) < 16_384  # a small request …
    r = httpx.post(f"{srv.url}/v1/traces", content=body,
                   headers={"content-type": PB, "content-encoding": "gzip"})
    assert r.status_code == 413  # … that would expand past the cap: refused whole
    ok = httpx.post(f"{srv.url}/v1/traces", content=body_of(span_json(1)), headers={"content-type": JS})
    assert ok.status_code == 200
    srv.store.wait(lambda: len(srv.store.spans) == 1)  # only the small batch


def refusals(srv: RunningReceiver, post: Any) -> None:
    assert post("/v1/traces", content=b"x" * 5000, headers={"content-type": PB}).status_code == 413
    bomb = gzip.compress(b"\0" * 2_000_000, 9)
    assert len(bomb) < 4096
    r = post("/v1/traces", content=bomb, headers={"content-type": PB, "content-encoding": "gzip"})
    assert r.status_code == 413
    assert post("/v1/traces", content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
    r = post("/v1/logs", content=b"{}", headers={"content-type": JS, "content-encoding": "br"})
    assert r.status_code == 415
    r = post("/v1/metrics", content=b"\xff\xff\xff", headers={"content-type": PB})
    assert r.status_code == 400 and r.content[:1] == b"\x08"  # google.rpc.Status, code field first
    r = post("/v1/traces", content=b"{nope", headers={"content-type": JS})
    assert r.status_code == 400 and r.json()["code"] == 3 and r.json()["message"]
    r = post(
        "/v1/traces",
        content=gzip.compress(body_of(span_json(5))),
        headers={"content-type": JS, "content-encoding": "gzip"},
    )
    assert r.status_code == 200
    assert httpx.get(f"{srv.url}/v1/traces").status_code == 405


def test_backpressure_answers_429_and_loses_nothing_acknowledged(otlp_server: Server) -> None:
    srv = otlp_server(MemoryStore(delay_s=0.2), queue_requests=2, batch_rows=1)

    def send(i: int) -> tuple[int, httpx.Response]:
        return i, httpx.post(
            f"{srv.url}/v1/traces", content=body_of(span_json(i)), headers={"content-type": JS}
        )

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, range(40)))
    acked = {i for i, r in results if r.status_code == 200}
    throttled = [r for _, r in results if r.status_code == 429]
    assert throttled and acked and len(acked) + len(throttled) == 40
    assert all(r.headers["retry-after"] == "1" for r in throttled)
    srv.store.wait(lambda: len(srv.store.spans) >= len(acked))
    assert {int(r["SpanName"][1:]) for r in srv.store.spans} == acked
    assert len(srv.store.spans) == len(acked)
    assert srv.receiver.stats()["throttled"] == len(throttled)
    # A client that honours Retry-After eventually gets everything in.
    srv.store.delay_s = 0.0
    for i in sorted(set(range(40)) - acked):
        while send(i)[1].status_code == 429:
            time.sleep(0.1)
    srv.store.wait(lambda: len(srv.store.spans) == 40, timeout_s=30)


def test_kill_9_after_200_then_restart_replays_everything_acknowledged(
    receiver_process: Callable[[float], ReceiverProcess],
) -> None:
    first = receiver_process(0.5)  # slow store: most acknowledged items are only in the WAL
    acked = []
    exporter = OTLPSpanExporter(endpoint=f"{first.url}/v1/traces")
    tp = TracerProvider(resource=Resource.create({"service.name": "crashy"}))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tp.get_tracer("t")
    for i in range(25):
        with tracer.start_as_current_span(f"c{i}") as s:
            pass
        acked.append(format(s.get_span_context().span_id, "016x"))
    first.kill9()
    before = {r["SpanId"] for r in first.rows("traces")}
    assert len(before) < len(acked), "the slow store should not have committed everything yet"

    second = receiver_process(0.0)
    deadline = time.monotonic() + 15
    while not set(acked) <= {r["SpanId"] for r in second.rows("traces")}:
        assert time.monotonic() < deadline, "acknowledged spans missing after replay"
        time.sleep(0.05)
    tp.shutdown()


# --- the WAL on its own ---------------------------------------------------------------------------

WAL_CHILD = r"""
import sys
from noops.observe.otlp.wal import WAL
wal = WAL(sys.argv[1], segment_bytes=4096)
i = 0
while True:
    seq = wal.append("traces", b"payload-%d-" % i + b"x" * (i % 300))
    print(seq, i, flush=True)
    i += 1
"""


def test_wal_kill_9_mid_append_replays_exactly_the_acknowledged_records(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", WAL_CHILD, str(tmp_path)], stdout=subprocess.PIPE)
    assert child.stdout is not None
    acked: list[tuple[int, int]] = []
    try:
        while len(acked) < 300:
            seq, i = child.stdout.readline().split()
            acked.append((int(seq), int(i)))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    got = [(seq, sig, payload) for seq, sig, payload in WAL(tmp_path).replay()]
    assert len(os.listdir(tmp_path)) > 3  # several segments
    # Every acknowledged record, in order; at most the records written after the last ack we read.
    assert [s for s, _, _ in got[: len(acked)]] == [s for s, _ in acked]
    for (_seq, sig, payload), (_, i) in zip(got, acked, strict=False):
        assert sig == "traces" and payload == b"payload-%d-" % i + b"x" * (i % 300)
    assert [s for s, _, _ in got] == list(range(1, len(got) + 1))


def test_wal_torn_tail_is_dropped_and_appends_continue(tmp_path: Path) -> None:
    wal = WAL(tmp_path)
    assert [wal.append("logs", b"a"), wal.append("logs", b"b")] == [1, 2]
    wal.close()
    seg = sorted(tmp_path.glob("*.wal"))[-1]
    good = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(b"\x00\x00\x00\x30garbage")  # a frame header promising more than is there
    wal = WAL(tmp_path)
    assert [(s, p) for s, _, p in wal.replay()] == [(1, b"a"), (2, b"b")]
    assert seg.stat().st_size == good
    assert wal.append("logs", b"c") == 3
    wal.close()
    assert [s for s, _, _ in WAL(tmp_path).replay()] == [1, 2, 3]


def test_wal_checkpoint_skips_and_deletes_committed_segments(tmp_path: Path) -> None:
    wal = WAL(tmp_path, segment_bytes=64)
    for i in range(10):
        wal.append("metrics", b"%d" % i + b"." * 40)
    segments = len(list(tmp_path.glob("*.wal")))
    wal.checkpoint(6)
    assert len(list(tmp_path.glob("*.wal"))) < segments
    wal.close()
    assert [s for s, _, _ in WAL(tmp_path, segment_bytes=64).replay()] == [7, 8, 9, 10]


def test_wal_damage_in_an_older_segment_is_an_error(tmp_path: Path) -> None:
    wal = WAL(tmp_path, segment_bytes=64)
    for _ in range(4):
        wal.append("traces", b"." * 40)
    wal.close()
    oldest = sorted(tmp_path.glob("*.wal"))[0]
    data = bytearray(oldest.read_bytes())
    data[-1] ^= 0xFF
    oldest.write_bytes(bytes(data))
    with pytest.raises(WalError, match="damaged"):
        list(WAL(tmp_path).replay())


def test_sdk_to_the_real_duckdb_store(tmp_path: Path) -> None:
    """The same path into ``noops.observe.store.DuckDBStore`` (the default backend)."""
    store = DuckDBStore(tmp_path / "t.duckdb")
    receiver = Receiver(store, tmp_path / "wal")

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=receiver.app)
        await receiver.start()
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://otlp") as client:
                tp = TracerProvider(resource=Resource.create({"service.name": "duck"}))
                exp = InMemorySpanExporter()
                tp.add_span_processor(SimpleSpanProcessor(exp))
                with tp.get_tracer("d").start_as_current_span("root", kind=SpanKind.SERVER) as root:
                    root.set_attribute("k", "v")
                body = encode_spans(exp.get_finished_spans()).SerializeToString()
                r = await client.post("/v1/traces", content=body, headers={"content-type": PB})
                assert r.status_code == 200
        finally:
            await receiver.stop()
        trace_id = format(root.get_span_context().trace_id, "032x")
        rows = store.trace(trace_id)
        assert len(rows) == 1 and rows[0]["SpanName"] == "root" and rows[0]["ServiceName"] == "duck"
        assert rows[0]["SpanKind"] == "Server" and dict(rows[0]["SpanAttributes"]) == {"k": "v"}

    asyncio.run(scenario())
    store.close()


def test_native_decoder_into_duckdb_with_python_fallback_and_400s(tmp_path: Path) -> None:
    """With a store that takes Arrow, protobuf traces go through the native decoder; a request
    it hands over (an array attribute) and a garbage body get decode.py's answers; both kinds of
    batches land in the store with the same values, and the service map is fed from the table."""
    from opentelemetry import trace as otel_trace

    from noops.observe.otlp import native

    assert native.AVAILABLE, "pip install builds _otlpfast (needs gcc and python3-dev: make deps)"
    store = DuckDBStore(tmp_path / "t.duckdb")
    receiver = Receiver(store, tmp_path / "wal")
    assert receiver._decoders["traces"] is native.decode_traces
    assert Receiver(MemoryStore(), tmp_path / "wal2")._decoders["traces"] is not native.decode_traces

    tp = TracerProvider(resource=Resource.create({"service.name": "web"}))
    exp = InMemorySpanExporter()
    tp.add_span_processor(SimpleSpanProcessor(exp))
    tracer = tp.get_tracer("t")
    with tracer.start_as_current_span("GET /", kind=SpanKind.SERVER) as root, \
            tracer.start_as_current_span("call", kind=SpanKind.CLIENT,
                                         attributes={"server.address": "127.0.0.1",
                                                     "server.port": 15001}):
        pass
    first = encode_spans(exp.get_finished_spans())
    assert native.decode_traces_native(first.SerializeToString()) is not None
    tp2 = TracerProvider(resource=Resource.create({"service.name": "api"}))
    exp2 = InMemorySpanExporter()
    tp2.add_span_processor(SimpleSpanProcessor(exp2))
    client_ctx = exp.get_finished_spans()[0].context
    parent = otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(client_ctx))
    with tp2.get_tracer("t").start_as_current_span("serve", kind=SpanKind.SERVER, context=parent,
                                                   attributes={"tags": ["a", "b"]}):
        pass
    second = encode_spans(exp2.get_finished_spans())
    assert any(kv.value.HasField("array_value")
               for kv in second.resource_spans[0].scope_spans[0].spans[0].attributes)
    assert native.decode_traces_native(second.SerializeToString()) is None
    garbage = first.SerializeToString()[:-3]

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=receiver.app)
        await receiver.start()
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://otlp") as client:
                for body in (first.SerializeToString(), second.SerializeToString()):
                    r = await client.post("/v1/traces", content=body, headers={"content-type": PB})
                    assert r.status_code == 200 and r.content == b""
                r = await client.post("/v1/traces", content=garbage, headers={"content-type": PB})
                assert r.status_code == 400 and "not a valid protobuf" in _status_message(r)
        finally:
            await receiver.stop()

    asyncio.run(scenario())
    rows = {r["SpanName"]: r for r in store.trace(format(root.get_span_context().trace_id, "032x"))}
    assert set(rows) == {"GET /", "call", "serve"}
    assert rows["call"]["SpanKind"] == "Client" and rows["call"]["ServiceName"] == "web"
    assert dict(rows["call"]["SpanAttributes"]) == {"server.address": "127.0.0.1", "server.port": "15001"}
    assert dict(rows["serve"]["SpanAttributes"]) == {"tags": '["a","b"]'}
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    edges = store.service_map(now - timedelta(hours=1), now + timedelta(minutes=1))
    assert [(e["client"], e["server"], e["calls"], e["mtls"]) for e in edges] == [("web", "api", 1, True)]
    assert receiver.stats()["accepted"]["traces"] == 3
    store.close()


# --- hostile requests over HTTP: 400/413/415 with a message, and the receiver keeps serving --------

def _status_message(r: httpx.Response) -> str:
    from google.rpc.status_pb2 import Status

    if r.headers["content-type"].startswith(JS):
        return str(r.json()["message"])
    return Status.FromString(r.content).message


def test_fuzzed_requests_get_a_clear_answer_and_the_receiver_keeps_serving(otlp_server: Server) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    srv = otlp_server(MemoryStore(), max_body_bytes=64 * 1024, max_decompressed_bytes=256 * 1024)
    valid = encode_spans([]).SerializeToString()
    bomb = gzip.compress(b"\x00" * (1024 * 1024))  # 1 KiB that inflates past the cap
    bodies = (
        st.binary(max_size=2048)
        | st.builds(lambda b, i, x: b[:i] + bytes([b[i % len(b)] ^ x]) + b[i + 1 :] if b else b,
                    st.just(body_of(span_json(1), span_json(2))), st.integers(0, 400), st.integers(1, 255))
        | st.sampled_from([bomb, b"\x1f\x8b\x08" + b"\x00" * 20, b"x" * (70 * 1024), b"{}" * 40_000,
                           b"[" * 50_000, valid,
                           b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":1e400}]}]}]}'])
    )
    media = st.sampled_from([PB, JS, f"{JS}; charset=utf-8", "text/plain", "", "application/x-protobuf;x"])
    encodings = st.sampled_from(["", "identity", "gzip", "deflate", "br", "gzip, gzip"])
    answers: dict[int, int] = {}

    with httpx.Client(base_url=srv.url, timeout=30) as client:

        @settings(max_examples=250, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(body=bodies, ctype=media, enc=encodings, path=st.sampled_from(["traces", "logs", "metrics"]),
               compress=st.booleans())
        def check(body: bytes, ctype: str, enc: str, path: str, compress: bool) -> None:
            if compress and enc == "gzip":
                body = gzip.compress(body)
            r = client.post(f"/v1/{path}", content=body,
                            headers={"content-type": ctype, "content-encoding": enc})
            answers[r.status_code] = answers.get(r.status_code, 0) + 1
            assert r.status_code in (200, 400, 413, 415), r.text
            if r.status_code != 200:
                assert _status_message(r), "an error answer must say why"

        check()
        assert {400, 413, 415} <= set(answers), answers
        r = client.post("/v1/traces", content=body_of(span_json(7)), headers={"content-type": JS})
        assert r.status_code == 200
    srv.store.wait(lambda: any(s["SpanName"] == "s7" for s in srv.store.spans))
    # undecodable or too large; a 415 is refused before the body is read
    assert srv.receiver.stats()["bad_requests"] == answers[400] + answers[413]


def test_wal_append_batch_numbers_records_consecutively_and_replays_them(tmp_path: Path) -> None:
    wal = WAL(tmp_path, segment_bytes=64)
    assert wal.append("traces", b"a") == 1
    assert wal.append_batch([("logs", b"b"), ("metrics", b"c" * 100), ("traces", b"d")]) == [2, 3, 4]
    wal.close()
    assert list(WAL(tmp_path).replay()) == [(1, "traces", b"a"), (2, "logs", b"b"),
                                             (3, "metrics", b"c" * 100), (4, "traces", b"d")]


def test_concurrent_requests_share_wal_fsyncs(otlp_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = otlp_server(MemoryStore())
    real_fdatasync = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        time.sleep(0.05)  # a slow disk: requests pile up behind the write in progress
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    writes: list[int] = []
    append_batch = srv.receiver.wal.append_batch

    def counting(records: list[tuple[str, bytes]]) -> list[int]:
        writes.append(len(records))
        return append_batch(records)

    monkeypatch.setattr(srv.receiver.wal, "append_batch", counting)

    def send(i: int) -> int:
        r = httpx.post(f"{srv.url}/v1/traces", content=body_of(span_json(i)), headers={"content-type": JS})
        return r.status_code

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(send, range(48))) == {200}
    assert sum(writes) == 48 and len(writes) < 48 and max(writes) > 1
    srv.store.wait(lambda: len(srv.store.spans) == 48)
    assert sorted(int(s["SpanName"][1:]) for s in srv.store.spans) == list(range(48))


def test_unwritable_wal_answers_503_and_acknowledges_nothing(
    otlp_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = otlp_server(MemoryStore())
    real_fdatasync = os.fdatasync

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    def post(i: int) -> httpx.Response:
        return httpx.post(f"{srv.url}/v1/traces", content=body_of(span_json(i)), headers={"content-type": JS})

    assert post(0).status_code == 200
    monkeypatch.setattr(os, "fdatasync", full_disk)
    refused = post(1)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "persist" in refused.json()["message"]
    monkeypatch.setattr(os, "fdatasync", real_fdatasync)
    assert post(2).status_code == 200
    srv.store.wait(lambda: len(srv.store.spans) == 2)
    assert sorted(s["SpanName"] for s in srv.store.spans) == ["s0", "s2"]
    # the failed write was cut back: the log holds the acknowledged requests only, and replays
    segments = b"".join(p.read_bytes() for p in (tmp_path / "wal0").glob("*.wal"))
    assert b'"s0"' in segments and b'"s2"' in segments and b'"s1"' not in segments
    list(WAL(tmp_path / "wal0").replay())


def test_a_request_cancelled_in_the_group_commit_never_pins_the_wal(tmp_path: Path) -> None:
    """A request cancelled while it waits for the WAL (client gone) is written with the next
    batch but never acknowledged: the others still get their answer and it holds back no
    checkpoint."""
    async def scenario() -> None:
        receiver = Receiver(MemoryStore(), tmp_path / "wal")
        await receiver.start()
        try:
            assert receiver._wal_lock is not None
            async with receiver._wal_lock:  # a commit in progress: the next requests queue up
                gone = asyncio.create_task(receiver._wal_append("traces", b"gone"))
                await asyncio.sleep(0.05)
                gone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gone
            kept = await asyncio.wait_for(receiver._wal_append("traces", b"kept"), 10)
            assert receiver._inflight == {kept}
        finally:
            await receiver.stop()

    asyncio.run(scenario())
