"""OIDC login against a real identity provider on 127.0.0.1.

``TestIdP`` is a small OpenID provider written for these tests on ``http.server``: discovery,
``/authorize`` (auto-approves the test user and redirects with a code), ``/token`` (checks the
client secret, redirect URI, single-use code and the PKCE S256 verifier) and ``/jwks``. It signs
ID tokens itself with ``cryptography`` (not with noops' verifier code) and can be told to
misbehave through ``TestIdP.mode`` to prove the client rejects each kind of bad token.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from noops.gate.identity import IdentityStore, OIDCError, OIDCProvider

pytestmark = pytest.mark.gate

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
    acr: str | None = None
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    token_requests: int = 0
    jwks_requests: int = 0

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
                "token_endpoint_auth_methods_supported": ["client_secret_basic"]}

    def id_token(self, nonce: str, access_token: str) -> str:
        now = int(time.time())
        mode = self.mode
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": "user-42", "aud": CLIENT_ID, "iat": now, "exp": now + 300,
            "nonce": nonce, "email": "ada@example.test", "email_verified": True,
            "groups": ["ops", "dev"], "amr": self.amr,
            "at_hash": b64url(hashlib.sha256(access_token.encode()).digest()[:16])}
        if self.acr is not None:
            claims["acr"] = self.acr
        header: dict[str, Any] = {"alg": "RS256", "kid": self.rsa_kid, "typ": "JWT"}
        key: Any = self.rsa_key
        if mode == "wrong_aud":
            claims["aud"] = "someone-else"
        elif mode == "multi_aud_no_azp":
            claims["aud"] = [CLIENT_ID, "someone-else"]
        elif mode == "wrong_iss":
            claims["iss"] = "https://evil.example.test"
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
                if (q.get("client_id") != CLIENT_ID or q.get("redirect_uri") != REDIRECT_URI
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
                self.send_header("Location", f"{REDIRECT_URI}?{back}")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            if self.path != "/token":
                self.send_json(404, {"error": "not_found"})
                return
            idp.token_requests += 1
            length = int(self.headers.get("Content-Length", "0"))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            auth = self.headers.get("Authorization", "")
            expected = base64.b64encode(
                f"{urllib.parse.quote(CLIENT_ID, safe='')}:"
                f"{urllib.parse.quote(CLIENT_SECRET, safe='')}".encode()).decode()
            if auth != f"Basic {expected}":
                self.send_json(401, {"error": "invalid_client"})
                return
            grant = idp.codes.pop(form.get("code", ""), None)  # single use
            verifier = form.get("code_verifier", "")
            if (grant is None or form.get("grant_type") != "authorization_code"
                    or form.get("redirect_uri") != grant["redirect_uri"]
                    or b64url(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]):
                self.send_json(400, {"error": "invalid_grant"})
                return
            access = secrets.token_urlsafe(24)
            self.send_json(200, {"access_token": access, "token_type": "Bearer", "expires_in": 300,
                                 "id_token": idp.id_token(grant["nonce"], access)})

    return Handler


@pytest.fixture
def idp() -> Iterator[TestIdP]:
    state = TestIdP()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.issuer = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def provider(idp: TestIdP) -> Iterator[OIDCProvider]:
    p = OIDCProvider(idp.issuer, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI,
                     scopes=("openid", "email", "groups"))
    yield p
    p.close()


def browse(authorize_url: str) -> str:
    """What the browser does: follow /authorize and return the callback's query string."""
    resp = httpx.get(authorize_url, follow_redirects=False, timeout=5)
    assert resp.status_code == 302, resp.text
    location = resp.headers["location"]
    assert location.startswith(REDIRECT_URI + "?")
    return urllib.parse.urlsplit(location).query


def login(provider: OIDCProvider) -> Any:
    url, login_state = provider.begin_login()
    return provider.finish_login(browse(url), login_state)


# -- the happy paths ------------------------------------------------------------------------------

def test_discovery(provider: OIDCProvider, idp: TestIdP) -> None:
    config = provider.discover()
    assert config["issuer"] == idp.issuer and config["jwks_uri"] == f"{idp.issuer}/jwks"


def test_full_code_flow_with_pkce(provider: OIDCProvider, idp: TestIdP) -> None:
    url, login_state = provider.begin_login()
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert url.startswith(f"{idp.issuer}/authorize?")
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert q["state"] and q["nonce"] and q["state"] not in login_state
    assert q["scope"] == "openid email groups" and q["redirect_uri"] == REDIRECT_URI
    identity = provider.finish_login(browse(url), login_state)
    assert identity.sub == "user-42" and identity.email == "ada@example.test"
    assert identity.email_verified and identity.groups == ("ops", "dev")
    assert identity.mfa is False
    assert idp.token_requests == 1


def test_es256_tokens(provider: OIDCProvider, idp: TestIdP) -> None:
    idp.mode = "es256"
    assert login(provider).sub == "user-42"


@pytest.mark.parametrize(("amr", "acr", "mfa"), [
    (["pwd", "mfa"], None, True), (["otp"], None, True), (["pwd"], None, False),
    ([], "https://refeds.org/profile/mfa", True), ([], "urn:low", False)])
def test_mfa_from_amr_or_acr(provider: OIDCProvider, idp: TestIdP, amr: list[str], acr: str | None,
                             mfa: bool) -> None:
    idp.amr, idp.acr = amr, acr
    assert login(provider).mfa is mfa


def test_oidc_login_becomes_a_session(provider: OIDCProvider, idp: TestIdP, tmp_path: Any) -> None:
    idp.amr = ["mfa"]
    identity = login(provider)
    store = IdentityStore(tmp_path / "identity.db")
    methods = {"oidc", "oidc_mfa"} if identity.mfa else {"oidc"}
    _, cookie = store.create_session(f"oidc:{identity.sub}", auth_methods=methods,
                                     client_ip="127.0.0.1")
    session = store.get_session(cookie)
    assert session is not None and session.mfa
    store.close()


# -- state, PKCE and flow misuse ------------------------------------------------------------------

def test_replayed_login_state_rejected(provider: OIDCProvider) -> None:
    url, login_state = provider.begin_login()
    query = browse(url)
    provider.finish_login(query, login_state)
    with pytest.raises(OIDCError, match="unknown, used or expired"):
        provider.finish_login(query, login_state)


def test_state_from_another_login_rejected(provider: OIDCProvider, idp: TestIdP) -> None:
    url_a, _state_a = provider.begin_login()
    _url_b, state_b = provider.begin_login()
    with pytest.raises(OIDCError, match="state does not match"):
        provider.finish_login(browse(url_a), state_b)  # login CSRF: attacker's callback
    assert idp.token_requests == 0


def test_failed_callback_consumes_the_login(provider: OIDCProvider) -> None:
    url, login_state = provider.begin_login()
    query = browse(url)
    forged = urllib.parse.urlencode({**dict(urllib.parse.parse_qsl(query)), "state": "x"})
    with pytest.raises(OIDCError):
        provider.finish_login(forged, login_state)
    with pytest.raises(OIDCError, match="unknown, used or expired"):
        provider.finish_login(query, login_state)


def test_expired_login_state(provider: OIDCProvider) -> None:
    url, login_state = provider.begin_login(now=time.time() - 601)
    with pytest.raises(OIDCError, match="expired"):
        provider.finish_login(browse(url), login_state)


def test_provider_error_and_mixup(provider: OIDCProvider, idp: TestIdP) -> None:
    url, login_state = provider.begin_login()
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    with pytest.raises(OIDCError, match="access_denied"):
        provider.finish_login({"error": "access_denied", "state": q["state"]}, login_state)
    url, login_state = provider.begin_login()
    query = dict(urllib.parse.parse_qsl(browse(url)), iss="https://other.example.test")
    with pytest.raises(OIDCError, match="another issuer"):
        provider.finish_login(query, login_state)


def test_idp_enforces_pkce_and_client_secret(idp: TestIdP) -> None:
    wrong_verifier = OIDCProvider(idp.issuer, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI)
    url, login_state = wrong_verifier.begin_login()
    query = browse(url)
    # the verifier lives only server-side; swap it to prove the IdP checks it
    wrong_verifier._pending[login_state] = dataclasses.replace(
        wrong_verifier._pending[login_state], verifier="x" * 64)
    with pytest.raises(OIDCError, match="invalid_grant"):
        wrong_verifier.finish_login(query, login_state)
    wrong_verifier.close()
    wrong_secret = OIDCProvider(idp.issuer, CLIENT_ID, "nope", REDIRECT_URI)
    with pytest.raises(OIDCError, match="invalid_client"):
        login(wrong_secret)
    wrong_secret.close()


def test_code_is_single_use(provider: OIDCProvider) -> None:
    url, state1 = provider.begin_login()
    query = browse(url)
    provider.finish_login(query, state1)
    # the same code under a fresh login state fails twice over (state and code)
    _, state2 = provider.begin_login()
    with pytest.raises(OIDCError):
        provider.finish_login(query, state2)


# -- ID token rejections --------------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "message"), [
    ("wrong_aud", "not meant for this client"),
    ("multi_aud_no_azp", "authorized party"),
    ("wrong_iss", "issued by someone else"),
    ("bad_nonce", "nonce"),
    ("no_nonce", "nonce"),
    ("expired", "expired"),
    ("future_iat", "not valid yet"),
    ("bad_at_hash", "at_hash"),
    ("alg_none", "algorithm 'none' is not accepted"),
    ("alg_none_with_kid", "algorithm 'none' is not accepted"),
    ("hs256_public_key", "algorithm 'HS256' is not accepted"),
    ("other_key", "signature does not verify"),
    ("other_key_unknown_kid", "no provider key"),
    ("embedded_jwk", "signature does not verify"),
    ("tampered", "signature does not verify"),
])
def test_bad_id_tokens_rejected(provider: OIDCProvider, idp: TestIdP, mode: str, message: str) -> None:
    idp.mode = mode
    with pytest.raises(OIDCError, match=message):
        login(provider)


def test_unknown_kid_refetch_is_rate_limited(provider: OIDCProvider, idp: TestIdP) -> None:
    login(provider)
    assert idp.jwks_requests == 1
    idp.mode = "other_key_unknown_kid"
    for _ in range(3):
        with pytest.raises(OIDCError):
            login(provider)
    assert idp.jwks_requests == 1  # within jwks_refetch_s: no refetch storm
    provider.jwks_refetch_s = 0
    with pytest.raises(OIDCError):
        login(provider)
    assert idp.jwks_requests == 2


def test_key_rotation_picked_up(provider: OIDCProvider, idp: TestIdP) -> None:
    provider.jwks_refetch_s = 0
    login(provider)
    idp.rsa_key, idp.rsa_kid = idp.other_key, "rsa2"  # the IdP rotates to a new kid
    assert login(provider).sub == "user-42"
    assert idp.jwks_requests == 2


def test_discovery_issuer_mismatch(idp: TestIdP) -> None:
    p = OIDCProvider(idp.issuer + "/", CLIENT_ID, CLIENT_SECRET, REDIRECT_URI)
    with pytest.raises(OIDCError, match="discovery issuer"):
        p.discover()
    p.close()


def test_plain_http_only_for_loopback() -> None:
    with pytest.raises(OIDCError, match="https"):
        OIDCProvider("http://idp.example.test", CLIENT_ID, CLIENT_SECRET, REDIRECT_URI)
