"""Attack checklist §8, *JWT*: the ``X-Noops-Assertion`` the running gateway adds, verified with
:func:`noops.gate.assertion.verify_assertion` against the JWKS fetched from the gateway, and
forgeries of it made by the test.

* ``alg=none`` rejected; HS256 signed with the gateway's public key (PEM, JWK, raw point)
  rejected;
* ``jku``/``x5u``/``jwk``/``x5c`` headers ignored; an unknown ``kid`` rejected;
* wrong ``aud`` (a token for app A replayed at app B, also through the gateway) and wrong ``iss``
  rejected;
* expired, ``nbf``/``iat`` in the future beyond the skew, lifetime over the 10 min cap rejected;
  the gateway's own tokens respect the cap;
* a :class:`JwksCache` fed by the gateway's JWKS refetches at most once for a flood of unknown kids.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from zt_harness import Gateway, RawConnection, header_values, raw_get

from noops.gate._identity_jose import Jwk, parse_jwks
from noops.gate.assertion import AssertionError_, AssertionSigner, JwksCache, verify_assertion

POLICY = """
[[route]]
id = "apps"
host = "*.localhost"
authenticated = true
"""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def es256(header: dict[str, Any], claims: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> str:
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing}.{b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())}"


@pytest.fixture(scope="module")
def live(gw: Gateway) -> dict[str, Any]:
    """A real assertion for each app, the gateway's JWKS and its parsed keys."""
    gw.apply_policy(POLICY)
    gw.add_user("jay", ("dev",))
    cookie = gw.session("jay", {"password"})
    out: dict[str, Any] = {}
    for app in ("echo", "other"):
        with RawConnection(gw, host=f"{app}.localhost") as c:
            r = c.request(raw_get("/jwt", host=f"{app}.localhost", cookie=cookie))
        assert r is not None and r.status == 200
        out[app] = header_values(r.json(), "X-Noops-Assertion")[0]
    with RawConnection(gw) as c:
        doc = c.request(raw_get("/.well-known/noops/jwks.json"))
    assert doc is not None and doc.status == 200
    out["jwks"] = doc.json()
    out["keys"] = parse_jwks(doc.json())
    out["cookie"] = cookie
    return out


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, body, _sig = token.split(".")
    return json.loads(unb64(head)), json.loads(unb64(body))


def _reject(token: str, keys: list[Jwk], reason: str | None = None, audience: str = "echo") -> None:
    with pytest.raises(AssertionError_) as info:
        verify_assertion(token, keys, audience=audience)
    if reason is not None:
        assert info.value.reason == reason, (info.value.reason, str(info.value))


def test_the_gateways_assertion_verifies(live: dict[str, Any]) -> None:
    header, claims = _parts(live["echo"])
    assert header["alg"] == "ES256" and header["kid"] == live["jwks"]["keys"][0]["kid"]
    assert "d" not in live["jwks"]["keys"][0]  # the JWKS is public only
    assert verify_assertion(live["echo"], live["keys"], audience="echo")["sub"] == "jay"
    assert claims["exp"] - claims["iat"] <= 600 and claims["iss"] == "noops-gateway"


def test_alg_none_rejected(live: dict[str, Any]) -> None:
    header, claims = _parts(live["echo"])
    for alg in ("none", "None", "NONE", ""):
        forged = f"{b64(json.dumps({**header, 'alg': alg}).encode())}.{b64(json.dumps(claims).encode())}."
        _reject(forged, live["keys"])
        _reject(forged + live["echo"].split(".")[2], live["keys"])


def test_hs256_with_the_public_key_rejected(live: dict[str, Any]) -> None:
    header, claims = _parts(live["echo"])
    jwk = live["jwks"]["keys"][0]
    point = b"\x04" + unb64(jwk["x"]) + unb64(jwk["y"])
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    secrets = [
        pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        point,
        json.dumps(jwk).encode(),
        json.dumps(live["jwks"]).encode(),
    ]
    for secret in secrets:
        for alg in ("HS256", "HS384", "HS512"):
            _reject(hs256({**header, "alg": alg}, {**claims, "sub": "admin"}, secret), live["keys"])


@pytest.mark.parametrize("field", ["jku", "x5u", "jwk", "x5c"])
def test_header_supplied_keys_ignored(live: dict[str, Any], field: str) -> None:
    header, claims = _parts(live["echo"])
    attacker = ec.generate_private_key(ec.SECP256R1())
    nums = attacker.public_key().public_numbers()
    attacker_jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(nums.x.to_bytes(32, "big")),
        "y": b64(nums.y.to_bytes(32, "big")),
        "kid": "attacker",
    }
    value: Any = {
        "jku": "https://evil.example/jwks.json",
        "x5u": "https://evil.example/cert.pem",
        "jwk": attacker_jwk,
        "x5c": ["MIIB"],
    }[field]
    forged_claims = {**claims, "sub": "admin", "groups": ["ops"]}
    # the gateway's kid, the attacker's signature: bad signature
    _reject(es256({**header, field: value}, forged_claims, attacker), live["keys"], "bad_signature")
    # the attacker's kid: unknown
    _reject(
        es256({**header, "kid": "attacker", field: value}, forged_claims, attacker),
        live["keys"],
        "unknown_kid",
    )


def test_unknown_or_missing_kid_rejected(live: dict[str, Any]) -> None:
    header, _claims = _parts(live["echo"])
    sig = live["echo"].split(".")[2]
    body = live["echo"].split(".")[1]
    for kid in ("nope", "", None, 1):
        head = dict(header)
        if kid is None:
            head.pop("kid")
        else:
            head["kid"] = kid
        _reject(f"{b64(json.dumps(head).encode())}.{body}.{sig}", live["keys"], "unknown_kid")


def test_wrong_audience_and_replay_across_apps(gw: Gateway, live: dict[str, Any]) -> None:
    _reject(live["echo"], live["keys"], "wrong_audience", audience="other")
    _reject(live["other"], live["keys"], "wrong_audience", audience="echo")
    assert verify_assertion(live["other"], live["keys"], audience="other")["aud"] == "other"
    # a token for echo replayed at other through the gateway: replaced by other's own
    with RawConnection(gw, host="other.localhost") as c:
        r = c.request(
            raw_get(
                "/replay",
                host="other.localhost",
                cookie=live["cookie"],
                headers=[("X-Noops-Assertion", live["echo"])],
            )
        )
    assert r is not None and r.status == 200
    tokens = header_values(r.json(), "X-Noops-Assertion")
    assert len(tokens) == 1 and tokens[0] != live["echo"]
    assert verify_assertion(tokens[0], live["keys"], audience="other")["aud"] == "other"


def _signer(gw: Gateway, **kw: Any) -> AssertionSigner:
    return AssertionSigner(gw.gate / "assertion.key", **kw)  # the gateway's own key


def test_wrong_issuer_rejected(gw: Gateway, live: dict[str, Any]) -> None:
    token = _signer(gw, issuer="evil-gateway").sign({"aud": "echo", "sub": "admin"})
    _reject(token, live["keys"], "wrong_issuer")


def test_times_enforced(gw: Gateway, live: dict[str, Any]) -> None:
    key = serialization.load_pem_private_key((gw.gate / "assertion.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    header, _ = _parts(live["echo"])
    now = int(time.time())
    base = {"iss": "noops-gateway", "aud": "echo", "sub": "jay"}
    cases = {
        "expired": {"iat": now - 400, "nbf": now - 400, "exp": now - 31},
        "not_yet_valid": {"iat": now, "nbf": now + 31, "exp": now + 200},
        "future_iat": {"iat": now + 60, "nbf": now, "exp": now + 300},
        "lifetime_too_long": {"iat": now, "nbf": now, "exp": now + 601},
        "bad_times": {"iat": now, "nbf": now, "exp": str(now + 300)},
        "bool_times": {"iat": True, "nbf": now, "exp": now + 300},
    }
    reasons = {
        "expired": "expired",
        "not_yet_valid": "not_yet_valid",
        "future_iat": "not_yet_valid",
        "lifetime_too_long": "lifetime_too_long",
        "bad_times": "bad_times",
        "bool_times": "bad_times",
    }
    for name, times in cases.items():
        _reject(es256(header, {**base, **times}, key), live["keys"], reasons[name])
    # within the skew and the cap: accepted (so the checks above are not vacuous)
    ok = es256(header, {**base, "iat": now + 20, "nbf": now + 20, "exp": now + 600}, key)
    assert verify_assertion(ok, live["keys"], audience="echo")["sub"] == "jay"


def test_tampered_claims_rejected(live: dict[str, Any]) -> None:
    head, _body, sig = live["echo"].split(".")
    _, claims = _parts(live["echo"])
    forged = b64(json.dumps({**claims, "sub": "admin", "groups": ["ops"]}).encode())
    _reject(f"{head}.{forged}.{sig}", live["keys"], "bad_signature")


def test_jwks_refetch_on_unknown_kid_is_rate_limited(gw: Gateway, live: dict[str, Any]) -> None:
    fetched: list[float] = []

    def fetch() -> dict[str, Any]:
        fetched.append(time.monotonic())
        with RawConnection(gw) as c:
            r = c.request(raw_get("/.well-known/noops/jwks.json"))
        assert r is not None and r.status == 200
        return r.json()

    cache = JwksCache(fetch, min_refetch_s=30.0)
    assert verify_assertion(live["echo"], cache.keys_for(live["echo"]), audience="echo")["sub"] == "jay"
    header, claims = _parts(live["echo"])
    attacker = ec.generate_private_key(ec.SECP256R1())
    for i in range(50):
        token = es256({**header, "kid": f"random-{i}"}, claims, attacker)
        _reject(token, cache.keys_for(token), "unknown_kid")
    assert len(fetched) == 1 and cache.fetches == 1
    # after the interval, one more fetch is allowed (key rotation still works)
    token = es256({**header, "kid": "after"}, claims, attacker)
    cache.keys_for(token, now=time.monotonic() + 31)
    assert cache.fetches == 2
