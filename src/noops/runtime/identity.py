"""Workload identities of instances: an X.509-SVID per instance, on disk, renewed at half-life.

Each instance ``<app>/<process>`` gets ``spiffe://<trust-domain>/app/<app>/<process>``, written
into its private runtime directory as ``identity/svid.crt`` (leaf + intermediate),
``identity/svid.key``, ``identity/ca.crt`` (the CA bundle) and ``identity/svid.json`` (serial,
expiry, ID: what the renewal loop reads), every file 0600 in a 0700 directory, each replaced
atomically. The instance monitor serves the instance socket with them (re-reading them when they
change) and presents them on its egress listener.

The runtime does not import the gateway: the certificates come from an :class:`SvidIssuer`
(``noops.gate.pki.CertificateAuthority`` fits) and health probes dial with a :class:`ProbeTLS`
(``noops.gate.mtls.UpstreamTLS`` fits); the daemon hands both in.
"""

from __future__ import annotations

import datetime
import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["IssuedSvid", "ProbeTLS", "SvidIssuer", "SvidRecord", "gateway_id", "read_record",
           "renewal_due", "write_svid"]

IDENTITY_DIR = "identity"


class IssuedSvid(Protocol):
    """A certificate just issued: the leaf + chain PEM, its key, and what the renewal needs."""

    @property
    def cert_pem(self) -> bytes: ...
    @property
    def key_pem(self) -> bytes: ...
    @property
    def spiffe_id(self) -> str | None: ...
    @property
    def not_after(self) -> datetime.datetime: ...
    @property
    def serial(self) -> int: ...


class SvidIssuer(Protocol):
    """Where workload certificates come from (the platform CA).

    Contract: ``issue_svid`` returns a fresh key and certificate for
    ``spiffe://<trust_domain>/app/<app>/<process>`` valid ``ttl_s`` seconds at most, or raises a
    ``NoopsError``; ``export_ca_bundle`` is the PEM every peer must trust. Both may block briefly
    (key generation, file reads), so async callers run them in a thread.
    """

    @property
    def trust_domain(self) -> str: ...
    def issue_svid(self, app: str, process: str, *, ttl_s: int = ...) -> IssuedSvid: ...
    def export_ca_bundle(self) -> bytes: ...


class ProbeTLS(Protocol):
    """How the daemon's health probes dial an instance socket: as the gateway, over mTLS.

    Contract: ``context()`` is a client context presenting a current gateway SVID (cheap, called
    per connection); ``check(ssl_object, expected)`` is True only when the server's certificate
    carries exactly the SPIFFE ID ``expected``.
    """

    @property
    def server_hostname(self) -> str: ...
    def context(self) -> ssl.SSLContext: ...
    def check(self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
              expected_spiffe_id: str) -> bool: ...


@dataclass(frozen=True)
class SvidRecord:
    """Where an instance's SVID lives and what it is (``svid.json``)."""

    spiffe_id: str
    serial: int
    not_after: float  # Unix time
    ttl_s: int
    cert: str
    key: str
    bundle: str

    def to_json(self) -> dict[str, object]:
        return {"spiffe_id": self.spiffe_id, "serial": f"{self.serial:x}",
                "not_after": self.not_after, "ttl_s": self.ttl_s, "cert": self.cert,
                "key": self.key, "bundle": self.bundle}


def gateway_id(trust_domain: str) -> str:
    """The only peer an instance socket lets in (``noops.gate.mtls.gateway_spiffe_id``)."""
    return f"spiffe://{trust_domain}/gateway"


def write_svid(instance_dir: Path, issuer: SvidIssuer, app: str, process: str,
               ttl_s: int) -> SvidRecord:
    """Issue a fresh SVID for ``app``/``process`` and replace the instance's identity files.

    The key is replaced before the certificate: a reader that catches the moment between the two
    sees a mismatched pair, fails to load it, and keeps the previous one (see ``SvidFiles``).
    """
    folder = instance_dir / IDENTITY_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)
    issued = issuer.issue_svid(app, process, ttl_s=ttl_s)
    cert, key, bundle = folder / "svid.crt", folder / "svid.key", folder / "ca.crt"
    _write_atomic(bundle, issuer.export_ca_bundle())
    _write_atomic(key, issued.key_pem)
    _write_atomic(cert, issued.cert_pem)
    record = SvidRecord(issued.spiffe_id or "", issued.serial, issued.not_after.timestamp(), ttl_s,
                        str(cert), str(key), str(bundle))
    _write_atomic(folder / "svid.json", json.dumps(record.to_json()).encode())
    return record


def read_record(instance_dir: Path) -> SvidRecord | None:
    """The instance's current SVID record, or None (none written, or unreadable)."""
    try:
        data = json.loads((instance_dir / IDENTITY_DIR / "svid.json").read_text())
        return SvidRecord(str(data["spiffe_id"]), int(data["serial"], 16),
                          float(data["not_after"]), int(data["ttl_s"]), str(data["cert"]),
                          str(data["key"]), str(data["bundle"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def renewal_due(record: SvidRecord | None, ttl_s: int, now: float) -> bool:
    """True once half of the lifetime has passed (SPIRE's rule), or the TTL setting shrank so the
    certificate outlives what a fresh one would get."""
    if record is None or record.ttl_s > ttl_s:
        return True
    return now >= record.not_after - record.ttl_s / 2


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)
