"""OTLP/HTTP and OTLP/gRPC (:mod:`.grpc_server`) ingestion: decode export requests into
ClickHouse-exporter-shaped rows (:mod:`.decode`; protobuf traces straight to an Arrow table by
:mod:`.native`), make them durable (:mod:`.wal`) and hand them to a store (:mod:`.receiver`),
with what the platform knows about the sender written over its claims (:mod:`.identity`)."""

from noops.observe.otlp.decode import (
    DecodeResult,
    OtlpDecodeError,
    decode_logs,
    decode_metrics,
    decode_traces,
)
from noops.observe.otlp.native import decode_traces_native
from noops.observe.otlp.receiver import (
    Receiver,
    ReceiverSettings,
    TelemetryStore,
    peer_protocol,
    serve,
    serve_unix,
)
from noops.observe.otlp.wal import WAL, WalError

__all__ = [
    "WAL",
    "DecodeResult",
    "OtlpDecodeError",
    "Receiver",
    "ReceiverSettings",
    "TelemetryStore",
    "WalError",
    "decode_logs",
    "decode_metrics",
    "decode_traces",
    "decode_traces_native",
    "peer_protocol",
    "serve",
    "serve_unix",
]
