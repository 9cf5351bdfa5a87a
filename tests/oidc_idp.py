"""A small OpenID provider for tests, on ``http.server`` at 127.0.0.1: discovery,
``/authorize`` (auto-approves the test user and redirects to ``redirect_uri`` with a code),
``/token`` (checks the client secret, redirect URI, single-use code and the PKCE S256 verifier)
and ``/jwks``. It signs ID tokens itself with ``cryptography`` (not with noops' verifier code)
and can be told to misbehave through ``TestIdP.mode`` to prove the client rejects each kind of
bad token. ``serve()`` runs it for the length of a ``with`` block.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

CLIENT_ID = "noops-gate"
CLIENT_SECRET = "s3cret:with/odd&chars"  # exercises RFC 6749 form-encoding in Basic auth
REDIRECT_URI = "https://gate.example.test/_noops/oidc/callback"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def int_b64(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def sign_jwt(header: dict[str, Any], claims: dict[str, Any],
             key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | bytes | None) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    data = signing_input.encode()
    if key is None:
        sig = b""
    elif isinstance(key, bytes):
        sig = hmac.new(key, data, hashlib.sha256).digest()
    elif isinstance(key, rsa.RSAPrivateKey):
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input}.{b64url(sig)}"


# Made once per test run (RSA key generation dominates otherwise); never written to disk.
_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC_KEY = ec.generate_private_key(ec.SECP256R1())


@dataclass
class TestIdP:
    """The provider's state; ``mode`` and ``amr`` change what the next token looks like."""

    __test__ = False  # not a test class for pytest

    issuer: str = ""
    rsa_key: rsa.RSAPrivateKey = _RSA_KEY
    ec_key: ec.EllipticCurvePrivateKey = _EC_KEY
    other_key: rsa.RSAPrivateKey = _OTHER_KEY
    rsa_kid: str = "rsa1"
    mode: str = "ok"
    amr: list[str] = field(default_factory=lambda: ["pwd"])
    groups: list[str] = field(default_factory=lambda: ["ops", "dev"])  # the user's, in each ID token
    acr: str | None = None
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    redirect_uri: str = REDIRECT_URI
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)  # the forms received
    jwks_requests: int = 0
    # refresh tokens that still work (one use each: a refresh rotates it); deprovision() or
    # mode "down" (503 on the token endpoint) change how a refresh is answered
    refresh_tokens: set[str] = field(default_factory=set)
    deprovisioned: bool = False
    login_refresh_tokens: list[str] = field(default_factory=list)  # issued with a code, in order
    rotated: dict[str, str] = field(default_factory=dict)  # a used refresh token -> its successor
    revoked: list[str] = field(default_factory=list)  # tokens given back (RFC 7009), in order

    def refresh_chain(self, first: str) -> list[str]:
        """The refresh tokens of one sign-in, from the one its login got, in order of use."""
        chain = [first]
        while chain[-1] in self.rotated:
            chain.append(self.rotated[chain[-1]])
        return chain

    def deprovision(self) -> None:
        """The user is removed at the provider: every refresh token stops working (also one
        being redeemed right now)."""
        self.deprovisioned = True

    def refreshes(self) -> list[dict[str, str]]:
        return [f for f in self.token_requests if f.get("grant_type") == "refresh_token"]

    def jwks(self) -> dict[str, Any]:
        rsa_pub = self.rsa_key.public_key().public_numbers()
        ec_pub = self.ec_key.public_key().public_numbers()
        return {"keys": [
            {"kty": "RSA", "kid": self.rsa_kid, "use": "sig", "alg": "RS256",
             "n": int_b64(rsa_pub.n), "e": int_b64(rsa_pub.e)},
            {"kty": "EC", "kid": "ec1", "use": "sig", "alg": "ES256", "crv": "P-256",
             "x": b64url(ec_pub.x.to_bytes(32, "big")), "y": b64url(ec_pub.y.to_bytes(32, "big"))},
        ]}

    def discovery(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "revocation_endpoint": f"{self.issuer}/revoke"}

    def id_token(self, nonce: str | None, access_token: str) -> str:
        now = int(time.time())
        mode = self.mode
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": "user-42", "aud": self.client_id, "iat": now, "exp": now + 300,
            "nonce": nonce, "email": "ada@example.test", "email_verified": True,
            "groups": list(self.groups), "amr": self.amr,
            "at_hash": b64url(hashlib.sha256(access_token.encode()).digest()[:16])}
        if nonce is None:  # a refresh: no login to bind it to
            del claims["nonce"]
        if self.acr is not None:
            claims["acr"] = self.acr
        header: dict[str, Any] = {"alg": "RS256", "kid": self.rsa_kid, "typ": "JWT"}
        key: Any = self.rsa_key
        if mode == "wrong_aud":
            claims["aud"] = "someone-else"
        elif mode == "multi_aud_no_azp":
            claims["aud"] = [self.client_id, "someone-else"]
        elif mode == "wrong_iss":
            claims["iss"] = "https://evil.example.test"
        elif mode == "other_sub":
            claims["sub"] = "user-43"
        elif mode == "bad_nonce":
            claims["nonce"] = "not-the-nonce"
        elif mode == "no_nonce":
            del claims["nonce"]
        elif mode == "expired":
            claims["iat"], claims["exp"] = now - 3600, now - 1800
        elif mode == "future_iat":
            claims["iat"] = now + 3600
        elif mode == "bad_at_hash":
            claims["at_hash"] = b64url(b"\0" * 16)
        elif mode == "alg_none":
            header, key = {"alg": "none", "typ": "JWT"}, None
        elif mode == "alg_none_with_kid":
            header, key = {"alg": "none", "kid": "rsa1"}, None
        elif mode == "hs256_public_key":  # PyJWT CVE-2022-29217 style key confusion
            pem = self.rsa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            header, key = {"alg": "HS256", "kid": "rsa1"}, pem
        elif mode == "other_key":
            key = self.other_key
        elif mode == "other_key_unknown_kid":
            header["kid"], key = "rogue", self.other_key
        elif mode == "embedded_jwk":  # header-supplied key must be ignored
            pub = self.other_key.public_key().public_numbers()
            header = {"alg": "RS256", "jwk": {"kty": "RSA", "n": int_b64(pub.n), "e": int_b64(pub.e)}}
            key = self.other_key
        elif mode == "es256":
            header, key = {"alg": "ES256", "kid": "ec1"}, self.ec_key
        elif mode == "tampered":
            token = sign_jwt(header, claims, key)
            head, _, sig = token.split(".")
            forged = dict(claims, sub="admin")
            return f"{head}.{b64url(json.dumps(forged).encode())}.{sig}"
        return sign_jwt(header, claims, key)


def make_handler(idp: TestIdP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def send_json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/.well-known/openid-configuration":
                self.send_json(200, idp.discovery())
            elif url.path == "/jwks":
                idp.jwks_requests += 1
                self.send_json(200, idp.jwks())
            elif url.path == "/authorize":
                q = dict(urllib.parse.parse_qsl(url.query))
                idp.authorize_requests.append(q)
                if (q.get("client_id") != idp.client_id or q.get("redirect_uri") != idp.redirect_uri
                        or q.get("response_type") != "code"
                        or q.get("code_challenge_method") != "S256" or "openid" not in
                        q.get("scope", "").split()):
                    self.send_json(400, {"error": "invalid_request"})
                    return
                code = secrets.token_urlsafe(16)
                idp.codes[code] = {"challenge": q["code_challenge"], "nonce": q.get("nonce", ""),
                                   "redirect_uri": q["redirect_uri"]}
                back = urllib.parse.urlencode({"code": code, "state": q.get("state", ""),
                                               "iss": idp.issuer})
                self.send_response(302)
                self.send_header("Location", f"{idp.redirect_uri}?{back}")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            if self.path not in ("/token", "/revoke"):
                self.send_json(404, {"error": "not_found"})
                return
            length = int(self.headers.get("Content-Length", "0"))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            auth = self.headers.get("Authorization", "")
            expected = base64.b64encode(
                f"{urllib.parse.quote(idp.client_id, safe='')}:"
                f"{urllib.parse.quote(idp.client_secret, safe='')}".encode()).decode()
            if auth != f"Basic {expected}":
                self.send_json(401, {"error": "invalid_client"})
                return
            if self.path == "/revoke":  # RFC 7009: 200 whether or not the token was known
                idp.revoked.append(form.get("token", ""))
                idp.refresh_tokens.discard(form.get("token", ""))
                self.send_json(200, {})
                return
            idp.token_requests.append(form)
            if form.get("grant_type") == "refresh_token":
                self.refresh(form)
                return
            grant = idp.codes.pop(form.get("code", ""), None)  # single use
            verifier = form.get("code_verifier", "")
            if (grant is None or form.get("grant_type") != "authorization_code"
                    or form.get("redirect_uri") != grant["redirect_uri"]
                    or b64url(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]):
                self.send_json(400, {"error": "invalid_grant"})
                return
            access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
            idp.refresh_tokens.add(refresh)
            idp.login_refresh_tokens.append(refresh)
            self.send_json(200, {"access_token": access, "token_type": "Bearer", "expires_in": 300,
                                 "id_token": idp.id_token(grant["nonce"], access),
                                 "refresh_token": refresh})

        def refresh(self, form: dict[str, str]) -> None:
            if idp.mode == "down":
                self.send_json(503, {"error": "temporarily_unavailable"})
                return
            used = form.get("refresh_token", "")
            try:
                idp.refresh_tokens.remove(used)
            except KeyError:
                self.send_json(400, {"error": "invalid_grant"})
                return
            if idp.deprovisioned:
                self.send_json(400, {"error": "invalid_grant"})
                return
            access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
            idp.refresh_tokens.add(refresh)
            idp.rotated[used] = refresh
            self.send_json(200, {"access_token": access, "token_type": "Bearer", "expires_in": 300,
                                 "id_token": idp.id_token(None, access), "refresh_token": refresh})

    return Handler


@contextmanager
def serve(idp: TestIdP) -> Iterator[TestIdP]:
    """Run ``idp`` on a free port of 127.0.0.1 (its ``issuer`` set to that address)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(idp))
    idp.issuer = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield idp
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
