"""noops.gate.identity: passwords, lockout, TOTP, sessions and cookies (no network)."""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from argon2.low_level import Type

from noops.gate import _identity_totp as totp
from noops.gate.identity import (
    COOKIE_NAME,
    AuthOutcome,
    IdentityError,
    IdentityStore,
    LoginPolicy,
    SessionError,
    clear_session_cookie,
    default_hasher,
    session_cookie,
    session_cookie_from_header,
)

T0 = 1_800_000_010.0  # a fixed "now", 10 s into a TOTP step
IP = "192.0.2.1"


def fast_hasher(time_cost: int = 1) -> PasswordHasher:
    # Real argon2id, minimal cost so the suite stays fast; the defaults are tested separately.
    return PasswordHasher(time_cost=time_cost, memory_cost=8, parallelism=1)


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[IdentityStore]:
    s = IdentityStore(tmp_path / "identity.db", hasher=fast_hasher())
    s.add_user("ada", "correct horse", groups=["ops", "dev", "ops"])
    yield s
    s.close()


def stored_hash(path: Path, name: str) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("SELECT password_hash FROM users WHERE name=?", (name,)).fetchone()[0])


# -- storage ------------------------------------------------------------------------------------

def test_database_is_private_and_wal(store: IdentityStore, tmp_path: Path) -> None:
    path = tmp_path / "identity.db"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert store._db.conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_connection_per_thread(store: IdentityStore) -> None:
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(store.get_user("ada")))
    thread.start()
    thread.join()
    assert seen and seen[0] is not None


# -- passwords ----------------------------------------------------------------------------------

def test_argon2id_hash_format(store: IdentityStore, tmp_path: Path) -> None:
    hashed = stored_hash(tmp_path / "identity.db", "ada")
    assert hashed.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert "correct horse" not in hashed


def test_default_parameters_are_rfc9106_argon2id() -> None:
    hasher = default_hasher()
    assert hasher.type is Type.ID
    assert (hasher.time_cost, hasher.memory_cost, hasher.parallelism) == (3, 65536, 4)


def test_user_and_groups(store: IdentityStore) -> None:
    user = store.get_user("ada")
    assert user is not None and user.groups == ("dev", "ops") and not user.totp_enabled
    assert store.set_groups("ada", ["admin"]).groups == ("admin",)
    with pytest.raises(IdentityError, match="already exists"):
        store.add_user("ada", "x")
    with pytest.raises(IdentityError):
        store.add_user("bad\nname", "x")
    with pytest.raises(IdentityError):
        store.add_user("empty", "")


def test_password_ok_and_wrong(store: IdentityStore) -> None:
    ok = store.verify_password("ada", "correct horse", client_ip=IP, now=T0)
    assert ok and ok.outcome is AuthOutcome.OK and ok.user is not None and ok.user.name == "ada"
    bad = store.verify_password("ada", "wrong", client_ip=IP, now=T0)
    assert not bad and bad.outcome is AuthOutcome.BAD_CREDENTIALS and bad.user is None


def test_rehash_on_login_when_parameters_change(tmp_path: Path) -> None:
    path = tmp_path / "identity.db"
    old = IdentityStore(path, hasher=fast_hasher(time_cost=1))
    old.add_user("ada", "correct horse")
    old.close()
    new = IdentityStore(path, hasher=fast_hasher(time_cost=2))
    assert ",t=1," in stored_hash(path, "ada")
    assert new.verify_password("ada", "wrong", client_ip=IP, now=T0).outcome is AuthOutcome.BAD_CREDENTIALS
    assert ",t=1," in stored_hash(path, "ada")  # no rehash on a failed login
    assert new.verify_password("ada", "correct horse", client_ip=IP, now=T0)
    assert ",t=2," in stored_hash(path, "ada")
    assert new.verify_password("ada", "correct horse", client_ip=IP, now=T0)
    new.close()


def test_unknown_user_verifies_a_dummy_hash(tmp_path: Path) -> None:
    hasher = CountingHasher()
    s = IdentityStore(tmp_path / "identity.db", hasher=hasher)
    s.add_user("ada", "correct horse")
    result = s.verify_password("nobody", "correct horse", client_ip=IP, now=T0)
    assert result.outcome is AuthOutcome.BAD_CREDENTIALS
    assert hasher.verified == [s._dummy_hash]  # same argon2 work as for a real user
    s.verify_password("ada", "wrong", client_ip=IP, now=T0)
    assert len(hasher.verified) == 2 and hasher.verified[1] != s._dummy_hash
    s.close()


def test_lockout_after_five_failures_then_expiry(store: IdentityStore) -> None:
    for i in range(5):
        r = store.verify_password("ada", "wrong", client_ip=f"198.51.100.{i}", now=T0 + i)
        assert r.outcome is AuthOutcome.BAD_CREDENTIALS
    locked = store.verify_password("ada", "correct horse", client_ip=IP, now=T0 + 10)
    assert locked.outcome is AuthOutcome.LOCKED and locked.retry_after_s == pytest.approx(894)
    assert store.verify_password("ada", "correct horse", client_ip=IP, now=T0 + 4 + 899).outcome \
        is AuthOutcome.LOCKED
    assert store.verify_password("ada", "correct horse", client_ip=IP, now=T0 + 4 + 901)
    # the spent failures do not relock on the next single mistake
    assert store.verify_password("ada", "wrong", client_ip=IP, now=T0 + 910).outcome \
        is AuthOutcome.BAD_CREDENTIALS
    assert store.verify_password("ada", "correct horse", client_ip=IP, now=T0 + 911)


def test_failures_outside_the_window_do_not_lock(store: IdentityStore) -> None:
    for i in range(4):
        store.verify_password("ada", "wrong", client_ip=IP, now=T0 + i)
    store.verify_password("ada", "wrong", client_ip=IP, now=T0 + 15 * 60 + 5)
    assert store.verify_password("ada", "correct horse", client_ip=IP, now=T0 + 15 * 60 + 6)


def test_success_resets_the_name_counter(store: IdentityStore) -> None:
    for i in range(4):
        store.verify_password("ada", "wrong", client_ip=IP, now=T0 + i)
    assert store.verify_password("ada", "correct horse", client_ip=IP, now=T0 + 5)
    store.verify_password("ada", "wrong", client_ip=IP, now=T0 + 6)
    assert store.verify_password("ada", "correct horse", client_ip=IP, now=T0 + 7)


def test_unlock_lifts_lockout(store: IdentityStore) -> None:
    for i in range(5):
        store.verify_password("ada", "wrong", client_ip=IP, now=T0 + i)
    assert store.verify_password("ada", "correct horse", client_ip=IP, now=T0 + 6).outcome \
        is AuthOutcome.LOCKED
    store.unlock_user("ada", now=T0 + 7)
    assert store.verify_password("ada", "correct horse", client_ip=IP, now=T0 + 8)


def test_unknown_names_lock_like_known_ones(store: IdentityStore) -> None:
    for i in range(5):
        store.verify_password("ghost", "wrong", client_ip=IP, now=T0 + i)
    assert store.verify_password("ghost", "x", client_ip=IP, now=T0 + 6).outcome is AuthOutcome.LOCKED


def test_admin_lock(store: IdentityStore) -> None:
    _, cookie = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0)
    store.lock_user("ada", now=T0 + 1)
    # a wrong password says nothing about the lock; the right one learns it
    assert store.verify_password("ada", "wrong", client_ip=IP, now=T0 + 2).outcome \
        is AuthOutcome.BAD_CREDENTIALS
    assert store.verify_password("ada", "correct horse", client_ip=IP, now=T0 + 3).outcome \
        is AuthOutcome.LOCKED
    assert store.get_session(cookie, now=T0 + 4) is None
    feed, _ = store.revocations_since(0)
    assert [r.reason for r in feed] == ["user locked"]
    store.unlock_user("ada", now=T0 + 5)
    assert store.verify_password("ada", "correct horse", client_ip=IP, now=T0 + 6)
    assert store.get_session(cookie, now=T0 + 7) is None  # revoked stays revoked
    with pytest.raises(IdentityError):
        store.lock_user("nobody")


def test_rate_limit_per_ip(store: IdentityStore) -> None:
    attacker, other = "203.0.113.9", "203.0.113.10"
    for i in range(20):  # 20 names, 1 failure each: no name lockout, but the IP is spent
        r = store.verify_password(f"user{i}", "guess", client_ip=attacker, now=T0 + i)
        assert r.outcome is AuthOutcome.BAD_CREDENTIALS
    limited = store.verify_password("ada", "correct horse", client_ip=attacker, now=T0 + 30)
    assert limited.outcome is AuthOutcome.RATE_LIMITED
    assert limited.retry_after_s == pytest.approx(15 * 60 - 30)
    assert store.verify_password("ada", "correct horse", client_ip=other, now=T0 + 30)
    assert store.verify_password("ada", "correct horse", client_ip=attacker, now=T0 + 15 * 60 + 1)


def test_rate_limit_counts_failures_after_success(tmp_path: Path) -> None:
    # a success resets the name's counter but not the IP's
    s = IdentityStore(tmp_path / "i.db", hasher=fast_hasher(),
                      login_policy=LoginPolicy(max_failures=100, ip_max_failures=3))
    s.add_user("ada", "correct horse")
    for i in range(2):
        s.verify_password("ada", "wrong", client_ip=IP, now=T0 + i)
    assert s.verify_password("ada", "correct horse", client_ip=IP, now=T0 + 3)
    s.verify_password("ada", "wrong", client_ip=IP, now=T0 + 4)
    assert s.verify_password("ada", "correct horse", client_ip=IP, now=T0 + 5).outcome \
        is AuthOutcome.RATE_LIMITED
    s.close()


# -- TOTP ---------------------------------------------------------------------------------------

RFC_SECRET = b"12345678901234567890"  # RFC 6238 appendix B, SHA-1 seed


@pytest.mark.parametrize(("unix_time", "expected"), [
    (59, "94287082"), (1111111109, "07081804"), (1111111111, "14050471"),
    (1234567890, "89005924"), (2000000000, "69279037"), (20000000000, "65353130"),
])
def test_rfc6238_sha1_vectors(unix_time: int, expected: str) -> None:
    assert totp.hotp(RFC_SECRET, unix_time // 30, digits=8) == expected
    secret_b32 = base64.b32encode(RFC_SECRET).decode()
    assert totp.totp_at(secret_b32, unix_time) == expected[-6:]  # 6 digits: same truncation


def test_rfc4226_hotp_vectors() -> None:
    expected = ["755224", "287082", "359152", "969429", "338314",
                "254676", "287922", "162583", "399871", "520489"]
    assert [totp.hotp(RFC_SECRET, c) for c in range(10)] == expected


def enrolled(store: IdentityStore) -> str:
    secret, _ = store.enroll_totp("ada")
    assert store.confirm_totp("ada", totp.totp_at(secret, T0 - 60), now=T0 - 60)
    return secret


def test_enrolment_needs_confirmation(store: IdentityStore) -> None:
    secret, uri = store.enroll_totp("ada")
    assert len(base64.b32decode(secret + "=" * (-len(secret) % 8))) == 20
    assert uri.startswith("otpauth://totp/noops%3Aada?")
    assert f"secret={secret}" in uri and "issuer=noops" in uri and "period=30" in uri
    assert "digits=6" in uri and "algorithm=SHA1" in uri
    code = totp.totp_at(secret, T0)
    assert not store.verify_totp("ada", code, T0)  # pending secrets do not log in
    assert not store.get_user("ada").totp_enabled  # type: ignore[union-attr]
    assert not store.confirm_totp("ada", "000000" if code != "000000" else "111111", now=T0)
    assert store.confirm_totp("ada", code, now=T0)
    assert store.get_user("ada").totp_enabled  # type: ignore[union-attr]
    assert not store.verify_totp("ada", code, T0)  # the confirming code is spent
    assert store.verify_totp("ada", totp.totp_at(secret, T0 + 30), T0 + 30)
    with pytest.raises(IdentityError, match="no pending"):
        store.confirm_totp("ada", code, now=T0)


def test_totp_replay_refused(store: IdentityStore) -> None:
    secret = enrolled(store)
    code = totp.totp_at(secret, T0)
    ok = store.verify_totp("ada", code, T0, client_ip=IP)
    assert ok and ok.user is not None and ok.user.name == "ada"
    replay = store.verify_totp("ada", code, T0 + 5, client_ip=IP)
    assert replay.outcome is AuthOutcome.BAD_CREDENTIALS
    # an earlier step, still inside the window, is refused once a later one was used
    assert not store.verify_totp("ada", totp.totp_at(secret, T0 - 30), T0 + 5)


@pytest.mark.parametrize(("offset_steps", "accepted"), [(-2, False), (-1, True), (0, True),
                                                        (1, True), (2, False)])
def test_totp_window_edges(store: IdentityStore, offset_steps: int, accepted: bool) -> None:
    secret = enrolled(store)
    code = totp.totp_at(secret, T0 + 30 * offset_steps)
    assert bool(store.verify_totp("ada", code, T0)) is accepted


def test_totp_step_boundary() -> None:
    secret = totp.new_secret()
    boundary = 1_800_000_000.0  # a multiple of 30
    assert totp.matching_step(secret, totp.totp_at(secret, boundary), boundary, window=0) \
        == int(boundary // 30)
    assert totp.matching_step(secret, totp.totp_at(secret, boundary - 0.001), boundary, window=0) \
        is None
    assert totp.matching_step(secret, "12345", boundary) is None
    assert totp.matching_step(secret, "abcdef", boundary) is None


def test_totp_guessing_locks(store: IdentityStore) -> None:
    secret = enrolled(store)
    good = totp.totp_at(secret, T0)
    wrong = f"{(int(good) + 1) % 10**6:06d}"
    for i in range(5):
        store.verify_totp("ada", wrong, T0 + i, client_ip=IP)
    assert store.verify_totp("ada", good, T0 + 6, client_ip=IP).outcome is AuthOutcome.LOCKED


def test_totp_for_user_without_totp(store: IdentityStore) -> None:
    assert not store.verify_totp("ada", "123456", T0)
    assert not store.verify_totp("nobody", "123456", T0)


# -- sessions -----------------------------------------------------------------------------------

def test_session_secret_is_256_bits_and_only_its_hash_is_stored(store: IdentityStore,
                                                                tmp_path: Path) -> None:
    sid, cookie = store.create_session("ada", auth_methods={"password"}, device="laptop",
                                       client_ip=IP, now=T0)
    raw = base64.urlsafe_b64decode(cookie + "=")
    assert len(raw) == 32 and sid != cookie
    with sqlite3.connect(tmp_path / "identity.db") as conn:
        (digest,) = conn.execute("SELECT secret_hash FROM sessions WHERE session_id=?",
                                 (sid,)).fetchone()
        dump = "\n".join(conn.iterdump())
    assert digest == hashlib.sha256(cookie.encode()).digest()
    assert cookie not in dump
    session = store.get_session(cookie, now=T0 + 1)
    assert session is not None and session.session_id == sid and session.user == "ada"
    assert session.auth_methods == {"password"} and not session.mfa and session.device == "laptop"


def test_session_sliding_idle_expiry(store: IdentityStore) -> None:
    _, cookie = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0)
    assert store.get_session(cookie, now=T0 + 29 * 60) is not None
    s = store.get_session(cookie, now=T0 + 58 * 60)  # slid by the request at 29 min
    assert s is not None and s.idle_expires_at == T0 + 88 * 60
    assert store.get_session(cookie, now=T0 + 88 * 60) is None  # 30 min idle
    assert store.get_session(cookie, now=T0 + 89 * 60) is None  # and stays dead


def test_session_absolute_expiry(store: IdentityStore) -> None:
    _, cookie = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0)
    t = T0
    while t + 20 * 60 < T0 + 12 * 3600:
        t += 20 * 60
        assert store.get_session(cookie, now=t) is not None
    assert store.get_session(cookie, now=T0 + 12 * 3600) is None


def test_invalid_auth_methods(store: IdentityStore) -> None:
    with pytest.raises(IdentityError):
        store.create_session("ada", auth_methods=set(), client_ip=IP)
    with pytest.raises(IdentityError):
        store.create_session("ada", auth_methods={"magic"}, client_ip=IP)


def test_step_up_rotates_the_secret(store: IdentityStore) -> None:
    secret = enrolled(store)
    sid, cookie = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0)
    assert store.verify_totp("ada", totp.totp_at(secret, T0 + 60), T0 + 60)
    session, new_cookie = store.step_up(cookie, "totp", now=T0 + 60)
    assert new_cookie != cookie and session.session_id == sid
    assert session.mfa and session.auth_methods == {"password", "totp"}
    assert store.get_session(cookie, now=T0 + 61) is None
    again = store.get_session(new_cookie, now=T0 + 61)
    assert again is not None and again.mfa
    with pytest.raises(SessionError):
        store.step_up(cookie, "totp", now=T0 + 62)
    with pytest.raises(IdentityError):
        store.step_up(new_cookie, "magic", now=T0 + 62)


def test_revocation_immediate_and_in_feed(store: IdentityStore) -> None:
    sid1, c1 = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0)
    sid2, c2 = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0)
    store.add_user("bob", "pw")
    sid3, c3 = store.create_session("bob", auth_methods={"password"}, client_ip=IP, now=T0)
    assert store.revocations_since(0) == ([], 0)
    assert store.revoke_session(sid1, now=T0 + 1)
    assert not store.revoke_session(sid1, now=T0 + 2)  # already dead: no second feed entry
    assert store.get_session(c1, now=T0 + 1) is None
    assert store.get_session(c2, now=T0 + 1) is not None
    feed, cursor = store.revocations_since(0)
    assert [(r.session_id, r.user, r.reason) for r in feed] == [(sid1, "ada", "logout")]
    assert store.revoke_user_sessions("ada", now=T0 + 3) == 1
    assert store.get_session(c2, now=T0 + 3) is None
    assert store.get_session(c3, now=T0 + 3) is not None
    feed2, cursor2 = store.revocations_since(cursor)
    assert [r.session_id for r in feed2] == [sid2] and cursor2 > cursor
    assert store.revocations_since(cursor2) == ([], cursor2)
    assert store.revoke_cookie(c3, now=T0 + 4)
    assert store.get_session(c3, now=T0 + 4) is None
    assert [r.session_id for r in store.revocations_since(cursor2)[0]] == [sid3]
    assert store.prune_sessions(now=T0 + 5) == 3


def test_cookie_attributes() -> None:
    value = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    header = session_cookie(value)
    assert header == f"__Host-noops_session={value}; Secure; HttpOnly; SameSite=Lax; Path=/"
    assert "domain" not in header.lower() and COOKIE_NAME.startswith("__Host-")
    assert session_cookie(value, max_age_s=3600).endswith("; Max-Age=3600")
    assert clear_session_cookie().startswith("__Host-noops_session=;")
    assert "Max-Age=0" in clear_session_cookie()
    with pytest.raises(IdentityError):
        session_cookie("x; Domain=evil.example")


def test_cookie_from_header() -> None:
    value = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    assert session_cookie_from_header(f"a=b; {COOKIE_NAME}={value}; c=d") == value
    assert session_cookie_from_header("a=b") is None
    assert session_cookie_from_header(f"{COOKIE_NAME}={value}; {COOKIE_NAME}={value}") is None
    assert session_cookie_from_header(f"noops_session={value}") is None  # no prefix, no trust
    assert session_cookie_from_header(f"{COOKIE_NAME}=short") is None


def test_session_fixation(store: IdentityStore) -> None:
    planted = base64.urlsafe_b64encode(b"\x01" * 32).decode().rstrip("=")
    assert store.get_session(planted, now=T0) is None  # an attacker-chosen value names nothing
    store.add_user("mallory", "pw")
    _, mallory = store.create_session("mallory", auth_methods={"password"}, client_ip=IP, now=T0)
    # the victim's browser still carries mallory's cookie when ada logs in
    _, ada = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0 + 1,
                                  replaces=mallory)
    assert ada not in (mallory, planted)
    assert store.get_session(mallory, now=T0 + 2) is None
    session = store.get_session(ada, now=T0 + 2)
    assert session is not None and session.user == "ada"
    _, again = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0 + 3,
                                    replaces=planted)
    assert again != planted


def test_locked_user_sessions_stop_even_without_revocation(store: IdentityStore) -> None:
    _, cookie = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0)
    store._set_disabled("ada", True, T0)
    assert store.get_session(cookie, now=T0 + 1) is None


def test_last_seen_is_not_rewritten_on_every_request(store: IdentityStore) -> None:
    _, cookie = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0)
    s = store.get_session(cookie, now=T0 + 1)
    assert s is not None and s.last_seen == T0  # within _TOUCH_S: no write
    s = store.get_session(cookie, now=T0 + 10)
    assert s is not None and s.last_seen == T0 + 10


# -- single sign-on families ----------------------------------------------------------------------

def test_a_session_made_from_another_joins_its_family_and_not_its_lifetime(store: IdentityStore) -> None:
    _, parent_cookie = store.create_session("ada", auth_methods={"password", "totp"}, client_ip=IP, now=T0)
    parent = store.get_session(parent_cookie, now=T0 + 600)
    assert parent is not None and parent.family == parent.session_id
    _, child_cookie = store.create_session("ada", auth_methods=parent.auth_methods, client_ip=IP,
                                           now=T0 + 600, family_of=parent)
    child = store.get_session(child_cookie, now=T0 + 601)
    assert child is not None and child.family == parent.session_id and child.mfa
    assert child.absolute_expires_at == parent.absolute_expires_at  # never outlives the sign-in
    _, other_cookie = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0 + 600)
    # logging out of the child ends the parent and its siblings, not another sign-in of the user
    assert store.revoke_cookie(child_cookie, now=T0 + 602)
    assert store.get_session(parent_cookie, now=T0 + 603) is None
    assert store.get_session(child_cookie, now=T0 + 603) is None
    assert store.get_session(other_cookie, now=T0 + 603) is not None
    gone = {r.session_id for r in store.revocations_since(0)[0]}
    assert {parent.session_id, child.session_id} <= gone  # both announced: their websockets close
    with pytest.raises(SessionError):
        store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0 + 604, family_of=parent)


def test_revoking_a_session_by_id_ends_its_family(store: IdentityStore) -> None:
    sid, parent_cookie = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0)
    parent = store.get_session(parent_cookie, now=T0)
    assert parent is not None
    _, child_cookie = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0,
                                           family_of=parent)
    assert store.revoke_session(sid, now=T0 + 1)
    assert store.get_session(child_cookie, now=T0 + 2) is None
    assert not store.revoke_session(sid, now=T0 + 3)  # no longer live


def test_a_database_from_before_families_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE sessions (secret_hash BLOB PRIMARY KEY, session_id TEXT NOT NULL UNIQUE,"
                     " user TEXT NOT NULL, methods_json TEXT NOT NULL, device TEXT, client_ip TEXT NOT NULL,"
                     " created_at REAL NOT NULL, last_seen REAL NOT NULL, absolute_exp REAL NOT NULL,"
                     " revoked_at REAL)")
        conn.execute("INSERT INTO sessions VALUES (?, 'old-sid', 'ada', '[\"password\"]', NULL, ?, ?, ?, ?, "
                     "NULL)",
                     (hashlib.sha256(b"x" * 43).digest(), IP, T0, T0, T0 + 3600))
    s = IdentityStore(path, hasher=fast_hasher())
    try:
        s.add_user("ada", "correct horse")
        old = s.get_session("x" * 43, now=T0 + 1)
        assert old is not None and old.family == "old-sid" and old.auth_at == T0
        assert s.revoke_cookie("x" * 43, now=T0 + 2)
        assert s.get_session("x" * 43, now=T0 + 3) is None
    finally:
        s.close()


def test_a_family_shares_its_time_of_authentication_and_idles_out_together(store: IdentityStore) -> None:
    _, parent_cookie = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0)
    parent = store.get_session(parent_cookie, now=T0)
    assert parent is not None and parent.auth_at == T0
    stepped, parent_cookie = store.step_up(parent_cookie, "totp", now=T0 + 100)
    assert stepped.auth_at == T0 + 100 and stepped.created_at == T0  # the step-up is the new time
    _, child_cookie = store.create_session("ada", auth_methods=stepped.auth_methods, client_ip=IP,
                                           now=T0 + 700, family_of=stepped)
    child = store.get_session(child_cookie, now=T0 + 700)
    assert child is not None and child.auth_at == T0 + 100  # not "just verified"
    # only the child is used; its requests keep the sign-in host's session alive with it
    for minute in (20, 40, 60):
        assert store.get_session(child_cookie, now=T0 + minute * 60) is not None
    assert store.get_session(parent_cookie, now=T0 + 61 * 60) is not None


def test_a_dead_cookie_cannot_sign_out_a_live_family(store: IdentityStore) -> None:
    _, old = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0)
    parent = store.get_session(old, now=T0)
    assert parent is not None
    _, child = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0, family_of=parent)
    _, replaced_child = store.create_session("ada", auth_methods={"password"}, client_ip=IP, now=T0 + 1,
                                             family_of=parent, replaces=child)
    assert not store.revoke_cookie(child, now=T0 + 2)  # the replaced cookie
    assert store.get_session(old, now=T0 + 3) is not None
    assert store.get_session(replaced_child, now=T0 + 3) is not None
