"""Serving the console: plain HTTP for a developer, or HTTPS over a Unix socket behind the gateway.

``python -m noops.console --home H --listen unix:PATH|HOST:PORT [--tls-cert C --tls-key K
[--client-ca CA [--peer-id spiffe://…]…]]``

* ``--listen unix:/path`` serves on a Unix socket (mode 0600); ``127.0.0.1:8080`` on TCP.
* ``--tls-cert``/``--tls-key``: HTTPS (TLS 1.3 only), e.g. the console's workload certificate;
  rewritten files are picked up at the next handshake (no restart when the SVID is renewed).
* ``--client-ca``: a client certificate signed by that CA is required (mutual TLS); with
  ``--peer-id`` the certificate must also name one of those SPIFFE IDs as a URI SAN, so only the
  gateway gets through even though every workload has a certificate from the same CA. A
  connection that fails the check is closed before any HTTP is read.

The process exits cleanly on SIGTERM/SIGINT (uvicorn's handling).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol

from noops.console.app import make_console
from noops.console.client import ApiClient
from noops.errors import UsageError

__all__ = ["ConsoleServer", "parse_listen", "peer_ids"]


def parse_listen(text: str) -> tuple[str | None, str | None, int | None]:
    """``unix:PATH`` → (path, None, None); ``HOST:PORT`` → (None, host, port)."""
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path:
            raise UsageError("--listen unix: needs a socket path, e.g. unix:/run/console.sock")
        return path, None, None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text!r}: use unix:PATH or HOST:PORT (e.g. 127.0.0.1:8080)")
    return None, host.strip("[]"), int(port)


def peer_ids(der: bytes | None) -> set[str]:
    """The URI SANs (SPIFFE IDs) of a DER certificate; empty for none or an unparsable one."""
    if not der:
        return set()
    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return set()
    return set(san.get_values_for_type(x509.UniformResourceIdentifier))


def _pinned_protocol(allowed: frozenset[str]) -> type[H11Protocol]:
    class PinnedPeer(H11Protocol):
        """Closes a TLS connection whose client certificate names none of ``allowed``."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)  # then connection_lost cleans up as usual
            tls = transport.get_extra_info("ssl_object")
            if tls is None or not peer_ids(tls.getpeercert(binary_form=True)) & allowed:
                transport.abort()

    return PinnedPeer


class _CertReloader:
    """Reloads the serving certificate when its files change, checked at each TLS handshake.

    Workload certificates live an hour and are rewritten in place at half-life (``Issued.write``
    replaces both files atomically); the first handshake after that presents the new one, with
    no restart. The check is two ``stat`` calls per handshake. OpenSSL has already bound the old
    certificate to the connection being negotiated, so that one is switched to a fresh context;
    later connections are created from the reloaded base context."""

    def __init__(self, ctx: ssl.SSLContext, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.ctx, self.cert, self.key, self.client_ca = ctx, cert, key, client_ca
        self.stamp = self._stamp()

    def _stamp(self) -> tuple[int, int]:
        return self.cert.stat().st_mtime_ns, self.key.stat().st_mtime_ns

    def _fresh(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(str(self.cert), str(self.key))
        if self.client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(str(self.client_ca))
        return ctx

    def __call__(self, conn: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        try:
            stamp = self._stamp()
            if stamp != self.stamp:
                conn.context = self._fresh()
                self.ctx.load_cert_chain(str(self.cert), str(self.key))
                self.stamp = stamp
        except (OSError, ssl.SSLError):
            pass  # mid-rewrite or unreadable: keep serving the loaded one, retry next handshake


@dataclass
class ConsoleServer:
    """Everything ``python -m noops.console`` needs; :meth:`config` builds the uvicorn config."""

    api_socket: Path
    listen: str
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    allowed_peers: Sequence[str] = field(default_factory=tuple)

    def config(self) -> uvicorn.Config:
        uds, host, port = parse_listen(self.listen)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("--tls-cert and --tls-key go together")
        if self.client_ca is not None and self.tls_cert is None:
            raise UsageError("--client-ca needs --tls-cert/--tls-key (mutual TLS is TLS)")
        if self.allowed_peers and self.client_ca is None:
            raise UsageError("--peer-id needs --client-ca to verify the peer's certificate")
        for path in (self.tls_cert, self.tls_key, self.client_ca):
            if path is not None and not path.is_file():
                raise UsageError(f"{path} does not exist or is not a file")
        kwargs: dict[str, Any] = {"uds": uds} if uds else {"host": host, "port": port}
        if self.tls_cert is not None:
            kwargs.update(ssl_certfile=str(self.tls_cert), ssl_keyfile=str(self.tls_key))
        if self.client_ca is not None:
            kwargs.update(ssl_ca_certs=str(self.client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        if self.allowed_peers:
            kwargs["http"] = _pinned_protocol(frozenset(self.allowed_peers))
        else:
            kwargs["http"] = "h11"
        app = make_console(ApiClient(self.api_socket))
        config = uvicorn.Config(app, log_level="warning", proxy_headers=False,
                                timeout_graceful_shutdown=2, **kwargs)
        config.load()
        if config.ssl is not None and self.tls_cert is not None and self.tls_key is not None:
            config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
            config.ssl.sni_callback = _CertReloader(config.ssl, self.tls_cert, self.tls_key,
                                                    self.client_ca)
        return config

    def run(self) -> None:
        config = self.config()
        server = uvicorn.Server(config)
        if not config.uds:
            server.run()
            return
        # uvicorn would chmod its own socket 0666; this one is bound here and kept 0600
        path = Path(config.uds)
        path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            old = os.umask(0o177)
            try:
                sock.bind(str(path))
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
            try:
                server.run(sockets=[sock])
            finally:
                path.unlink(missing_ok=True)
