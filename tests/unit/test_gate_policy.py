"""noops.gate.policy: path normalisation, route decisions and the versioned store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from noops.errors import NoopsError
from noops.gate.policy import (
    Decision,
    Identity,
    Policy,
    PolicyError,
    PolicyStore,
    RequestFacts,
    normalize_path,
)
from noops.gate.trust import TrustResult

POLICY = """
[[route]]
id = "public"
host = "app.example.com"
path = "/public"
authenticated = false

[[route]]
id = "site"
host = "app.example.com"
path = "/"
min_score = 60
below = "step_up"

[[route]]
id = "admin"
host = "app.example.com"
path = "/admin"
groups = ["ops"]
device_cert = "required"
min_score = 60

[[route]]
id = "reports"
host = "app.example.com"
path = "/reports"
min_score = 50
below = "read_only"

[[route]]
id = "api"
host = "*.example.com"
path = "/api"
methods = ["GET", "POST"]
allow_spiffe = ["spiffe://noops.local/app/a/web"]

[[route]]
id = "closed"
host = "*.example.com"
path = "/api/internal"
deny = true
"""

P = Policy.load(POLICY)
ALICE = Identity(user="alice", groups=frozenset({"ops"}), device_cert=True)
BOB = Identity(user="bob")
WEB = Identity(spiffe_id="spiffe://noops.local/app/a/web")


def trust(score: int, *denies: str) -> TrustResult:
    return TrustResult(score, [], list(denies))


def decide(path: str, who: Identity = ALICE, score: int = 80, method: str = "GET",
           host: str = "app.example.com", policy: Policy = P, denies: tuple[str, ...] = ()) -> Decision:
    normal = normalize_path(path)
    assert normal is not None, path
    return policy.decide(RequestFacts(host, normal, method), trust(score, *denies), who)


# -- normalisation ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/public/../admin", "/admin"),
    ("/public/%2e%2e/admin", "/admin"),
    ("/public/%2E%2e/admin", "/admin"),
    ("/./admin", "/admin"),
    ("//admin", "/admin"),
    ("/a//b///c/", "/a/b/c/"),
    ("/a/b/..", "/a/"),
    ("/a/.", "/a/"),
    ("/../../x", "/x"),
    ("/%7euser/%41", "/~user/A"),
    ("/%252f", "/%252f"),   # %25 stays encoded: never decoded twice
    ("/caf%c3%a9", "/caf%C3%A9"),
    ("/%ef%bc%8fadmin", "/%EF%BC%8Fadmin"),   # full-width solidus stays encoded: never a separator
    ("/admin;x", "/admin;x"),
    ("/.well-known/x", "/.well-known/x"),
])
def test_normalize_path(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize("raw", [
    "", "admin", "/admin%2fx", "/admin%2Fx", "/a/..%2f", "/%2e%2e%2fadmin", "/a%5cb", "/a\\b", "/a%00",
    "/a%0d%0aSet-Cookie:x", "/a%zz", "/a%2", "/a%", "/a b", "/a\tb", "/a#frag", "/a?q", "/\u00e9",
    "/\uff0fadmin", "/" + "a" * 9000,
])
def test_normalize_path_rejects(raw: str) -> None:
    assert normalize_path(raw) is None


_TOKENS = [*"/.%a2eEfF5cC0A;~-_", "%2e", "%2E", "%2f", "%5c", "%41", "%c3%a9", "..", "//", "/../",
           "admin", "ADMIN", "public", "reports", "%61dmin"]
path_text = st.lists(st.sampled_from(_TOKENS), max_size=20).map(lambda parts: "/" + "".join(parts))


@given(path_text)
def test_normalize_is_idempotent_and_clean(raw: str) -> None:
    out = normalize_path(raw)
    if out is None:
        return
    assert out.startswith("/")
    assert normalize_path(out) == out
    assert "//" not in out
    segments = out.split("/")[1:]
    assert ".." not in segments
    assert "." not in segments
    assert "%2F" not in out.upper().replace("%252F", "")
    assert "%5C" not in out.upper().replace("%255C", "")


@given(path_text)
def test_decided_path_is_the_forwarded_path(raw: str) -> None:
    out = normalize_path(raw)
    if out is None:
        return
    decision = P.decide(RequestFacts("app.example.com", out, "GET"), trust(100), ALICE)
    assert decision.path == out
    assert "path_not_normalized" not in decision.reasons
    # the route chosen is the one whose prefix matches the forwarded string
    lowered = out.lower()
    expected = ("admin" if lowered == "/admin" or lowered.startswith(("/admin/", "/admin;")) else
                "public" if lowered == "/public" or lowered.startswith(("/public/", "/public;")) else
                "reports" if lowered == "/reports" or lowered.startswith(("/reports/", "/reports;")) else
                "site")
    assert decision.route_id == expected


def test_normalize_is_linear_time_on_hostile_input() -> None:
    started = time.perf_counter()
    for tail in ("%", "\\", " ", "%zz"):
        assert normalize_path("/" + "a" * 8000 + tail) is None
        assert normalize_path("/" + "a/" * 4000 + tail) is None
    assert normalize_path("/" + "a/" * 4000) is not None
    assert time.perf_counter() - started < 0.5


def test_decide_refuses_a_path_that_is_not_normal() -> None:
    d = P.decide(RequestFacts("app.example.com", "/public/../admin", "GET"), trust(100), ALICE)
    assert d.outcome == "deny"
    assert d.reasons == ["path_not_normalized"]


# -- decisions -------------------------------------------------------------------------------------

def test_traversal_and_case_variants_meet_the_admin_requirements() -> None:
    for raw in ["/public/../admin", "/public/%2e%2e/admin", "/./admin", "//admin", "/ADMIN", "/admin;x",
                "/Admin/users"]:
        d = decide(raw, who=BOB)
        assert d.outcome == "deny", raw
        assert d.route_id == "admin", raw
    assert decide("/administrator", who=BOB).route_id == "site"


def test_admin_allows_when_everything_is_met() -> None:
    d = decide("/admin/users")
    assert (d.outcome, d.route_id, d.reasons, d.user_message) == ("allow", "admin", [], "")


def test_user_messages_say_what_is_missing() -> None:
    d = decide("/admin", who=Identity(user="carol", groups=frozenset({"ops"})))
    assert d.reasons == ["device_cert_missing"]
    assert d.user_message == "this route needs a device certificate"
    d = decide("/x", score=45)
    assert d.outcome == "step_up"
    assert d.user_message == "score 45 < 60: verify with your authenticator"
    d = decide("/admin", who=BOB, score=10)
    assert d.outcome == "deny"
    assert d.reasons == ["group_missing", "device_cert_missing", "score_below_min"]


def test_score_exactly_at_the_threshold_passes() -> None:
    assert decide("/x", score=60).outcome == "allow"
    assert decide("/x", score=59).outcome == "step_up"


def test_read_only_allows_only_safe_methods() -> None:
    for method in ("GET", "HEAD", "OPTIONS"):
        assert decide("/reports/q1", score=40, method=method).outcome == "read_only"
    d = decide("/reports/q1", score=40, method="POST")
    assert d.outcome == "deny"
    assert "read_only_write" in d.reasons
    assert decide("/reports/q1", score=50, method="POST").outcome == "allow"


def test_unauthenticated_and_public() -> None:
    anon = Identity()
    assert decide("/public/logo.png", who=anon, score=0).outcome == "allow"
    d = decide("/x", who=anon)
    assert (d.outcome, d.reasons) == ("deny", ["unauthenticated"])


def test_no_match_and_unknown_host_deny() -> None:
    d = decide("/x", host="other.test")
    assert (d.outcome, d.route_id, d.reasons) == ("deny", None, ["no_route"])
    # the wildcard covers exactly one more label and never the bare suffix or look-alikes
    assert decide("/api", host="example.com", who=WEB).outcome == "deny"
    assert decide("/api", host="a.b.example.com", who=WEB).outcome == "deny"
    assert decide("/api", host="evilexample.com", who=WEB).outcome == "deny"


def test_hard_deny_wins_even_on_public_routes_and_in_shadow_mode() -> None:
    d = decide("/public", who=Identity(), denies=("blocked_network",))
    assert (d.outcome, d.reasons[0]) == ("deny", "blocked_network")
    shadow = Policy.load('mode = "shadow"\n' + POLICY)
    assert decide("/public", policy=shadow, denies=("device_revoked",)).outcome == "deny"


def test_service_to_service_needs_allow_spiffe() -> None:
    assert decide("/api/v1", host="svc.example.com", who=WEB, method="POST").outcome == "allow"
    other = Identity(spiffe_id="spiffe://noops.local/app/b/web")
    d = decide("/api/v1", host="svc.example.com", who=other)
    assert (d.outcome, d.reasons) == ("deny", ["spiffe_not_allowed"])
    # a workload gets nothing from a route without allow_spiffe
    assert decide("/x", who=WEB).outcome == "deny"
    d = decide("/api/v1", host="svc.example.com", who=WEB, method="DELETE")
    assert d.reasons == ["method_not_allowed"]


def test_explicit_deny_route_wins_over_more_specific_allow() -> None:
    text = POLICY + '\n[[route]]\nid = "internal-open"\nhost = "svc.example.com"\npath = "/api/internal/x"\n'
    d = decide("/api/internal/x", host="svc.example.com", policy=Policy.load(text))
    assert (d.outcome, d.route_id) == ("deny", "closed")
    assert "route_denied" in d.reasons


def test_exact_host_beats_wildcard_and_ties_take_the_most_restrictive() -> None:
    text = """
[[route]]
host = "*.example.com"
path = "/deep/path"
authenticated = false
[[route]]
id = "exact"
host = "app.example.com"
path = "/"
[[route]]
id = "twin"
host = "app.example.com"
path = "/"
groups = ["nobody"]
"""
    d = decide("/deep/path", who=BOB, policy=Policy.load(text))
    assert (d.outcome, d.route_id, d.reasons) == ("deny", "twin", ["group_missing"])


def test_shadow_mode_and_shadow_route() -> None:
    shadow = Policy.load('mode = "shadow"\n' + POLICY)
    d = decide("/admin", who=BOB, policy=shadow)
    assert (d.outcome, d.shadow_outcome) == ("allow", "deny")
    assert "shadow" in d.reasons
    assert decide("/nowhere", host="x.test", policy=shadow).shadow_outcome == "deny"
    trial = Policy.load(POLICY.replace('device_cert = "required"', 'device_cert = "required"\nshadow = true'))
    d = decide("/admin", who=Identity(user="carol", groups=frozenset({"ops"})), policy=trial)
    assert (d.outcome, d.shadow_outcome) == ("allow", "deny")
    assert decide("/admin", policy=trial).shadow_outcome is None


# -- loading ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "where"), [
    ('[[route]]\npath = "/"', "route[0].host"),
    ('[[route]]\nhost = "a.test"\n[[route]]\nhost = "A.test"', "route[1].host"),
    ('[[route]]\nhost = "a.test:443"', "route[0].host"),
    ('[[route]]\nhost = "*.*.test"', "route[0].host"),
    ('[[route]]\nhost = "a.test"\npath = "/a/../b"', "route[0].path"),
    ('[[route]]\nhost = "a.test"\npath = "admin"', "route[0].path"),
    ('[[route]]\nhost = "a.test"\nmethods = ["get"]', "route[0].methods"),
    ('[[route]]\nhost = "a.test"\nmin_score = 101', "route[0].min_score"),
    ('[[route]]\nhost = "a.test"\nmin_score = 50.5', "route[0].min_score"),
    ('[[route]]\nhost = "a.test"\nbelow = "maybe"', "route[0].below"),
    ('[[route]]\nhost = "a.test"\ndevice_cert = "yes"', "route[0].device_cert"),
    ('[[route]]\nhost = "a.test"\nauthenticated = false\ngroups = ["x"]', "route[0].groups"),
    ('[[route]]\nhost = "a.test"\nallow_spiffe = ["spiffe://td:8080/x"]', "route[0].allow_spiffe"),
    ('[[route]]\nhost = "a.test"\nallow_spiffe = ["spiffe://td"]', "route[0].allow_spiffe"),
    ('[[route]]\nhost = "a.test"\ngroup = ["x"]', "route[0].group"),
    ('[[route]]\nid = "x"\nhost = "a.test"\n[[route]]\nid = "x"\nhost = "b.test"', "route[1].id"),
    ('mode = "audit"', "mode"),
    ('routes = []', "routes"),
    ('[[route]', "TOML"),
])
def test_validation_names_route_and_field(text: str, where: str) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.load(text)
    assert where in str(info.value)
    assert isinstance(info.value, NoopsError)


def test_version_is_a_content_hash() -> None:
    assert P.version.startswith("sha256:")
    assert Policy.load("# a comment\n" + POLICY).version == P.version
    assert Policy.load(POLICY.replace("min_score = 50", "min_score = 51")).version != P.version


# -- the store -------------------------------------------------------------------------------------

def test_store_keeps_every_version_and_switches(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "policy")
    with pytest.raises(PolicyError, match="no policy has been applied"):
        store.current()
    v1 = store.apply(POLICY, actor="alice")
    v2 = store.apply(POLICY.replace("min_score = 50", "min_score = 70"), actor="bob")
    assert store.current().version == v2
    assert [(c.actor, c.version, c.previous) for c in store.history()] == [
        ("alice", v1, None), ("bob", v2, v1)]
    assert store.load_version(v1).version == v1
    assert len(list((tmp_path / "policy" / "versions").iterdir())) == 2
    # a fresh store (another process, a restart) reads the same current version
    assert PolicyStore(tmp_path / "policy").current().version == v2


def test_store_refuses_invalid_policy_and_keeps_the_current_one(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path)
    v1 = store.apply(POLICY, actor="alice")
    with pytest.raises(PolicyError, match=r"route\[0\]\.min_score"):
        store.apply('[[route]]\nhost = "a.test"\nmin_score = -1', actor="mallory")
    assert store.current().version == v1
    assert len(store.history()) == 1
    with pytest.raises(PolicyError, match="actor"):
        store.apply(POLICY, actor="eve\nforged")


def test_store_detects_a_tampered_version_file(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path)
    v1 = store.apply(POLICY, actor="alice")
    (tmp_path / "versions" / f"{v1.removeprefix('sha256:')}.toml").write_text(POLICY.replace("ops", "all"))
    with pytest.raises(PolicyError, match="does not match its version"):
        PolicyStore(tmp_path).current()


@pytest.mark.parametrize(("path", "method", "outcome"), [
    ("/status/shop", "GET", "allow"),
    ("/status/shop", "HEAD", "allow"),
    ("/status", "GET", "allow"),
    ("/status/shop", "POST", "deny"),          # read-only
    ("/statusx", "GET", "deny"),               # a prefix ends at a segment boundary
    ("/status/../apps/shop", "GET", "deny"),   # normalised to /apps/shop: the console's route
    ("/", "GET", "deny"),
    ("/access", "GET", "deny"),
])
def test_default_policy_makes_only_status_pages_public(path: str, method: str,
                                                       outcome: str) -> None:
    from noops.gate.pep import DEFAULT_POLICY

    d = decide(path, who=Identity(), method=method, host="console.localhost",
               policy=Policy.load(DEFAULT_POLICY), score=0)
    assert d.outcome == outcome, (path, method, d)
