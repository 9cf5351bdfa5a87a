"""A service recorded by the real OpenTelemetry SDK, for tests that need real telemetry in a store:
spans and log records go to in-memory exporters, then through the OTLP protobuf encoder and
noops' decoders into a :class:`~noops.observe.store.TelemetryStore`."""

from __future__ import annotations

from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from noops.observe.otlp.decode import decode_logs, decode_traces
from noops.observe.store import TelemetryStore


class SdkService:
    def __init__(self, name: str, version: str) -> None:
        resource = Resource.create({"service.name": name, "service.version": version})
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider(resource=resource)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.tracer = self.tracer_provider.get_tracer(name)
        self.logs = InMemoryLogRecordExporter()
        self.logger_provider = LoggerProvider(resource=resource)
        self.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.logs))
        self.logger = self.logger_provider.get_logger(name)

    def log(self, t: int, level: str, body: str, **attrs: str) -> None:
        """A log record in the current span's context (so it carries its trace and span ids)."""
        self.logger.emit(timestamp=t, severity_text=level, body=body, attributes=attrs or None,
                         severity_number=getattr(SeverityNumber, level))

    def flush(self, store: TelemetryStore) -> None:
        body = encode_spans(self.spans.get_finished_spans()).SerializeToString()
        store.insert_spans(decode_traces(body, "application/x-protobuf").rows)
        logs = self.logs.get_finished_logs()
        if logs:
            result = decode_logs(encode_logs(logs).SerializeToString(), "application/x-protobuf")
            store.insert_logs(result.rows)

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.logger_provider.shutdown()
