"""The shared backend: PostgreSQL through psycopg 3, for several daemon and gateway replicas.

Connections come from a small pool (``pool_size``, default 4; a caller waits up to
``acquire_timeout_s`` for a free one) and run in autocommit mode with explicit transactions.
Write transactions are READ COMMITTED and lock the app row (``SELECT … FOR UPDATE``) before they
touch an app's releases or config, so writers of one app queue on that row while other apps
proceed; reads run REPEATABLE READ, READ ONLY, so a read that takes several queries sees one
snapshot. Every session sets ``synchronous_commit = on``: a commit that returned is on disk
whatever the server's default.

Migrations run when a store opens, under a session advisory lock, so replicas starting at once
apply each migration exactly once. Event inserts take a transaction advisory lock so event ids
become visible in id order (see the contract in :mod:`noops.state.store`).

The database user must be able to create tables in the database's ``public`` schema (on
PostgreSQL 15+, own the database or be granted CREATE on ``public``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from noops.state._schema import pending_migrations
from noops.state._sql import Cursor, Row, SQLStateStore
from noops.state.errors import StateError
from noops.state.secrets import SecretBox

__all__ = ["PostgresStateStore"]

_DIALECT = {"blob": "BYTEA", "serial": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"}
# Advisory lock keys (any constant bigint; "noops" in ASCII, then +1).
_MIGRATION_LOCK = 0x6E6F6F7073
_EVENT_LOCK = 0x6E6F6F7074

Connection = psycopg.Connection[tuple[Any, ...]]


def describe_url(url: str) -> str:
    """``user@host:port/dbname`` of a libpq URL, without its password (for messages)."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<an unparsable PostgreSQL URL>"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"{user}{parts.get('host') or 'localhost'}{port}/{parts.get('dbname') or ''}"


class _PgCursor:
    def __init__(self, cur: psycopg.Cursor[tuple[Any, ...]]) -> None:
        self._cur = cur

    @staticmethod
    def _sql(sql: str) -> str:
        # The shared SQL uses ? placeholders and contains no literal ? or %.
        return sql.replace("?", "%s")

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return self._cur.execute(self._sql(sql), params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._cur.execute(self._sql(sql), params).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._cur.execute(self._sql(sql), params).rowcount

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cur.executemany(self._sql(sql), rows)


class _Pool:
    """At most ``size`` connections; idle ones are reused, broken ones dropped."""

    def __init__(self, connect: Callable[[], Connection], size: int,
                 acquire_timeout_s: float) -> None:
        self._connect = connect
        self._size = size
        self._acquire_timeout_s = acquire_timeout_s
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self.closed = False

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        if self.closed:
            raise StateError("the PostgreSQL state store is closed")
        if not self._slots.acquire(timeout=self._acquire_timeout_s):
            raise StateError(f"all {self._size} PostgreSQL connections stayed busy for "
                             f"{self._acquire_timeout_s:g} s; retry, or raise the pool size")
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed or conn.broken:
                conn = self._connect()
            try:
                yield conn
            finally:
                reusable = (not conn.closed and not conn.broken
                            and conn.info.transaction_status == TransactionStatus.IDLE)
                with self._lock:
                    if reusable and not self.closed:
                        self._idle.append(conn)
                        conn = None
                if conn is not None:
                    conn.close()
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class PostgresStateStore(SQLStateStore):
    """:class:`~noops.state.store.StateStore` in the PostgreSQL database at ``url``."""

    _LOCK_APP = " FOR UPDATE"

    def __init__(self, url: str, secret_box: SecretBox, *, pool_size: int = 4,
                 connect_timeout_s: int = 10, acquire_timeout_s: float = 30.0) -> None:
        super().__init__(secret_box)
        self.where = describe_url(url)
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._pool = _Pool(self._connect, pool_size, acquire_timeout_s)
        try:
            self._migrate()
        except BaseException:
            self._pool.close()
            raise

    def _connect(self) -> Connection:
        try:
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self._connect_timeout_s)
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StateError(f"cannot connect to PostgreSQL at {self.where}: {reason}. Check "
                             "NOOPS_STATE_URL and that the server is running.") from exc
        try:
            conn.execute("SET synchronous_commit TO on")
        except psycopg.Error as exc:
            conn.close()
            raise StateError(f"PostgreSQL at {self.where} refused the session settings: "
                             f"{exc}") from exc
        return conn

    def _failed(self, exc: psycopg.Error) -> StateError:
        if isinstance(exc, psycopg.OperationalError):
            return StateError(f"lost PostgreSQL at {self.where}: {exc}. Nothing was changed by "
                              "the failed call; retry once the server is back.")
        return StateError(f"PostgreSQL at {self.where} failed: {exc}")

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Cursor]:
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                if not write:
                    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield _PgCursor(cur)
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def _serialize_events(self, cur: Cursor) -> None:
        cur.one("SELECT pg_advisory_xact_lock(?)", (_EVENT_LOCK,))

    def _migrate(self) -> None:
        try:
            with self._pool.connection() as conn:
                conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
                try:
                    conn.execute("CREATE TABLE IF NOT EXISTS noops_schema_migrations "
                                 "(version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")
                    rows = conn.execute("SELECT version FROM noops_schema_migrations").fetchall()
                    for number, statements in pending_migrations({int(r[0]) for r in rows},
                                                                 _DIALECT, self.where):
                        with conn.transaction():
                            for statement in statements:
                                conn.execute(statement)
                            conn.execute("INSERT INTO noops_schema_migrations (version, applied_at) "
                                         "VALUES (%s, %s)", (number, time.time_ns() // 1000))
                finally:
                    if not conn.broken:
                        conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def close(self) -> None:
        self._pool.close()
