"""The daemon's telemetry service on its own (no containers): OTLP on the Unix socket the
monitors forward to, on the TCP port and over gRPC, ``/metrics``, retention, ports already
taken, stop."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families

from helpers import free_port
from noops.observe.otlp.grpc_server import SERVICES
from noops.observe.service import Telemetry
from noops.settings import Settings


def _span(trace_id: str, service: str) -> bytes:
    now = time.time_ns()
    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": service}},
            {"key": "service.version", "value": {"stringValue": "v9"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": trace_id, "spanId": "00000000000000aa", "name": "GET /",
            "kind": 2, "startTimeUnixNano": str(now), "endTimeUnixNano": str(now + 1000)}]}]}]}
    ).encode()


def _span_protobuf(trace_id: str, service: str, version: str) -> bytes:
    from google.protobuf.json_format import ParseDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    now = time.time_ns()
    return ParseDict({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": service}},
            {"key": "service.version", "value": {"stringValue": version}}]},
        "scopeSpans": [{"spans": [{
            "traceId": base64.b64encode(bytes.fromhex(trace_id)).decode(),
            "spanId": base64.b64encode(bytes.fromhex("00000000000000bb")).decode(),
            "name": "GET /", "kind": 2, "startTimeUnixNano": str(now),
            "endTimeUnixNano": str(now + 1000)}]}]}]}, ExportTraceServiceRequest()
    ).SerializeToString()


def _settings(home: Path, port: int, **extra: str | int) -> Settings:
    return Settings(environ={}, overrides={"home": home, "otlp_port": port, "otlp_grpc_port": 0,
                                           **extra})


def test_receiver_socket_port_metrics_retention_and_stop(tmp_path: Path) -> None:
    port, grpc_port = free_port(), free_port()
    telemetry = Telemetry(_settings(tmp_path, port, otlp_grpc_port=grpc_port))
    old = int((datetime.now(UTC) - timedelta(days=8)).timestamp() * 1e9)

    async def scenario() -> None:
        await telemetry.start()
        try:
            unix = httpx.AsyncHTTPTransport(uds=str(telemetry.socket))
            async with httpx.AsyncClient(transport=unix, base_url="http://otlp") as client:
                resp = await client.post("/v1/traces", content=_span("1" * 32, "by-socket"),
                                         headers={"Content-Type": "application/json"})
                assert resp.status_code == 200, resp.text
                # the socket is for apps: the platform's metrics are not served there
                assert (await client.get("/metrics")).status_code == 404
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                resp = await client.post("/v1/traces", content=_span("2" * 32, "by-port"),
                                         headers={"Content-Type": "application/json"})
                assert resp.status_code == 200, resp.text
                metrics = await client.get("/metrics")
            assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
            samples = {(s.name, s.labels.get("signal")): s.value
                       for f in text_string_to_metric_families(metrics.text) for s in f.samples}
            assert samples[("noops_otlp_accepted_items_total", "traces")] == 2
            # spans with a service.version mark it (the deploy markers' ingest hook)
            for _ in range(100):
                if telemetry.markers.list(service="by-port"):
                    break
                await asyncio.sleep(0.05)
            [marker] = telemetry.markers.list(service="by-port")
            assert (marker.version, marker.kind) == ("v9", "version")
            # protobuf spans take the native decoder in the daemon too, and mark versions alike
            from noops.observe.otlp import native

            assert native.AVAILABLE, "pip install builds the native decoder (gcc, python3-dev)"
            assert telemetry.receiver._decoders["traces"] is native.decode_traces
            async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(
                    uds=str(telemetry.socket)), base_url="http://otlp") as client:
                resp = await client.post("/v1/traces", content=_span_protobuf(
                    "3" * 32, "by-protobuf", "v10"),
                    headers={"Content-Type": "application/x-protobuf"})
                assert resp.status_code == 200, resp.text
            for _ in range(100):
                if telemetry.markers.list(service="by-protobuf"):
                    break
                await asyncio.sleep(0.05)
            [marker] = telemetry.markers.list(service="by-protobuf")
            assert (marker.version, marker.kind) == ("v10", "version")
            assert telemetry.store.trace("3" * 32)
            # OTLP/gRPC: the same receiver, write-ahead log and store
            async with aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                export = channel.unary_unary(f"/{SERVICES['traces']}/Export")
                assert await export(_span_protobuf("4" * 32, "by-grpc", "v11"), timeout=10) == b""
            # retention: an 8-day-old log record goes, a fresh one stays (logs keep 7 days)
            telemetry.store.insert_logs([{"Timestamp": old, "ServiceName": "a", "Body": "old"},
                                         {"Timestamp": time.time_ns(), "ServiceName": "a",
                                          "Body": "new"}])
            await telemetry.expire()
            assert [r["Body"] for r in telemetry.store.logs(service="a")] == ["new"]
        finally:
            await telemetry.stop()

    asyncio.run(scenario())
    assert not telemetry.socket.exists()
    for free in (port, grpc_port):  # the ports are free again
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", free))
    # what was acknowledged is in the store after a restart
    again = Telemetry(_settings(tmp_path, 0))
    try:
        assert len(again.store.trace("1" * 32)) == 1 and len(again.store.trace("2" * 32)) == 1
        assert [s["ServiceName"] for s in again.store.trace("4" * 32)] == ["by-grpc"]
    finally:
        again.close()


def test_taken_ports_leave_the_socket_serving(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken, socket.socket() as taken_grpc:
        for sock in (taken, taken_grpc):
            sock.bind(("127.0.0.1", 0))
            sock.listen(1)
        telemetry = Telemetry(_settings(tmp_path, taken.getsockname()[1],
                                        otlp_grpc_port=taken_grpc.getsockname()[1]))

        async def scenario() -> int:
            await telemetry.start()
            try:
                unix = httpx.AsyncHTTPTransport(uds=str(telemetry.socket))
                async with httpx.AsyncClient(transport=unix, base_url="http://otlp") as client:
                    resp = await client.post("/v1/traces", content=_span("3" * 32, "s"),
                                             headers={"Content-Type": "application/json"})
                return resp.status_code
            finally:
                await telemetry.stop()

        with caplog.at_level("WARNING", logger="noops"):
            assert asyncio.run(scenario()) == 200
        for sock, what in ((taken, "OTLP receiver"), (taken_grpc, "OTLP/gRPC receiver")):
            assert f"{what} not on 127.0.0.1:{sock.getsockname()[1]}" in caplog.text


def test_bad_telemetry_settings_say_what_to_use(tmp_path: Path) -> None:
    from noops.errors import UsageError

    with pytest.raises(UsageError, match="use duckdb, chdb or clickhouse://"):
        Telemetry(_settings(tmp_path, 0, telemetry_store="mysql://db/x"))
    # a URL without a host: the message names it without its password
    with pytest.raises(UsageError) as refused:
        Telemetry(_settings(tmp_path, 0, telemetry_store="clickhouse://ops:hunter2@/telemetry"))
    assert "hunter2" not in str(refused.value)
    assert "telemetry_store = 'clickhouse:/telemetry'" in str(refused.value)
    with pytest.raises(UsageError, match="otlp_port"):
        Telemetry(_settings(tmp_path, 70000))
    with pytest.raises(UsageError, match="otlp_grpc_port"):
        Telemetry(_settings(tmp_path, 0, otlp_grpc_port=-1))
    with pytest.raises(UsageError, match="retention_logs_days must be more than 0"):
        Telemetry(_settings(tmp_path, 0, retention_logs_days="0"))


def test_a_failure_half_way_through_opening_closes_what_was_opened(tmp_path: Path) -> None:
    from noops.errors import NoopsError

    (tmp_path / "telemetry").mkdir()
    (tmp_path / "telemetry" / "wal").write_text("not a directory")  # the WAL cannot be opened
    with pytest.raises((NoopsError, OSError)) as refused:
        Telemetry(_settings(tmp_path, 0))
    (tmp_path / "telemetry" / "wal").unlink()
    # the store was closed (not left to the garbage collector: the traceback in ``refused``
    # still holds the half-built object), so another process can open it right away
    script = ("import sys; from noops.observe.service import Telemetry; "
              "from noops.settings import Settings; "
              "t = Telemetry(Settings(environ={}, overrides={'home': sys.argv[1], 'otlp_port': 0,"
              " 'otlp_grpc_port': 0}));"
              " t.close()")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert refused.value is not None
