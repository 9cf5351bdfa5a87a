"""Path validation for :mod:`noops.gate.pki`: leaf -> one of our intermediates -> our root.

Why not ``cryptography.x509.verification``: its ``ClientVerifier`` (cryptography 48) stops with
"unsupported name constraint" on any URI name constraint, and our intermediate carries one
(``spiffe://<trust-domain>`` only). Our chains have one fixed shape, so the RFC 5280 checks that
matter are spelled out here instead, each with its own rejection code:

* the leaf is one DER certificate, v3, ``CA:false``, no ``keyCertSign``/``cRLSign``, has
  ``digitalSignature``, EKU present and containing the required purpose, no unknown critical
  extension, exactly one URI SAN (SPIFFE X509-SVID §2) and only DNS/IP besides;
* its issuer is one of *our* intermediates (by name and ECDSA signature); chains a peer sends
  are ignored, so a foreign CA that copies our names cannot slip in an intermediate;
* the intermediate is a CA with ``keyCertSign`` and ``pathlen:0`` signed by our root, and every
  SAN of the leaf lies inside the intermediate's name constraints (read from the certificate);
* leaf, intermediate and root are valid at ``now``; no serial in the chain is revoked.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from noops.gate._pki_certs import CertificateRejected, SpiffeId, parse_spiffe_id

_T = TypeVar("_T", bound=x509.ExtensionType)
_PURPOSE = {ExtendedKeyUsageOID.CLIENT_AUTH: "client authentication",
            ExtendedKeyUsageOID.SERVER_AUTH: "server authentication"}
_KNOWN_CRITICAL = {
    x509.BasicConstraints.oid, x509.KeyUsage.oid, x509.SubjectAlternativeName.oid,
    x509.ExtendedKeyUsage.oid,
}


def first_certificate(data: bytes) -> x509.Certificate:
    """The leaf: the first certificate of a PEM chain, or a single DER certificate."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            certs = x509.load_pem_x509_certificates(data)
            return certs[0]
        return x509.load_der_x509_certificate(data)
    except (ValueError, IndexError) as exc:
        raise CertificateRejected("malformed", "the client certificate cannot be parsed; "
                                  "send a PEM chain or one DER certificate.") from exc


def validate(leaf: x509.Certificate, *, intermediates: Sequence[x509.Certificate],
             root: x509.Certificate, trust_domain: str, eku: x509.ObjectIdentifier,
             now: datetime.datetime, is_revoked: Callable[[int], bool]) -> SpiffeId:
    """Run every check in the module docstring; return the leaf's identity or raise
    :class:`CertificateRejected`."""
    uri = _check_leaf_shape(leaf, eku)
    spiffe = parse_spiffe_id(uri, trust_domain)
    issuer = _find_issuer(leaf, intermediates, root)
    _check_constraints(leaf, issuer)
    for cert, what in ((leaf, "certificate"), (issuer, "issuing CA"), (root, "root CA")):
        if now < cert.not_valid_before_utc:
            raise CertificateRejected("not-yet-valid", f"the {what} is not valid before "
                                      f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z; check the "
                                      "clocks of both machines.")
        if now > cert.not_valid_after_utc:
            raise CertificateRejected("expired", f"the {what} expired at "
                                      f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z; issue a new one.")
    for cert in (leaf, issuer):
        if is_revoked(cert.serial_number):
            raise CertificateRejected("revoked", f"certificate serial {cert.serial_number:x} is "
                                      "revoked; enroll the device again or ask an admin.")
    return spiffe


def _check_leaf_shape(leaf: x509.Certificate, eku: x509.ObjectIdentifier) -> str:
    if leaf.version is not x509.Version.v3:
        raise CertificateRejected("malformed", "the certificate is not X.509 v3.")
    bc = _extension(leaf, x509.BasicConstraints, "not-a-leaf", "has no basic constraints")
    if bc.ca:
        raise CertificateRejected("not-a-leaf", "the certificate is a CA certificate; present "
                                  "a leaf certificate issued to a workload or device.")
    for ext in leaf.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise CertificateRejected("critical-extension", f"the certificate has an unknown "
                                      f"critical extension {ext.oid.dotted_string}.")
    ku = _extension(leaf, x509.KeyUsage, "key-usage", "has no key usage")
    if not ku.digital_signature or ku.key_cert_sign or ku.crl_sign:
        raise CertificateRejected("key-usage", "the certificate's key usage must be "
                                  "digitalSignature without keyCertSign or cRLSign.")
    ekus = _extension(leaf, x509.ExtendedKeyUsage, "eku", "has no extended key usage")
    if eku not in ekus:
        purpose = _PURPOSE.get(eku, eku.dotted_string)
        raise CertificateRejected("eku", f"the certificate is not allowed for {purpose}; use a "
                                  "certificate issued for that purpose.")
    san = _extension(leaf, x509.SubjectAlternativeName, "san", "has no subject alternative name")
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise CertificateRejected("san", f"the certificate has {len(uris)} URI SANs; an "
                                  "X.509-SVID has exactly one.")
    if any(not isinstance(n, x509.UniformResourceIdentifier | x509.DNSName | x509.IPAddress)
           for n in san):
        raise CertificateRejected("san", "the certificate has SAN types other than URI, DNS, IP.")
    return uris[0]


def _find_issuer(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
                 root: x509.Certificate) -> x509.Certificate:
    for inter in intermediates:
        if inter.subject != leaf.issuer:
            continue
        try:
            leaf.verify_directly_issued_by(inter)
            inter.verify_directly_issued_by(root)
        except (InvalidSignature, ValueError, TypeError):
            continue
        bc = inter.extensions.get_extension_for_class(x509.BasicConstraints).value
        ku = inter.extensions.get_extension_for_class(x509.KeyUsage).value
        if bc.ca and bc.path_length == 0 and ku.key_cert_sign:
            return inter
    raise CertificateRejected("untrusted-issuer", "the certificate was not issued by this noops "
                              "CA; enroll with `noops device enroll` or check the CA bundle.")


def _check_constraints(leaf: x509.Certificate, issuer: x509.Certificate) -> None:
    try:
        nc = issuer.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    for name in san:
        if not _permitted(name, nc):
            raise CertificateRejected("name-constraints", f"{name.value} is outside the issuing "
                                      "CA's name constraints.")


def _permitted(name: x509.GeneralName, nc: x509.NameConstraints) -> bool:
    """RFC 5280 §4.2.1.10 for the three SAN types we issue; a type with no permitted subtree
    is unconstrained, an excluded match always loses."""
    def matches(subtree: x509.GeneralName) -> bool:
        if type(subtree) is not type(name):
            return False
        if isinstance(name, x509.UniformResourceIdentifier):
            return _host_within((urlsplit(name.value).hostname or ""), subtree.value, uri=True)
        if isinstance(name, x509.DNSName):
            return _host_within(name.value.lower().removeprefix("*."), subtree.value, uri=False)
        if isinstance(name, x509.IPAddress):
            network = subtree.value
            address = name.value
            return (isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network)
                    and isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
                    and address in network)
        return False

    if any(matches(s) for s in nc.excluded_subtrees or ()):
        return False
    permitted = [s for s in nc.permitted_subtrees or () if type(s) is type(name)]
    return not permitted or any(matches(s) for s in permitted)


def _host_within(host: str, constraint: str, *, uri: bool) -> bool:
    host, constraint = host.lower().rstrip("."), constraint.lower()
    if constraint.startswith("."):
        return host.endswith(constraint)
    if uri:  # a URI constraint without a leading dot names exactly one host
        return host == constraint
    return host == constraint or host.endswith("." + constraint)


def _extension(cert: x509.Certificate, kind: type[_T], reason: str, missing: str) -> _T:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound as exc:
        raise CertificateRejected(reason, f"the certificate {missing}; issue it from this CA.") \
            from exc
    except ValueError as exc:
        raise CertificateRejected("malformed", f"the certificate has a broken extension: {exc}") \
            from exc
