"""Attack checklist §8, *policy and score*, against the running front door.

* deny takes precedence (over a more specific allow); no matching route or an unknown host →
  deny / nothing forwarded; shadow and deny results combine (shadow never lifts a deny route or a
  hard deny);
* a score exactly at ``min_score`` passes, one below does not;
* NaN or negative weights are rejected at load: the gateway keeps the previous trust config;
* a missing signal contributes 0; header-derived geo, device and client-certificate claims are
  ignored;
* policy reload is atomic under load (every decision matches the version it names); a PDP failure
  denies (fail closed); every config change (policy and trust config) is audited.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import pytest
from zt_harness import Gateway, RawConnection, decisions, raw_get, write_trust

BASE = """
[[route]]
id = "apps"
host = "*.localhost"
authenticated = true

[[route]]
id = "closed"
host = "echo.localhost"
path = "/x"
deny = true

[[route]]
id = "inner"
host = "echo.localhost"
path = "/x/y"
authenticated = false

[[route]]
id = "ops-shadow"
host = "echo.localhost"
path = "/shadowed"
groups = ["ops"]
shadow = true

[[route]]
id = "device"
host = "echo.localhost"
path = "/device"
device_cert = "required"
"""


@pytest.fixture(scope="module")
def cookie(gw: Gateway) -> str:
    gw.apply_policy(BASE)
    gw.add_user("polly", ("dev",))
    return gw.session("polly", {"password"})


def _req(
    gw: Gateway,
    path: str,
    cookie: str | None = None,
    host: str = "echo.localhost",
    headers: list[tuple[str, str]] | None = None,
) -> Any:
    with RawConnection(gw, host=host) as c:
        r = c.request(
            raw_get(
                path, host=host, cookie=cookie, headers=[("Accept", "application/json"), *(headers or [])]
            )
        )
    assert r is not None
    return r


def _score(gw: Gateway, cookie: str, headers: list[tuple[str, str]] | None = None) -> tuple[int, list[str]]:
    who = _req(gw, "/.noops/whoami", cookie, headers=headers).json()
    return who["score"], who["contributions"]


def _record(gw: Gateway, path: str) -> dict[str, Any]:
    return [r for r in decisions(gw) if r.get("path") == path][-1]


def test_deny_wins_over_a_more_specific_allow(gw: Gateway, cookie: str) -> None:
    before = len(gw.apps["echo"].seen)
    for path in ("/x", "/x/y", "/x/y/z", "/X/Y"):
        assert _req(gw, path, cookie).status == 403, path
        assert _req(gw, path).status in (401, 403), path
    assert len(gw.apps["echo"].seen) == before
    assert "route_denied" in _record(gw, "/x/y/z")["reasons"]


def test_no_matching_route_denies(gw: Gateway, cookie: str) -> None:
    gw.apply_policy('[[route]]\nid = "only-other"\nhost = "other.localhost"\nauthenticated = true\n')
    try:
        before = len(gw.apps["echo"].seen)
        assert _req(gw, "/anything", cookie).status == 403
        assert len(gw.apps["echo"].seen) == before
        assert _record(gw, "/anything")["reasons"] == ["no_route"]
        assert _req(gw, "/fine", cookie, host="other.localhost").status == 200  # positive control
        gw.apply_policy("")  # an empty policy: everything denied
        assert _req(gw, "/fine", cookie, host="other.localhost").status == 403
    finally:
        gw.apply_policy(BASE)


def test_shadow_route_records_but_never_lifts_a_deny(gw: Gateway, cookie: str) -> None:
    assert _req(gw, "/shadowed", cookie).status == 200  # shadow: allowed, what-if recorded
    rec = _record(gw, "/shadowed")
    assert rec["outcome"] == "allow" and rec["shadow_outcome"] == "deny" and "group_missing" in rec["reasons"]
    shadow_mode = 'mode = "shadow"\n' + BASE
    gw.apply_policy(shadow_mode)
    try:
        assert _req(gw, "/x", cookie).status == 200  # shadow mode allows a deny route, recording it
        assert _record(gw, "/x")["shadow_outcome"] == "deny"
        cert, key, serial = gw.device("revoked-box", "polly")
        gw.ca.revoke(serial, "key_compromise")
        time.sleep(0.2)
        with RawConnection(gw, cert=(cert, key)) as c:  # a hard deny is enforced even in shadow mode
            r = c.request(raw_get("/plain", cookie=cookie, headers=[("Accept", "application/json")]))
        assert (r is not None and r.status in (401, 403)) or r is None
    finally:
        gw.apply_policy(BASE)


def test_score_exactly_at_the_threshold_passes(gw: Gateway) -> None:
    gw.add_user("tess")
    cookie = gw.session("tess", {"password"})
    score, _ = _score(gw, cookie)
    assert score > 0
    at = BASE.replace("authenticated = true\n", f"authenticated = true\nmin_score = {score}\n", 1)
    above = BASE.replace("authenticated = true\n", f"authenticated = true\nmin_score = {score + 1}\n", 1)
    try:
        gw.apply_policy(at)
        assert _score(gw, cookie)[0] == score
        assert _req(gw, "/edge", cookie).status == 200
        gw.apply_policy(above)
        r = _req(gw, "/edge", cookie)
        assert r.status == 403 and "score" in r.json()["message"]
    finally:
        gw.apply_policy(BASE)


@pytest.mark.parametrize(
    "bad",
    [
        "weights.auth_password = nan",
        "weights.auth_password = -5",
        "penalties.new_network = -50",
        "weights.auth_password = inf",
        "weights.auth_password = 1e9",
        "weights.auth_password = true",
        "rate_limit_per_min = nan",
    ],
)
def test_nan_or_negative_weights_rejected_at_load(gw: Gateway, cookie: str, bad: str) -> None:
    baseline, _ = _score(gw, cookie)
    try:
        write_trust(gw, f"{bad}\n")
        assert _score(gw, cookie)[0] == baseline, bad  # the previous config is kept
        write_trust(gw, "weights.auth_password = 40\n")  # positive control: a valid change applies
        assert _score(gw, cookie)[0] == baseline + 25
    finally:
        (gw.gate / "trust.toml").unlink()
        time.sleep(0.6)
    assert "trust config" in gw.log_text()


CLAIMS = [
    ("X-Device-Id", "managed-laptop-1"),
    ("X-Device-Trust", "high"),
    ("X-Device-Compliant", "true"),
    ("CF-IPCountry", "CH"),
    ("X-Geo-Country", "CH"),
    ("X-AppEngine-Country", "CH"),
    ("X-Client-Cert-Verified", "SUCCESS"),
    ("X-SSL-Client-Verify", "SUCCESS"),
    ("X-Trust-Score", "100"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("X-Real-IP", "10.0.0.1"),
]


def test_header_derived_claims_are_ignored_and_missing_signals_count_zero(gw: Gateway, cookie: str) -> None:
    cert, _key, _ = gw.device("claimed", "polly")
    pem = (
        cert.read_text().split("-----END CERTIFICATE-----")[0].replace("\n", "") + "-----END CERTIFICATE-----"
    )
    claims = [
        *CLAIMS,
        ("X-Client-Cert", pem),
        ("X-SSL-Client-Cert", pem),
        (
            "X-Forwarded-Client-Cert",
            "By=spiffe://noops.local/gateway;URI=spiffe://noops.local/device/polly/claimed",
        ),
    ]
    write_trust(gw, 'trusted_cidrs = ["10.0.0.0/8"]\n')
    try:
        plain, contributions = _score(gw, cookie)
        claimed, claimed_contributions = _score(gw, cookie, headers=claims)
        assert claimed == plain
        assert not any(c.startswith("device_cert") for c in contributions)  # missing: not even listed
        assert [c.split(" ")[0:2] for c in claimed_contributions] == [
            c.split(" ")[0:2] for c in contributions
        ]
        assert _req(gw, "/device", cookie, headers=claims).status == 403
    finally:
        (gw.gate / "trust.toml").unlink()
        time.sleep(0.6)


A = (
    BASE
    + """
[[route]]
id = "flip-a"
host = "echo.localhost"
path = "/pa"
deny = true
"""
)
B = (
    BASE
    + """
[[route]]
id = "flip-b"
host = "echo.localhost"
path = "/pb"
deny = true
"""
)


def test_policy_reload_is_atomic_under_load(gw: Gateway, cookie: str) -> None:
    version_a = gw.policies.apply(A, actor="test")
    version_b = gw.policies.apply(B, actor="test")
    stop = threading.Event()
    errors: list[str] = []

    def hammer() -> None:
        conn = RawConnection(gw)
        try:
            i = 0
            while not stop.is_set():
                path = "/pa" if i % 2 == 0 else "/pb"
                r = conn.request(
                    raw_get(f"{path}?n={i}", cookie=cookie, headers=[("Accept", "application/json")])
                )
                if r is None or r.status not in (200, 403):
                    errors.append(f"{path}: {r}")
                    conn.close()
                    conn = RawConnection(gw)
                i += 1
        finally:
            conn.close()

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        for n in range(12):
            gw.policies.apply(A if n % 2 == 0 else B, actor="flipper")
            time.sleep(0.15)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
        gw.apply_policy(BASE)
    assert errors == []
    records = [
        r
        for r in decisions(gw)
        if r.get("path") in ("/pa", "/pb") and r.get("policy_version") in (version_a, version_b)
    ]
    assert len({r["policy_version"] for r in records}) == 2, "the load saw only one version"
    for r in records:
        closed = "/pa" if r["policy_version"] == version_a else "/pb"
        assert r["outcome"] == ("deny" if r["path"] == closed else "allow"), r


def test_pdp_failure_denies(gw: Gateway, cookie: str) -> None:
    gw.add_user("fay")
    fresh = gw.session("fay", {"password"})  # never seen by the gateway: it must read the store
    before = len(gw.apps["echo"].seen)
    db = sqlite3.connect(gw.gate / "identity.db", timeout=10)
    try:
        db.execute("ALTER TABLE sessions RENAME TO sessions_moved")
        db.commit()
        r = _req(gw, "/pdp", fresh)
    finally:
        db.execute("ALTER TABLE sessions_moved RENAME TO sessions")
        db.commit()
        db.close()
    assert r.status >= 400 and r.status != 404, r
    assert len(gw.apps["echo"].seen) == before
    rec = _record(gw, "/pdp")
    assert rec["outcome"] == "deny" and "pdp_error" in rec["reasons"]
    assert _req(gw, "/pdp-after", fresh).status == 200  # and it recovers


def test_every_config_change_is_audited(gw: Gateway, cookie: str) -> None:
    version = gw.apply_policy(BASE.replace("/shadowed", "/shadowed2"))
    try:
        applied = [r for r in decisions(gw) if r.get("outcome") == "policy_applied"]
        assert applied and applied[-1]["policy_version"] == version
        history = gw.policies.history()
        assert history[-1].version == version and history[-1].actor == "test"
        count = len(decisions(gw))
        write_trust(gw, "weights.auth_password = 25\n")
        new = decisions(gw)[count:]
        # NIST 800-207 §5.1: a trust-config change moves every score, so it must leave a record
        assert any(
            "trust" in str(r.get("outcome", "")) or any("trust" in x for x in r.get("reasons", []))
            for r in new
        ), new
    finally:
        gw.apply_policy(BASE)
        (gw.gate / "trust.toml").unlink(missing_ok=True)
        time.sleep(0.6)
