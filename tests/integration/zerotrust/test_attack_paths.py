"""Attack checklist §8, *paths*, against the running front door: the gateway decides on the
same normalised path it forwards, and refuses ambiguous ones.

* traversal and encoding tricks: ``/public/../admin``, ``%2e%2e``, ``%2e%2e%2f``, ``/admin/..%2f``,
  ``/./admin``, ``//admin``, ``/admin%2fx``, ``%5c``, ``%252f``, ``/ADMIN``, ``/admin;x``, ``%00``,
  full-width characters, overlong paths (table test + a hypothesis property: the path in the
  audit record is exactly the path the app received, the query byte for byte, or a 400);
* public-route patterns never match the query or the fragment;
* absolute-form targets, ``*`` and ``CONNECT`` refused; ``X-HTTP-Method-Override`` ignored;
* health-check paths and user agents are no bypass.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zt_harness import Gateway, RawConnection, decisions, raw_get

from noops.gate.policy import normalize_path

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

[[route]]
id = "reads"
host = "echo.localhost"
path = "/reads"
methods = ["GET"]
"""


@pytest.fixture(scope="module")
def user(gw: Gateway) -> str:
    gw.apply_policy(POLICY)
    gw.add_user("pat")
    return gw.session("pat", {"password", "totp"})


def _is_admin(path: str) -> bool:
    low = path.lower()
    return low == "/admin" or low.startswith(("/admin/", "/admin;"))


def _send(gw: Gateway, target: str, cookie: str | None = None, **kw: object) -> tuple[int, list[str]]:
    before = len(gw.apps["echo"].seen)
    with RawConnection(gw) as c:
        r = c.request(raw_get(target, cookie=cookie, headers=[("Accept", "application/json")], **kw))  # type: ignore[arg-type]
    assert r is not None, target
    return r.status, [s["target"] for s in gw.apps["echo"].seen[before:]]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/public/../admin", 403),
        ("/public/%2e%2e/admin", 403),
        ("/public/%2E%2e/admin", 403),
        ("/public/%2e%2e%2fadmin", 400),
        ("/%2e%2e%2fadmin", 400),
        ("/admin/..%2f", 400),
        ("/./admin", 403),
        ("//admin", 403),
        ("/public//..//admin", 403),
        ("/admin%2fx", 400),
        ("/admin%2Fx", 400),
        ("/public%5c..%5cadmin", 400),
        ("/public\\..\\admin", 400),
        ("/ADMIN", 403),
        ("/AdMiN/x", 403),
        ("/admin;x", 403),
        ("/admin;jsessionid=1", 403),
        ("/%61dmin", 403),
        ("/admin%00", 400),
        ("/admin%00.html", 400),
        ("/admin%0d%0a", 400),
        ("/public/..;/admin", 200),
        ("/admin/", 403),
        ("/admin/.", 403),
        ("/public/./../admin/", 403),
    ],
)
def test_traversal_and_encoding_tricks(gw: Gateway, user: str, target: str, expected: int) -> None:
    status, forwarded = _send(gw, target, user)
    assert status == expected, (target, status)
    assert not any(_is_admin(t.split("?")[0]) for t in forwarded), forwarded
    if expected == 200:
        # "..;" is an ordinary segment here: it is forwarded exactly as decided, not resolved
        assert forwarded == [normalize_path(target)]


@pytest.mark.parametrize("target", ["/public%252f..%252fadmin", "/public/%252e%252e/admin", "/%2561dmin"])
def test_double_encoding_is_never_decoded_twice(gw: Gateway, user: str, target: str) -> None:
    status, forwarded = _send(gw, target, user)
    assert status == 200
    normal = normalize_path(target)
    assert normal is not None and forwarded == [normal] and "%25" in forwarded[0]
    # anonymous: only a path really under /public/ is public; "%252f" is no segment boundary
    status, forwarded = _send(gw, target)
    if normal.startswith("/public/"):
        assert (status, forwarded) == (200, [normal])
    else:
        assert (status, forwarded) == (401, [])


def test_full_width_and_non_ascii(gw: Gateway, user: str) -> None:
    raw = "/ａｄｍｉｎ".encode()  # full-width letters sent raw (UTF-8 bytes): refused
    with RawConnection(gw) as c:
        r = c.request(
            b"GET "
            + raw
            + b" HTTP/1.1\r\nHost: echo.localhost\r\nCookie: __Host-noops_session="
            + user.encode()
            + b"\r\n\r\n"
        )
    assert r is not None and r.status == 400
    # percent-encoded full-width "a" (U+FF41) and full-width solidus: stay encoded, never meet /admin,
    # reach the app exactly as decided
    for target in ("/%EF%BD%81dmin", "/public%EF%BC%8F..%EF%BC%8Fadmin"):
        status, forwarded = _send(gw, target, user)
        assert status == 200 and forwarded == [target]
        status, forwarded = _send(gw, target)
        assert (status, forwarded) == (401, [])


def test_overlong_paths_refused(gw: Gateway, user: str) -> None:
    status, forwarded = _send(gw, "/" + "a" * 9000, user)
    assert status == 400 and forwarded == []
    status, forwarded = _send(gw, "/public/" + "a/" * 40000, user)  # beyond the header limit
    assert status == 400 and forwarded == []
    status, forwarded = _send(gw, "/x" + "/.." * 1000 + "/admin", user)
    assert status == 403 and forwarded == []


@pytest.mark.parametrize(
    "target",
    [
        "/secret?x=/public",
        "/secret?/public",
        "/secret?rd=/public/x",
        "/secret%3F/public",
        "/secret%23/public",
        "/secret;/public",
    ],
)
def test_public_route_never_matches_query_or_fragment(gw: Gateway, target: str) -> None:
    status, forwarded = _send(gw, target)
    assert (status, forwarded) == (401, []), target


def test_fragment_in_target_refused(gw: Gateway) -> None:
    status, forwarded = _send(gw, "/secret#/public")
    assert (status, forwarded) == (400, [])
    status, forwarded = _send(gw, "/public#x")
    assert (status, forwarded) == (400, [])


@pytest.mark.parametrize(
    "line",
    [
        b"GET https://echo.localhost/admin HTTP/1.1",
        b"GET http://echo.localhost/public HTTP/1.1",
        b"GET echo.localhost/admin HTTP/1.1",
        b"CONNECT echo.localhost:443 HTTP/1.1",
        b"CONNECT 127.0.0.1:22 HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
        b"GET admin HTTP/1.1",
    ],
)
def test_absolute_form_connect_and_asterisk_refused(gw: Gateway, user: str, line: bytes) -> None:
    before = len(gw.apps["echo"].seen)
    with RawConnection(gw) as c:
        r = c.request(
            line + b"\r\nHost: echo.localhost\r\nCookie: __Host-noops_session=" + user.encode() + b"\r\n\r\n"
        )
    assert r is not None and r.status == 400, (line, r)
    assert len(gw.apps["echo"].seen) == before


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"])
def test_method_override_ignored(gw: Gateway, user: str, header: str) -> None:
    before = len(gw.apps["echo"].seen)
    with RawConnection(gw) as c:
        # the route only allows GET: a POST claiming to be a GET is still a POST
        post = c.request(
            raw_get(
                "/reads",
                cookie=user,
                method="POST",
                headers=[(header, "GET"), ("Content-Length", "0"), ("Accept", "application/json")],
            )
        )
        # a GET claiming to be a DELETE is allowed as the GET it is, and the claim is dropped
        get = c.request(raw_get("/reads", cookie=user, headers=[(header, "DELETE")]))
    assert post is not None and post.status == 403
    assert get is not None and get.status == 200
    seen = gw.apps["echo"].seen[before:]
    assert [(s["method"], s["target"]) for s in seen] == [("GET", "/reads")]
    assert header.lower() not in [k.lower() for k, _ in seen[0]["headers"]]


@pytest.mark.parametrize(
    ("path", "agent"),
    [
        ("/healthz", "kube-probe/1.29"),
        ("/health", "GoogleHC/1.0"),
        ("/ping", "ELB-HealthChecker/2.0"),
        ("/-/health", "Consul Health Check"),
        ("/.well-known/health", "Pomerium"),
        ("/status", "curl/8.0"),
        ("/", "kube-probe/1.29"),
        ("/livez", "Go-http-client/1.1"),
    ],
)
def test_health_checks_are_no_bypass(gw: Gateway, path: str, agent: str) -> None:
    before = len(gw.apps["echo"].seen)
    with RawConnection(gw) as c:
        r = c.request(raw_get(path, headers=[("User-Agent", agent), ("Accept", "application/json")]))
    assert r is not None and r.status == 401, (path, agent, r)
    assert len(gw.apps["echo"].seen) == before


# -- property: the decided path is the forwarded path ------------------------------------------------

_SEGMENTS = [
    "admin",
    "ADMIN",
    "public",
    "x",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    "%2f",
    "%5c",
    "%41",
    "%61dmin",
    "%252f",
    "%25",
    "%7e",
    "~",
    "a;b",
    ";",
    "",
    "%c3%a9",
    "%EF%BC%8F",
    "%00",
    "reads",
    "%zz",
    "-_",
]
_QUERY = st.text("abcxyz=&/%.;:@!$'()*+,?-_~AZ09", max_size=25)


def test_property_decided_path_is_forwarded_path(gw: Gateway, user: str) -> None:
    """Generated paths (with an allowed session): a 400 and nothing forwarded, or a decision whose
    audit ``path`` is exactly the path the app received (the query untouched); /admin is never
    forwarded; a 400 exactly when normalize_path refuses."""
    conn = RawConnection(gw)
    cases: list[tuple[str, str, int, str | None]] = []

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=8), st.one_of(st.none(), _QUERY))
    def check(segments: list[str], query: str | None) -> None:
        nonlocal conn
        path = "/" + "/".join(segments)
        target = path + ("?" + query if query is not None else "")
        r = conn.request(raw_get(target, cookie=user, headers=[("Accept", "application/json")]))
        if r is None or r.header("Connection") == "close":
            conn.close()
            conn = RawConnection(gw)
        assert r is not None, target
        normal = normalize_path(path)
        if normal is None:
            assert r.status == 400, (target, r)
            return
        if _is_admin(normal):
            assert r.status == 403, (target, r)
        else:
            assert r.status == 200, (target, r)
            seen = r.json()
            assert seen["target"] == normal + ("?" + query if query is not None else ""), target
        cases.append(
            (
                target,
                normal,
                r.status,
                r.json().get("request_id")
                if r.status == 403
                else next(v for k, v in r.json()["headers"] if k.lower() == "x-request-id"),
            )
        )

    try:
        check()
    finally:
        conn.close()
    records = {x["request_id"]: x for x in decisions(gw) if x.get("request_id")}
    assert cases
    for target, normal, status, rid in cases:
        record = records[rid]
        assert record["path"] == normal, (target, record)
        assert record["outcome"] == ("allow" if status == 200 else "deny"), (target, record)
    admins = [t for t in (s["target"] for s in gw.apps["echo"].seen) if _is_admin(t.split("?")[0])]
    assert admins == []
