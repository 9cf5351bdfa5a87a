"""OIDC login for the gate: authorization code flow with PKCE (S256), ``state`` and ``nonce``.

Each login's state, nonce and PKCE verifier stay on the server under an opaque ``login_state``
handle the caller binds to the browser (a short-lived cookie); the handle is single-use and
expires after ``login_ttl_s``. The ID token is verified with :mod:`._identity_jose` against
the provider's JWKS: signature, ``iss``, ``aud``/``azp``, ``exp``, ``iat`` (not in the future,
not older than ``max_token_age_s``), ``nbf``, ``nonce`` and ``at_hash`` when present.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
import urllib.parse
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from noops.gate._identity_db import OIDCError
from noops.gate._identity_jose import SUPPORTED_ALGS, Jwk, parse_jwks, token_header, verify_jws

__all__ = ["OIDCIdentity", "OIDCProvider", "OIDCRefused", "Refreshed"]

_MFA_AMR = frozenset({"mfa", "otp"})
# acr values that commonly mean "multi-factor" (OpenID PAPE and REFEDS MFA profiles).
_MFA_ACR = frozenset({"http://schemas.openid.net/pape/policies/2007/06/multi-factor",
                      "https://refeds.org/profile/mfa"})
_MAX_PENDING = 10_000


@dataclass(frozen=True)
class OIDCIdentity:
    sub: str
    email: str | None
    email_verified: bool
    groups: tuple[str, ...]
    mfa: bool  # the IdP says it did MFA (amr has mfa/otp, or acr is an MFA level)
    claims: Mapping[str, Any] = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)  # when the provider issued one

    @property
    def account(self) -> str:
        """The noops user this identity signs in as: its verified e-mail, else ``oidc:<sub>``."""
        return self.email if self.email and self.email_verified else f"oidc:{self.sub}"


class OIDCRefused(OIDCError):
    """The provider refused a refresh token: the sign-in it came from has ended there."""


@dataclass(frozen=True)
class Refreshed:
    """A refresh the provider granted: the refresh token to use next time (rotated or the
    same), and what the refreshed ID token says (None: no ID token): the account it signs in
    as (:attr:`OIDCIdentity.account`) and its ``groups`` (None also without that claim)."""

    refresh_token: str = field(repr=False)
    account: str | None = None
    groups: tuple[str, ...] | None = None


@dataclass(frozen=True)
class _Pending:
    state: str
    nonce: str
    verifier: str
    created_at: float


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _check_url(url: object, what: str) -> str:
    """https only, except plain http to a loopback host (development and tests)."""
    if not isinstance(url, str):
        raise OIDCError(f"the provider's {what} is missing")
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):  # not an IP literal
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise OIDCError(f"the provider's {what} {url!r} must use https")
    return url


class OIDCProvider:
    """One OpenID Connect provider the gate accepts logins from. Thread-safe."""

    def __init__(self, issuer: str, client_id: str, client_secret: str, redirect_uri: str, *,
                 scopes: Collection[str] = ("openid", "email", "profile"),
                 http: httpx.Client | None = None, clock_skew_s: float = 60.0,
                 login_ttl_s: float = 600.0, max_token_age_s: float = 600.0,
                 jwks_refetch_s: float = 60.0, mfa_acr_values: Collection[str] = _MFA_ACR) -> None:
        self.issuer = _check_url(issuer, "issuer")
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.scopes = tuple(dict.fromkeys(("openid", *scopes)))
        self._http = http or httpx.Client(timeout=10.0, follow_redirects=False)
        self._owns_http = http is None
        self.clock_skew_s = clock_skew_s
        self.login_ttl_s = login_ttl_s
        self.max_token_age_s = max_token_age_s
        self.jwks_refetch_s = jwks_refetch_s
        self.mfa_acr_values = frozenset(mfa_acr_values)
        self._config: dict[str, Any] | None = None
        self._keys: list[Jwk] = []
        self._keys_fetched_at = float("-inf")
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # -- discovery and keys ------------------------------------------------------------------

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            resp = self._http.get(url)
            resp.raise_for_status()
            doc = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OIDCError(f"cannot fetch the provider's {what} from {url}: {exc}") from exc
        if not isinstance(doc, dict):
            raise OIDCError(f"the provider's {what} at {url} is not a JSON object")
        return doc

    def discover(self) -> dict[str, Any]:
        """Fetch (once) and check ``/.well-known/openid-configuration``."""
        if self._config is not None:
            return self._config
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = self._get_json(url, "discovery document")
        if doc.get("issuer") != self.issuer:
            raise OIDCError(f"discovery issuer {doc.get('issuer')!r} is not {self.issuer!r}")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            _check_url(doc.get(key), key)
        methods = doc.get("code_challenge_methods_supported")
        if methods is not None and "S256" not in methods:
            raise OIDCError("the provider does not support PKCE S256; it cannot be used")
        self._config = doc
        return doc

    def _allowed_algs(self) -> frozenset[str]:
        algs = self.discover().get("id_token_signing_alg_values_supported", ["RS256"])
        return frozenset(a for a in algs if isinstance(a, str)) & SUPPORTED_ALGS

    def _jwks(self, *, refresh: bool = False) -> list[Jwk]:
        now = time.monotonic()
        with self._lock:
            stale = now - self._keys_fetched_at >= self.jwks_refetch_s
            if self._keys and not (refresh and stale):
                return self._keys  # a refetch for an unknown kid is rate-limited
        keys = parse_jwks(self._get_json(self.discover()["jwks_uri"], "JWKS"))
        with self._lock:
            self._keys, self._keys_fetched_at = keys, now
        return keys

    # -- the flow --------------------------------------------------------------------------

    def begin_login(self, *, now: float | None = None) -> tuple[str, str]:
        """Returns ``(authorize_url, login_state)``: redirect the browser to the URL and keep
        ``login_state`` bound to it (e.g. a short ``__Host-`` cookie) for :meth:`finish_login`."""
        now = time.time() if now is None else now
        config = self.discover()
        pending = _Pending(state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32),
                           verifier=secrets.token_urlsafe(64), created_at=now)
        handle = secrets.token_urlsafe(32)
        with self._lock:
            for key in [k for k, p in self._pending.items() if now - p.created_at > self.login_ttl_s]:
                del self._pending[key]
            while len(self._pending) >= _MAX_PENDING:  # bounded: drop the oldest
                del self._pending[next(iter(self._pending))]
            self._pending[handle] = pending
        challenge = _b64url(hashlib.sha256(pending.verifier.encode("ascii")).digest())
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.client_id, "redirect_uri": self.redirect_uri,
            "scope": " ".join(self.scopes), "state": pending.state, "nonce": pending.nonce,
            "code_challenge": challenge, "code_challenge_method": "S256"})
        endpoint = config["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", handle

    def finish_login(self, callback_query: str | Mapping[str, str], login_state: str, *,
                     now: float | None = None) -> OIDCIdentity:
        """Complete a login from the redirect's query; raises OIDCError on any mismatch.

        The login state is consumed first, so a failed or replayed callback cannot be retried.
        """
        now = time.time() if now is None else now
        with self._lock:
            pending = self._pending.pop(login_state, None)
        if pending is None or now - pending.created_at > self.login_ttl_s:
            raise OIDCError("unknown, used or expired login; start the login again")
        query = (dict(urllib.parse.parse_qsl(callback_query, keep_blank_values=True))
                 if isinstance(callback_query, str) else dict(callback_query))
        if "error" in query:
            raise OIDCError(f"the provider refused the login: {query['error']!r}")
        if not hmac.compare_digest(query.get("state", "").encode(), pending.state.encode()):
            raise OIDCError("the callback's state does not match this login")
        if "iss" in query and query["iss"] != self.issuer:  # RFC 9207 mix-up defence
            raise OIDCError("the callback came from another issuer")
        code = query.get("code")
        if not code:
            raise OIDCError("the callback carries no authorization code")
        tokens = self._exchange(code, pending.verifier)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise OIDCError("the token response has no id_token")
        access = tokens.get("access_token")
        claims = self.validate_id_token(id_token, nonce=pending.nonce,
                                        access_token=access if isinstance(access, str) else None,
                                        now=now)
        refresh = tokens.get("refresh_token")
        return replace(self._identity(claims),
                       refresh_token=refresh if isinstance(refresh, str) and refresh else None)

    def refresh(self, refresh_token: str, sub: str, *, now: float | None = None) -> Refreshed:
        """Ask the provider whether the sign-in behind ``refresh_token`` still holds (RFC 6749
        section 6), and what its ID token says now. Raises :class:`OIDCRefused` when the
        provider refuses it (the user was signed out, disabled or deprovisioned there),
        :class:`OIDCError` when it cannot be asked (try again later)."""
        tokens = self._token_request({"grant_type": "refresh_token", "refresh_token": refresh_token},
                                     "refresh token")
        account: str | None = None
        groups: tuple[str, ...] | None = None
        id_token = tokens.get("id_token")
        if isinstance(id_token, str):  # OIDC Core 12.2: same subject, no nonce to check
            access = tokens.get("access_token")
            claims = self.validate_id_token(id_token, nonce=None, now=now,
                                            access_token=access if isinstance(access, str) else None)
            if claims["sub"] != sub:
                raise OIDCRefused("the provider answered for another subject")
            identity = self._identity(claims)
            account = identity.account
            if isinstance(claims.get("groups"), list):
                groups = identity.groups
        new = tokens.get("refresh_token")
        return Refreshed(new if isinstance(new, str) and new else refresh_token, account, groups)

    def _exchange(self, code: str, verifier: str) -> dict[str, Any]:
        return self._token_request({"grant_type": "authorization_code", "code": code,
                                    "redirect_uri": self.redirect_uri, "code_verifier": verifier},
                                   "code")

    def revoke(self, refresh_token: str) -> bool:
        """Give ``refresh_token`` back to the provider (RFC 7009), when it offers a
        ``revocation_endpoint``; False when it does not. Raises :class:`OIDCError` when the
        provider cannot be asked or refuses."""
        endpoint = self.discover().get("revocation_endpoint")
        if endpoint is None:
            return False
        _check_url(endpoint, "revocation_endpoint")
        form = {"token": refresh_token, "token_type_hint": "refresh_token"}
        try:
            resp = self._http.post(endpoint, data=form,
                                   headers=self._client_auth(form, "revocation_endpoint"))
        except httpx.HTTPError as exc:
            raise OIDCError(f"the revocation request failed: {exc}") from exc
        if resp.status_code != 200:  # RFC 7009 2.2: 200 even for a token it no longer knows
            raise OIDCError(f"the provider refused to revoke the refresh token (HTTP {resp.status_code})")
        return True

    def _client_auth(self, form: dict[str, str], endpoint: str = "token_endpoint") -> dict[str, str]:
        """Headers for a request to ``endpoint`` (token or revocation) authenticated as this
        client: ``client_secret_basic`` when the endpoint offers it, else the credentials are
        added to ``form`` (RFC 8414: each endpoint lists its own, the token endpoint's by
        default)."""
        headers = {"Accept": "application/json"}
        config = self.discover()
        methods = config.get(f"{endpoint}_auth_methods_supported",
                             config.get("token_endpoint_auth_methods_supported", ["client_secret_basic"]))
        if "client_secret_basic" in methods:
            # RFC 6749 2.3.1: form-encode both parts before base64.
            pair = (f"{urllib.parse.quote(self.client_id, safe='')}:"
                    f"{urllib.parse.quote(self._client_secret, safe='')}")
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form |= {"client_id": self.client_id, "client_secret": self._client_secret}
        return headers

    def _token_request(self, form: dict[str, str], what: str) -> dict[str, Any]:
        config = self.discover()
        headers = self._client_auth(form)
        try:
            resp = self._http.post(config["token_endpoint"], data=form, headers=headers)
            doc = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OIDCError(f"the token request failed: {exc}") from exc
        if resp.status_code != 200 or not isinstance(doc, dict):
            error = doc.get("error") if isinstance(doc, dict) else None
            message = f"the provider refused the {what} (HTTP {resp.status_code}, {error!r})"
            # RFC 6749 5.2: only invalid_grant is about the grant (the sign-in); invalid_client
            # and the rest are about noops' own registration, a 5xx about nothing at all
            raise (OIDCRefused if error == "invalid_grant" else OIDCError)(message)
        return doc

    def validate_id_token(self, id_token: str, *, nonce: str | None, access_token: str | None = None,
                          now: float | None = None) -> dict[str, Any]:
        """Verify an ID token and return its claims; raises OIDCError. ``nonce``: the login's
        (``None`` for a token from a refresh, which has none to match)."""
        now = time.time() if now is None else now
        algs = self._allowed_algs()
        kid = token_header(id_token).get("kid")
        keys = self._jwks()
        if kid is not None and not any(k.kid == kid for k in keys):
            keys = self._jwks(refresh=True)  # key rotation at the provider
        claims = verify_jws(id_token, keys, algs)
        skew = self.clock_skew_s
        if claims.get("iss") != self.issuer:
            raise OIDCError("the ID token was issued by someone else")
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.client_id not in auds:
            raise OIDCError("the ID token is not meant for this client (aud)")
        azp = claims.get("azp")
        if (len(auds) > 1 or azp is not None) and azp != self.client_id:
            raise OIDCError("the ID token's authorized party (azp) is not this client")
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf", 0)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, iat, nbf)):
            raise OIDCError("the ID token lacks numeric exp/iat")
        assert isinstance(exp, int | float) and isinstance(iat, int | float)  # for mypy
        assert isinstance(nbf, int | float)
        if now >= exp + skew:
            raise OIDCError("the ID token has expired")
        if iat > now + skew or nbf > now + skew:
            raise OIDCError("the ID token is not valid yet (iat/nbf in the future)")
        if now - iat > self.max_token_age_s + skew:
            raise OIDCError("the ID token was issued too long ago")
        token_nonce = claims.get("nonce")
        if nonce is not None and (not isinstance(token_nonce, str) or not hmac.compare_digest(
                token_nonce.encode(), nonce.encode())):
            raise OIDCError("the ID token's nonce does not match this login")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise OIDCError("the ID token has no subject")
        at_hash = claims.get("at_hash")
        if at_hash is not None:
            # RS256 and ES256 both hash with SHA-256: left half, base64url (OIDC Core 3.1.3.6).
            want = _b64url(hashlib.sha256((access_token or "").encode("ascii")).digest()[:16])
            if access_token is None or not hmac.compare_digest(str(at_hash).encode(), want.encode()):
                raise OIDCError("the access token does not match the ID token's at_hash")
        return claims

    def _identity(self, claims: Mapping[str, Any]) -> OIDCIdentity:
        amr = claims.get("amr")
        amr_set = {a for a in amr if isinstance(a, str)} if isinstance(amr, list) else set()
        mfa = bool(amr_set & _MFA_AMR) or claims.get("acr") in self.mfa_acr_values
        groups = claims.get("groups")
        email = claims.get("email")
        return OIDCIdentity(
            sub=str(claims["sub"]),
            email=email if isinstance(email, str) else None,
            email_verified=claims.get("email_verified") is True,
            groups=tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else (),
            mfa=mfa, claims=dict(claims))
