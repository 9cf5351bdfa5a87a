"""Real telemetry for the console tests: the OpenTelemetry SDK records an app calling an
``inventory`` service over several minutes (client span → server span, so the service map has an
edge), the OTLP protobuf encoder serialises it and noops' decoder stores it.

:func:`record_traffic` returns :class:`Facts`, what the tests check the pages against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from noops.observe.store import TelemetryStore
from sdk_service import SdkService

MS = 1_000_000


@dataclass
class Facts:
    app: str
    requests: int = 0
    failed: list[str] = field(default_factory=list)  # trace ids
    slow: list[str] = field(default_factory=list)  # trace ids of the 400 ms requests
    start_ns: int = 0
    end_ns: int = 0


def record_traffic(store: TelemetryStore, app: str, *, minutes: int = 8,
                   per_minute: int = 30) -> Facts:
    """``per_minute`` requests to ``app`` per minute for the ``minutes`` ending a minute ago; each
    calls ``inventory``. Every 10th request fails in inventory, every 7th takes 400 ms."""
    web, inv = SdkService(app, "v1"), SdkService("inventory", "v1")
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
