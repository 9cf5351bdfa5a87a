"""Fixtures for the zero-trust tests: ``gw``, one running gateway per test module (its policy,
users and devices are changed by the tests through the same stores the CLI uses)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from zt_harness import Gateway

OPEN_POLICY = '''
[[route]]
id = "open"
host = "*.localhost"
authenticated = false
'''


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    gateway = Gateway()
    gateway.add_app("echo")
    gateway.add_app("other")
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()
