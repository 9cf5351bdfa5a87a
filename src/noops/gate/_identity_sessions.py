"""Browser sessions: an opaque 256-bit secret in a ``__Host-`` cookie, only its SHA-256 stored.

Lifetimes (``SessionPolicy``): a session dies after ``idle_s`` (30 min) without a request, and
``absolute_s`` (12 h) after login whatever the activity; each request slides the idle deadline.
Short idle lifetime keeps a stolen cookie useful only while the victim is active; the absolute
cap forces a fresh login (and fresh IdP claims) at least daily.

A session has two names: ``session_id``, a public handle for logs, admin revocation and the
revocation feed; and the cookie secret, which is the only bearer credential. Login always mints
a new secret (a cookie presented before login is never promoted: no fixation), and step-up
mints another one and kills the old, so a secret seen before MFA is worthless after it.

Single sign-on gives one sign-in several sessions, one per host (cookies are host-only): the
session made on the sign-in host and each one an app host got from it share a ``family`` (the
first one's ``session_id``). Logging out, or revoking any of them, revokes the whole family;
a session made from another has the first one's absolute limit and time of authentication, and
a request on it keeps the first one alive too (a family idles out together).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass

from noops.gate._identity_db import IdentityDb, IdentityError, SessionError

__all__ = [
    "AUTH_METHODS",
    "COOKIE_NAME",
    "Revocation",
    "Session",
    "SessionPolicy",
    "SessionsMixin",
    "clear_session_cookie",
    "session_cookie",
    "session_cookie_from_header",
]

COOKIE_NAME = "__Host-noops_session"
AUTH_METHODS = frozenset({"password", "totp", "oidc", "oidc_mfa"})
_MFA_METHODS = frozenset({"totp", "oidc_mfa"})
_SECRET_BYTES = 32  # 256 bits
_SECRET_LEN = 43  # base64url without padding of 32 bytes
_TOUCH_S = 5.0  # see get_session


@dataclass(frozen=True)
class SessionPolicy:
    idle_s: float = 30 * 60
    absolute_s: float = 12 * 60 * 60


@dataclass(frozen=True)
class Session:
    session_id: str
    user: str
    auth_methods: frozenset[str]
    device: str | None
    client_ip: str
    created_at: float
    last_seen: float
    idle_expires_at: float
    absolute_expires_at: float
    family: str = ""  # the session_id of the sign-in this session belongs to
    auth_at: float = 0.0  # when its strongest factor was last shown (login, step-up)

    @property
    def mfa(self) -> bool:
        """True when a second factor was shown (our TOTP, or the IdP said it did MFA)."""
        return bool(self.auth_methods & _MFA_METHODS)


@dataclass(frozen=True)
class Revocation:
    """One entry of the revocation feed: close anything (websockets) bound to ``session_id``."""

    seq: int
    session_id: str
    user: str
    at: float
    reason: str


def session_cookie(cookie_value: str, *, max_age_s: int | None = None) -> str:
    """A ``Set-Cookie`` value. ``__Host-`` makes browsers insist on Secure, Path=/ and no Domain,
    so a sibling subdomain cannot plant or overwrite it; HttpOnly keeps it from scripts; Lax keeps
    it off cross-site subrequests and POSTs. Without ``max_age_s`` it is a browser-session cookie
    (the server-side idle/absolute limits are the real ones)."""
    if len(cookie_value) != _SECRET_LEN or not _is_b64url(cookie_value):
        raise IdentityError("not a session cookie value; use the one create_session returned")
    attrs = f"{COOKIE_NAME}={cookie_value}; Secure; HttpOnly; SameSite=Lax; Path=/"
    return attrs if max_age_s is None else f"{attrs}; Max-Age={int(max_age_s)}"


def clear_session_cookie() -> str:
    """A ``Set-Cookie`` value that deletes the session cookie (logout)."""
    return f"{COOKIE_NAME}=; Secure; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"


def session_cookie_from_header(cookie_header: str) -> str | None:
    """The session secret from a request's ``Cookie`` header; None when absent, malformed or
    present more than once (ambiguous, so neither copy is trusted)."""
    values: list[str] = []
    for part in cookie_header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == COOKIE_NAME:
            values.append(value.strip())
    if len(values) != 1:
        return None
    return values[0] if len(values[0]) == _SECRET_LEN and _is_b64url(values[0]) else None


_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


def _is_b64url(value: str) -> bool:
    return _B64URL_RE.fullmatch(value) is not None


def _new_secret() -> tuple[str, bytes]:
    value = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).decode().rstrip("=")
    return value, _digest(value)


def _digest(cookie_value: str) -> bytes:
    # A plain hash suffices: the secret has 256 bits of entropy, nothing to brute-force. It keeps
    # a leaked database (or backup) from yielding usable cookies.
    return hashlib.sha256(cookie_value.encode("ascii", "replace")).digest()


_COLUMNS = ("session_id, user, methods_json, device, client_ip, created_at, last_seen, "
            "absolute_exp, revoked_at, family, auth_at")
_Row = tuple[str, str, str, str | None, str, float, float, float, float | None, str, float]
# the family of the live session the condition names (a revoked one names none)
_FAMILY_OF = "family = (SELECT family FROM sessions WHERE {} AND revoked_at IS NULL)"


class SessionsMixin:
    """Session operations of :class:`noops.gate.identity.IdentityStore`."""

    _db: IdentityDb
    _session_policy: SessionPolicy

    def _session(self, row: _Row, last_seen: float) -> Session:
        sid, user, methods, device, ip, created, _seen, absolute, _revoked, family, auth_at = row
        return Session(session_id=sid, user=user, auth_methods=frozenset(json.loads(methods)),
                       device=device, client_ip=ip, created_at=created, last_seen=last_seen,
                       idle_expires_at=min(last_seen + self._session_policy.idle_s, absolute),
                       absolute_expires_at=absolute, family=family, auth_at=auth_at)

    def create_session(self, user: str, *, auth_methods: set[str] | frozenset[str],
                       device: str | None = None, client_ip: str, now: float | None = None,
                       replaces: str | None = None, family_of: Session | None = None
                       ) -> tuple[str, str]:
        """Start a session after a successful login; returns ``(session_id, cookie_value)``.

        The secret is always new. Pass the request's old cookie as ``replaces`` to revoke the
        session it named (re-login); it is never reused. ``family_of``: the live session this
        one is made from (single sign-on): it joins that session's family and takes its absolute
        limit and its time of authentication (a fresh session of an old sign-in is not fresh).
        """
        now = time.time() if now is None else now
        methods = frozenset(auth_methods)
        if not methods or not methods <= AUTH_METHODS:
            raise IdentityError(f"auth_methods must be a non-empty subset of {sorted(AUTH_METHODS)}")
        session_id = secrets.token_hex(16)
        value, digest = _new_secret()
        family, absolute, auth_at = session_id, now + self._session_policy.absolute_s, now
        if family_of is not None:
            family, absolute = family_of.family, min(absolute, family_of.absolute_expires_at)
            auth_at = family_of.auth_at
        with self._db.write() as conn:
            if replaces is not None:
                self._revoke_where(conn, "secret_hash=?", (_digest(replaces),), now, "replaced")
            if family_of is not None and conn.execute(
                    "SELECT 1 FROM sessions WHERE session_id=? AND revoked_at IS NULL",
                    (family_of.session_id,)).fetchone() is None:
                raise SessionError("the sign-in this session comes from has ended; sign in again")
            conn.execute(
                "INSERT INTO sessions(secret_hash, session_id, user, methods_json, device, client_ip,"
                " created_at, last_seen, absolute_exp, family, auth_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (digest, session_id, user, json.dumps(sorted(methods)), device, client_ip, now, now,
                 absolute, family, auth_at))
        return session_id, value

    def _live_row(self, conn: sqlite3.Connection, cookie_value: str, now: float) -> _Row | None:
        if len(cookie_value) != _SECRET_LEN:
            return None
        row = conn.execute(f"SELECT {_COLUMNS} FROM sessions WHERE secret_hash=?",  # noqa: S608
                           (_digest(cookie_value),)).fetchone()
        if row is None or row[8] is not None:
            return None
        last_seen, absolute = row[6], row[7]
        if now >= absolute or now >= last_seen + self._session_policy.idle_s:
            return None
        disabled = conn.execute("SELECT disabled FROM users WHERE name=?", (row[1],)).fetchone()
        if disabled is not None and disabled[0]:
            return None
        return row  # type: ignore[no-any-return]

    def get_session(self, cookie_value: str, now: float | None = None) -> Session | None:
        """The live session the cookie names, its idle deadline slid to ``now``; else None
        (unknown, revoked, idle too long, past the absolute limit, or the user is locked).

        To spare the database a write per request, ``last_seen`` is only moved when it is more
        than ``_TOUCH_S`` seconds old, so the idle limit may end up to that much early.
        """
        now = time.time() if now is None else now
        row = self._live_row(self._db.conn(), cookie_value, now)
        if row is None:
            return None
        seen = row[6]
        if now - seen >= _TOUCH_S:
            with self._db.write() as conn:  # the session, and the sign-in it came from
                conn.execute("UPDATE sessions SET last_seen=? WHERE session_id IN (?, ?) "
                             "AND revoked_at IS NULL AND last_seen<?", (now, row[0], row[9], now))
            seen = now
        return self._session(row, seen)

    def step_up(self, cookie_value: str, method: str, *, now: float | None = None
                ) -> tuple[Session, str]:
        """Add ``method`` (e.g. "totp") to a live session and rotate its secret.

        The caller must have just verified that factor for ``session.user`` (for TOTP:
        :meth:`verify_totp`). Its time of authentication becomes ``now``. Returns the updated
        session and the new cookie value; the old value stops working at once. Raises
        SessionError if the cookie names no live session.
        """
        now = time.time() if now is None else now
        if method not in AUTH_METHODS:
            raise IdentityError(f"unknown auth method {method!r}; use one of {sorted(AUTH_METHODS)}")
        value, digest = _new_secret()
        with self._db.write() as conn:
            row = self._live_row(conn, cookie_value, now)
            if row is None:
                raise SessionError("the session has expired or was revoked; log in again")
            methods = sorted(set(json.loads(row[2])) | {method})
            conn.execute("UPDATE sessions SET secret_hash=?, methods_json=?, last_seen=?, auth_at=? "
                         "WHERE session_id=?", (digest, json.dumps(methods), now, now, row[0]))
            new_row = (*row[:2], json.dumps(methods), *row[3:10], now)
        return self._session(new_row, now), value

    def _revoke_where(self, conn: sqlite3.Connection, where: str, args: tuple[object, ...],
                      now: float, reason: str) -> int:
        rows = conn.execute(f"SELECT session_id, user FROM sessions WHERE revoked_at IS NULL "  # noqa: S608
                            f"AND {where}", args).fetchall()
        for sid, user in rows:
            conn.execute("UPDATE sessions SET revoked_at=? WHERE session_id=?", (now, sid))
            conn.execute("INSERT INTO revocations(session_id, user, at, reason) VALUES (?,?,?,?)",
                         (sid, user, now, reason))
        return len(rows)

    def revoke_session(self, session_id: str, *, now: float | None = None,
                       reason: str = "logout") -> bool:
        """Revoke a session by its public id, with its family; True if it was live. Effective
        on the next request and announced in :meth:`revocations_since`."""
        now = time.time() if now is None else now
        with self._db.write() as conn:
            live = conn.execute("SELECT 1 FROM sessions WHERE session_id=? AND revoked_at IS NULL",
                                (session_id,)).fetchone() is not None
            self._revoke_where(conn, _FAMILY_OF.format("session_id=?"), (session_id,), now, reason)
            return live

    def revoke_cookie(self, cookie_value: str, *, now: float | None = None,
                      reason: str = "logout") -> bool:
        """Logout: revoke the session a cookie names, with its family (single sign-on ends on
        every host at once)."""
        now = time.time() if now is None else now
        digest = _digest(cookie_value)
        with self._db.write() as conn:
            live = conn.execute("SELECT 1 FROM sessions WHERE secret_hash=? AND revoked_at IS NULL",
                                (digest,)).fetchone() is not None
            self._revoke_where(conn, _FAMILY_OF.format("secret_hash=?"), (digest,), now, reason)
            return live

    def revoke_family(self, family: str, *, now: float | None = None, reason: str = "logout") -> int:
        """Revoke every session of a sign-in (its family), whichever of them are still live;
        returns how many were."""
        now = time.time() if now is None else now
        with self._db.write() as conn:
            return self._revoke_where(conn, "family=?", (family,), now, reason)

    def revoke_user_sessions(self, user: str, *, now: float | None = None,
                             reason: str = "logout everywhere") -> int:
        """Revoke every session of ``user``; returns how many were live."""
        now = time.time() if now is None else now
        with self._db.write() as conn:
            return self._revoke_where(conn, "user=?", (user,), now, reason)

    def revocations_since(self, cursor: int = 0, *, limit: int = 1000
                          ) -> tuple[list[Revocation], int]:
        """Revocations after ``cursor`` (start with 0) and the cursor to pass next time.

        The proxy polls this (or is poked) and closes websockets/streams of those session ids.
        Expiry is not announced: the proxy re-checks long-lived streams with get_session.
        """
        rows = self._db.conn().execute(
            "SELECT seq, session_id, user, at, reason FROM revocations WHERE seq>? ORDER BY seq "
            "LIMIT ?", (cursor, limit)).fetchall()
        items = [Revocation(*r) for r in rows]
        return items, (items[-1].seq if items else cursor)

    def prune_sessions(self, now: float | None = None) -> int:
        """Delete dead sessions (revoked or past the absolute limit); returns how many."""
        now = time.time() if now is None else now
        with self._db.write() as conn:
            cur = conn.execute("DELETE FROM sessions WHERE revoked_at IS NOT NULL OR absolute_exp<=? "
                               "OR last_seen+?<=?", (now, self._session_policy.idle_s, now))
            return cur.rowcount
