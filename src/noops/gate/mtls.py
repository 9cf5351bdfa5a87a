"""mTLS between the gateway and app instances: no TLS offload, SPIFFE IDs pinned both ways.

Both ends of every hop into an app's network namespace authenticate with X.509-SVIDs from the
built-in CA (:mod:`noops.gate.pki`):

* the front door (and the daemon's health probes) dial an instance's Unix socket as
  ``spiffe://<td>/gateway`` with :class:`UpstreamTLS`, and accept the connection only when the
  instance presents exactly the SPIFFE ID the route table pinned for it;
* the instance monitor serves that socket with :class:`SvidFiles` (the instance's own SVID on
  disk, rotated by the daemon) and lets through only the peer IDs it was told to (the gateway);
  its egress listener presents the same SVID to the front door's workload socket.

This module is shared by the runtime (the monitor) and the front door, so it imports nothing of
either; :mod:`noops.gate.pki` is imported only where a CA is needed, keeping the monitor light.

Errors: :class:`SvidUnavailable` (a :class:`~noops.gate.pki.PkiError`) when the SVID files are
missing, unreadable or expired: the caller refuses the connection instead of serving them;
:class:`PeerIdentityError` (also an :class:`OSError`, so connect-retry paths treat it like a
refused connection) when a peer's SPIFFE ID is not the pinned one.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import ssl
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from noops.gate._pki_certs import PkiError

if TYPE_CHECKING:
    from noops.gate.pki import CertificateAuthority, Issued

__all__ = [
    "SERVER_NAME",
    "PeerIdentityError",
    "SvidFiles",
    "SvidUnavailable",
    "UpstreamTLS",
    "gateway_spiffe_id",
    "load_or_create_ca",
    "peer_spiffe_id",
]

SERVER_NAME = "instance.noops.internal"
"""The TLS ``server_hostname`` used towards instances. SVIDs carry no DNS name, so hostname
checking is off and the SPIFFE ID is compared instead; asyncio still needs a name for SNI."""

_RECHECK_S = 1.0  # how often SvidFiles looks at the files on disk


class SvidUnavailable(PkiError):
    """No usable SVID on disk (missing, unreadable, mismatched, or expired): refuse connections."""


class PeerIdentityError(PkiError, ConnectionError):
    """The TLS peer is not the pinned SPIFFE ID. An OSError, so a dialler retries elsewhere."""


def gateway_spiffe_id(trust_domain: str) -> str:
    """``spiffe://<td>/gateway``: the only client an instance socket accepts."""
    return f"spiffe://{trust_domain}/gateway"


def load_or_create_ca(directory: str | os.PathLike[str],
                      trust_domain: str = "noops.local") -> CertificateAuthority:
    """Open the CA in ``directory``, creating it first if it holds none (``noops`` CLI rule).

    Safe when several processes start at once (daemon, CLI, front door): creation happens under
    an exclusive ``flock`` on ``.<name>.lock`` beside the directory, and ``ca.json`` (what
    :meth:`CertificateAuthority.load` looks for) is written last, so nobody loads a half-made CA.
    """
    from noops.gate.pki import CertificateAuthority

    folder = Path(directory)
    if (folder / "ca.json").exists():
        return CertificateAuthority.load(folder)
    try:
        folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = os.open(folder.parent / f".{folder.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise PkiError(f"cannot create the CA beside {folder}: {exc.strerror}; make "
                       f"{folder.parent} writable for this user.") from exc
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "ca.json").exists():  # another process won the race
            return CertificateAuthority.load(folder)
        return CertificateAuthority.create(folder, trust_domain)
    finally:
        os.close(lock)  # releases the lock


def peer_spiffe_id(der: bytes | None) -> str | None:
    """The SPIFFE ID of a DER certificate: its single ``spiffe://`` URI SAN, else None.

    None for no certificate, an unparsable one, no SAN, zero or several URI SANs (X509-SVID §2
    says validators must reject more than one), or a URI of another scheme.
    """
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or not uris[0].startswith("spiffe://"):
        return None
    return uris[0]


def _peer_matches(ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
                  allowed: Collection[str]) -> str | None:
    """The peer's SPIFFE ID if it is one of ``allowed`` (after OpenSSL verified the chain)."""
    if ssl_object is None:
        return None
    peer = peer_spiffe_id(ssl_object.getpeercert(binary_form=True))
    return peer if peer is not None and peer in allowed else None


def _base_context(protocol: ssl._SSLMethod, bundle: str | None, cadata: str | None,
                  ) -> ssl.SSLContext:
    """TLS 1.3 only, a peer certificate required, trusting only the noops CA.

    The same settings as :meth:`CertificateAuthority._context`: strict X.509 checks, no
    compression, no session tickets (every connection proves possession of a current key).
    """
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET
    ctx.load_verify_locations(cafile=bundle, cadata=cadata)
    return ctx


@dataclass(frozen=True)
class _Loaded:
    stamp: tuple[tuple[int, int, int], ...]
    not_after: datetime.datetime
    serial: int
    spiffe_id: str | None
    server: ssl.SSLContext
    client: ssl.SSLContext


class SvidFiles:
    """An SVID on disk (``cert`` = leaf + intermediate PEM, ``key``, CA ``bundle``), re-read when
    the files change, so a rotation by another process reaches new handshakes without a restart.

    The files are stat-ed at most every ``recheck_s`` (cheap: the contexts are cached); a change
    of mtime, size or inode rebuilds both contexts. A half-finished rotation (new key, old
    certificate) fails to load and keeps the previous pair until the next check. Contexts are
    never handed out for an expired certificate: :class:`SvidUnavailable` instead, and the
    caller refuses the connection. Open connections are unaffected by any of this: their TLS
    session keeps the certificate it was made with.
    """

    def __init__(self, cert: str | os.PathLike[str], key: str | os.PathLike[str],
                 bundle: str | os.PathLike[str], *, recheck_s: float = _RECHECK_S) -> None:
        self.paths = (os.fspath(cert), os.fspath(key), os.fspath(bundle))
        self.recheck_s = recheck_s
        self._loaded: _Loaded | None = None
        self._checked = float("-inf")
        self._error = "not loaded yet"
        self._lock = threading.Lock()

    # -- what callers use ------------------------------------------------------------------------

    def server_context(self, allowed_peer_ids: Collection[str] = ()) -> ssl.SSLContext:
        """A server context presenting the SVID. ``allowed_peer_ids`` is not enforced by OpenSSL
        (it only verifies the chain): call :meth:`check_peer` after the handshake."""
        del allowed_peer_ids  # documented above: the check happens after the handshake
        return self._current().server

    def client_context(self) -> ssl.SSLContext:
        """A client context presenting the SVID (``server_hostname`` :data:`SERVER_NAME`);
        pin the server's ID with :meth:`check_peer` after the handshake."""
        return self._current().client

    @staticmethod
    def check_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
                   allowed_peer_ids: Collection[str]) -> str | None:
        """The verified peer's SPIFFE ID when it is one of ``allowed_peer_ids``, else None."""
        return _peer_matches(ssl_object, allowed_peer_ids)

    @property
    def not_after(self) -> datetime.datetime:
        return self._current().not_after

    @property
    def serial(self) -> int:
        return self._current().serial

    @property
    def spiffe_id(self) -> str | None:
        return self._current().spiffe_id

    # -- loading ---------------------------------------------------------------------------------

    def _current(self) -> _Loaded:
        now = time.monotonic()
        if now - self._checked >= self.recheck_s:
            with self._lock:
                if now - self._checked >= self.recheck_s:
                    self._checked = now
                    self._refresh()
        loaded = self._loaded
        if loaded is None:
            raise SvidUnavailable(f"no usable SVID in {self.paths[0]}: {self._error}; the daemon "
                                  "writes it when it starts the instance (is `noops up` running?).")
        if datetime.datetime.now(datetime.UTC) >= loaded.not_after:
            raise SvidUnavailable(f"the SVID in {self.paths[0]} expired at {loaded.not_after:%H:%M:%S}"
                                  " UTC and was not renewed; refusing to present it (check that "
                                  "the noops daemon is running: it rotates SVIDs at half-life).")
        return loaded

    def _refresh(self) -> None:
        try:
            stamp = tuple(_stamp(p) for p in self.paths)
        except OSError as exc:
            self._error = f"{exc.strerror} ({exc.filename})"
            return
        if self._loaded is not None and self._loaded.stamp == stamp:
            return
        cert_path, key_path, bundle = self.paths
        try:
            with open(cert_path, "rb") as fh:
                leaf = x509.load_pem_x509_certificate(fh.read())
            server = _base_context(ssl.PROTOCOL_TLS_SERVER, bundle, None)
            server.load_cert_chain(cert_path, key_path)
            client = _base_context(ssl.PROTOCOL_TLS_CLIENT, bundle, None)
            client.load_cert_chain(cert_path, key_path)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._error = str(exc)  # e.g. mid-rotation: keep serving the previous pair
            return
        self._loaded = _Loaded(stamp, leaf.not_valid_after_utc, leaf.serial_number,
                               peer_spiffe_id(leaf.public_bytes(Encoding.DER)), server, client)


def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


class UpstreamTLS:
    """The gateway's side of mTLS to instances: its own SVID, renewed in-process at half-life.

    :meth:`context` is called for every new upstream connection and is cheap (a clock compare).
    At half-life it issues a fresh ``spiffe://<td>/gateway`` SVID and swaps in a new client
    context; connections opened before keep their TLS session, so a rotation drops nothing.
    After the handshake, :meth:`check` pins the instance: its certificate's single URI SAN must
    equal the SPIFFE ID the route table carries for that endpoint, exactly.
    """

    server_hostname = SERVER_NAME

    def __init__(self, ca: CertificateAuthority, *, ttl_s: int | None = None) -> None:
        from noops.gate.pki import SVID_TTL_S

        self.ca = ca
        self.ttl_s = int(ttl_s or SVID_TTL_S)
        self.spiffe_id = gateway_spiffe_id(ca.trust_domain)
        self._lock = threading.Lock()
        self._issued: Issued | None = None
        self._ctx: ssl.SSLContext | None = None
        self._renew_at = 0.0  # wall clock (time.time()) of the next renewal
        self.renewals = 0
        self._renew()

    @classmethod
    def for_ca(cls, ca_dir: str | os.PathLike[str], *, ttl_s: int | None = None) -> UpstreamTLS:
        """Load (or create) the CA in ``ca_dir`` (``$NOOPS_HOME/gate/ca``) and issue an SVID."""
        return cls(load_or_create_ca(ca_dir), ttl_s=ttl_s)

    @property
    def not_after(self) -> datetime.datetime:
        assert self._issued is not None
        return self._issued.not_after

    @property
    def serial(self) -> int:
        assert self._issued is not None
        return self._issued.serial

    def context(self) -> ssl.SSLContext:
        """The client context for a new connection (renewed at half-life, never expired)."""
        ctx = self._ctx
        if ctx is None or time.time() >= self._renew_at:
            with self._lock:
                if self._ctx is None or time.time() >= self._renew_at:
                    self._renew()
            ctx = self._ctx
            assert ctx is not None
        return ctx

    def check(self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None, expected_spiffe_id: str,
              ) -> bool:
        """True when the server proved ``expected_spiffe_id`` (exactly; "" never matches)."""
        if not expected_spiffe_id:
            return False
        return _peer_matches(ssl_object, (expected_spiffe_id,)) is not None

    def _renew(self) -> None:
        issued = self.ca.issue_gateway_identity(ttl_s=self.ttl_s)
        self._ctx = self.ca.client_ssl_context(issued)
        self._issued = issued
        # half of the lifetime actually granted (an intermediate near its end shortens it)
        left_s = issued.not_after.timestamp() - time.time()
        self._renew_at = time.time() + max(1.0, min(self.ttl_s, left_s) / 2)
        self.renewals += 1
