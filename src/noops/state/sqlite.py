"""The embedded backend: one SQLite file, ``$NOOPS_HOME/state/noops.db``.

WAL journal with ``synchronous=FULL`` (the WAL is fsynced at every commit, so a returned write
survives a crash), foreign keys on, a ``busy_timeout`` so writers queue instead of failing.

Threads: **one connection per thread**, opened on first use and all closed by :meth:`close`.
Readers never block each other or the writer (WAL); write transactions start with
``BEGIN IMMEDIATE``, which takes SQLite's single write lock up front, so writers (threads or
processes) run one after the other and never deadlock upgrading a read lock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from noops.state._schema import pending_migrations
from noops.state._sql import Cursor, Row, SQLStateStore
from noops.state.errors import StateError
from noops.state.secrets import SecretBox

__all__ = ["SQLiteStateStore"]

_DIALECT = {"blob": "BLOB", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"}


class _SQLiteCursor:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self._conn.execute(sql, params).fetchall())

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


class SQLiteStateStore(SQLStateStore):
    """:class:`~noops.state.store.StateStore` in the SQLite file ``path`` (created 0600)."""

    def __init__(self, path: Path | str, secret_box: SecretBox, *,
                 busy_timeout_ms: int = 10_000) -> None:
        super().__init__(secret_box)
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._create_file()
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _create_file(self) -> None:
        # Config values are in clear in this file; only its owner may read it (WAL and SHM
        # files take the database file's mode).
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StateError(f"cannot create the state database {self.path}: {exc.strerror}. "
                             "Check NOOPS_HOME and its permissions.") from exc

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self._busy_timeout_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the state database {self.path}: {exc}") from exc
        if str(mode).lower() != "wal":
            conn.close()
            raise StateError(f"the state database {self.path} cannot use WAL mode (got {mode}); "
                             "keep it on a local file system")
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StateError(f"the state store {self.path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                if self._closed:
                    raise StateError(f"the state store {self.path} is closed")
                conn = self._connect()
                self._connections.append(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Cursor]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _SQLiteCursor(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StateError(f"the state database {self.path} stayed locked for "
                                 f"{self._busy_timeout_ms} ms: another noops process holds a long "
                                 "write; retry, or find the process") from exc
            raise StateError(f"the state database {self.path} failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise StateError(f"the state database {self.path} failed: {exc}") from exc

    def _migrate(self) -> None:
        conn = self._conn()
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS noops_schema_migrations "
                         "(version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")
        except sqlite3.Error as exc:
            raise StateError(f"cannot prepare the state database {self.path}: {exc}") from exc
        # One write transaction per migration; BEGIN IMMEDIATE makes concurrent openers queue,
        # and the second one finds the work done.
        while True:
            with self._transaction(write=True) as cur:
                applied = {int(r[0]) for r in cur.all("SELECT version FROM noops_schema_migrations")}
                todo = pending_migrations(applied, _DIALECT, str(self.path))
                if not todo:
                    return
                number, statements = todo[0]
                for statement in statements:
                    cur.run(statement)
                cur.run("INSERT INTO noops_schema_migrations (version, applied_at) VALUES (?, ?)",
                        (number, time.time_ns() // 1000))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
