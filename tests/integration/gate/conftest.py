"""Fixtures for the front door tests: ``sockdir`` (a short temp dir: Unix socket paths are
limited to 108 bytes), ``upstream`` / ``ws_upstream`` factories and ``start_proxy``. Everything
started is stopped at the end of the test that started it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gate_harness import ProxyThread, Upstream, WsUpstream, close_clients

from noops.gate import FrontDoorConfig, StaticEndpointRegistry


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gate: front door / gateway tests (real sockets, real TLS)")


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    close_clients()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gate-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def registry() -> StaticEndpointRegistry:
    return StaticEndpointRegistry()


@pytest.fixture
def upstream(sockdir: Path) -> Iterator[Callable[[str], Upstream]]:
    started: list[Upstream] = []

    def start(name: str) -> Upstream:
        up = Upstream(sockdir, name)
        started.append(up)
        return up

    yield start
    for up in started:
        up.stop()


@pytest.fixture
def ws_upstream(sockdir: Path) -> Iterator[Callable[[str], WsUpstream]]:
    started: list[WsUpstream] = []

    def start(name: str) -> WsUpstream:
        up = WsUpstream(sockdir, name)
        started.append(up)
        return up

    yield start
    for up in started:
        up.stop()


@pytest.fixture
def start_proxy(registry: StaticEndpointRegistry) -> Iterator[Callable[..., ProxyThread]]:
    started: list[ProxyThread] = []

    def start(config: FrontDoorConfig | None = None, **kwargs: Any) -> ProxyThread:
        proxy = ProxyThread(registry, config, **kwargs)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
