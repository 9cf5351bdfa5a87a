"""The identity assertion the gateway adds to every request it forwards: ``X-Noops-Assertion``.

A compact JWS (ES256) whose claims say who is calling, as the gateway verified it::

    {"iss": "noops-gateway", "aud": "<app>", "sub": "<user or SPIFFE ID>", "groups": [...],
     "device": "<user>/<name>" | null, "score": 0-100, "outcome": "allow" | "read_only",
     "iat": ..., "nbf": ..., "exp": iat + 300, "jti": "<request id of the first use>"}

Apps that want the caller's identity verify it with :func:`verify_assertion` (or any JOSE
library pinned to ES256) against the JWKS the gateway serves on every routed host at
``/.well-known/noops/jwks.json``. The audience is the app, so an assertion minted for app A is
refused by app B; the lifetime is capped at 10 minutes (IAP's rule) by the verifier too.

The signing key lives in ``<gate dir>/assertion.key`` (0600), made on first use.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from noops.gate._errors import GateError
from noops.gate._identity_db import OIDCError
from noops.gate._identity_jose import Jwk, parse_jwks, token_header, verify_jws
from noops.gate._pki_certs import key_pem, load_key, new_key, write_atomic

__all__ = ["ASSERTION_HEADER", "ISSUER", "JWKS_PATH", "MAX_LIFETIME_S", "AssertionError_",
           "AssertionSigner", "JwksCache", "verify_assertion"]

ASSERTION_HEADER: Final = "X-Noops-Assertion"
JWKS_PATH: Final = "/.well-known/noops/jwks.json"
ISSUER: Final = "noops-gateway"
LIFETIME_S: Final = 300
MAX_LIFETIME_S: Final = 600
SKEW_S: Final = 30


class AssertionError_(GateError):
    """An assertion failed verification; ``reason`` is a stable code."""

    http_status = 401

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class AssertionSigner:
    """Signs assertions with the gateway's P-256 key (created at ``key_path`` on first use)."""

    def __init__(self, key_path: Path, *, issuer: str = ISSUER, lifetime_s: int = LIFETIME_S) -> None:
        if not 0 < lifetime_s <= MAX_LIFETIME_S:
            raise GateError(f"assertion lifetime must be 1..{MAX_LIFETIME_S} s, got {lifetime_s}")
        if not key_path.exists():
            key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(key_path, key_pem(new_key()), 0o600)
        self._key = load_key(key_path)
        numbers = self._key.public_key().public_numbers()
        self._jwk = {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                     "x": _b64(numbers.x.to_bytes(32, "big")), "y": _b64(numbers.y.to_bytes(32, "big"))}
        # RFC 7638 thumbprint as the key id: stable for the key, changes with it.
        canonical = json.dumps({k: self._jwk[k] for k in ("crv", "kty", "x", "y")},
                               separators=(",", ":"), sort_keys=True).encode()
        digest = hashes.Hash(hashes.SHA256())
        digest.update(canonical)
        self.kid = _b64(digest.finalize())
        self._jwk["kid"] = self.kid
        self.issuer = issuer
        self.lifetime_s = lifetime_s
        self._header = _b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": self.kid},
                                       separators=(",", ":")).encode())

    def jwks(self) -> dict[str, Any]:
        """The public JWKS document."""
        return {"keys": [dict(self._jwk)]}

    def sign(self, claims: Mapping[str, Any], *, now: float | None = None) -> str:
        """A token for ``claims`` (``aud`` and ``sub`` required); iss/iat/nbf/exp/jti are set here."""
        issued = int(time.time() if now is None else now)
        body = {**claims, "iss": self.issuer, "iat": issued, "nbf": issued,
                "exp": issued + self.lifetime_s, "jti": claims.get("jti") or secrets.token_urlsafe(12)}
        payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
        signing_input = f"{self._header}.{payload}".encode("ascii")
        r, s = decode_dss_signature(self._key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return f"{self._header}.{payload}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def verify_assertion(token: str, keys: Sequence[Jwk], *, audience: str, issuer: str = ISSUER,
                     now: float | None = None) -> dict[str, Any]:
    """Verify an ``X-Noops-Assertion`` for app ``audience``; return its claims.

    Only ES256 is accepted (``none`` and HMAC can never pass, so a public key cannot be used as
    an HMAC secret); ``jku``/``x5u``/``jwk``/``x5c`` headers are ignored (keys come from
    ``keys`` only) and an unknown ``kid`` is refused. Then ``iss``, ``aud`` (exactly this app),
    ``exp``/``nbf``/``iat`` with 30 s of skew, and a lifetime of at most 10 minutes.
    """
    moment = time.time() if now is None else now
    try:
        header = token_header(token)
        kid = header.get("kid")
        if not isinstance(kid, str) or not any(k.kid == kid for k in keys):
            raise AssertionError_("unknown_kid", f"no gateway key has kid {kid!r}")
        claims = verify_jws(token, keys, frozenset({"ES256"}))
    except OIDCError as exc:
        raise AssertionError_("bad_signature", str(exc).replace("ID token", "assertion")) from exc
    if claims.get("iss") != issuer:
        raise AssertionError_("wrong_issuer", f"assertion issuer {claims.get('iss')!r} is not {issuer!r}")
    aud = claims.get("aud")
    if aud != audience:
        raise AssertionError_("wrong_audience", f"assertion is for {aud!r}, not {audience!r}")
    times = [claims.get(k) for k in ("iat", "nbf", "exp")]
    if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in times):
        raise AssertionError_("bad_times", "assertion lacks numeric iat, nbf and exp")
    iat, nbf, exp = (float(t) for t in times)  # type: ignore[arg-type]
    if exp <= moment - SKEW_S:
        raise AssertionError_("expired", "assertion expired")
    if nbf > moment + SKEW_S or iat > moment + SKEW_S:
        raise AssertionError_("not_yet_valid", "assertion is not valid yet (iat/nbf in the future)")
    if exp - iat > MAX_LIFETIME_S:
        raise AssertionError_("lifetime_too_long", f"assertion lifetime over {MAX_LIFETIME_S} s")
    return claims


class JwksCache:
    """The gateway's keys for an app that verifies assertions: fetched with ``fetch`` (returns
    the JWKS document), refetched on an unknown ``kid`` at most once per ``min_refetch_s`` so a
    flood of tokens with random kids cannot turn into a flood of fetches."""

    def __init__(self, fetch: Callable[[], Mapping[str, Any]], *, min_refetch_s: float = 30.0) -> None:
        self._fetch = fetch
        self.min_refetch_s = min_refetch_s
        self._keys: list[Jwk] = []
        self._fetched_at = float("-inf")
        self.fetches = 0
        self._lock = threading.Lock()

    def keys_for(self, token: str, *, now: float | None = None) -> list[Jwk]:
        moment = time.monotonic() if now is None else now
        try:
            kid = token_header(token).get("kid")
        except OIDCError:
            return self._keys
        with self._lock:
            if not any(k.kid == kid for k in self._keys) and moment - self._fetched_at >= self.min_refetch_s:
                self._fetched_at = moment
                self.fetches += 1
                self._keys = parse_jwks(self._fetch())
            return list(self._keys)

