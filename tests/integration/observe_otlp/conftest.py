"""Harness for the OTLP receiver: an in-memory store, a receiver on a real socket, a receiver process.

* :class:`MemoryStore` — the fake :class:`~noops.observe.otlp.receiver.TelemetryStore`;
  ``delay_s`` makes every insert slow (to trigger backpressure).
* ``otlp_server`` — factory fixture: ``otlp_server(store, **settings) -> RunningReceiver`` runs
  ``Receiver.app`` under uvicorn in a thread on 127.0.0.1:<free port>; stopped at teardown.
* ``receiver_process`` — factory fixture starting ``python -c RECEIVER_SCRIPT`` with a store
  that appends rows as JSON lines (fsync'd) to a file, so a test can ``kill -9`` it and restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from helpers import free_port
from noops.observe.otlp.receiver import Receiver, ReceiverSettings


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


@dataclass
class RunningReceiver:
    url: str
    receiver: Receiver
    store: MemoryStore


@pytest.fixture
def otlp_server(tmp_path: Path) -> Iterator[Callable[..., RunningReceiver]]:
    started: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(store: MemoryStore | None = None, **settings: Any) -> RunningReceiver:
        store = store or MemoryStore()
        rec = Receiver(store, tmp_path / f"wal{len(started)}", ReceiverSettings(**settings))
        port = free_port()
        config = uvicorn.Config(
            rec.app,
            host="127.0.0.1",
            port=port,
            lifespan="on",
            log_level="warning",
            loop="asyncio",
            http="httptools",
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.01)
        started.append((server, thread))
        return RunningReceiver(f"http://127.0.0.1:{port}", rec, store)

    yield start
    for server, thread in started:
        server.should_exit = True
        thread.join(15)


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


@pytest.fixture
def receiver_process(tmp_path: Path) -> Iterator[Callable[[float], ReceiverProcess]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(delay_s: float = 0.0) -> ReceiverProcess:
        port = free_port()
        out = tmp_path / "store.jsonl"
        proc = subprocess.Popen(
            [sys.executable, "-c", RECEIVER_SCRIPT, str(tmp_path / "wal"), str(out), str(port), str(delay_s)]
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.post(
                    f"{url}/v1/traces", content=b"", headers={"content-type": "application/x-protobuf"}
                )
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "receiver process did not start"
                time.sleep(0.05)
        return ReceiverProcess(proc, url, out)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
