"""The zero-trust gateway. So far: the front door (:mod:`noops.gate.proxy`), its routing table
(:mod:`noops.gate.endpoints`) and development TLS (:mod:`noops.gate.tls`).

The names below are loaded on first use (PEP 562): importing one gate module does not import
the whole proxy. That matters for the per-instance monitor, which needs only
:mod:`noops.gate.mtls` and should stay small (every app instance runs one).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from noops.gate._errors import GateError
    from noops.gate.endpoints import (
        Endpoint,
        EndpointRegistry,
        StaticEndpointRegistry,
        normalize_host,
    )
    from noops.gate.proxy import FrontDoor, FrontDoorConfig, TunnelInfo, run_forever
    from noops.gate.tls import localhost_certificate, server_context

__all__ = [
    "Endpoint",
    "EndpointRegistry",
    "FrontDoor",
    "FrontDoorConfig",
    "GateError",
    "StaticEndpointRegistry",
    "TunnelInfo",
    "localhost_certificate",
    "normalize_host",
    "run_forever",
    "server_context",
]

_HOMES = {
    "GateError": "noops.gate._errors",
    "Endpoint": "noops.gate.endpoints",
    "EndpointRegistry": "noops.gate.endpoints",
    "StaticEndpointRegistry": "noops.gate.endpoints",
    "normalize_host": "noops.gate.endpoints",
    "FrontDoor": "noops.gate.proxy",
    "FrontDoorConfig": "noops.gate.proxy",
    "TunnelInfo": "noops.gate.proxy",
    "run_forever": "noops.gate.proxy",
    "localhost_certificate": "noops.gate.tls",
    "server_context": "noops.gate.tls",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'noops.gate' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
