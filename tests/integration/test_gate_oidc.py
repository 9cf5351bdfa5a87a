"""OIDC login against a real identity provider on 127.0.0.1 (``tests/oidc_idp.py``)."""

from __future__ import annotations

import dataclasses
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from noops.gate.identity import IdentityStore, OIDCError, OIDCProvider
from oidc_idp import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, TestIdP, serve

pytestmark = pytest.mark.gate



@pytest.fixture
def idp() -> Iterator[TestIdP]:
    with serve(TestIdP()) as state:
        yield state


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
    assert len(idp.token_requests) == 1


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
    assert len(idp.token_requests) == 0


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


def test_refresh_rotates_and_tells_a_refusal_from_an_outage(provider: OIDCProvider, idp: TestIdP) -> None:
    from noops.gate.identity import OIDCRefused

    who = login(provider)
    assert who.refresh_token is not None and who.refresh_token in idp.refresh_tokens
    refreshed = provider.refresh(who.refresh_token, who.sub)  # its ID token: no nonce, same sub
    nxt = refreshed.refresh_token
    assert refreshed.groups == ("ops", "dev")  # what the refreshed ID token says
    assert nxt != who.refresh_token and idp.rotated[who.refresh_token] == nxt
    with pytest.raises(OIDCRefused, match="invalid_grant"):
        provider.refresh(who.refresh_token, who.sub)  # used already
    idp.mode = "down"
    with pytest.raises(OIDCError, match="HTTP 503") as down:
        provider.refresh(nxt, who.sub)
    assert not isinstance(down.value, OIDCRefused)
    idp.mode = "other_sub"
    with pytest.raises(OIDCRefused, match="another subject"):
        provider.refresh(nxt, who.sub)
    wrong = OIDCProvider(idp.issuer, CLIENT_ID, "not-the-secret", REDIRECT_URI)
    try:
        with pytest.raises(OIDCError, match="invalid_client") as bad_client:
            wrong.refresh("whatever", "user-42")
        assert not isinstance(bad_client.value, OIDCRefused)  # about noops, not the user
    finally:
        wrong.close()
