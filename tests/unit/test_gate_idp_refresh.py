"""IdpRefresher on its own: an OIDC sign-in is checked with the provider every ``refresh_s``; a
refusal ends its whole family at once, a provider that cannot be asked ends it after three
periods, rotated tokens are kept sealed. Times are passed in, the provider is a fake."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from noops.gate._oidc_config import OidcConfig, OidcWatcher, save_oidc
from noops.gate._pep_refresh import IdpRefresher
from noops.gate.identity import IdentityStore, OIDCError, OIDCIdentity, OIDCRefused, Refreshed

T0 = 1_800_000_000.0
REFRESH_S = 60.0


class FakeProvider:
    """Answers refreshes like a provider that rotates tokens; ``answer`` changes that."""

    def __init__(self) -> None:
        self.answer = "ok"  # or "refuse", "down"
        self.groups: tuple[str, ...] | None = None  # what the refreshed ID token says (None: no claim)
        self.account = "ada"  # the account the refreshed ID token names
        self.calls: list[tuple[str, str]] = []
        self.revoked: list[str] = []
        self.n = 0

    def revoke(self, token: str) -> bool:
        self.revoked.append(token)
        return True

    def refresh(self, token: str, sub: str, *, now: float | None = None) -> Refreshed:
        self.calls.append((token, sub))
        if self.answer == "refuse":
            raise OIDCRefused("the provider refused the refresh token (HTTP 400, 'invalid_grant')")
        if self.answer == "down":
            raise OIDCError("the token request failed: connection refused")
        self.n += 1
        return Refreshed(f"rt-{self.n}", self.account, self.groups)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[IdpRefresher, IdentityStore, FakeProvider, list[dict[str, Any]]]:
    save_oidc(tmp_path / "oidc.toml", OidcConfig("https://idp.example", "noops", "cs",
                                                 refresh_s=REFRESH_S))
    store = IdentityStore(tmp_path / "identity.db")
    audit: list[dict[str, Any]] = []
    refresher = IdpRefresher(store, OidcWatcher(tmp_path / "oidc.toml"), audit.append)
    fake = FakeProvider()
    refresher._current_provider = lambda config: fake  # type: ignore[method-assign,assignment,return-value]
    return refresher, store, fake, audit


def _sign_in(refresher: IdpRefresher, store: IdentityStore, token: str = "rt-0") -> str:
    sid, cookie = store.create_session("ada", auth_methods={"oidc"}, client_ip="10.0.0.1", now=T0)
    who = OIDCIdentity("user-42", "ada@example.test", True, (), False, {}, refresh_token=token)
    refresher.keep(sid, "ada", who, now=T0)
    return cookie


def test_asked_every_period_rotated_tokens_sealed(setup: Any, tmp_path: Path) -> None:
    refresher, store, fake, audit = setup
    cookie = _sign_in(refresher, store)
    refresher.run_due(now=T0 + REFRESH_S - 1)
    assert fake.calls == []  # not due yet
    refresher.run_due(now=T0 + REFRESH_S)
    refresher.run_due(now=T0 + 2 * REFRESH_S)
    assert fake.calls == [("rt-0", "user-42"), ("rt-1", "user-42")]  # the rotated one next
    assert store.get_session(cookie, now=T0 + 2 * REFRESH_S) is not None and audit == []
    db = sqlite3.connect(tmp_path / "identity.db")
    [(sealed,)] = db.execute("SELECT sealed FROM idp_tokens")
    db.close()
    assert b"rt-" not in sealed  # the current token (rt-2) is sealed


def test_a_refusal_ends_the_whole_family_at_once(setup: Any) -> None:
    refresher, store, fake, audit = setup
    cookie = _sign_in(refresher, store)
    parent = store.get_session(cookie, now=T0 + 1)
    assert parent is not None
    _, child = store.create_session("ada", auth_methods={"oidc"}, client_ip="10.0.0.1",
                                    now=T0 + 1, family_of=parent)  # SSO on another host
    fake.answer = "refuse"
    refresher.run_due(now=T0 + REFRESH_S)
    assert store.get_session(cookie, now=T0 + REFRESH_S) is None
    assert store.get_session(child, now=T0 + REFRESH_S) is None
    assert [(r["outcome"], r["user"], r["reasons"]) for r in audit] == [
        ("session_ended", "ada", ["idp_refresh_refused"])]
    refresher.run_due(now=T0 + 10 * REFRESH_S)
    assert len(fake.calls) == 1  # forgotten: never asked again


def test_a_provider_that_cannot_be_asked_is_retried_then_ends_it(setup: Any) -> None:
    refresher, store, fake, audit = setup
    cookie = _sign_in(refresher, store)
    fake.answer = "down"
    moment = T0 + REFRESH_S
    while moment <= T0 + 3 * REFRESH_S:  # retried every min(refresh_s, 30 s); the sign-in holds
        refresher.run_due(now=moment)
        assert store.get_session(cookie, now=moment) is not None, moment
        moment += 30
    assert len(fake.calls) == 5 and audit == []
    refresher.run_due(now=moment)
    assert store.get_session(cookie, now=moment) is None
    assert audit[0]["reasons"] == ["idp_unreachable"]


def test_a_provider_back_in_time_keeps_the_sign_in(setup: Any) -> None:
    refresher, store, fake, _ = setup
    cookie = _sign_in(refresher, store)
    fake.answer = "down"
    refresher.run_due(now=T0 + REFRESH_S)
    fake.answer = "ok"
    refresher.run_due(now=T0 + REFRESH_S + 30)
    fake.answer = "down"  # three periods from the last "yes", not from the sign-in
    refresher.run_due(now=T0 + 3 * REFRESH_S + 40)
    assert store.get_session(cookie, now=T0 + 3 * REFRESH_S + 40) is not None


def test_a_sealed_token_moved_to_another_sign_in_is_not_used(setup: Any, tmp_path: Path) -> None:
    refresher, store, fake, audit = setup
    _sign_in(refresher, store, "rt-a")
    cookie_b = _sign_in(refresher, store, "rt-b")
    db = sqlite3.connect(tmp_path / "identity.db", isolation_level=None)
    (_, a_sealed), (b_family, _) = db.execute("SELECT family, sealed FROM idp_tokens ORDER BY rowid")
    db.execute("UPDATE idp_tokens SET sealed=? WHERE family=?", (a_sealed, b_family))  # a's into b
    db.close()
    refresher.run_due(now=T0 + REFRESH_S)
    assert ("rt-a", "user-42") in fake.calls and len(fake.calls) == 1  # b's row was not opened
    assert store.get_session(cookie_b, now=T0 + REFRESH_S) is None
    assert [r["reasons"] for r in audit] == [["idp_token_unreadable"]]


def test_a_token_is_never_sent_to_another_provider(setup: Any, tmp_path: Path) -> None:
    refresher, store, fake, audit = setup
    cookie = _sign_in(refresher, store)
    save_oidc(tmp_path / "oidc.toml", OidcConfig("https://other-idp.example", "noops", "cs",
                                                 refresh_s=REFRESH_S))  # `noops oidc set` again
    refresher.run_due(now=T0 + REFRESH_S)
    assert fake.calls == []  # it cannot be opened for the new provider: never sent there
    assert store.get_session(cookie, now=T0 + REFRESH_S) is None
    assert [r["reasons"] for r in audit] == [["idp_token_unreadable"]]


def test_sign_ins_without_a_token_or_live_session_are_not_asked(setup: Any) -> None:
    refresher, store, fake, _ = setup
    sid, _ = store.create_session("bob", auth_methods={"oidc"}, client_ip="10.0.0.2", now=T0)
    refresher.keep(sid, "bob", OIDCIdentity("b", None, False, (), False, {}), now=T0)  # none issued
    cookie = _sign_in(refresher, store)
    store.revoke_cookie(cookie, now=T0 + 1)  # logout
    refresher.run_due(now=T0 + REFRESH_S)
    assert fake.calls == []


def test_an_ended_sign_in_gives_its_token_back_once(setup: Any) -> None:
    refresher, store, fake, _ = setup
    cookie = _sign_in(refresher, store)
    refresher.run_due(now=T0 + 1)
    assert fake.revoked == []  # live: kept
    refresher.run_due(now=T0 + REFRESH_S)  # rotated to rt-1
    store.revoke_cookie(cookie, now=T0 + REFRESH_S)  # logout (or a lock, a revocation, expiry)
    refresher.run_due(now=T0 + REFRESH_S + 1)
    assert fake.revoked == ["rt-1"]  # the one in use, revoked at the provider
    refresher.run_due(now=T0 + 3 * REFRESH_S)
    assert fake.revoked == ["rt-1"] and fake.calls == [("rt-0", "user-42")]  # once; never asked again


def test_the_providers_groups_become_the_users_groups(setup: Any) -> None:
    refresher, store, fake, audit = setup
    told: list[str] = []
    refresher.groups_changed = told.append
    store.add_user("ada", "pw-unused-here", ["ops", "dev"])
    _sign_in(refresher, store)
    refresher.run_due(now=T0 + REFRESH_S)  # no groups claim: nothing changes
    assert store.get_user("ada").groups == ("dev", "ops") and audit == []  # type: ignore[union-attr]
    fake.groups = ("dev", "ops")  # the same, in another order
    refresher.run_due(now=T0 + 2 * REFRESH_S)
    assert audit == []
    fake.groups = ("dev", "qa")  # removed from ops, added to qa at the provider
    refresher.run_due(now=T0 + 3 * REFRESH_S)
    assert store.get_user("ada").groups == ("dev", "qa")  # type: ignore[union-attr]
    [record] = audit
    assert (record["outcome"], record["user"]) == ("groups_changed", "ada")
    assert record["reasons"] == ["idp_refresh"]
    assert (record["groups_added"], record["groups_removed"]) == (["qa"], ["ops"])
    assert told == ["ada"]
    fake.account, fake.groups = "eve@example.test", ("admin",)  # the e-mail moved to another subject
    refresher.run_due(now=T0 + 4 * REFRESH_S)
    assert store.get_user("ada").groups == ("dev", "qa") and len(audit) == 1  # type: ignore[union-attr]
