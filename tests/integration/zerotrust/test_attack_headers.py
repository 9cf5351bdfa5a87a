"""Attack checklist §8, *trust boundary and headers*, against the running front door.

* client-sent identity headers (``X-Forwarded-User/Email``, ``X-Auth-Request-*``, the gateway's
  own ``X-Noops-Assertion``) are stripped, including duplicates, case variants, underscore
  variants and headers named in ``Connection:`` (plus a hypothesis property over generated
  names);
* ``X-Forwarded-For`` is not trusted: the app and the trust score see the socket's address only;
* ``X-Forwarded-Uri/Host/Proto`` and ``X-Original-URL`` never influence the decision;
* the gateway's session cookie and session bearer never reach the app.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zt_harness import Gateway, RawConnection, decisions, header_values, raw_get, write_trust

from noops.gate._identity_jose import parse_jwks
from noops.gate.assertion import verify_assertion

POLICY = """
[[route]]
id = "apps"
host = "*.localhost"
authenticated = true

[[route]]
id = "public"
host = "echo.localhost"
path = "/public"
authenticated = false

[[route]]
id = "closed"
host = "echo.localhost"
path = "/admin"
deny = true
"""

IDENTITY_HEADERS = [
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Access-Token",
    "X-Noops-Assertion",
    "X-Noops-User",
    "Remote-User",
    "X-Remote-User",
    "X-Pomerium-Jwt-Assertion",
    "Cf-Access-Jwt-Assertion",
    "X-Goog-Authenticated-User-Email",
    "X-User",
    "X-Email",
    "X-Webauth-User",
    "X-Amzn-Oidc-Identity",
    "X-Ms-Client-Principal-Name",
]


@pytest.fixture(scope="module")
def user(gw: Gateway) -> str:
    gw.apply_policy(POLICY)
    gw.add_user("hank", ("dev",))
    return gw.session("hank", {"password"})


def _last(gw: Gateway, app: str = "echo") -> dict:
    return gw.apps[app].seen[-1]


def _names(record: dict) -> list[str]:
    return [k.lower() for k, _ in record["headers"]]


def test_client_identity_headers_never_reach_the_app(gw: Gateway, user: str) -> None:
    spoof = [(name, "admin@example.com") for name in IDENTITY_HEADERS]
    spoof += [(name.lower(), "root") for name in IDENTITY_HEADERS[:6]]  # duplicates, lower case
    spoof += [(name.upper(), "root") for name in IDENTITY_HEADERS[:6]]  # upper case
    spoof += [(name.replace("-", "_"), "root") for name in IDENTITY_HEADERS[:9]]  # CGI underscores
    spoof += [("X-Control-Header", "kept")]
    with RawConnection(gw) as c:
        r = c.request(raw_get("/hdr", cookie=user, headers=spoof))
    assert r is not None and r.status == 200, r
    seen = _last(gw)
    names = _names(seen)
    assert header_values(seen, "X-Control-Header") == ["kept"]  # ordinary headers do cross
    for name in IDENTITY_HEADERS:
        if name.lower() == "x-noops-assertion":
            continue
        assert name.lower() not in names, name
        assert name.lower().replace("-", "_") not in names, name
    assert not any("_" in n for n in names), names
    # exactly one assertion, the gateway's, naming the real user
    tokens = header_values(seen, "X-Noops-Assertion")
    assert len(tokens) == 1 and tokens[0] != "admin@example.com"
    with RawConnection(gw) as c:
        jwks = c.request(raw_get("/.well-known/noops/jwks.json"))
    assert jwks is not None
    claims = verify_assertion(tokens[0], parse_jwks(jwks.json()), audience="echo")
    assert claims["sub"] == "hank"


def test_headers_named_in_connection_are_removed(gw: Gateway, user: str) -> None:
    headers = [
        ("Connection", "keep-alive, X-Internal-Secret, X-Trace-Override"),
        ("X-Internal-Secret", "s3cret"),
        ("X-Trace-Override", "1"),
        ("X-Visible", "yes"),
    ]
    with RawConnection(gw) as c:
        r = c.request(raw_get("/conn", cookie=user, headers=headers))
    assert r is not None and r.status == 200
    seen = _last(gw)
    names = _names(seen)
    assert "x-internal-secret" not in names and "x-trace-override" not in names
    assert header_values(seen, "X-Visible") == ["yes"]
    assert not any("secret" in v.lower() for v in header_values(seen, "Connection"))


_IDENTITY_WORDS = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-noops-assertion",
    "x-noops-user",
    "remote-user",
    "x-remote-user",
    "x-pomerium-jwt-assertion",
    "cf-access-authenticated-user-email",
    "x-forwarded-for",
    "x-real-ip",
    "x-original-url",
    "x-forwarded-host",
]


@st.composite
def _spoofed_name(draw: st.DrawFn) -> str:
    word = draw(st.sampled_from(_IDENTITY_WORDS))
    chars = []
    for ch in word:
        if ch == "-":
            chars.append(draw(st.sampled_from(["-", "_"])))
        else:
            chars.append(ch.upper() if draw(st.booleans()) else ch)
    return "".join(chars)


def test_generated_identity_header_variants_never_reach_the_app(gw: Gateway, user: str) -> None:
    """Property: whatever case/underscore variant, however many copies, the app sees none of the
    client's values; it sees the gateway's assertion (one) and X-Forwarded-For = the socket."""
    conn = RawConnection(gw)
    value_alphabet = string.ascii_letters + string.digits + "@.-"

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(
            st.tuples(_spoofed_name(), st.text(value_alphabet, min_size=1, max_size=20)),
            min_size=1,
            max_size=6,
        )
    )
    def check(spoof: list[tuple[str, str]]) -> None:
        marker = "SPOOF-"
        sent = [(name, marker + value) for name, value in spoof]
        r = conn.request(raw_get("/prop", cookie=user, headers=sent))
        assert r is not None and r.status == 200, r
        seen = r.json()
        assert seen["target"] == "/prop"
        for name, value in seen["headers"]:
            assert marker not in value, (name, value)
            assert "_" not in name
        assert len(header_values(seen, "X-Noops-Assertion")) == 1
        assert header_values(seen, "X-Forwarded-For") == ["127.0.0.1"]
        assert header_values(seen, "X-Forwarded-Host") == ["echo.localhost"]

    try:
        check()
    finally:
        conn.close()


def test_x_forwarded_for_is_not_trusted_by_app_audit_or_score(gw: Gateway, user: str) -> None:
    spoof = [
        ("X-Forwarded-For", "10.1.2.3"),
        ("X-Forwarded-For", "10.9.9.9, 10.1.1.1"),
        ("X-Real-IP", "10.1.2.3"),
        ("Forwarded", "for=10.1.2.3"),
        ("True-Client-IP", "10.1.2.3"),
        ("X-Client-IP", "10.1.2.3"),
        ("X-Request-Id", "attacker-chosen"),
    ]
    with RawConnection(gw) as c:
        r = c.request(raw_get("/xff", cookie=user, headers=spoof))
    assert r is not None and r.status == 200
    seen = _last(gw)
    assert header_values(seen, "X-Forwarded-For") == ["127.0.0.1"]
    for name in ("x-real-ip", "forwarded", "true-client-ip", "x-client-ip"):
        assert name not in _names(seen)
    assert header_values(seen, "X-Request-Id") != ["attacker-chosen"]
    record = [x for x in decisions(gw) if x.get("path") == "/xff"][-1]
    assert record["client_ip"] == "127.0.0.1"
    # The trust score: 10.0.0.0/8 is a trusted network; a header claiming it earns nothing,
    # while the real socket address (127.0.0.1) does once its network is trusted.
    write_trust(gw, 'trusted_cidrs = ["10.0.0.0/8"]\n')
    try:
        with RawConnection(gw) as c:
            spoofed = c.request(raw_get("/.noops/whoami", cookie=user, headers=spoof))
        assert spoofed is not None and spoofed.status == 200
        contributions = spoofed.json()["contributions"]
        assert any(x.startswith("client_ip +0 ") and "127.0.0.1" in x for x in contributions), contributions
        write_trust(gw, 'trusted_cidrs = ["127.0.0.0/8"]\n')
        with RawConnection(gw) as c:
            real = c.request(raw_get("/.noops/whoami", cookie=user))
        assert real is not None
        assert any(x.startswith("client_ip +10 ") for x in real.json()["contributions"]), real.json()
    finally:
        (gw.gate / "trust.toml").unlink()


@pytest.mark.parametrize(
    "header",
    [
        "X-Original-URL",
        "X-Original-URI",
        "X-Rewrite-URL",
        "X-Forwarded-Uri",
        "X-Forwarded-Path",
        "X-Forwarded-Prefix",
    ],
)
def test_rewrite_headers_never_influence_the_decision(gw: Gateway, header: str) -> None:
    before = len(gw.apps["echo"].seen)
    with RawConnection(gw) as c:
        # anonymous: /public is open, /admin closed; the header claims the other one
        denied = c.request(raw_get("/admin", headers=[(header, "/public"), ("Accept", "application/json")]))
        allowed = c.request(
            raw_get(
                "/public",
                headers=[
                    (header, "/admin"),
                    ("X-Forwarded-Host", "other.localhost"),
                    ("X-Forwarded-Proto", "http"),
                ],
            )
        )
    assert denied is not None and denied.status == 403, denied
    assert allowed is not None and allowed.status == 200, allowed
    seen = gw.apps["echo"].seen[before:]
    assert [s["target"] for s in seen] == ["/public"]
    names = _names(seen[0])
    assert header.lower() not in names
    assert header_values(seen[0], "X-Forwarded-Host") == ["echo.localhost"]
    assert header_values(seen[0], "X-Forwarded-Proto") == ["https"]
    records = [x for x in decisions(gw) if x.get("path") in ("/admin", "/public")][-2:]
    assert [(x["path"], x["outcome"]) for x in records] == [("/admin", "deny"), ("/public", "allow")]


def test_x_forwarded_host_does_not_route(gw: Gateway, user: str) -> None:
    before_other = len(gw.apps["other"].seen)
    with RawConnection(gw) as c:
        r = c.request(raw_get("/fh", cookie=user, headers=[("X-Forwarded-Host", "other.localhost")]))
    assert r is not None and r.status == 200 and r.json()["target"] == "/fh"
    assert len(gw.apps["other"].seen) == before_other


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "BeArEr", "Bearer \t"])
def test_session_bearer_is_stripped_in_every_spelling(gw: Gateway, user: str, scheme: str) -> None:
    with RawConnection(gw) as c:
        r = c.request(raw_get("/bearer", headers=[("Authorization", f"{scheme} {user}")]))
    assert r is not None and r.status == 200, r  # the bearer authenticated the request...
    seen = _last(gw)
    assert "authorization" not in _names(seen), seen["headers"]  # ...and never reaches the app
    assert all(user not in v for _, v in seen["headers"])


def test_session_cookie_stripped_other_cookies_kept(gw: Gateway, user: str) -> None:
    headers = [
        ("Cookie", f"theme=dark; __Host-noops_session={user}; lang=en"),
        ("Cookie", "__Host-noops_csrf=abc; app_sid=123"),
    ]
    with RawConnection(gw) as c:
        r = c.request(raw_get("/cookie", headers=headers))
    assert r is not None and r.status == 200
    seen = _last(gw)
    cookies = header_values(seen, "Cookie")
    assert len(cookies) == 1
    assert "__Host-noops" not in cookies[0] and user not in cookies[0]
    assert {"theme=dark", "lang=en", "app_sid=123"} <= {p.strip() for p in cookies[0].split(";")}


def test_app_authorization_passes_but_not_a_second_one(gw: Gateway, user: str) -> None:
    with RawConnection(gw) as c:
        ok = c.request(raw_get("/authz", cookie=user, headers=[("Authorization", "Basic YXBwOnB3")]))
        assert ok is not None and ok.status == 200
        assert header_values(_last(gw), "Authorization") == ["Basic YXBwOnB3"]
        before = len(gw.apps["echo"].seen)
        two = c.request(
            raw_get(
                "/authz2",
                cookie=user,
                headers=[("Authorization", "Basic YXBwOnB3"), ("Authorization", f"Bearer {user}")],
            )
        )
    assert two is not None and two.status == 400  # two credentials: ambiguous
    assert len(gw.apps["echo"].seen) == before
