"""Fixtures for real runc instances: a test CA, the gateway's identity (``UpstreamTLS``), a
built example image and an instance manager (see :mod:`runtime_helpers`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_helpers import make_manager

from helpers import EXAMPLES
from noops.build.lifecycle import build_image
from noops.gate.mtls import UpstreamTLS, load_or_create_ca
from noops.gate.pki import CertificateAuthority
from noops.runtime.instances import InstanceManager
from noops.settings import Settings


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return load_or_create_ca(tmp_path / "gate" / "ca")


@pytest.fixture
def gateway(ca: CertificateAuthority) -> UpstreamTLS:
    return UpstreamTLS(ca)


@pytest.fixture
def flask_image(noops_settings: Settings, unique: str) -> str:
    return build_image(noops_settings, EXAMPLES / "flask", tag=f"t-{unique}/flask").digest


@pytest.fixture
def manager(noops_settings: Settings, tmp_path: Path,
            ca: CertificateAuthority) -> Iterator[InstanceManager]:
    mgr = make_manager(noops_settings, tmp_path, ca)
    yield mgr
    for leftover in mgr.existing():  # a failed test must not leave containers running
        mgr.stop(leftover, wait_s=10)
