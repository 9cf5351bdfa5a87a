"""The identity module's own SQLite file, its schema and its errors.

The platform state store (:mod:`noops.state`) is deliberately not used: identity data
(password hashes, TOTP secrets, session hashes) lives in one small file that the gate owns,
so it can be backed up, permission-restricted (0600) and wiped on its own.

One connection per thread (``sqlite3`` connections must not be shared across threads without
care), WAL so readers never block the writer, and ``BEGIN IMMEDIATE`` around every
read-modify-write so two threads cannot both spend the same TOTP step or login state.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from noops.gate._errors import GateError

__all__ = ["IdentityDb", "IdentityError", "OIDCError", "SessionError"]


class IdentityError(GateError):
    """An identity operation was refused or misused (unknown user, bad TOTP enrolment, ...)."""

    exit_code = 10
    http_status = 400


class SessionError(IdentityError):
    """A session cookie is unknown, expired or revoked; the user must log in again."""

    http_status = 401


class OIDCError(IdentityError):
    """The OIDC provider or its callback failed validation; the login must be restarted."""

    http_status = 401


_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name           TEXT PRIMARY KEY,
    password_hash  TEXT NOT NULL,
    groups_json    TEXT NOT NULL DEFAULT '[]',
    disabled       INTEGER NOT NULL DEFAULT 0,
    totp_secret    TEXT,
    totp_pending   TEXT,
    totp_last_step INTEGER NOT NULL DEFAULT -1,
    created_at     REAL NOT NULL
);
-- failed password / TOTP attempts; kept for unknown names too, so lockout cannot be used to
-- tell which names exist.
CREATE TABLE IF NOT EXISTS failures (
    name      TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    at        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS failures_name ON failures(name, at);
CREATE INDEX IF NOT EXISTS failures_ip ON failures(client_ip, at);
-- per-name lockout; failures older than counted_from (last success, unlock or lockout end)
-- no longer count towards the name's limit but still count towards the IP's.
CREATE TABLE IF NOT EXISTS lockouts (
    name          TEXT PRIMARY KEY,
    locked_until  REAL NOT NULL DEFAULT 0,
    counted_from  REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sessions (
    secret_hash   BLOB PRIMARY KEY,
    session_id    TEXT NOT NULL UNIQUE,
    user          TEXT NOT NULL,
    methods_json  TEXT NOT NULL,
    device        TEXT,
    client_ip     TEXT NOT NULL,
    created_at    REAL NOT NULL,
    last_seen     REAL NOT NULL,
    absolute_exp  REAL NOT NULL,
    revoked_at    REAL,
    family        TEXT,  -- the session_id of the sign-in it came from (see SessionsMixin)
    auth_at       REAL   -- when its strongest factor was last shown (login, step-up)
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions(user);
-- the identity provider's refresh token of an OIDC sign-in (sealed by the gateway, never in
-- clear), asked again at next_at; ok_at: when the provider last said the sign-in holds
CREATE TABLE IF NOT EXISTS idp_tokens (
    family   TEXT PRIMARY KEY,
    user     TEXT NOT NULL,
    sub      TEXT NOT NULL,
    sealed   BLOB NOT NULL,
    next_at  REAL NOT NULL,
    ok_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS revocations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    user       TEXT NOT NULL,
    at         REAL NOT NULL,
    reason     TEXT NOT NULL
);
"""

_ADDED_SESSION_COLUMNS = (
    ("family TEXT", "family=session_id"),  # single sign-on: each older session its own family
    ("auth_at REAL", "auth_at=created_at"),
)


class IdentityDb:
    """One SQLite file, one connection per thread. ``close()`` closes every connection made."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Create it private before SQLite writes a single hash into it.
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        conn = self.conn()
        conn.executescript(_SCHEMA)
        # Columns added since the first release, filled for the sessions already there (checked
        # again inside the write: another process may be opening the same file).
        for column, fill in _ADDED_SESSION_COLUMNS:
            with self.write() as c:
                if column.split()[0] not in {row[1] for row in c.execute("PRAGMA table_info(sessions)")}:
                    c.execute(f"ALTER TABLE sessions ADD COLUMN {column}")
                    c.execute(f"UPDATE sessions SET {fill}")  # noqa: S608 - constants
        conn.execute("CREATE INDEX IF NOT EXISTS sessions_family ON sessions(family)")

    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN ourselves; check_same_thread=False only so
            # close() can close other threads' connections at shutdown.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
