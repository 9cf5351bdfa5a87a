"""Helpers the tests import: paths, free ports, HTTP polling, tool checks."""

from __future__ import annotations

import os
import shutil
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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
        except Exception as exc:
            last = exc
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout_s}s: {last}")


def needs(*tools: str) -> pytest.MarkDecorator:
    """Skip on a developer machine without ``tools`` (or root); in CI, refuse to run instead:
    a CI run that silently skipped the real-component tests would prove nothing."""
    missing = [t for t in tools if shutil.which(t) is None]
    lacking = bool(missing) or os.geteuid() != 0
    if lacking and os.environ.get("CI"):
        raise RuntimeError(f"CI needs root and {', '.join(missing or tools)}: `make deps` "
                           "installs them")
    return pytest.mark.skipif(lacking, reason=f"needs root and {', '.join(tools)} (run `make deps`)")


def eventually(what: str, check: Callable[[], Any], timeout_s: float = 60) -> Any:
    """Poll ``check`` every 0.3 s until it returns something truthy (returned), or fail saying
    what never happened."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)
