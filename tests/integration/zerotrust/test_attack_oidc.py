"""Attack checklist §8, OIDC items, against a running front door configured (``gate/oidc.toml``)
with a small OpenID provider run by the test on 127.0.0.1:

* ``state`` enforced: a tampered state, a callback without the login cookie (login CSRF) and a
  replayed callback create no session and never reach the token endpoint;
* the nonce is enforced (an ID token with another nonce is refused);
* PKCE (S256) is enforced: the verifier never leaves the gateway before the token request, and a
  code from another login (code injection) cannot be redeemed;
* the redirect URI is built from configuration and the routed host, never X-Forwarded-Host;
  an unsafe ``rd`` is refused before the provider is contacted;
* "IdP refresh failure deletes the session": the gateway keeps no IdP refresh token, so the
  equivalent guarantee is tested: deprovisioning the user (revoking the sessions) cuts access at
  once.
"""

from __future__ import annotations

import base64
import hashlib
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
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from zt_harness import Gateway, RawConnection, header_values, raw_get, wait_for

CLIENT_ID = "noops-gate"
CLIENT_SECRET = "idp-secret-1"
POLICY = """
[[route]]
id = "apps"
host = "*.localhost"
authenticated = true
"""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class IdP:
    issuer: str = ""
    redirect_uri: str = ""
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    mode: str = "ok"
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)

    def jwks(self) -> dict[str, Any]:
        n = self.key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "EC",
                    "crv": "P-256",
                    "kid": "k1",
                    "alg": "ES256",
                    "use": "sig",
                    "x": b64(n.x.to_bytes(32, "big")),
                    "y": b64(n.y.to_bytes(32, "big")),
                }
            ]
        }

    def id_token(self, nonce: str, access: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": "u-1",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": "other-nonce" if self.mode == "bad_nonce" else nonce,
            "email": "ada@example.test",
            "email_verified": True,
            "groups": ["dev"],
            "amr": ["pwd", "mfa"],
            "at_hash": b64(hashlib.sha256(access.encode()).digest()[:16]),
        }
        signing = (
            f"{b64(json.dumps({'alg': 'ES256', 'kid': 'k1'}).encode())}.{b64(json.dumps(claims).encode())}"
        )
        r, s = decode_dss_signature(self.key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _handler(idp: IdP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/.well-known/openid-configuration":
                self._json(
                    200,
                    {
                        "issuer": idp.issuer,
                        "authorization_endpoint": f"{idp.issuer}/authorize",
                        "token_endpoint": f"{idp.issuer}/token",
                        "jwks_uri": f"{idp.issuer}/jwks",
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["ES256"],
                        "code_challenge_methods_supported": ["S256"],
                        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                    },
                )
            elif url.path == "/jwks":
                self._json(200, idp.jwks())
            elif url.path == "/authorize":
                q = dict(urllib.parse.parse_qsl(url.query))
                idp.authorize_requests.append(q)
                if q.get("redirect_uri") != idp.redirect_uri or q.get("client_id") != CLIENT_ID:
                    self._json(400, {"error": "invalid_request"})
                    return
                code = secrets.token_urlsafe(16)
                idp.codes[code] = {
                    "challenge": q["code_challenge"],
                    "nonce": q.get("nonce", ""),
                    "method": q.get("code_challenge_method", ""),
                }
                back = urllib.parse.urlencode({"code": code, "state": q.get("state", ""), "iss": idp.issuer})
                self.send_response(302)
                self.send_header("Location", f"{idp.redirect_uri}?{back}")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            form = dict(
                urllib.parse.parse_qsl(self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode())
            )
            idp.token_requests.append(form)
            pair = f"{CLIENT_ID}:{CLIENT_SECRET}".encode()
            if self.headers.get("Authorization") != "Basic " + base64.b64encode(pair).decode():
                self._json(401, {"error": "invalid_client"})
                return
            grant = idp.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            if (
                grant is None
                or grant["method"] != "S256"
                or b64(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]
            ):
                self._json(400, {"error": "invalid_grant"})
                return
            access = secrets.token_urlsafe(24)
            self._json(
                200,
                {
                    "access_token": access,
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": idp.id_token(grant["nonce"], access),
                },
            )

    return Handler


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    state = IdP()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.issuer = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def gw(idp: IdP) -> Iterator[Gateway]:  # this module's own gateway: oidc.toml is read at start
    gateway = Gateway()
    (gateway.gate / "oidc.toml").write_text(
        f'issuer = "{idp.issuer}"\nclient_id = "{CLIENT_ID}"\n'
        f'client_secret = "{CLIENT_SECRET}"\nname = "Test IdP"\n'
    )
    gateway.add_app("echo")
    gateway.start()
    idp.redirect_uri = f"https://echo.localhost:{gateway.port}/.noops/oidc/callback"
    gateway.apply_policy(POLICY)
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(autouse=True)
def _reset(idp: IdP) -> None:
    idp.mode = "ok"


def _start(gw: Gateway, rd: str = "/dest", headers: list[tuple[str, str]] | None = None) -> tuple[str, str]:
    """GET /.noops/oidc/start: (the provider URL, the login cookie value)."""
    with RawConnection(gw) as c:
        r = c.request(raw_get(f"/.noops/oidc/start?rd={urllib.parse.quote(rd, safe='')}", headers=headers))
    assert r is not None and r.status == 303, r
    cookie = next(v for k, v in r.headers if k.lower() == "set-cookie")
    assert cookie.startswith("__Host-noops_oidc=") and "Secure" in cookie and "HttpOnly" in cookie
    return r.header("Location") or "", cookie.split(";")[0].split("=", 1)[1]


def _authorize(url: str) -> dict[str, str]:
    r = httpx.get(url, follow_redirects=False, timeout=5)
    assert r.status_code == 302, r.text
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.headers["location"]).query))


def _callback(gw: Gateway, query: dict[str, str], login_cookie: str | None) -> Any:
    headers = [("Cookie", f"__Host-noops_oidc={login_cookie}")] if login_cookie else []
    with RawConnection(gw) as c:
        r = c.request(raw_get("/.noops/oidc/callback?" + urllib.parse.urlencode(query), headers=headers))
    assert r is not None
    return r


def _session(r: Any) -> str | None:
    for k, v in r.headers:
        if k.lower() == "set-cookie" and v.startswith("__Host-noops_session=") and "Max-Age=0" not in v:
            return v.split(";")[0].split("=", 1)[1]
    return None


def test_login_with_state_nonce_pkce_and_configured_redirect(gw: Gateway, idp: IdP) -> None:
    url, login_cookie = _start(
        gw, headers=[("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Proto", "http")]
    )
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert url.startswith(f"{idp.issuer}/authorize?")
    assert q["redirect_uri"] == idp.redirect_uri  # from the routed host and the port, not the headers
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert len(q["state"]) >= 32 and len(q["nonce"]) >= 32 and q["state"] != q["nonce"]
    assert "code_verifier" not in q
    decoded = urllib.parse.unquote(login_cookie)
    assert q["state"] not in decoded and q["nonce"] not in decoded  # the cookie is only a handle
    back = _authorize(url)
    r = _callback(gw, back, login_cookie)
    assert r.status == 303 and r.header("Location") == "/dest", r
    session = _session(r)
    assert session is not None
    token = idp.token_requests[-1]
    assert b64(hashlib.sha256(token["code_verifier"].encode()).digest()) == q["code_challenge"]
    assert token["code_verifier"] not in decoded
    with RawConnection(gw) as c:
        ok = c.request(raw_get("/x", cookie=session))
    assert ok is not None and ok.status == 200
    assert header_values(ok.json(), "X-Noops-Assertion")


def test_tampered_state_creates_no_session(gw: Gateway, idp: IdP) -> None:
    url, login_cookie = _start(gw)
    back = _authorize(url)
    tokens = len(idp.token_requests)
    r = _callback(gw, {**back, "state": back["state"][:-2] + "xx"}, login_cookie)
    assert r.status == 401 and _session(r) is None
    assert len(idp.token_requests) == tokens  # refused before the code is redeemed
    # the login is consumed: the right state afterwards is refused too
    r = _callback(gw, back, login_cookie)
    assert r.status == 401 and _session(r) is None


def test_callback_without_the_login_cookie_is_refused(gw: Gateway, idp: IdP) -> None:
    url, _cookie = _start(gw)
    back = _authorize(url)  # an attacker's own valid callback URL, opened in the victim's browser
    r = _callback(gw, back, None)
    assert r.status == 401 and _session(r) is None
    _other_url, other_cookie = _start(gw)  # or with the victim's own, unrelated login in flight
    r = _callback(gw, back, other_cookie)
    assert r.status == 401 and _session(r) is None


def test_replayed_callback_is_refused(gw: Gateway, idp: IdP) -> None:
    url, login_cookie = _start(gw)
    back = _authorize(url)
    assert _callback(gw, back, login_cookie).status == 303
    r = _callback(gw, back, login_cookie)
    assert r.status == 401 and _session(r) is None


def test_nonce_mismatch_is_refused(gw: Gateway, idp: IdP) -> None:
    idp.mode = "bad_nonce"
    url, login_cookie = _start(gw)
    r = _callback(gw, _authorize(url), login_cookie)
    assert r.status == 401 and _session(r) is None


def test_pkce_stops_code_injection(gw: Gateway, idp: IdP) -> None:
    victim_url, victim_cookie = _start(gw)
    victim_state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(victim_url).query))["state"]
    attacker_url, _ = _start(gw)
    stolen = _authorize(attacker_url)  # a code issued for another login (another verifier)
    r = _callback(gw, {**stolen, "state": victim_state}, victim_cookie)
    assert r.status == 401 and _session(r) is None
    assert idp.token_requests[-1]["code"] == stolen["code"]  # redeemed with the wrong verifier: refused


def test_unsafe_rd_refused_before_the_provider(gw: Gateway, idp: IdP) -> None:
    before = len(idp.authorize_requests)
    for rd in ("//evil.example", "https://evil.example", "/\\evil.example"):
        with RawConnection(gw) as c:
            r = c.request(raw_get(f"/.noops/oidc/start?rd={urllib.parse.quote(rd, safe='')}"))
        assert r is not None and r.status == 400, rd
        assert not any(k.lower() == "set-cookie" for k, _ in r.headers)
    assert len(idp.authorize_requests) == before


def test_deprovisioned_oidc_user_loses_access_at_once(gw: Gateway, idp: IdP) -> None:
    url, login_cookie = _start(gw)
    session = _session(_callback(gw, _authorize(url), login_cookie))
    assert session is not None

    def status() -> int:
        with RawConnection(gw) as c:
            r = c.request(raw_get("/x", cookie=session, headers=[("Accept", "application/json")]))
        assert r is not None
        return r.status

    assert status() == 200
    gw.identities.revoke_user_sessions("ada@example.test", reason="idp_deprovisioned")
    took = wait_for(lambda: status() == 401, 3)
    assert took is not None and took < 1.0, took
