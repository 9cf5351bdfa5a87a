"""OTLP/gRPC against the real OTel SDK gRPC exporters and a raw gRPC client: the same receiver,
write-ahead log and answers as OTLP/HTTP, in gRPC's words."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
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
from otlp_harness import MemoryStore, check_spans, emit_spans

from noops.observe.otlp.grpc_server import SERVICES, start_grpc
from noops.observe.otlp.receiver import Receiver, ReceiverSettings

TRACES = f"/{SERVICES['traces']}/Export"


@dataclass
class GrpcReceiver:
    target: str
    receiver: Receiver
    store: MemoryStore

    def call(self, body: bytes, *, compression: grpc.Compression | None = None,
             method: str = TRACES) -> bytes:
        with grpc.insecure_channel(self.target) as channel:
            export = channel.unary_unary(method)  # bytes in, bytes out
            out: bytes = export(body, timeout=10, compression=compression)
            return out


@pytest.fixture
def grpc_server(tmp_path: Path) -> Iterator[Callable[..., GrpcReceiver]]:
    """``grpc_server(store, **ReceiverSettings)``: a receiver and its gRPC server on a free port,
    in a thread with its own event loop; stopped (drained) when the test ends."""
    stops: list[Callable[[], None]] = []

    def start(store: MemoryStore | None = None, **settings: Any) -> GrpcReceiver:
        store = store or MemoryStore()
        rec = Receiver(store, tmp_path / f"wal{len(stops)}", ReceiverSettings(**settings))
        loop = asyncio.new_event_loop()
        ready: list[int] = []
        started = threading.Event()

        async def up() -> aio.Server:
            await rec.start()
            server, port = await start_grpc(rec, "127.0.0.1", 0)
            ready.append(port)
            started.set()
            return server

        server_box: list[aio.Server] = []
        thread = threading.Thread(target=lambda: (server_box.append(loop.run_until_complete(up())),
                                                  loop.run_forever()), daemon=True)
        thread.start()
        assert started.wait(15), "gRPC receiver did not start"

        def stop() -> None:
            async def down() -> None:
                await server_box[0].stop(None)
                await rec.stop()

            asyncio.run_coroutine_threadsafe(down(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(15)
            loop.close()

        stops.append(stop)
        return GrpcReceiver(f"127.0.0.1:{ready[0]}", rec, store)

    yield start
    for stop in stops:
        stop()


def _span_request(*names: str, bad_id: bool = False) -> bytes:
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for i, name in enumerate(names, 1):
        spans.add(trace_id=i.to_bytes(16, "big"), span_id=b"\1" * (3 if bad_id else 8), name=name,
                  start_time_unix_nano=1000, end_time_unix_nano=2000)
    return req.SerializeToString()


def _retry_delay_s(err: grpc.RpcError) -> int:
    """The ``RetryInfo`` delay in the error's ``google.rpc.Status`` details, which must equal
    the bare ``RetryInfo`` the Python SDK reads."""
    trailers = dict(err.trailing_metadata())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == err.code().value[0] and status.message == err.details()
    [detail] = status.details
    info = error_details_pb2.RetryInfo()
    assert detail.Unpack(info)
    assert error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]) == info
    return int(info.retry_delay.seconds)


@pytest.mark.parametrize("gzip_on", [False, True])
def test_sdk_grpc_exporters_deliver_every_item(grpc_server: Callable[..., GrpcReceiver],
                                               gzip_on: bool) -> None:
    srv = grpc_server()
    comp = grpc.Compression.Gzip if gzip_on else grpc.Compression.NoCompression
    resource = Resource.create({"service.name": "svc-grpc", "region": "eu"})
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=srv.target, insecure=True, compression=comp)))
    tracer = tp.get_tracer("it.tracer", "0.1")
    contexts = emit_spans(tracer)
    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(SimpleLogRecordProcessor(
        OTLPLogExporter(endpoint=srv.target, insecure=True, compression=comp)))
    logger = lp.get_logger("it.logger")
    with tracer.start_as_current_span("logging") as ls:
        for i in range(5):
            logger.emit(body=f"line {i}", severity_number=SeverityNumber.WARN, attributes={"i": i})
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=srv.target, insecure=True, compression=comp),
        export_interval_millis=3_600_000)
    mp = MeterProvider(resource=resource, metric_readers=[reader])
    mp.get_meter("it.meter").create_counter("hits").add(7, {"route": "/"})
    assert mp.force_flush()
    for provider in (tp, lp, mp):
        provider.shutdown()

    store = srv.store
    store.wait(lambda: len(store.spans) == 21 and len(store.logs) == 5 and "sum" in store.metrics)
    check_spans(store, contexts, "svc-grpc")
    trace_id = format(ls.get_span_context().trace_id, "032x")
    assert sorted(r["Body"] for r in store.logs) == [f"line {i}" for i in range(5)]
    assert all(r["TraceId"] == trace_id and r["SeverityNumber"] == 13 for r in store.logs)
    assert store.metrics["sum"][0]["Value"] == 7.0 and store.metrics["sum"][0]["Attributes"] == {"route": "/"}
    assert srv.receiver.stats()["accepted"]["traces"] == 21


def test_answers_partial_success_and_refusals(grpc_server: Callable[..., GrpcReceiver]) -> None:
    srv = grpc_server(max_decompressed_bytes=64 * 1024)
    ok = ExportTraceServiceResponse.FromString(srv.call(_span_request("a")))
    assert not ok.HasField("partial_success")
    partial = ExportTraceServiceResponse.FromString(srv.call(_span_request("b", bad_id=True)))
    assert partial.partial_success.rejected_spans == 1 and "spanId" in partial.partial_success.error_message

    with pytest.raises(grpc.RpcError) as bad:
        srv.call(b"\xff\xff\xff")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and bad.value.details()
    # over the cap once inflated (a 2 MB message of zeros gzips to ~2 KB): gRPC refuses it
    bomb = ExportTraceServiceRequest()
    bomb.resource_spans.add().schema_url = "0" * 2_000_000
    with pytest.raises(grpc.RpcError) as big:
        srv.call(bomb.SerializeToString(), compression=grpc.Compression.Gzip)
    assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as unknown:
        srv.call(b"", method="/opentelemetry.proto.collector.trace.v1.TraceService/Other")
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED

    srv.call(_span_request("c"))  # still serving
    srv.store.wait(lambda: sorted(s["SpanName"] for s in srv.store.spans) == ["a", "c"])
    assert srv.receiver.stats()["bad_requests"] == 1


def test_backpressure_is_resource_exhausted_with_retry_info_and_loses_nothing(
        grpc_server: Callable[..., GrpcReceiver]) -> None:
    srv = grpc_server(MemoryStore(delay_s=0.2), queue_requests=2, batch_rows=1)

    def send(i: int) -> tuple[int, grpc.RpcError | None]:
        try:
            srv.call(_span_request(f"s{i}"))
        except grpc.RpcError as exc:
            return i, exc
        return i, None

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, range(40)))
    acked = {i for i, err in results if err is None}
    refused = [err for _, err in results if err is not None]
    assert acked and refused and len(acked) + len(refused) == 40
    assert {err.code() for err in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert {_retry_delay_s(err) for err in refused} == {1}
    srv.store.wait(lambda: len(srv.store.spans) >= len(acked))
    assert sorted(int(s["SpanName"][1:]) for s in srv.store.spans) == sorted(acked)
    assert srv.receiver.stats()["throttled"] == len(refused)


def test_unwritable_wal_is_unavailable_with_retry_info(grpc_server: Callable[..., GrpcReceiver],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    srv = grpc_server()
    srv.call(_span_request("before"))

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", full_disk)
    with pytest.raises(grpc.RpcError) as err:
        srv.call(_span_request("lost"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "persist" in err.value.details()
    assert _retry_delay_s(err.value) == 1
    monkeypatch.setattr(os, "fdatasync", real)
    srv.call(_span_request("after"))
    srv.store.wait(lambda: sorted(s["SpanName"] for s in srv.store.spans) == ["after", "before"])


def test_a_taken_port_is_an_os_error(grpc_server: Callable[..., GrpcReceiver]) -> None:
    srv = grpc_server()
    port = int(srv.target.rsplit(":", 1)[1])

    async def second() -> None:
        await start_grpc(srv.receiver, "127.0.0.1", port)

    with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
        asyncio.run(second())
