"""The zero-trust gateway. So far: the front door (:mod:`noops.gate.proxy`), its routing table
(:mod:`noops.gate.endpoints`) and development TLS (:mod:`noops.gate.tls`)."""

from noops.gate._errors import GateError
from noops.gate.endpoints import Endpoint, EndpointRegistry, StaticEndpointRegistry, normalize_host
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
