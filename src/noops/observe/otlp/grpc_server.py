"""OTLP/gRPC: the three ``Export`` methods, answered by the same :class:`Receiver` as OTLP/HTTP.

A request goes through :meth:`Receiver.accept` like a ``POST /v1/…`` with a protobuf body: the
same decoders, the same write-ahead log (an ``OK`` means the items are durable), the same queue.
gRPC itself inflates ``gzip`` messages and refuses one larger than
``max_decompressed_bytes`` once inflated (``RESOURCE_EXHAUSTED``, before the receiver sees it).
Answers follow the OTLP specification ("OTLP/gRPC Response"):

* accepted: the ``Export…ServiceResponse``, with ``partial_success`` when items were rejected;
* undecodable, or too much data once decoded: ``INVALID_ARGUMENT`` (not retryable) saying why;
* queue full: ``RESOURCE_EXHAUSTED``, write-ahead log unwritable: ``UNAVAILABLE``; both carry a
  ``google.rpc.RetryInfo`` with the delay an HTTP sender gets in ``Retry-After``, in the status
  details (``grpc-status-details-bin``) and on its own (``google.rpc.retryinfo-bin``, which
  the Python SDK reads), so senders wait that long before retrying.

Senders on the port are not identified (as on the TCP port of OTLP/HTTP): apps in the
platform's namespaces report over OTLP/HTTP through their monitor.
"""

from __future__ import annotations

import grpc
from grpc import aio

from noops.observe.otlp.decode import CONTENT_TYPE_PROTOBUF
from noops.observe.otlp.receiver import Outcome, Receiver, _varint

__all__ = ["SERVICES", "start_grpc"]

SERVICES = {
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
}
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_RETRY_INFO = b"type.googleapis.com/google.rpc.RetryInfo"


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (numbers below 16)."""
    return bytes(((number << 3) | 2,)) + _varint(len(payload)) + payload


def retry_info(outcome: Outcome) -> bytes:
    """``google.rpc.RetryInfo`` {retry_delay: Duration {seconds}} as protobuf."""
    return _field(1, b"\x08" + _varint(outcome.retry_after_s or 0))


def status_details(outcome: Outcome) -> bytes:
    """``google.rpc.Status`` {code, message, details: [Any(RetryInfo)]} as protobuf."""
    details = _field(1, _RETRY_INFO) + _field(2, retry_info(outcome))  # Any
    return (b"\x08" + _varint(outcome.grpc_code) + _field(2, outcome.message.encode())
            + _field(3, details))


def _export(receiver: Receiver, signal: str) -> grpc.RpcMethodHandler[bytes, bytes]:
    async def export(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        outcome = await receiver.accept(signal, request)
        if outcome.result is not None:
            return receiver.response_body(CONTENT_TYPE_PROTOBUF, signal, outcome.result)
        metadata: tuple[tuple[str, bytes], ...] = ()
        if outcome.retry_after_s is not None:
            # the rich status (what the Go and Java SDKs read) and the bare RetryInfo (what
            # the Python SDK reads)
            metadata = (("grpc-status-details-bin", status_details(outcome)),
                        ("google.rpc.retryinfo-bin", retry_info(outcome)))
        await context.abort(_CODES[outcome.grpc_code], outcome.message, trailing_metadata=metadata)
        raise AssertionError("abort returned")  # pragma: no cover - abort always raises

    # no (de)serializers: the message bytes go to the receiver's decoders as they came
    return grpc.unary_unary_rpc_method_handler(export)


async def start_grpc(receiver: Receiver, host: str, port: int) -> tuple[aio.Server, int]:
    """Serve OTLP/gRPC for ``receiver`` on ``host:port`` (0: a free port); return the started
    server and its port. Raises ``OSError`` when the address cannot be bound."""
    server = aio.server(options=[
        ("grpc.max_receive_message_length", receiver.settings.max_decompressed_bytes),
        ("grpc.so_reuseport", 0),  # a port in use is an error, not a second listener
    ])
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler(service, {"Export": _export(receiver, signal)})
        for signal, service in SERVICES.items()])
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:  # grpcio raises this when the bind fails
        raise OSError(f"cannot listen on {host}:{port} for OTLP/gRPC ({exc})") from exc
    if not bound:  # older grpcio: 0 instead of an exception
        raise OSError(f"cannot listen on {host}:{port} for OTLP/gRPC")
    await server.start()
    return server, bound
