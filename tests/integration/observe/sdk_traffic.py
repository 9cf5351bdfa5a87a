"""Real telemetry for the APM API and CLI tests: the OpenTelemetry SDK records a two-service
shop (``web`` calls ``shop`` through the noops egress endpoint), the OTLP protobuf encoder
serialises it, noops' decoder turns it into rows, and the rows go into a store.

:func:`record_shop_traffic` returns :class:`Traffic`, the facts the tests check against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from noops.observe.store import TelemetryStore
from sdk_service import SdkService

MS = 1_000_000
ROUTES = ("GET /checkout", "GET /cart", "GET /")


@dataclass
class Traffic:
    requests: int
    failed: list[int] = field(default_factory=list)  # request numbers whose payment failed
    slow: list[int] = field(default_factory=list)  # request numbers paid through "slowpay"
    trace_ids: dict[int, str] = field(default_factory=dict)


def record_shop_traffic(store: TelemetryStore, requests: int = 40) -> Traffic:
    """``requests`` checkouts ending now: every 4th payment fails (ValueError, error log), every
    5th goes through the slow provider (300 ms instead of ~20 ms). The shop's batch is stored
    before the web's, as if its exporter flushed first."""
    web, shop = SdkService("web", "1.4.0"), SdkService("shop", "1.4.0")
    facts = Traffic(requests)
    t0 = time.time_ns() - (requests * 100 + 60_000) * MS
    try:
        for i in range(requests):
            start = t0 + i * 100 * MS
            slow, failed = i % 5 == 0, i % 4 == 0
            pay_ms = 300 if slow else 20 + i % 7
            root = web.tracer.start_span(ROUTES[i % 3], kind=SpanKind.SERVER, start_time=start,
                                         attributes={"http.route": ROUTES[i % 3]})
            facts.trace_ids[i] = f"{root.get_span_context().trace_id:032x}"
            with trace.use_span(root, end_on_exit=False):
                web.log(start + MS // 2, "INFO", f"checkout {i} started", **{"order.id": str(i)})
                client = web.tracer.start_span(
                    "POST shop", kind=SpanKind.CLIENT, start_time=start + MS,
                    attributes={"server.address": "127.0.0.1", "server.port": 15001})
                with trace.use_span(client, end_on_exit=False):
                    carrier: dict[str, str] = {}
                    propagate.inject(carrier)
                pay = shop.tracer.start_span(
                    "POST /pay", kind=SpanKind.SERVER, context=propagate.extract(carrier),
                    start_time=start + 2 * MS,
                    attributes={"http.route": "/pay",
                                "payment.provider": "slowpay" if slow else "quickpay"})
                with trace.use_span(pay, end_on_exit=False):
                    if failed:
                        exc = ValueError(f"card {4000 + i} declined")
                        pay.record_exception(exc, timestamp=start + 3 * MS)
                        pay.set_status(Status(StatusCode.ERROR, str(exc)))
                        shop.log(start + 3 * MS, "ERROR", f"payment failed: card {4000 + i} "
                                 "declined", **{"order.id": str(i)})
                        facts.failed.append(i)
                    if slow:
                        facts.slow.append(i)
                pay.end(end_time=start + (2 + pay_ms) * MS)
                if failed:
                    client.set_status(Status(StatusCode.ERROR))
                client.end(end_time=start + (3 + pay_ms) * MS)
            root.end(end_time=start + (5 + pay_ms) * MS)
        shop.flush(store)
        web.flush(store)
    finally:
        web.close()
        shop.close()
    return facts
