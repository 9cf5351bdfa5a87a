"""Real telemetry for the console tests: the OpenTelemetry SDK records an app calling an
``inventory`` service over several minutes (client span → server span, so the service map has an
edge), the OTLP protobuf encoder serialises it and noops' decoder stores it.

:func:`record_traffic` returns :class:`Facts`, what the tests check the pages against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from opentelemetry import propagate, trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from noops.observe.otlp.decode import decode_logs, decode_traces
from noops.observe.store import TelemetryStore

MS = 1_000_000


@dataclass
class Facts:
    app: str
    requests: int = 0
    failed: list[str] = field(default_factory=list)  # trace ids
    slow: list[str] = field(default_factory=list)  # trace ids of the 400 ms requests
    start_ns: int = 0
    end_ns: int = 0


class _Service:
    def __init__(self, name: str) -> None:
        resource = Resource.create({"service.name": name, "service.version": "v1"})
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider(resource=resource)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.tracer = self.tracer_provider.get_tracer(name)
        self.logs = InMemoryLogRecordExporter()
        self.logger_provider = LoggerProvider(resource=resource)
        self.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.logs))
        self.logger = self.logger_provider.get_logger(name)

    def log(self, t: int, level: str, body: str) -> None:
        self.logger.emit(timestamp=t, severity_text=level, body=body,
                         severity_number=getattr(SeverityNumber, level))

    def flush(self, store: TelemetryStore) -> None:
        body = encode_spans(self.spans.get_finished_spans()).SerializeToString()
        store.insert_spans(decode_traces(body, "application/x-protobuf").rows)
        logs = self.logs.get_finished_logs()
        if logs:
            store.insert_logs(decode_logs(encode_logs(logs).SerializeToString(),
                                          "application/x-protobuf").rows)

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.logger_provider.shutdown()


def record_traffic(store: TelemetryStore, app: str, *, minutes: int = 8,
                   per_minute: int = 30) -> Facts:
    """``per_minute`` requests to ``app`` per minute for the ``minutes`` ending a minute ago; each
    calls ``inventory``. Every 10th request fails in inventory, every 7th takes 400 ms."""
    web, inv = _Service(app), _Service("inventory")
    facts = Facts(app)
    t0 = time.time_ns() - (minutes + 1) * 60_000 * MS
    step = 60_000 * MS // per_minute
    facts.start_ns = t0
    try:
        for i in range(minutes * per_minute):
            start = t0 + i * step
            slow, failed = i % 7 == 3, i % 10 == 5
            cost_ms = 400 if slow else 12 + i % 9
            root = web.tracer.start_span("GET /items", kind=SpanKind.SERVER, start_time=start,
                                         attributes={"http.route": "/items",
                                                     "http.request.method": "GET"})
            trace_id = f"{root.get_span_context().trace_id:032x}"
            with trace.use_span(root, end_on_exit=False):
                web.log(start + MS // 2, "INFO", f"listing items for request {i}")
                client = web.tracer.start_span("GET inventory", kind=SpanKind.CLIENT,
                                               start_time=start + MS,
                                               attributes={"server.address": "127.0.0.1"})
                with trace.use_span(client, end_on_exit=False):
                    carrier: dict[str, str] = {}
                    propagate.inject(carrier)
                srv = inv.tracer.start_span(
                    "GET /stock", kind=SpanKind.SERVER, context=propagate.extract(carrier),
                    start_time=start + 2 * MS,
                    attributes={"http.route": "/stock", "db.shard": "cold" if slow else "warm"})
                with trace.use_span(srv, end_on_exit=False):
                    if failed:
                        srv.record_exception(KeyError(f"sku {i}"), timestamp=start + 3 * MS)
                        srv.set_status(Status(StatusCode.ERROR, f"sku {i} missing"))
                        inv.log(start + 3 * MS, "ERROR", f"stock lookup failed for sku {i}")
                srv.end(end_time=start + (2 + cost_ms) * MS)
                if failed:
                    client.set_status(Status(StatusCode.ERROR))
                    root.set_status(Status(StatusCode.ERROR))
                    facts.failed.append(trace_id)
                client.end(end_time=start + (3 + cost_ms) * MS)
            root.end(end_time=start + (5 + cost_ms) * MS)
            if slow:
                facts.slow.append(trace_id)
            facts.requests += 1
            facts.end_ns = start
        inv.flush(store)
        web.flush(store)
    finally:
        web.close()
        inv.close()
    return facts
