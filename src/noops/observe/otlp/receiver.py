"""The OTLP/HTTP receiver: ``POST /v1/{traces,logs,metrics}`` → WAL → bounded queue → store.

A request is answered ``200`` only after its accepted items are fsync'd in the :class:`WAL`
(requests that arrive together share one fsync: group commit);
a writer task then drains a bounded queue into the :class:`TelemetryStore` in batches and
checkpoints the WAL up to the highest sequence below which everything is stored. On start the
WAL is replayed into the store, so what was acknowledged before a crash is not lost.

Answers (the body always in the request's encoding, protobuf or JSON):

* ``200`` + ``partial_success`` when some items were rejected (or warnings, rejected 0);
* ``Content-Encoding`` ``gzip`` and ``deflate`` are accepted, inflated under a cap;
* ``400`` undecodable body (``google.rpc.Status``), ``415`` other content types or encodings,
  ``413`` body over ``max_body_bytes``, gzip that inflates over ``max_decompressed_bytes``, or
  items that repeat too much resource data (``decode.MAX_SHARED_CHARS``);
* ``429`` + ``Retry-After`` when the queue is full (never accept-and-drop), ``503`` +
  ``Retry-After`` when the WAL cannot be written.

:meth:`Receiver.accept` is that path without HTTP (an :class:`Outcome`); OTLP/gRPC
(:mod:`.grpc_server`) answers through it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import anyio.to_thread
from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from noops.observe.otlp.decode import (
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_PROTOBUF,
    DecodeResult,
    OtlpDecodeError,
    OtlpTooLargeError,
    decode_logs,
    decode_metrics,
    decode_traces,
)
from noops.observe.otlp.identity import stamp
from noops.observe.otlp.native import AVAILABLE as NATIVE_TRACES
from noops.observe.otlp.native import decode_traces as decode_traces_native
from noops.observe.otlp.wal import WAL, WalError

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "Receiver",
    "ReceiverSettings",
    "TelemetryStore",
    "serve",
    "serve_unix",
]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4318
Row = dict[str, Any]
MetricKind = Literal["gauge", "sum", "histogram"]


class TelemetryStore(Protocol):
    """Where decoded rows go. Contract for implementations:

    * methods are synchronous and are called from one worker thread at a time;
    * returning means the rows are committed (the WAL is checkpointed past them right after);
    * raising means nothing (or an idempotently re-insertable part) was stored: the same batch
      is retried after a back-off, and again after a restart (at-least-once delivery);
    * rows are owned by the store once passed in (the receiver does not reuse them);
    * return values are ignored (``noops.observe.store`` returns the row count).

    A store that also has ``insert_spans_arrow(table)`` (both ``noops.observe.store`` backends)
    gets protobuf traces as ``pyarrow.Table`` batches from the native decoder
    (:mod:`noops.observe.otlp.native`) when it is built, rows otherwise.
    """

    def insert_spans(self, rows: list[Row]) -> object: ...

    def insert_logs(self, rows: list[Row]) -> object: ...

    def insert_metrics(self, kind: MetricKind, rows: list[Row]) -> object:
        """``kind`` is ``gauge``, ``sum`` or ``histogram`` (the ``otel_metrics_<kind>`` table)."""


@dataclass(frozen=True)
class ReceiverSettings:
    """Limits and sizes; every value has its unit in its name."""

    max_body_bytes: int = 16 * 1024 * 1024  # as sent (compressed)
    max_decompressed_bytes: int = 64 * 1024 * 1024  # the OTLP spec's recommended cap
    queue_requests: int = 256  # accepted requests waiting for the store
    batch_rows: int = 5000  # rows per store insert (ClickHouse's advice)
    retry_after_s: int = 1
    insert_retry_s: float = 0.5
    drain_s: float = 10.0  # on shutdown, time given to the writer to empty the queue


_DECODERS: dict[str, Callable[[bytes, str], DecodeResult]] = {
    "traces": decode_traces,
    "logs": decode_logs,
    "metrics": decode_metrics,
}
_RESPONSES: dict[str, tuple[type[Message], str]] = {
    "traces": (ExportTraceServiceResponse, "rejected_spans"),
    "logs": (ExportLogsServiceResponse, "rejected_log_records"),
    "metrics": (ExportMetricsServiceResponse, "rejected_data_points"),
}
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # deflate = zlib stream (RFC 9110)
_TAGS = {CONTENT_TYPE_PROTOBUF: b"p", CONTENT_TYPE_JSON: b"j"}
_TAG_TYPES = {v: k for k, v in _TAGS.items()}
# google.rpc.Code values for the Status body
_GRPC_INVALID_ARGUMENT, _GRPC_RESOURCE_EXHAUSTED, _GRPC_UNAVAILABLE = 3, 8, 14


@dataclass(frozen=True)
class Outcome:
    """What became of one export request, whatever carried it (HTTP here, gRPC in
    :mod:`.grpc_server`): ``status`` is the HTTP answer (200, 400, 413, 429 or 503),
    ``grpc_code`` the ``google.rpc.Code`` it maps to, ``retry_after_s`` set when the sender
    should retry (429/503), ``result`` the decoded request when it was accepted."""

    status: int
    grpc_code: int = 0
    message: str = ""
    retry_after_s: int | None = None
    result: DecodeResult | None = None


@dataclass
class _Item:
    seq: int
    signal: str
    result: DecodeResult


@dataclass
class _Stats:
    accepted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_DECODERS, 0))
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_DECODERS, 0))
    stored_rows: int = 0
    throttled: int = 0
    bad_requests: int = 0
    insert_errors: int = 0
    inserts: int = 0
    insert_s_total: float = 0.0
    insert_s_max: float = 0.0
    replayed_records: int = 0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _status_body(media: str, code: int, message: str) -> bytes:
    """A ``google.rpc.Status`` (code, message; no details) in protobuf or JSON."""
    if media == CONTENT_TYPE_JSON:
        return json.dumps({"code": code, "message": message}).encode()
    msg = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(msg)) + msg


class Receiver:
    """The receiver's state and its Starlette :attr:`app` (lifespan replays and starts the writer)."""

    def __init__(
        self, store: TelemetryStore, wal_dir: str | Path, settings: ReceiverSettings | None = None,
        senders: Callable[[int], Mapping[str, str] | None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or ReceiverSettings()
        # pid of a Unix-socket peer → the resource attributes the platform vouches for (see
        # :mod:`.identity`); requests from unknown peers, and over TCP, are stored as sent
        self.senders = senders
        self.wal = WAL(wal_dir)
        self._queue: asyncio.Queue[_Item] | None = None
        self._reserved = 0
        self._wal_lock: asyncio.Lock | None = None
        self._wal_pending: list[tuple[str, bytes, asyncio.Future[int]]] = []
        self._inflight: set[int] = set()
        self._last_seq = 0
        self._writer: asyncio.Task[None] | None = None
        self._stats = _Stats()
        self._decoders = dict(_DECODERS)
        if NATIVE_TRACES and callable(getattr(store, "insert_spans_arrow", None)):
            self._decoders["traces"] = decode_traces_native
        routes = [Route(f"/v1/{sig}", self._endpoint(sig), methods=["POST"]) for sig in _DECODERS]
        self.app = Starlette(routes=routes, lifespan=self._lifespan)

    # -- lifecycle ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        """Replay the WAL into the store, then start the writer task."""
        self._queue = asyncio.Queue(self.settings.queue_requests)
        self._wal_lock = asyncio.Lock()
        self._last_seq = await anyio.to_thread.run_sync(self._replay)
        self._writer = asyncio.create_task(self._write_loop(), name="otlp-store-writer")

    def _replay(self) -> int:
        last = self.wal.last_checkpoint
        for seq, signal, payload in self.wal.replay():
            media = _TAG_TYPES.get(payload[:1])
            decode = self._decoders.get(signal)
            if media is None or decode is None:
                log.warning("WAL record %d has an unknown signal or encoding; skipped", seq)
                continue
            result = decode(payload[1:], media)
            self._insert([_Item(seq, signal, result)])
            self._stats.replayed_records += 1
            last = seq
        self.wal.checkpoint(last)
        return last

    async def stop(self) -> None:
        """Let the writer drain the queue (up to ``drain_s``), then stop it and close the WAL."""
        if self._queue is not None and self._writer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), self.settings.drain_s)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        self.wal.close()

    # -- store writer ---------------------------------------------------------------------------

    def _insert(self, items: list[_Item]) -> int:
        spans: list[Row] = []
        span_tables: list[Any] = []
        logs: list[Row] = []
        metrics: dict[str, list[Row]] = {}
        for it in items:
            if it.signal == "traces":
                if it.result.table is not None:
                    span_tables.append(it.result.table)
                spans.extend(it.result.rows)
            elif it.signal == "logs":
                logs.extend(it.result.rows)
            else:
                for kind, rows in it.result.by_kind.items():
                    metrics.setdefault(kind, []).extend(rows)
        t0 = time.perf_counter()
        if spans:
            self.store.insert_spans(spans)
        if span_tables:
            import pyarrow as pa  # type: ignore[import-untyped]  # only with the native decoder

            cast(Any, self.store).insert_spans_arrow(pa.concat_tables(span_tables))
        if logs:
            self.store.insert_logs(logs)
        for kind, rows in metrics.items():
            self.store.insert_metrics(cast(MetricKind, kind), rows)
        took = time.perf_counter() - t0
        st = self._stats
        st.inserts += 1
        st.insert_s_total += took
        st.insert_s_max = max(st.insert_s_max, took)
        n = len(spans) + sum(int(t.num_rows) for t in span_tables) + len(logs)
        n += sum(map(len, metrics.values()))
        st.stored_rows += n
        return n

    async def _write_loop(self) -> None:
        assert self._queue is not None
        q = self._queue
        while True:
            batch = [await q.get()]
            rows = batch[0].result.count
            while rows < self.settings.batch_rows and not q.empty():
                batch.append(q.get_nowait())
                rows += batch[-1].result.count
            while True:
                try:
                    await anyio.to_thread.run_sync(self._insert, batch)
                    break
                except Exception:
                    self._stats.insert_errors += 1
                    log.exception("store insert failed; retrying in %.1fs", self.settings.insert_retry_s)
                    await asyncio.sleep(self.settings.insert_retry_s)
            for it in batch:
                self._inflight.discard(it.seq)
            # Everything below the oldest in-flight record is stored; appends are serialised.
            upto = min(self._inflight) - 1 if self._inflight else self._last_seq
            try:
                await anyio.to_thread.run_sync(self.wal.checkpoint, upto)
            except (OSError, WalError):
                log.exception("WAL checkpoint failed (records will be replayed again)")
            for _ in batch:
                q.task_done()

    # -- HTTP -----------------------------------------------------------------------------------

    def _endpoint(self, signal: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            return await self._handle(request, signal)

        return endpoint

    def _error(self, media: str, status: int, grpc_code: int, message: str, **headers: str) -> Response:
        return Response(_status_body(media, grpc_code, message), status, headers=headers, media_type=media)

    async def _read_body(self, request: Request) -> bytes | None:
        cap = self.settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _inflate(self, body: bytes, encoding: str) -> bytes | None:
        """Inflate with the output capped; ``None`` means over the cap (a gzip bomb)."""
        cap = self.settings.max_decompressed_bytes
        d = zlib.decompressobj(_WBITS[encoding])
        try:
            out = d.decompress(body, cap + 1)
        except zlib.error as exc:
            raise OtlpDecodeError(f"body is not valid {encoding}: {exc}") from exc
        if len(out) > cap or d.unconsumed_tail:
            return None
        if not d.eof:
            raise OtlpDecodeError(f"{encoding} body is truncated")
        return out

    async def _handle(self, request: Request, signal: str) -> Response:
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media not in _TAGS:
            return self._error(CONTENT_TYPE_JSON, 415, _GRPC_INVALID_ARGUMENT,
                               f"unsupported Content-Type {media!r}: use {CONTENT_TYPE_PROTOBUF} or "
                               f"{CONTENT_TYPE_JSON}")  # fmt: skip
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "", *_WBITS):
            return self._error(
                media, 415, _GRPC_INVALID_ARGUMENT, f"unsupported Content-Encoding {encoding!r}"
            )
        cfg = self.settings
        body = await self._read_body(request)
        if body is None:
            self._stats.bad_requests += 1
            return self._error(media, 413, _GRPC_INVALID_ARGUMENT,
                               f"body over {cfg.max_body_bytes} bytes sent")  # fmt: skip
        pid = request.scope.get("state", {}).get(PEER_PID)
        verified = self.senders(pid) if self.senders is not None and pid else None
        outcome = await self.accept(signal, body, media, encoding, verified)
        if outcome.result is None:
            retry = {} if outcome.retry_after_s is None else {"Retry-After": str(outcome.retry_after_s)}
            return self._error(media, outcome.status, outcome.grpc_code, outcome.message, **retry)
        return Response(self.response_body(media, signal, outcome.result), 200, media_type=media)

    async def accept(self, signal: str, body: bytes, media: str = CONTENT_TYPE_PROTOBUF,
                     encoding: str = "identity", verified: Mapping[str, str] | None = None,
                     ) -> Outcome:
        """Inflate, decode, make durable and queue one export request's ``body``; the
        answer, whatever protocol carried the request. ``verified``: what the platform vouches
        for about the sender (:mod:`.identity`)."""
        cfg = self.settings
        too_big = f"body over {cfg.max_decompressed_bytes} bytes decompressed"
        try:
            if encoding in _WBITS:
                inflated = await anyio.to_thread.run_sync(self._inflate, body, encoding)
                if inflated is None:
                    self._stats.bad_requests += 1
                    return Outcome(413, _GRPC_INVALID_ARGUMENT, too_big)
                body = inflated
            stored, result = await anyio.to_thread.run_sync(self._decode, signal, body, media,
                                                            verified)
        except OtlpDecodeError as exc:  # 400, or 413 for a batch that expands too far
            self._stats.bad_requests += 1
            return Outcome(exc.http_status, _GRPC_INVALID_ARGUMENT, str(exc))
        if result.count:
            refused = await self._enqueue(signal, media, stored, result)
            if refused is not None:
                return refused
        self._stats.accepted[signal] += result.count
        self._stats.rejected[signal] += result.rejected
        return Outcome(200, result=result)

    def _decode(self, signal: str, body: bytes, media: str, verified: Mapping[str, str] | None
                ) -> tuple[bytes, DecodeResult]:
        """The body as it is stored (stamped with ``verified``, see :mod:`.identity`) and what
        it decodes to."""
        if verified:
            body = stamp(body, media, verified)
            if len(body) > self.settings.max_decompressed_bytes:
                raise OtlpTooLargeError(f"body over {self.settings.max_decompressed_bytes} bytes "
                                        "once the sender's identity is added")
        return body, self._decoders[signal](body, media)

    async def _enqueue(self, signal: str, media: str, body: bytes, result: DecodeResult) -> Outcome | None:
        assert self._queue is not None and self._wal_lock is not None, "receiver not started"
        retry = self.settings.retry_after_s
        if self._queue.qsize() + self._reserved >= self.settings.queue_requests:
            self._stats.throttled += 1
            return Outcome(429, _GRPC_RESOURCE_EXHAUSTED, "the telemetry store is behind; retry later",
                           retry)  # fmt: skip
        self._reserved += 1  # a slot is ours before we await, so the queue can never overflow
        try:
            seq = await self._wal_append(signal, _TAGS[media] + body)
        except (WalError, OSError):
            log.exception("WAL append failed")
            self._stats.throttled += 1
            return Outcome(503, _GRPC_UNAVAILABLE, "cannot persist telemetry right now", retry)
        finally:
            self._reserved -= 1
        self._queue.put_nowait(_Item(seq, signal, result))
        return None

    async def _wal_append(self, signal: str, payload: bytes) -> int:
        """Group commit: requests arriving while a WAL write is in progress are written together
        by the next one, with one fsync; each gets its own sequence number once durable."""
        assert self._wal_lock is not None
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._wal_pending.append((signal, payload, fut))
        try:
            async with self._wal_lock:
                if not fut.done():  # else an earlier holder of the lock committed it
                    batch, self._wal_pending = self._wal_pending, []
                    # Shielded: if this request is cancelled, the others in its batch still
                    # get their answer.
                    await asyncio.shield(self._wal_commit(batch))
            return await fut
        except asyncio.CancelledError:
            # the client is gone: its record is never acknowledged nor queued, so it must not
            # hold back the WAL checkpoint (a batch still to be written skips it)
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled() and fut.exception() is None:
                self._inflight.discard(fut.result())
            raise

    async def _wal_commit(self, batch: list[tuple[str, bytes, asyncio.Future[int]]]) -> None:
        try:
            seqs = await anyio.to_thread.run_sync(
                self.wal.append_batch, [(sig, data) for sig, data, _ in batch])
        except (WalError, OSError) as exc:
            for *_, f in batch:
                if not f.done():
                    f.set_exception(exc)
            return
        for (*_, f), seq in zip(batch, seqs, strict=True):
            if f.done():  # its request was cancelled while it waited: never acknowledged
                continue
            self._inflight.add(seq)
            f.set_result(seq)
        self._last_seq = max(self._last_seq, seqs[-1])

    @staticmethod
    def response_body(media: str, signal: str, result: DecodeResult) -> bytes:
        """The ``Export…ServiceResponse`` for an accepted request, with its partial success."""
        cls, field_name = _RESPONSES[signal]
        msg = cls()
        if result.rejected or result.errors:
            ps = getattr(msg, "partial_success")  # noqa: B009 - three response types, one field name
            setattr(ps, field_name, result.rejected)
            ps.error_message = "; ".join(result.errors)
        if media == CONTENT_TYPE_JSON:
            return json_format.MessageToJson(msg, indent=None).encode()
        return msg.SerializeToString()

    # -- introspection --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: accepted/rejected items per signal, queue depth, throttling, insert latency."""
        st = self._stats
        return {
            "accepted": dict(st.accepted),
            "rejected": dict(st.rejected),
            "queue_depth": self._queue.qsize() if self._queue else 0,
            "queue_capacity": self.settings.queue_requests,
            "throttled": st.throttled,
            "bad_requests": st.bad_requests,
            "stored_rows": st.stored_rows,
            "inserts": st.inserts,
            "insert_errors": st.insert_errors,
            "insert_latency_s_mean": st.insert_s_total / st.inserts if st.inserts else 0.0,
            "insert_latency_s_max": st.insert_s_max,
            "replayed_records": st.replayed_records,
            "wal_checkpoint": self.wal.last_checkpoint,
        }


async def serve(receiver: Receiver, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Run ``receiver.app`` under uvicorn (uvloop + httptools) until cancelled or signalled."""
    import uvicorn

    config = uvicorn.Config(receiver.app, host=host, port=port, loop="uvloop", http="httptools",
                            lifespan="on", log_level="warning", access_log=False)  # fmt: skip
    await uvicorn.Server(config).serve()


PEER_PID = "noops.peer_pid"
"""The request's ``scope["state"]`` key holding the Unix-socket peer's pid (``SO_PEERCRED``)."""


def peer_protocol() -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, recording each connection's peer pid in its requests'
    ``scope["state"]`` (the kernel's word, which a sender cannot choose)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class PeerCredentials(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            pid = None
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family == socket.AF_UNIX:
                with contextlib.suppress(OSError):
                    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
                    pid = _UCRED.unpack(raw)[0]
            self.app_state = {**self.app_state, PEER_PID: pid}

    return PeerCredentials


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


async def serve_unix(receiver: Receiver, path: str | Path) -> None:
    """Run ``receiver.app`` (the same OTLP/HTTP app) on the Unix socket ``path`` until cancelled.

    A stale socket file left by a crash is replaced; the socket is made ``0o660``.
    """
    import uvicorn

    sock = Path(path)
    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)
    config = uvicorn.Config(receiver.app, uds=str(sock), loop="uvloop", http=peer_protocol(),
                            lifespan="on", log_level="warning", access_log=False)  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if sock.exists():
        sock.chmod(0o660)
    await task
