"""Shared test harness.

``noops_settings`` points noops at a home that survives between test runs
(``$NOOPS_TEST_HOME``, default ``/var/lib/noops-test``) so the Debian stacks are built once per
machine, not once per run; every test that builds uses its own image names, so tests do not
see each other's images. ``tmp_home`` is a throw-away home for tests that need an empty store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import free_port
from noops.oci.store import ImageStore
from noops.settings import Settings


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
        if running.proc.stdout is not None:
            running.proc.stdout.close()
