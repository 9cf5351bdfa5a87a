"""Just enough JOSE to verify an OIDC ID token: compact JWS with RS256 or ES256, keys from a JWKS.

Why our own and not a JOSE library: the gate needs one direction (verify) and two algorithms,
and ``cryptography`` (already a dependency) does the maths. Writing the ~100 lines makes the
dangerous choices explicit instead of configured: the algorithm allow-list is fixed here (no
``none``, no HMAC, so a public key can never be used as an HMAC secret - PyJWT CVE-2022-29217),
the key must match the algorithm's key type, and the header's ``jku``/``x5u``/``jwk``/``x5c``
are never read: keys come only from the provider's configured JWKS.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from noops.gate._identity_db import OIDCError

__all__ = ["SUPPORTED_ALGS", "Jwk", "b64url_decode", "parse_jwks", "token_header", "verify_jws"]

SUPPORTED_ALGS = frozenset({"RS256", "ES256"})
_MIN_RSA_BITS = 2048


def b64url_decode(data: str) -> bytes:
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in data):
        raise OIDCError("malformed token: not base64url")
    try:
        return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    except (binascii.Error, ValueError) as exc:
        raise OIDCError("malformed token: not base64url") from exc


def _b64_int(data: object) -> int:
    if not isinstance(data, str):
        raise OIDCError("malformed JWKS key")
    return int.from_bytes(b64url_decode(data), "big")


@dataclass(frozen=True)
class Jwk:
    kid: str | None
    alg: str  # the JWS alg this key may verify: RS256 for RSA, ES256 for P-256
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def parse_jwks(doc: Mapping[str, Any]) -> list[Jwk]:
    """Signature keys from a JWKS document; encryption keys and unknown types are skipped."""
    keys = doc.get("keys")
    if not isinstance(keys, list):
        raise OIDCError("the provider's JWKS has no 'keys' list")
    out: list[Jwk] = []
    for entry in keys:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid") if isinstance(entry.get("kid"), str) else None
        kty = entry.get("kty")
        if kty == "RSA" and entry.get("alg", "RS256") == "RS256":
            pub = rsa.RSAPublicNumbers(_b64_int(entry.get("e")), _b64_int(entry.get("n"))).public_key()
            if pub.key_size >= _MIN_RSA_BITS:
                out.append(Jwk(kid, "RS256", pub))
        elif kty == "EC" and entry.get("crv") == "P-256" and entry.get("alg", "ES256") == "ES256":
            try:
                pub_ec = ec.EllipticCurvePublicNumbers(_b64_int(entry.get("x")), _b64_int(entry.get("y")),
                                                       ec.SECP256R1()).public_key()
            except ValueError as exc:  # point not on the curve
                raise OIDCError("the provider's JWKS holds an invalid EC key") from exc
            out.append(Jwk(kid, "ES256", pub_ec))
    return out


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OIDCError(f"malformed token: {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise OIDCError(f"malformed token: {what} is not a JSON object")
    return value


def token_header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise OIDCError("malformed token: a signed JWT has three parts")
    return _json_object(b64url_decode(parts[0]), "header")


def verify_jws(token: str, keys: Sequence[Jwk], allowed_algs: frozenset[str]) -> dict[str, Any]:
    """Verify the compact JWS ``token`` with one of ``keys``; return its JSON payload.

    Raises OIDCError for anything else: wrong part count, ``alg`` not allowed (``none``, HS*),
    ``crit`` headers, no key with the token's ``kid`` (or, without a kid, no key of its alg),
    or a bad signature.
    """
    header = token_header(token)
    head_b64, payload_b64, sig_b64 = token.split(".")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in (allowed_algs & SUPPORTED_ALGS):
        raise OIDCError(f"ID token algorithm {alg!r} is not accepted")
    if "crit" in header:
        raise OIDCError("ID token has critical header extensions we do not understand")
    kid = header.get("kid")
    candidates = [k for k in keys if k.alg == alg and (kid is None or k.kid == kid)]
    if not candidates:
        raise OIDCError(f"no provider key matches the ID token (kid {kid!r}, alg {alg})")
    signing_input = f"{head_b64}.{payload_b64}".encode("ascii")
    signature = b64url_decode(sig_b64)
    for jwk in candidates:
        if _verify_one(jwk, signing_input, signature):
            return _json_object(b64url_decode(payload_b64), "payload")
    raise OIDCError("ID token signature does not verify with the provider's keys")


def _verify_one(jwk: Jwk, signing_input: bytes, signature: bytes) -> bool:
    try:
        if isinstance(jwk.key, rsa.RSAPublicKey):
            jwk.key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            if len(signature) != 64:  # JWS ES256 is raw r||s, 32 bytes each (RFC 7518 3.4)
                return False
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                       int.from_bytes(signature[32:], "big"))
            jwk.key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
