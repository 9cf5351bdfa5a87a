"""The OTLP receiver test harness (importable by name, unlike ``conftest``): an in-memory store,
a running in-thread receiver, a receiver process whose store appends JSON lines to a file.

* :class:`MemoryStore` — the fake :class:`~noops.observe.otlp.receiver.TelemetryStore`;
  ``delay_s`` makes every insert slow (to trigger backpressure).
* :class:`RunningReceiver` — what the ``otlp_server`` fixture returns.
* :class:`ReceiverProcess` — what the ``receiver_process`` fixture returns (``python -c
  RECEIVER_SCRIPT``), so a test can ``kill -9`` it and restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noops.observe.otlp.receiver import Receiver

SpanContexts = dict[str, Any]  # span name -> its opentelemetry.trace.SpanContext


class MemoryStore:
    """Thread-safe in-memory store; ``delay_s`` sleeps in every insert."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.spans: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self.metrics: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def insert_spans(self, rows: list[dict[str, Any]]) -> None:
        time.sleep(self.delay_s)
        with self._lock:
            self.spans.extend(rows)

    def insert_logs(self, rows: list[dict[str, Any]]) -> None:
        time.sleep(self.delay_s)
        with self._lock:
            self.logs.extend(rows)

    def insert_metrics(self, kind: str, rows: list[dict[str, Any]]) -> None:
        time.sleep(self.delay_s)
        with self._lock:
            self.metrics.setdefault(kind, []).extend(rows)

    def wait(self, cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError("store did not receive the expected rows in time")
            time.sleep(0.02)


def emit_spans(tracer: Any, count: int = 20) -> SpanContexts:
    """``count`` server spans ``op-<i>`` (attribute ``i``, one event ``tick``) from a real SDK
    ``tracer``; their contexts by name."""
    from opentelemetry.trace import SpanKind

    contexts = {}
    for i in range(count):
        with tracer.start_as_current_span(f"op-{i}", kind=SpanKind.SERVER, attributes={"i": i}) as s:
            s.add_event("tick", {"n": i})
            contexts[f"op-{i}"] = s.get_span_context()
    return contexts


def check_spans(store: MemoryStore, contexts: SpanContexts, service: str) -> None:
    """The spans of :func:`emit_spans` are stored with their ids, attributes, event, kind,
    service, resource (``region=eu``) and scope (``it.tracer``)."""
    spans = {r["SpanName"]: r for r in store.spans}
    for name, ctx in contexts.items():
        row = spans[name]
        assert row["TraceId"] == format(ctx.trace_id, "032x") and row["SpanId"] == format(ctx.span_id, "016x")
        assert row["SpanAttributes"] == {"i": name.split("-")[1]} and row["SpanKind"] == "Server"
        assert row["Events.Name"] == ["tick"] and row["ServiceName"] == service
        assert row["ResourceAttributes"]["region"] == "eu" and row["ScopeName"] == "it.tracer"


@dataclass
class RunningReceiver:
    url: str
    receiver: Receiver
    store: MemoryStore


RECEIVER_SCRIPT = r"""
import asyncio, json, os, sys, time
from noops.observe.otlp.receiver import Receiver, ReceiverSettings, serve

wal_dir, out_path, port, delay_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

class FileStore:
    def _write(self, table, rows):
        time.sleep(delay_s)
        with open(out_path, "a") as f:
            for r in rows:
                f.write(json.dumps({"table": table, "row": r}) + "\n")
            f.flush()
            os.fsync(f.fileno())
    def insert_spans(self, rows): self._write("traces", rows)
    def insert_logs(self, rows): self._write("logs", rows)
    def insert_metrics(self, kind, rows): self._write(kind, rows)

asyncio.run(serve(Receiver(FileStore(), wal_dir, ReceiverSettings(queue_requests=10_000)), port=port))
"""


@dataclass
class ReceiverProcess:
    proc: subprocess.Popen[bytes]
    url: str
    out_path: Path

    def rows(self, table: str) -> list[dict[str, Any]]:
        if not self.out_path.exists():
            return []
        lines = self.out_path.read_text().splitlines()
        return [json.loads(x)["row"] for x in lines if json.loads(x)["table"] == table]

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
