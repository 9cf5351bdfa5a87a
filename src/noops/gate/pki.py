"""The built-in CA: SPIFFE identities for workloads, the gateway and enrolled devices.

Two tiers, ECDSA P-256, SHA-256:

* **root** — 10 years, ``CA:true pathlen:1``, signs intermediates only. ``root.key`` (0600)
  can be moved offline after :meth:`CertificateAuthority.create`; everything but
  :meth:`~CertificateAuthority.rotate_intermediate` keeps working without it.
* **intermediate** — 1 year, ``CA:true pathlen:0``, signs every leaf and the CRL. It carries
  critical name constraints, so even a stolen intermediate key cannot vouch for other names:
  URI host = the trust domain exactly (only ``spiffe://<trust-domain>/...``), DNS = the trust
  domain, ``localhost`` and the ``dns_names`` given to :meth:`~CertificateAuthority.create`
  (each with its subdomains), IP = loopback (127.0.0.0/8, ::1).

Identities (``spiffe://<trust-domain>`` followed by)::

    /app/<app>/<process>     workload SVID        serverAuth + clientAuth, 1 h
    /gateway                 the gateway's SVID   serverAuth + clientAuth, 1 h
    /device/<user>/<name>    device certificate   clientAuth, 90 days, as PKCS#12

Files in the CA directory (0700): ``ca.json`` (trust domain, DNS names), ``root.crt``,
``root.key``, ``intermediate.crt``, ``intermediate.key`` (keys 0600), ``retired/`` (earlier
intermediates, kept so their leaves verify until they expire), ``registry.json`` (devices and
revocations, see :mod:`noops.gate._pki_registry`) and ``crl.pem`` (written by :meth:`crl`).

Revocation is enforced by :meth:`CertificateAuthority.verify_client`, which reads the registry
on every call: a server built with :meth:`server_ssl_context` must pass the peer's
``getpeercert(binary_form=True)`` to it after the handshake. ``check_crl=True`` additionally
makes OpenSSL refuse certificates revoked *before* the context was built. Leaves are short-lived
(1 h), so the TTL bounds how long a revoked workload identity could be replayed elsewhere.

Errors: :class:`PkiError` (exit 12) and its child :class:`CertificateRejected` (HTTP 403, with a
stable ``reason`` code).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from noops.gate import _pki_certs as c
from noops.gate._pki_certs import CertificateRejected, Kind, PkiError
from noops.gate._pki_registry import Data, Registry
from noops.gate._pki_verify import first_certificate, validate

__all__ = [
    "CertificateAuthority",
    "CertificateRejected",
    "Issued",
    "PkiError",
    "VerifiedIdentity",
    "needs_rotation",
]

ROOT_TTL = datetime.timedelta(days=3650)
INTERMEDIATE_TTL = datetime.timedelta(days=365)
SVID_TTL_S = 3600  # SPIRE's default; rotate at half-life (needs_rotation)
GATEWAY_SERVING_TTL_S = 7 * 24 * 3600
DEVICE_TTL_DAYS = 90
CRL_TTL = datetime.timedelta(days=7)  # reload crl.pem more often than this
MIN_PASSWORD_CHARS = 8
DEFAULT_DNS_NAMES = ("localhost",)


@dataclass(frozen=True)
class Issued:
    """A freshly issued certificate. ``cert_pem`` is the leaf followed by the intermediate
    (what a TLS peer sends); ``key_pem`` is the unencrypted PKCS#8 key — keep it 0600."""

    cert_pem: bytes
    key_pem: bytes
    spiffe_id: str | None
    not_after: datetime.datetime
    serial: int

    def write(self, directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
        """Write ``<name>.crt`` (0644) and ``<name>.key`` (0600) atomically; return the paths."""
        folder = Path(directory)
        cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
        c.write_atomic(key_path, self.key_pem, 0o600)
        c.write_atomic(cert_path, self.cert_pem, 0o644)
        return cert_path, key_path


@dataclass(frozen=True)
class VerifiedIdentity:
    """Who a verified peer is. ``user``/``device`` are set for devices, ``app``/``process``
    for workloads, neither for the gateway."""

    spiffe_id: str
    kind: Kind
    user: str | None
    device: str | None
    app: str | None
    process: str | None
    serial: int
    not_after: datetime.datetime


def needs_rotation(not_after: datetime.datetime, ttl_s: float, now: datetime.datetime | None = None,
                   ) -> bool:
    """True once half of a ``ttl_s``-second lifetime ending at ``not_after`` has passed."""
    if ttl_s <= 0:
        raise PkiError(f"ttl_s must be positive, got {ttl_s}.")
    return c.utc(now) >= c.utc(not_after) - datetime.timedelta(seconds=ttl_s / 2)


class CertificateAuthority:
    """A noops CA directory. Build one with :meth:`create` or :meth:`load`, not the constructor."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        self.directory = directory
        self._registry = Registry(directory)
        self._read(config)

    def _read(self, config: dict[str, Any]) -> None:
        directory = self.directory
        self.trust_domain: str = c.check_trust_domain(config["trust_domain"])
        self.dns_names: tuple[str, ...] = tuple(config["dns_names"])
        try:
            self.root = x509.load_pem_x509_certificate((directory / "root.crt").read_bytes())
            self.intermediate = x509.load_pem_x509_certificate(
                (directory / "intermediate.crt").read_bytes())
            self._key = c.load_key(directory / "intermediate.key")
            retired = sorted((directory / "retired").glob("*.crt"))
            self._retired = [x509.load_pem_x509_certificate(p.read_bytes()) for p in retired]
        except (OSError, ValueError) as exc:
            raise PkiError(f"{directory} is not a usable noops CA ({exc}); run `noops ca init` or "
                           "restore the directory from backup.") from exc

    # -- life cycle ----------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: str | os.PathLike[str], trust_domain: str = "noops.local", *,
               dns_names: Iterable[str] = DEFAULT_DNS_NAMES,
               now: datetime.datetime | None = None) -> CertificateAuthority:
        """Create a root and an intermediate in ``directory`` (made 0700, must hold no CA yet).

        ``dns_names`` (plus the trust domain) become the intermediate's permitted DNS subtrees:
        the gateway can only get serving certificates for those names and their subdomains.
        """
        folder, moment = Path(directory), c.utc(now)
        domain = c.check_trust_domain(trust_domain)
        names = sorted({domain, *(c.check_host(n) for n in dns_names)})
        if (folder / "ca.json").exists():
            raise PkiError(f"{folder} already holds a CA; load it, or choose an empty directory.")
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)
            root_key = c.new_key()
            root = c.build_ca(subject=c.ca_name(domain, "root"), key=root_key, issuer=None,
                              issuer_key=root_key, path_length=1,
                              not_before=moment - datetime.timedelta(seconds=c.BACKDATE_S),
                              not_after=moment + ROOT_TTL)
            c.write_atomic(folder / "root.key", c.key_pem(root_key), 0o600)
            c.write_atomic(folder / "root.crt", c.pem(root), 0o644)
            _new_intermediate(folder, domain, names, root, root_key, moment)
            config = {"trust_domain": domain, "dns_names": names}
            c.write_atomic(folder / "ca.json", (json.dumps(config, indent=2) + "\n").encode(), 0o644)
        except OSError as exc:
            raise PkiError(f"cannot create the CA in {folder}: {exc.strerror}; choose a writable "
                           "directory.") from exc
        return cls(folder, config)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        """Open the CA in ``directory``. The root key may be absent (kept offline)."""
        folder = Path(directory)
        try:
            config = json.loads((folder / "ca.json").read_text())
        except (OSError, ValueError) as exc:
            raise PkiError(f"no noops CA in {folder} ({exc}); create one with `noops ca init`.") \
                from exc
        return cls(folder, config)

    @property
    def root_key_online(self) -> bool:
        return (self.directory / "root.key").exists()

    def rotate_intermediate(self, *, dns_names: Iterable[str] | None = None,
                            now: datetime.datetime | None = None) -> None:
        """Replace the intermediate (new key, optionally new DNS names); needs the root key.

        The old certificate moves to ``retired/`` so leaves it signed verify until they expire.
        """
        key_path = self.directory / "root.key"
        if not key_path.exists():
            raise PkiError(f"the root key is offline; copy root.key back into {self.directory} "
                           "(mode 0600), rotate, then move it offline again.")
        names = self.dns_names if dns_names is None else \
            tuple(sorted({self.trust_domain, *(c.check_host(n) for n in dns_names)}))
        retired = self.directory / "retired"
        retired.mkdir(mode=0o700, exist_ok=True)
        shutil.copy2(self.directory / "intermediate.crt",
                     retired / f"intermediate-{self.intermediate.serial_number:x}.crt")
        _new_intermediate(self.directory, self.trust_domain, names, self.root,
                          c.load_key(key_path), c.utc(now))
        config = {"trust_domain": self.trust_domain, "dns_names": list(names)}
        c.write_atomic(self.directory / "ca.json", (json.dumps(config, indent=2) + "\n").encode(),
                       0o644)
        self._read(config)

    # -- issuing -------------------------------------------------------------------------------

    def issue_svid(self, app: str, process: str, *, ttl_s: int = SVID_TTL_S,
                   now: datetime.datetime | None = None) -> Issued:
        """An X.509-SVID for ``spiffe://<td>/app/<app>/<process>``: exactly one URI SAN,
        ``digitalSignature``, EKU serverAuth+clientAuth, ``CA:false``, ``ttl_s`` seconds
        (60 s backdated, never past the intermediate). Raises :class:`PkiError` on a bad name."""
        uri = c.workload_id(self.trust_domain, app, process)
        return self._issue(uri, (), c.SERVER_AND_CLIENT, ttl_s, now, "workload")

    def issue_gateway_identity(self, *, ttl_s: int = SVID_TTL_S,
                               now: datetime.datetime | None = None) -> Issued:
        """The gateway's SVID ``spiffe://<td>/gateway``, its client certificate for mTLS to
        instances (and server certificate towards terminators that pin it)."""
        return self._issue(c.gateway_id(self.trust_domain), (), c.SERVER_AND_CLIENT, ttl_s, now,
                           "gateway")

    def issue_gateway_cert(self, hosts: Sequence[str], *, ttl_s: int = GATEWAY_SERVING_TTL_S,
                           now: datetime.datetime | None = None) -> Issued:
        """The gateway's serving certificate: DNS/IP SANs ``hosts``, EKU serverAuth, no URI SAN.

        Every host must lie inside the intermediate's name constraints, else :class:`PkiError`
        (rotate the intermediate with more ``dns_names``).
        """
        clean = [c.check_host(h) for h in hosts]
        if not clean:
            raise PkiError("issue_gateway_cert needs at least one host name.")
        for host in clean:
            if not self._host_permitted(host):
                raise PkiError(f"{host} is outside this CA's DNS names ({', '.join(self.dns_names)}"
                               "); rotate the intermediate with that name added.")
        return self._issue(None, clean, c.SERVER_ONLY, ttl_s, now, "gateway")

    def enroll_device(self, name: str, user: str, *, password: str | bytes,
                      ttl_days: int = DEVICE_TTL_DAYS, now: datetime.datetime | None = None) -> bytes:
        """A device certificate (``spiffe://<td>/device/<user>/<name>``, EKU clientAuth) as a
        PKCS#12 bundle of key, certificate and chain encrypted with ``password`` (at least 8
        characters). The device is recorded in the registry; earlier certificates of the same
        device stay valid until revoked (``revoke("<user>/<name>")`` revokes them all)."""
        secret = password.encode() if isinstance(password, str) else password
        if len(secret) < MIN_PASSWORD_CHARS:
            raise PkiError(f"the PKCS#12 password needs at least {MIN_PASSWORD_CHARS} characters.")
        moment = c.utc(now)
        uri = c.device_id(self.trust_domain, user, name)
        key = c.new_key()
        cert = self._sign(uri, (), c.CLIENT_ONLY, ttl_days * 86400, moment, "device", key)
        entry = {"serial": f"{cert.serial_number:x}", "user": user, "name": name,
                 "issued": moment.isoformat(), "not_after": cert.not_valid_after_utc.isoformat()}
        self._registry.update(lambda data: data["devices"].append(entry), moment)
        return pkcs12.serialize_key_and_certificates(
            f"{user}/{name}".encode(), key, cert, [self.intermediate, self.root],
            serialization.BestAvailableEncryption(secret))

    def devices(self) -> list[dict[str, Any]]:
        """Enrolled device certificates (serial as hex), oldest first, with a ``revoked`` flag and
        ``revocation`` (``{"reason", "revoked_at"}``, or None)."""
        data = self._registry.read()
        out = []
        for d in data["devices"]:
            entry = data["revoked"].get(d["serial"])
            out.append({**d, "revoked": entry is not None, "revocation": None if entry is None else
                        {"reason": entry["reason"], "revoked_at": entry["revoked_at"]}})
        return out

    # -- revocation ----------------------------------------------------------------------------

    def revoke(self, serial_or_device: int | str, reason: str = "unspecified", *,
               now: datetime.datetime | None = None) -> list[int]:
        """Revoke one serial (``int``) or every certificate of a device (``"<user>/<name>"``);
        return the serials revoked. Effective at once for :meth:`verify_client` everywhere."""
        moment = c.utc(now)
        devices = self._registry.read()["devices"]
        if isinstance(serial_or_device, int):
            targets = {f"{serial_or_device:x}": None}
            for d in devices:
                if d["serial"] in targets:
                    targets[d["serial"]] = d["not_after"]
        else:
            targets = {d["serial"]: d["not_after"] for d in devices
                       if f"{d['user']}/{d['name']}" == serial_or_device}
            if not targets:
                raise PkiError(f"no enrolled device {serial_or_device!r}; name it as <user>/<name>"
                               " (see `noops device list`).")
        # A leaf never outlives its issuer, so unknown serials can be forgotten after that.
        fallback = self.intermediate.not_valid_after_utc.isoformat()

        def change(data: Data) -> None:
            for serial, not_after in targets.items():
                data["revoked"].setdefault(serial, {"reason": reason, "revoked_at": moment.isoformat(),
                                                    "not_after": not_after or fallback})

        self._registry.update(change, moment)
        return [int(s, 16) for s in targets]

    def revoked_serials(self) -> frozenset[int]:
        """Every revoked serial (re-read when the registry changed on disk; the same object
        while it did not, so callers can spot a change with ``is``)."""
        return self._registry.revoked()

    def is_revoked(self, serial: int) -> bool:
        """Whether ``serial`` is revoked (re-reads the registry when it changed on disk)."""
        return serial in self._registry.revoked()

    def crl(self, *, now: datetime.datetime | None = None) -> bytes:
        """A PEM CRL signed by the intermediate listing every revoked serial, valid 7 days;
        also written to ``crl.pem``."""
        moment = c.utc(now)
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(self.intermediate.subject)
                   .last_update(moment - datetime.timedelta(seconds=c.BACKDATE_S))
                   .next_update(moment + CRL_TTL)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self._key.public_key()), critical=False)
                   .add_extension(x509.CRLNumber(int(moment.timestamp() * 1000)), critical=False))
        for serial, entry in sorted(self._registry.read()["revoked"].items()):
            revoked = (x509.RevokedCertificateBuilder().serial_number(int(serial, 16))
                       .revocation_date(datetime.datetime.fromisoformat(entry["revoked_at"])))
            flag = _reason_flag(entry["reason"])
            if flag is not None:
                revoked = revoked.add_extension(x509.CRLReason(flag), critical=False)
            builder = builder.add_revoked_certificate(revoked.build())
        data = builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        c.write_atomic(self.directory / "crl.pem", data, 0o644)
        return data

    # -- verification --------------------------------------------------------------------------

    def verify_client(self, cert_chain: bytes, *, now: datetime.datetime | None = None,
                      expect_prefix: str | None = None) -> VerifiedIdentity:
        """Verify a client certificate (PEM chain, leaf first, or one DER certificate).

        Only the leaf is read; it must chain to our root through one of our own intermediates
        (see :mod:`noops.gate._pki_verify` for every check), carry clientAuth, be valid at
        ``now`` and not be revoked, and its SPIFFE ID must start with ``expect_prefix``
        (default ``spiffe://<td>/``). Raises :class:`CertificateRejected` otherwise.
        """
        return self._verify(cert_chain, ExtendedKeyUsageOID.CLIENT_AUTH, now,
                            expect_prefix or f"spiffe://{self.trust_domain}/", exact=False)

    def verify_server(self, cert_chain: bytes, expect_spiffe_id: str, *,
                      now: datetime.datetime | None = None) -> VerifiedIdentity:
        """Like :meth:`verify_client` for a server (EKU serverAuth) whose SPIFFE ID must be
        exactly ``expect_spiffe_id``: how the gateway pins the instance it dialled."""
        return self._verify(cert_chain, ExtendedKeyUsageOID.SERVER_AUTH, now, expect_spiffe_id,
                            exact=True)

    def export_ca_bundle(self) -> bytes:
        """Root and current intermediate, PEM — what peers and browsers should trust."""
        return c.pem(self.root) + c.pem(self.intermediate)

    # -- TLS -----------------------------------------------------------------------------------

    def server_ssl_context(self, issued: Issued, *, check_crl: bool = False) -> ssl.SSLContext:
        """TLS 1.3 server context presenting ``issued`` and *requiring* a client certificate
        from this CA. Call :meth:`verify_client` on ``getpeercert(binary_form=True)`` after the
        handshake: that is where SPIFFE IDs and current revocations are enforced.
        ``check_crl`` also loads today's CRL into OpenSSL (rebuild the context to refresh it)."""
        ctx = self._context(ssl.PROTOCOL_TLS_SERVER, issued)
        if check_crl:
            with tempfile.TemporaryDirectory() as tmp:
                crl_path = Path(tmp) / "crl.pem"
                crl_path.write_bytes(self.crl())
                ctx.load_verify_locations(cafile=os.fspath(crl_path))
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        return ctx

    def client_ssl_context(self, issued: Issued | None = None, *, check_hostname: bool = False,
                           ) -> ssl.SSLContext:
        """TLS 1.3 client context trusting only this CA, presenting ``issued`` if given.

        SVIDs carry no DNS names, so ``check_hostname`` is off by default: then call
        :meth:`verify_server` with the expected SPIFFE ID on the peer certificate."""
        ctx = self._context(ssl.PROTOCOL_TLS_CLIENT, issued)
        ctx.check_hostname = check_hostname
        return ctx

    # -- internals -----------------------------------------------------------------------------

    def _context(self, protocol: ssl._SSLMethod, issued: Issued | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET
        ctx.load_verify_locations(cadata=self.export_ca_bundle().decode())
        if issued is not None:
            # ssl can only load keys from files: a private temporary directory, gone at once.
            with tempfile.TemporaryDirectory() as tmp:
                cert_path, key_path = issued.write(tmp, "leaf")
                ctx.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
        return ctx

    def _verify(self, cert_chain: bytes, eku: x509.ObjectIdentifier, now: datetime.datetime | None,
                expect: str, *, exact: bool) -> VerifiedIdentity:
        leaf = first_certificate(cert_chain)
        ident = validate(leaf, intermediates=[self.intermediate, *self._retired], root=self.root,
                         trust_domain=self.trust_domain, eku=eku, now=c.utc(now),
                         is_revoked=self.is_revoked)
        if (ident.uri != expect) if exact else not ident.uri.startswith(expect):
            raise CertificateRejected("unexpected-id", f"{ident.uri} is not allowed here "
                                      f"(expected {expect}{'' if exact else '...'}).")
        return VerifiedIdentity(spiffe_id=ident.uri, kind=ident.kind, user=ident.user,
                                device=ident.device, app=ident.app, process=ident.process,
                                serial=leaf.serial_number, not_after=leaf.not_valid_after_utc)

    def _host_permitted(self, host: str) -> bool:
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            bare = host.removeprefix("*.")
            return any(bare == n or bare.endswith("." + n) for n in self.dns_names)

    def _issue(self, uri: str | None, hosts: Sequence[str], ekus: Sequence[x509.ObjectIdentifier],
               ttl_s: int, now: datetime.datetime | None, role: str) -> Issued:
        key = c.new_key()
        cert = self._sign(uri, hosts, ekus, ttl_s, c.utc(now), role, key)
        return Issued(cert_pem=c.pem(cert) + c.pem(self.intermediate), key_pem=c.key_pem(key),
                      spiffe_id=uri, not_after=cert.not_valid_after_utc, serial=cert.serial_number)

    def _sign(self, uri: str | None, hosts: Iterable[str], ekus: Sequence[x509.ObjectIdentifier],
              ttl_s: int, moment: datetime.datetime, role: str,
              key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
        if ttl_s <= 0:
            raise PkiError(f"ttl_s must be positive, got {ttl_s}.")
        limit = self.intermediate.not_valid_after_utc
        if moment >= limit or moment < self.intermediate.not_valid_before_utc:
            raise PkiError(f"the intermediate CA is not valid at {moment:%Y-%m-%d} (it expires "
                           f"{limit:%Y-%m-%d}); run `noops ca rotate` with the root key online.")
        return c.build_leaf(issuer=self.intermediate, issuer_key=self._key, key=key, uri=uri,
                            hosts=hosts, ekus=ekus, role=role,
                            not_before=moment - datetime.timedelta(seconds=c.BACKDATE_S),
                            not_after=min(moment + datetime.timedelta(seconds=ttl_s), limit))


def _new_intermediate(folder: Path, domain: str, names: Sequence[str], root: x509.Certificate,
                      root_key: ec.EllipticCurvePrivateKey, moment: datetime.datetime) -> None:
    key = c.new_key()
    cert = c.build_ca(subject=c.ca_name(domain, "intermediate"), key=key, issuer=root,
                      issuer_key=root_key, path_length=0,
                      not_before=moment - datetime.timedelta(seconds=c.BACKDATE_S),
                      not_after=min(moment + INTERMEDIATE_TTL, root.not_valid_after_utc),
                      constraints=c.name_constraints(domain, names))
    c.write_atomic(folder / "intermediate.key", c.key_pem(key), 0o600)
    c.write_atomic(folder / "intermediate.crt", c.pem(cert), 0o644)


def _reason_flag(reason: str) -> x509.ReasonFlags | None:
    """Map a free-text reason to a CRL reason code when it names one (``key_compromise`` or
    ``keyCompromise``); RFC 5280 says to omit ``unspecified``."""
    wanted = reason.replace("-", "_").lower()
    for flag in x509.ReasonFlags:
        if flag is not x509.ReasonFlags.unspecified and wanted in (flag.name.lower(),
                                                                    flag.value.lower()):
            return flag
    return None
