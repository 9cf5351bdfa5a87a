"""The gateway's TLS server side, with certificates from the built-in CA (:mod:`noops.gate.pki`).

* Each routed host gets its own serving certificate on first use (SNI), issued by the CA's
  intermediate, kept in memory only and re-issued at half-life. Users trust the CA once
  (``noops ca export``); its name constraints keep it from vouching for names outside
  ``localhost`` (and the DNS names it was created with).
* A client certificate is *requested* on the public port and *required* on the workload socket.
  OpenSSL refuses a certificate that does not chain to the CA during the handshake; what it
  cannot know (SPIFFE rules, revocations since, the device's owner) the policy enforcement point
  checks on every request with :meth:`CertificateAuthority.verify_client`.
* TLS 1.2 is the floor for browsers, 1.3 for workloads.
* The name the client asked for (SNI) is remembered on the connection so the gateway can refuse a
  request whose ``Host`` names another app than the certificate it was handed (421).
"""

from __future__ import annotations

import os
import ssl
import tempfile
import threading
from pathlib import Path

from noops.gate.pki import SVID_TTL_S, CertificateAuthority, Issued, needs_rotation

__all__ = ["ServingCerts", "sni_of"]

_DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


def sni_of(ssl_object: object) -> str | None:
    """The server name the client sent for this TLS connection (lower case, no trailing dot);
    None when it sent none."""
    return getattr(ssl_object, "noops_sni", None)


class ServingCerts:
    """Server contexts for the public port and the workload socket."""

    def __init__(self, ca: CertificateAuthority, *, ttl_s: int = 7 * 24 * 3600) -> None:
        self.ca = ca
        self.ttl_s = ttl_s
        self._contexts: dict[str, tuple[ssl.SSLContext, Issued]] = {}
        self._lock = threading.Lock()
        self._workload: ssl.SSLContext | None = None
        self._workload_svid: Issued | None = None

    def _build(self, issued: Issued, *, require_client: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if require_client else ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.load_verify_locations(cadata=self.ca.export_ca_bundle().decode())
        with tempfile.TemporaryDirectory() as tmp:  # ssl loads keys from files only
            cert_path, key_path = issued.write(tmp, "leaf")
            ctx.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
        return ctx

    def context_for(self, host: str) -> ssl.SSLContext:
        """The context presenting ``host``'s certificate (issued or re-issued as needed)."""
        with self._lock:
            cached = self._contexts.get(host)
            if cached is not None and not needs_rotation(cached[1].not_after, self.ttl_s):
                return cached[0]
            names = list(_DEFAULT_NAMES) if host == "localhost" else [host]
            issued = self.ca.issue_gateway_cert(names, ttl_s=self.ttl_s)
            ctx = self._build(issued, require_client=False)
            ctx.sni_callback = self._pick
            if len(self._contexts) > 4096:
                self._contexts.clear()
            self._contexts[host] = (ctx, issued)
            return ctx

    def public_context(self) -> ssl.SSLContext:
        """The public port's context: ``localhost`` by default, any permitted name by SNI."""
        return self.context_for("localhost")

    def workload_context(self) -> ssl.SSLContext:
        """The workload socket's context: mTLS required, the gateway's own SVID presented.
        One context for the life of the listener; :meth:`renew` reloads its SVID in place."""
        if self._workload is None:
            self._workload_svid = self.ca.issue_gateway_identity()
            self._workload = self._build(self._workload_svid, require_client=True)
        return self._workload

    def renew(self) -> bool:
        """Re-issue the workload socket's SVID once half its life has passed; new handshakes get
        the new one, open connections keep theirs. Call it on the event loop that serves the
        socket (OpenSSL contexts are not changed under a concurrent handshake). True if renewed."""
        svid = self._workload_svid
        if self._workload is None or svid is None or not needs_rotation(svid.not_after, SVID_TTL_S):
            return False
        fresh = self.ca.issue_gateway_identity()
        with tempfile.TemporaryDirectory() as tmp:
            cert_path, key_path = fresh.write(tmp, "leaf")
            self._workload.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
        self._workload_svid = fresh
        return True

    def _pick(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        name = (server_name or "").lower().rstrip(".")
        if not name:
            return
        sslobj.noops_sni = name  # type: ignore[attr-defined]  # read back by sni_of()
        if name != "localhost" and self._permitted(name):
            sslobj.context = self.context_for(name)

    def _permitted(self, name: str) -> bool:
        if len(name) > 253 or name.count(".") > 8:
            return False
        return any(name.endswith("." + n) for n in self.ca.dns_names)


def write_bundle(ca: CertificateAuthority, path: Path) -> Path:
    """Write the CA bundle users trust to ``path`` (0644); returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(ca.export_ca_bundle())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
