"""Fixtures for the OTLP receiver (the classes live in :mod:`otlp_harness`, which tests import:
two directories' ``conftest`` modules cannot both be imported by that name in one run).

* ``otlp_server`` — factory fixture: ``otlp_server(store, **settings) -> RunningReceiver`` runs
  ``Receiver.app`` under uvicorn in a thread on 127.0.0.1:<free port>; stopped at teardown.
* ``receiver_process`` — factory fixture starting ``python -c RECEIVER_SCRIPT`` with a store
  that appends rows as JSON lines (fsync'd) to a file, so a test can ``kill -9`` it and restart.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from otlp_harness import RECEIVER_SCRIPT, MemoryStore, ReceiverProcess, RunningReceiver

from helpers import free_port
from noops.observe.otlp.receiver import Receiver, ReceiverSettings


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
