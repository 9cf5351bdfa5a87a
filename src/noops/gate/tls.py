"""A self-signed ``localhost`` certificate and a server context, for the proxy's own tests and
benchmarks (the front door itself serves certificates from the built-in CA: :mod:`.serving`).

:func:`localhost_certificate` makes one ECDSA P-256 certificate for ``localhost``,
``*.localhost``, ``127.0.0.1`` and ``::1`` that a client trusts by loading the certificate file
itself as its CA file.

OpenSSL (so curl and Python) refuses a wildcard with a single label after it: ``*.localhost``
does **not** verify for ``app.localhost``. Pass the app host names as ``extra_hosts`` to have
them listed explicitly; the certificate is regenerated when a name is missing.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from noops.gate._errors import GateError

__all__ = ["localhost_certificate", "server_context"]

CERT_NAME = "localhost.crt"
KEY_NAME = "localhost.key"
VALIDITY_DAYS = 365
RENEW_BEFORE_DAYS = 30

# TLS 1.2 suites for clients that lack 1.3: forward secrecy and AEAD only.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def localhost_certificate(directory: str | os.PathLike[str],
                          extra_hosts: Iterable[str] = ()) -> tuple[Path, Path]:
    """Return ``(cert_path, key_path)`` of the localhost certificate in ``directory``.

    Generated once and reused while it is valid for more than 30 days and names every host of
    ``extra_hosts`` (e.g. ``app.localhost``); regenerated (new key) otherwise. The directory is
    created 0700, the key written 0600 (atomically, via rename), the certificate 0644.
    Raises :class:`GateError` if the directory is not writable.
    """
    folder = Path(directory)
    cert_path, key_path = folder / CERT_NAME, folder / KEY_NAME
    names = ["localhost", "*.localhost"]
    names += sorted({h.strip().lower() for h in extra_hosts} - set(names))
    if _still_valid(cert_path, names) and key_path.is_file():
        return cert_path, key_path
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _self_signed(key, names)
        _write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()), 0o600)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise GateError(f"cannot write the localhost certificate to {folder}: {exc.strerror}; "
                        "point the gateway at a writable directory.") from exc
    return cert_path, key_path


def server_context(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 minimum (1.3 is negotiated whenever the client has it),
    ALPN ``http/1.1`` only, no compression or renegotiation.

    Raises :class:`GateError` when the files cannot be loaded.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    except (OSError, ssl.SSLError) as exc:
        raise GateError(f"cannot load the TLS certificate {cert} / key {key}: {exc}; "
                        "check both files exist and belong together.") from exc
    return ctx


def _still_valid(cert_path: Path, names: list[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    if not set(names) <= set(san.get_values_for_type(x509.DNSName)):
        return False
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return left > datetime.timedelta(days=RENEW_BEFORE_DAYS)


def _self_signed(key: ec.EllipticCurvePrivateKey, names: list[str]) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "noops development")])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)

