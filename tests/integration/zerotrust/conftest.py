"""Fixtures for the zero-trust tests: ``gw``, one running gateway per test module (its policy,
users and devices are changed by the tests through the same stores the CLI uses)."""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test shows what the front door logged: its side of the story."""
    report = yield
    gateway = getattr(item, "funcargs", {}).get("gw")
    if report.failed and isinstance(gateway, Gateway):
        report.sections.append(("front door log", gateway.log_text()[-20_000:]))
    return report


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
