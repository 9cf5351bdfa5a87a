"""Shared test harness.

``noops_settings`` points noops at a home that survives between test runs
(``$NOOPS_TEST_HOME``, default ``/var/lib/noops-test``) so the Debian stacks are built once per
machine, not once per run; every test that builds uses its own image names, so tests do not
see each other's images. ``tmp_home`` is a throw-away home for tests that need an empty store.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from noops.oci.store import ImageStore
from noops.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout_s: float = 60.0) -> tuple[int, str]:
    """Poll ``url`` until it answers; return (status, body)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, resp.read().decode()
        except Exception as exc:  # noqa: BLE001 - any failure means: not up yet
            last = exc
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout_s}s: {last}")


def needs(*tools: str) -> pytest.MarkDecorator:
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing) or os.geteuid() != 0,
                              reason=f"needs root and {', '.join(tools)} (run `make deps`)")


@pytest.fixture(scope="session")
def noops_home() -> Path:
    home = Path(os.environ.get("NOOPS_TEST_HOME", "/var/lib/noops-test"))
    home.mkdir(parents=True, exist_ok=True)
    return home


@pytest.fixture(scope="session")
def noops_settings(noops_home: Path) -> Settings:
    return Settings(environ={k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"},
                    overrides={"home": noops_home})


@pytest.fixture
def tmp_home(tmp_path: Path) -> Settings:
    return Settings(environ={}, overrides={"home": tmp_path / "home"})


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def store(noops_settings: Settings) -> ImageStore:
    return ImageStore(noops_settings.home / "images")


class RunningImage:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc, self.port = proc, port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def run_image(noops_home: Path) -> Iterator[object]:
    """Start ``noops run IMAGE -p PORT`` as a real subprocess; stopped with Ctrl-C (SIGINT)."""
    started: list[RunningImage] = []

    def start(ref: str, *extra: str) -> RunningImage:
        port = free_port()
        env = dict(os.environ, NOOPS_HOME=str(noops_home))
        proc = subprocess.Popen([sys.executable, "-m", "noops", "run", ref, "-p", str(port), *extra], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        running = RunningImage(proc, port)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.proc.send_signal(2)
            try:
                running.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                running.proc.kill()
                running.proc.wait()
