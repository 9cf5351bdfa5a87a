"""Users: argon2id passwords, lockout, per-IP limits on failed logins, and TOTP second factors.

Threat model in brief: an online guesser (one name from many IPs, or many names from one IP),
a user enumerator (timing and lockout differences between known and unknown names), and a
shoulder-surfer replaying a TOTP code seen once. See ``LoginPolicy`` for the numbers.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from noops.gate import _identity_totp as totp
from noops.gate._identity_db import IdentityDb, IdentityError

__all__ = ["AuthOutcome", "AuthResult", "LoginPolicy", "User", "UserSummary", "UsersMixin",
           "default_hasher", "read_users"]


def default_hasher() -> PasswordHasher:
    """argon2id with RFC 9106's second recommended option (t=3, m=64 MiB, p=4), argon2-cffi's
    default. Changing these makes every stored hash "need rehash"; it is upgraded at next login."""
    return PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=4, hash_len=32,
                          salt_len=16)


@dataclass(frozen=True)
class LoginPolicy:
    """Failed-login limits. Failures count password and TOTP mistakes alike.

    ``max_failures`` failures for one name within ``failure_window_s`` lock that name for
    ``lockout_s`` (unknown names too, so a lockout reveals nothing). ``ip_max_failures`` failures
    from one client IP within ``ip_window_s`` refuse further attempts from it, whatever the name.
    """

    max_failures: int = 5
    failure_window_s: float = 15 * 60
    lockout_s: float = 15 * 60
    ip_max_failures: int = 20
    ip_window_s: float = 15 * 60
    totp_window_steps: int = 1


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]
    disabled: bool
    totp_enabled: bool


@dataclass(frozen=True)
class UserSummary:
    """What an administrator may see of a user: never a hash or a secret.

    ``disabled`` is an admin lock (:meth:`IdentityStore.lock_user`); ``locked_until`` is the end
    of a failed-login lockout still running (Unix time), else None. ``last_login`` is when the
    user's newest session began (a password or OIDC login), None if never.
    """

    name: str
    groups: tuple[str, ...]
    totp_enabled: bool
    disabled: bool
    locked_until: float | None
    created_at: float
    last_login: float | None


_SUMMARY_SQL: Final = """
SELECT u.name, u.groups_json, u.totp_secret IS NOT NULL, u.disabled, l.locked_until, u.created_at,
       (SELECT MAX(s.created_at) FROM sessions s WHERE s.user = u.name)
FROM users u LEFT JOIN lockouts l ON l.name = u.name ORDER BY u.name
"""


def _summaries(conn: sqlite3.Connection, now: float) -> list[UserSummary]:
    return [UserSummary(name, tuple(json.loads(groups)), bool(totp), bool(disabled),
                        until if until is not None and until > now else None, created, last)
            for name, groups, totp, disabled, until, created, last in conn.execute(_SUMMARY_SQL)]


def read_users(path: str | os.PathLike[str], *, now: float | None = None) -> list[UserSummary]:
    """Every user of the identity database at ``path``, by name; [] when there is none yet.

    Opens its own connection and closes it (safe from any thread or process, never creates the
    file), for readers that do not hold an :class:`IdentityStore`."""
    target = Path(path)
    if not target.exists():
        return []
    moment = time.time() if now is None else now
    try:
        conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error as exc:
        raise IdentityError(f"cannot open the identity database {target} ({exc}); check its "
                            "permissions") from exc
    try:
        return _summaries(conn, moment)
    except sqlite3.Error as exc:
        raise IdentityError(f"cannot read the identity database {target} ({exc}); check it is a "
                            "noops identity database") from exc
    finally:
        conn.close()


class AuthOutcome(StrEnum):
    OK = "ok"
    BAD_CREDENTIALS = "bad_credentials"  # wrong password, unknown user, wrong/replayed code
    LOCKED = "locked"  # too many failures for this name, or locked by an admin
    RATE_LIMITED = "rate_limited"  # too many failures from this client IP


@dataclass(frozen=True)
class AuthResult:
    """What a login step decided. Truthy only when ``outcome`` is OK.

    Show users one message for every failure; ``outcome`` and ``retry_after_s`` are for logs
    and for a ``Retry-After`` header.
    """

    outcome: AuthOutcome
    user: User | None = None
    retry_after_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome is AuthOutcome.OK

    def __bool__(self) -> bool:
        return self.ok


def _check_name(name: str) -> None:
    if not name or len(name) > 128 or any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise IdentityError(f"invalid user name {name!r}: use 1-128 printable characters")


def _reset_name(conn: sqlite3.Connection, name: str, *, locked_until: float,
                counted_from: float) -> None:
    conn.execute("INSERT OR REPLACE INTO lockouts(name, locked_until, counted_from) VALUES (?,?,?)",
                 (name, locked_until, counted_from))


def _row_user(row: tuple[str, str, int, str | None]) -> User:
    name, groups_json, disabled, secret = row
    return User(name=name, groups=tuple(json.loads(groups_json)), disabled=bool(disabled),
                totp_enabled=secret is not None)


class UsersMixin:
    """User operations of :class:`noops.gate.identity.IdentityStore`."""

    _db: IdentityDb
    _hasher: PasswordHasher
    _policy: LoginPolicy
    _dummy_hash: str
    _totp_issuer: str

    # -- users ---------------------------------------------------------------------------

    def add_user(self, name: str, password: str, groups: tuple[str, ...] | list[str] = ()) -> User:
        """Create a user; raises IdentityError if the name is taken or the password empty."""
        _check_name(name)
        if not password:
            raise IdentityError("a password must not be empty")
        hashed = self._hasher.hash(password)
        with self._db.write() as conn:
            if conn.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone():
                raise IdentityError(f"user {name!r} already exists; pick another name")
            conn.execute("INSERT INTO users(name, password_hash, groups_json, created_at) "
                         "VALUES (?,?,?,?)", (name, hashed, json.dumps(sorted(set(groups))),
                                              time.time()))
        return User(name, tuple(sorted(set(groups))), disabled=False, totp_enabled=False)

    def list_users(self, *, now: float | None = None) -> list[UserSummary]:
        """Every user by name, as :class:`UserSummary` (no hash, no secret)."""
        return _summaries(self._db.conn(), time.time() if now is None else now)

    def get_user(self, name: str) -> User | None:
        row = self._db.conn().execute(
            "SELECT name, groups_json, disabled, totp_secret FROM users WHERE name=?",
            (name,)).fetchone()
        return _row_user(row) if row else None

    def _require_user(self, name: str) -> User:
        user = self.get_user(name)
        if user is None:
            raise IdentityError(f"no user named {name!r}; add it first")
        return user

    def set_groups(self, name: str, groups: tuple[str, ...] | list[str]) -> User:
        self._require_user(name)
        with self._db.write() as conn:
            conn.execute("UPDATE users SET groups_json=? WHERE name=?",
                         (json.dumps(sorted(set(groups))), name))
        return self._require_user(name)

    def replace_groups(self, name: str, expected: tuple[str, ...] | list[str],
                       groups: tuple[str, ...] | list[str]) -> bool:
        """Set ``name``'s groups to ``groups`` if they are still ``expected`` (compare and set:
        a concurrent change wins); False when they were not, or the user is gone."""
        with self._db.write() as conn:
            changed = conn.execute("UPDATE users SET groups_json=? WHERE name=? AND groups_json=?",
                                   (json.dumps(sorted(set(groups))), name,
                                    json.dumps(sorted(set(expected))))).rowcount
        return changed == 1

    def set_password(self, name: str, password: str) -> None:
        if not password:
            raise IdentityError("a password must not be empty")
        self._require_user(name)
        hashed = self._hasher.hash(password)
        with self._db.write() as conn:
            conn.execute("UPDATE users SET password_hash=? WHERE name=?", (hashed, name))

    # -- failures, lockout, rate limit -----------------------------------------------------

    def _blocked(self, name: str, client_ip: str, now: float) -> AuthResult | None:
        conn = self._db.conn()
        p = self._policy
        row = conn.execute("SELECT COUNT(*), MIN(at) FROM failures WHERE client_ip=? AND at>?",
                           (client_ip, now - p.ip_window_s)).fetchone()
        if row[0] >= p.ip_max_failures:
            return AuthResult(AuthOutcome.RATE_LIMITED,
                              retry_after_s=max(0.0, row[1] + p.ip_window_s - now))
        row = conn.execute("SELECT locked_until FROM lockouts WHERE name=?", (name,)).fetchone()
        if row and row[0] > now:
            return AuthResult(AuthOutcome.LOCKED, retry_after_s=row[0] - now)
        return None

    def _record_failure(self, name: str, client_ip: str, now: float) -> AuthResult:
        p = self._policy
        with self._db.write() as conn:
            conn.execute("INSERT INTO failures(name, client_ip, at) VALUES (?,?,?)",
                         (name, client_ip, now))
            conn.execute("DELETE FROM failures WHERE at<?",
                         (now - max(p.failure_window_s, p.ip_window_s),))
            row = conn.execute("SELECT counted_from FROM lockouts WHERE name=?", (name,)).fetchone()
            since = max(now - p.failure_window_s, row[0] if row else 0.0)
            (count,) = conn.execute("SELECT COUNT(*) FROM failures WHERE name=? AND at>?",
                                    (name, since)).fetchone()
            if count >= p.max_failures:
                # The failures behind this lockout are spent: when it ends the name gets a fresh
                # allowance instead of relocking on the very next mistake.
                _reset_name(conn, name, locked_until=now + p.lockout_s,
                            counted_from=now + p.lockout_s)
        return AuthResult(AuthOutcome.BAD_CREDENTIALS)

    def verify_password(self, name: str, password: str, *, client_ip: str,
                        now: float | None = None) -> AuthResult:
        """Check a password. Never raises for bad input; see :class:`AuthResult`.

        Order: per-IP limit, then per-name lockout (both answered without hashing, and the same
        for known and unknown names), then one argon2 verification - against a dummy hash for
        unknown names so they take as long as known ones. An admin-locked user gets LOCKED only
        after giving the right password, so the lock does not reveal the name either.
        """
        now = time.time() if now is None else now
        blocked = self._blocked(name, client_ip, now)
        if blocked is not None:
            return blocked
        row = self._db.conn().execute(
            "SELECT password_hash, disabled FROM users WHERE name=?", (name,)).fetchone()
        stored = row[0] if row else self._dummy_hash
        try:
            self._hasher.verify(stored, password)
            matched = row is not None
        except (VerificationError, InvalidHashError):
            matched = False
        if not matched:
            return self._record_failure(name, client_ip, now)
        with self._db.write() as conn:
            _reset_name(conn, name, locked_until=0.0, counted_from=now)
        if self._hasher.check_needs_rehash(stored):
            self._rehash(name, stored, password)
        user = self._require_user(name)
        if user.disabled:
            return AuthResult(AuthOutcome.LOCKED, user=user)
        return AuthResult(AuthOutcome.OK, user=user)

    def _rehash(self, name: str, old_hash: str, password: str) -> None:
        new_hash = self._hasher.hash(password)
        with self._db.write() as conn:
            # Only if nobody changed the password meanwhile.
            conn.execute("UPDATE users SET password_hash=? WHERE name=? AND password_hash=?",
                         (new_hash, name, old_hash))

    def _set_disabled(self, name: str, disabled: bool, now: float) -> None:
        self._require_user(name)
        with self._db.write() as conn:
            conn.execute("UPDATE users SET disabled=? WHERE name=?", (int(disabled), name))
            if not disabled:
                _reset_name(conn, name, locked_until=0.0, counted_from=now)

    # -- TOTP ------------------------------------------------------------------------------

    def enroll_totp(self, name: str) -> tuple[str, str]:
        """Start (re-)enrolment: returns ``(secret_base32, otpauth_uri)``.

        The secret is only *pending*: logins keep using the previous factor (or none) until
        :meth:`confirm_totp` sees a valid code, proving the authenticator app has it.
        Re-enrolling an enrolled user should be gated by a step-up the caller checks.
        """
        self._require_user(name)
        secret = totp.new_secret()
        with self._db.write() as conn:
            conn.execute("UPDATE users SET totp_pending=? WHERE name=?", (secret, name))
        return secret, totp.otpauth_uri(secret, name, self._totp_issuer)

    def confirm_totp(self, name: str, code: str, *, now: float | None = None) -> bool:
        """Activate the pending secret if ``code`` is valid for it; the code is spent."""
        now = time.time() if now is None else now
        with self._db.write() as conn:
            row = conn.execute("SELECT totp_pending FROM users WHERE name=?", (name,)).fetchone()
            if row is None or row[0] is None:
                raise IdentityError(f"{name!r} has no pending TOTP enrolment; call enroll_totp")
            step = totp.matching_step(row[0], code, now, self._policy.totp_window_steps)
            if step is None:
                return False
            conn.execute("UPDATE users SET totp_secret=totp_pending, totp_pending=NULL, "
                         "totp_last_step=? WHERE name=?", (step, name))
        return True

    def disable_totp(self, name: str) -> None:
        self._require_user(name)
        with self._db.write() as conn:
            conn.execute("UPDATE users SET totp_secret=NULL, totp_pending=NULL, totp_last_step=-1 "
                         "WHERE name=?", (name,))

    def verify_totp(self, name: str, code: str, now: float | None = None, *,
                    client_ip: str = "") -> AuthResult:
        """Check a TOTP code (±``totp_window_steps`` steps of 30 s).

        Replay protection: the accepted step must be later than the last accepted one, so a
        code (and any code of an earlier step) works once. Mistakes count towards the same
        lockout and per-IP limit as passwords, which bounds guessing of the 10^6 code space.
        """
        now = time.time() if now is None else now
        blocked = self._blocked(name, client_ip, now)
        if blocked is not None:
            return blocked
        with self._db.write() as conn:
            row = conn.execute("SELECT totp_secret, totp_last_step, disabled FROM users "
                               "WHERE name=?", (name,)).fetchone()
            step = None
            if row is not None and row[0] is not None:
                step = totp.matching_step(row[0], code, now, self._policy.totp_window_steps)
            accepted = step is not None and step > row[1]
            if accepted:
                conn.execute("UPDATE users SET totp_last_step=? WHERE name=?", (step, name))
        if not accepted:
            return self._record_failure(name, client_ip, now)
        user = self._require_user(name)
        if user.disabled:
            return AuthResult(AuthOutcome.LOCKED, user=user)
        return AuthResult(AuthOutcome.OK, user=user)


def new_dummy_hash(hasher: PasswordHasher) -> str:
    """A hash of a random secret, verified against for unknown names (equal work)."""
    return hasher.hash(secrets.token_urlsafe(24))
