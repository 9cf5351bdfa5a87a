"""A test app that exports OpenTelemetry spans and logs explicitly (no auto-instrumentation).

The exporters take everything from the environment the platform sets (endpoint, protocol,
service name, resource attributes), so what reaches the store shows what the runtime gave.
Each request to /work flushes before answering, so a 200 from /work means the receiver has
acknowledged the span and the log record.
"""
import http.client
import json
import logging
import os
import socket
import sys
import time

from flask import Flask, jsonify
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

resource = Resource.create()
tracer_provider = TracerProvider(resource=resource)
logger_provider = LoggerProvider(resource=resource)
if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
    tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter()))
tracer = tracer_provider.get_tracer("otelapp")
otel_log = logging.getLogger("otelapp.otel")
otel_log.addHandler(LoggingHandler(logger_provider=logger_provider))
otel_log.setLevel(logging.INFO)
otel_log.propagate = False

app = Flask(__name__)


@app.get("/healthz")
def healthz():
    return "ok"


@app.get("/env")
def env():
    return jsonify({k: v for k, v in os.environ.items() if k.startswith("OTEL_")})


@app.get("/otlp-port")
def otlp_port():
    """Whether something listens on 127.0.0.1:4318 inside the instance's namespace."""
    try:
        socket.create_connection(("127.0.0.1", 4318), timeout=2).close()
        return "open"
    except OSError:
        return "closed"


@app.get("/otlp-raw")
def otlp_raw():
    """POST an empty export request to 127.0.0.1:4318 and say how it was answered."""
    conn = http.client.HTTPConnection("127.0.0.1", 4318, timeout=5)
    try:
        conn.request("POST", "/v1/traces", body=b"",
                     headers={"Content-Type": "application/x-protobuf"})
        resp = conn.getresponse()
        return jsonify({"status": resp.status, "retry_after": resp.getheader("Retry-After")})
    finally:
        conn.close()


@app.get("/otlp-forged/<trace_id>")
def otlp_forged(trace_id):
    """Export one span claiming to come from another app's instance, say how it was answered."""
    now = time.time_ns()
    claims = {"service.name": "bank", "noops.instance.id": "bank-web-1",
              "host.name": "claimed-host"}
    body = json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": k, "value": {"stringValue": v}}
                                    for k, v in claims.items()]},
        "scopeSpans": [{"spans": [{
            "traceId": trace_id, "spanId": trace_id[:16], "name": "forged", "kind": 2,
            "startTimeUnixNano": str(now - 1000), "endTimeUnixNano": str(now)}]}]}]})
    conn = http.client.HTTPConnection("127.0.0.1", 4318, timeout=5)
    try:
        conn.request("POST", "/v1/traces", body=body,
                     headers={"Content-Type": "application/json"})
        return jsonify({"status": conn.getresponse().status})
    finally:
        conn.close()


@app.get("/work/<marker>")
def work(marker):
    with tracer.start_as_current_span("work", kind=trace.SpanKind.SERVER) as span:
        span.set_attribute("marker", marker)
        ctx = span.get_span_context()
        trace_id, span_id = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
        otel_log.warning("otel record %s", marker)
        print(json.dumps({"msg": f"json line {marker}", "level": "error", "trace_id": trace_id,
                          "span_id": span_id, "order": 42}), flush=True)
        print(f"plain stderr line {marker}", file=sys.stderr, flush=True)
    return jsonify({"trace_id": trace_id, "span_id": span_id})
