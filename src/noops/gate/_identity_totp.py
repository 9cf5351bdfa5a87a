"""TOTP (RFC 6238 over RFC 4226 HOTP): SHA-1, 30 s steps, 6 digits - what every authenticator
app implements. Pure functions; the replay bookkeeping lives in :mod:`noops.gate.identity`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import urllib.parse

__all__ = ["DIGITS", "STEP_S", "hotp", "matching_step", "new_secret", "otpauth_uri", "totp_at"]

STEP_S = 30
DIGITS = 6


def new_secret() -> str:
    """A fresh 160-bit secret (RFC 4226 recommends 160 bits) as unpadded base32."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii").rstrip("=")


def _key(secret_b32: str) -> bytes:
    s = secret_b32.strip().replace(" ", "").upper()
    return base64.b32decode(s + "=" * (-len(s) % 8))


def hotp(key: bytes, counter: int, digits: int = DIGITS) -> str:
    """RFC 4226 section 5.3: HMAC-SHA-1, dynamic truncation, modulo 10^digits."""
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    code = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(code % 10**digits).zfill(digits)


def totp_at(secret_b32: str, unix_time: float, digits: int = DIGITS) -> str:
    return hotp(_key(secret_b32), int(unix_time // STEP_S), digits)


def matching_step(secret_b32: str, code: str, unix_time: float, window: int = 1) -> int | None:
    """The time step in ``[now-window, now+window]`` whose code equals ``code``, else None.

    Every candidate is compared (no early exit) with a constant-time comparison.
    """
    if len(code) != DIGITS or not code.isdigit():
        return None
    key = _key(secret_b32)
    now_step = int(unix_time // STEP_S)
    found: int | None = None
    for step in range(now_step - window, now_step + window + 1):
        if hmac.compare_digest(hotp(key, step), code) and found is None:
            found = step
    return found


def otpauth_uri(secret_b32: str, account: str, issuer: str) -> str:
    """The ``otpauth://`` URI authenticator apps read from a QR code (Key Uri Format)."""
    label = urllib.parse.quote(f"{issuer}:{account}", safe="")
    query = urllib.parse.urlencode({"secret": secret_b32, "issuer": issuer, "algorithm": "SHA1",
                                    "digits": DIGITS, "period": STEP_S})
    return f"otpauth://totp/{label}?{query}"
