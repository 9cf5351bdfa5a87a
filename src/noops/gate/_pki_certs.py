"""Building blocks of :mod:`noops.gate.pki`: its errors, SPIFFE IDs, certificate builders, files.

A leaf module: it imports nothing of noops except :mod:`noops.errors`. The public names are
re-exported by :mod:`noops.gate.pki`, their one documented home.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from noops.gate._errors import GateError

Kind = Literal["device", "workload", "gateway"]

# A clock-skew allowance: leaves start this long before they are issued, so a peer whose clock
# runs a little behind does not reject a certificate that was minted a moment ago.
BACKDATE_S = 60
SPIFFE_ID_MAX_BYTES = 2048  # SPIFFE-ID.md: URIs longer than this are rejected

# SPIFFE-ID.md allows letters, digits, ".", "-" and "_" in path segments. We also forbid a
# leading "." so "." and ".." (and hidden-file look-alikes) can never be a segment.
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,62}")
_TRUST_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class PkiError(GateError):
    """The built-in CA cannot do what was asked; the message says what to do instead."""

    exit_code = 12
    http_status = 500


class CertificateRejected(PkiError):
    """A peer certificate failed :meth:`CertificateAuthority.verify_client`.

    ``reason`` is a short stable code for logs and deny explanations: ``malformed``,
    ``not-a-leaf``, ``key-usage``, ``eku``, ``san``, ``spiffe-id``, ``untrusted-issuer``,
    ``name-constraints``, ``expired``, ``not-yet-valid``, ``revoked``, ``unexpected-id``,
    ``critical-extension``.
    """

    http_status = 403

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# -- names --------------------------------------------------------------------------------------


def check_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if it is a valid SPIFFE trust domain (lowercase DNS-like)."""
    if not _TRUST_DOMAIN.fullmatch(trust_domain) or ".." in trust_domain:
        raise PkiError(f"invalid trust domain {trust_domain!r}: use lowercase letters, digits, "
                       "'.', '-' and '_' (for example 'noops.local').")
    return trust_domain


def check_segment(what: str, value: str) -> str:
    """Return ``value`` if it can be one SPIFFE path segment (no '/', '..', empty, odd chars)."""
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise PkiError(f"invalid {what} {value!r} for a certificate identity: use 1-63 letters, "
                       "digits, '.', '-' or '_', not starting with '.'.")
    return value


def check_host(host: str) -> str:
    """Return ``host`` lowercased if it is a DNS name (leftmost ``*.`` allowed) or an IP."""
    host = host.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]
    if not labels or len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise PkiError(f"invalid host name {host!r}: use DNS names like 'app.example.com' "
                       "(a leading '*.' is allowed) or IP addresses.")
    return host


@dataclass(frozen=True)
class SpiffeId:
    """A parsed noops SPIFFE ID; ``kind`` says which of the other fields are set."""

    uri: str
    trust_domain: str
    kind: Kind
    user: str | None = None
    device: str | None = None
    app: str | None = None
    process: str | None = None


def workload_id(trust_domain: str, app: str, process: str) -> str:
    return f"spiffe://{trust_domain}/app/{check_segment('app', app)}/{check_segment('process', process)}"


def device_id(trust_domain: str, user: str, name: str) -> str:
    return f"spiffe://{trust_domain}/device/{check_segment('user', user)}/{check_segment('device', name)}"


def gateway_id(trust_domain: str) -> str:
    return f"spiffe://{trust_domain}/gateway"


def parse_spiffe_id(uri: str, trust_domain: str) -> SpiffeId:
    """Parse ``uri`` strictly as one of the three noops ID shapes in ``trust_domain``.

    Raises :class:`CertificateRejected` (``spiffe-id``) for anything else: another scheme or
    trust domain, a port, userinfo, query or fragment, the root path, a bad segment.
    """
    def bad(why: str) -> CertificateRejected:
        return CertificateRejected("spiffe-id", f"certificate identity {uri!r} {why}; "
                                   f"issue it again from this CA.")

    if len(uri.encode()) > SPIFFE_ID_MAX_BYTES:
        raise bad("is too long")
    if not uri.isascii():
        raise bad("has non-ASCII characters")
    parts = urlsplit(uri)
    if parts.scheme != "spiffe":
        raise bad("is not a spiffe:// URI")
    if parts.netloc != trust_domain:
        raise bad(f"is not in trust domain {trust_domain!r} (or has a port or userinfo)")
    if parts.query or parts.fragment or "?" in uri or "#" in uri:
        raise bad("has a query or fragment")
    segments = parts.path.split("/")[1:]
    if not parts.path.startswith("/") or not all(_SEGMENT.fullmatch(s) for s in segments):
        raise bad("has an empty or invalid path segment")
    match segments:
        case ["app", app, process]:
            return SpiffeId(uri, trust_domain, "workload", app=app, process=process)
        case ["device", user, device]:
            return SpiffeId(uri, trust_domain, "device", user=user, device=device)
        case ["gateway"]:
            return SpiffeId(uri, trust_domain, "gateway")
    raise bad("is not /app/<app>/<process>, /device/<user>/<name> or /gateway")


# -- certificates -------------------------------------------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_usage(*, ca: bool) -> x509.KeyUsage:
    """CAs sign certificates and CRLs only; leaves sign handshakes only (SPIFFE X509-SVID §4.3)."""
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                         crl_sign=ca, encipher_only=False, decipher_only=False)


def ca_name(trust_domain: str, role: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "noops"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"noops {role} CA {trust_domain}")])


def build_ca(*, subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
             issuer_key: ec.EllipticCurvePrivateKey, path_length: int,
             not_before: datetime.datetime, not_after: datetime.datetime,
             constraints: x509.NameConstraints | None = None) -> x509.Certificate:
    """A CA certificate; self-signed when ``issuer`` is None (then ``issuer_key`` is ``key``)."""
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                       critical=False)
    )
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def name_constraints(trust_domain: str, dns_names: Sequence[str]) -> x509.NameConstraints:
    """The intermediate's constraints: URI host = the trust domain (exact, RFC 5280 §4.2.1.10),
    DNS = the given names and their subdomains, IP = loopback only."""
    permitted: list[x509.GeneralName] = [x509.UniformResourceIdentifier(trust_domain)]
    permitted += [x509.DNSName(n) for n in dns_names]
    permitted += [x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
                  x509.IPAddress(ipaddress.ip_network("::1/128"))]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def build_leaf(*, issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey,
               key: ec.EllipticCurvePrivateKey, uri: str | None, hosts: Iterable[str],
               ekus: Sequence[x509.ObjectIdentifier], not_before: datetime.datetime,
               not_after: datetime.datetime, role: str) -> x509.Certificate:
    """An end-entity certificate: ``CA:false``, ``digitalSignature`` only, at most one URI SAN.

    The subject carries no identity (``O=noops, OU=<role>``); peers read the SAN, never the CN.
    """
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)] if uri else []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "noops"),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role)]))
        .issuer_name(issuer.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                       critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


SERVER_AND_CLIENT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
CLIENT_ONLY = (ExtendedKeyUsageOID.CLIENT_AUTH,)
SERVER_ONLY = (ExtendedKeyUsageOID.SERVER_AUTH,)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted EC key, refusing one that others can read (like ssh does)."""
    mode = path.stat().st_mode
    if mode & 0o077:
        raise PkiError(f"{path} is readable by other users (mode {mode & 0o777:o}); "
                       f"run `chmod 600 {path}` and check nobody copied it.")
    loaded = serialization.load_pem_private_key(path.read_bytes(), None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} is not an EC private key; restore it from backup or recreate the CA.")
    return loaded


def utc(now: datetime.datetime | None) -> datetime.datetime:
    """``now`` as an aware UTC datetime (naive values are taken as UTC); the clock if None."""
    if now is None:
        return datetime.datetime.now(datetime.UTC)
    if now.tzinfo is None:
        return now.replace(tzinfo=datetime.UTC)
    return now.astimezone(datetime.UTC)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a synced temporary file and a rename; ``mode`` from birth."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
