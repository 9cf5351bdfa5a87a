"""The state conformance harness: every test here runs on SQLite *and* on a real PostgreSQL.

Fixtures:

* ``backend`` — parametrized ``sqlite`` / ``postgresql``: a fresh, empty state database and a
  throw-away ``NOOPS_HOME``. ``backend.open()`` opens a store through
  :func:`noops.state.open_state` (call it twice for two "replicas"), ``backend.open(box=...)``
  with another :class:`SecretBox`; ``backend.url`` / ``backend.home`` are what a child process
  passes to ``open_state``; ``backend.execute(sql, params)`` runs raw ``?``-style SQL (to tamper
  with rows); ``backend.stored_bytes()`` is everything the database holds, for clear-text scans.
  Stores it opened are closed at teardown.
* ``state`` — ``backend.open()``.
* ``postgres_server`` — one PostgreSQL server per session (Debian's ``postgresql`` package):
  ``initdb`` into a temp dir as the ``postgres`` user when tests run as root, ``postgres`` on
  127.0.0.1 and a free port, stopped at session end; ``create_database()`` gives each test its
  own database. Missing binaries or psycopg FAIL the PostgreSQL tests: run ``make deps``.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from noops.state import SecretBox, StateStore, open_state

INITDB_GLOB = "/usr/lib/postgresql/*/bin/initdb"


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; repeated here so this directory runs on its own.
    config.addinivalue_line("markers", "state: the platform state conformance suite (SQLite and "
                                       "a real PostgreSQL server)")


# -- PostgreSQL server ----------------------------------------------------------------------

def _postgres_bindir() -> Path:
    found = sorted(glob.glob(INITDB_GLOB),
                   key=lambda p: [int(n) for n in re.findall(r"\d+", p.split("/")[4])])
    if not found:
        pytest.fail(f"PostgreSQL server binaries not found ({INITDB_GLOB}): run `make deps` "
                    "(it installs Debian's postgresql package) to run the PostgreSQL state tests",
                    pytrace=False)
    return Path(found[-1]).parent


@dataclass
class PostgresServer:
    """A private PostgreSQL server; trust auth for user ``postgres`` on 127.0.0.1."""

    root: Path
    bindir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _as_postgres(self) -> dict[str, Any]:
        # initdb and postgres refuse to run as root: drop to the postgres user for them.
        if os.geteuid() != 0:
            return {}
        user = pwd.getpwnam("postgres")
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def start(self) -> None:
        data, sockets = self.root / "data", self.root / "sockets"
        sockets.mkdir()
        if os.geteuid() == 0:
            for path in (self.root, sockets):
                shutil.chown(path, "postgres", "postgres")
        subprocess.run([str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres",
                        "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
                       check=True, capture_output=True, **self._as_postgres())
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(data), "-k", str(sockets),
                 "-c", "listen_addresses=127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, **self._as_postgres())
        import psycopg

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{self.log.read_text()[-3000:]}")
            try:
                psycopg.connect(self.url(), connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"postgres did not accept connections:\n{self.log.read_text()[-3000:]}")

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        name = f"noops_test_{uuid.uuid4().hex[:12]}"
        self.admin(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _postgres_bindir()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is not installed: run `make deps` (pip install -e '.[test]')",
                    pytrace=False)
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="noops-pg-")), bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


# -- backends -------------------------------------------------------------------------------

@dataclass
class Backend:
    """One empty state database plus a NOOPS_HOME; see the module docstring."""

    name: str
    url: str
    home: Path
    opened: list[StateStore] = field(default_factory=list)

    def open(self, box: SecretBox | None = None) -> StateStore:
        store = open_state(self.url, self.home) if box is None else self._open_with(box)
        self.opened.append(store)
        return store

    def _open_with(self, box: SecretBox) -> StateStore:
        raise NotImplementedError

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def stored_bytes(self) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        for store in self.opened:
            store.close()


class SQLiteBackend(Backend):
    @property
    def path(self) -> Path:
        return self.home / "state" / "noops.db"

    def _open_with(self, box: SecretBox) -> StateStore:
        from noops.state.sqlite import SQLiteStateStore

        return SQLiteStateStore(self.path, box)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def stored_bytes(self) -> bytes:
        """The database file with its WAL and shared-memory files, byte for byte."""
        files = [self.path, *(self.path.with_name(self.path.name + s) for s in ("-wal", "-shm"))]
        return b"".join(f.read_bytes() for f in files if f.exists())


@dataclass
class PostgresBackend(Backend):
    server: PostgresServer | None = None
    dbname: str = ""

    def _open_with(self, box: SecretBox) -> StateStore:
        from noops.state.postgres import PostgresStateStore

        return PostgresStateStore(self.url, box)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(sql.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []

    def stored_bytes(self) -> bytes:
        """Every text, JSON and bytea value of every table of the database (SELECTed)."""
        import psycopg
        from psycopg import sql

        out: list[bytes] = []
        with psycopg.connect(self.url, autocommit=True) as conn:
            columns = conn.execute(
                "SELECT table_schema, table_name, column_name FROM information_schema.columns "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
                "AND data_type IN ('text', 'bytea', 'character varying', 'json', 'jsonb')"
            ).fetchall()
            assert columns, "no text columns found: is this the state database?"
            for schema, table, column in columns:
                query = sql.SQL("SELECT {} FROM {}.{}").format(
                    sql.Identifier(column), sql.Identifier(schema), sql.Identifier(table))
                for (value,) in conn.execute(query):
                    if value is not None:
                        out.append(bytes(value) if isinstance(value, (bytes, memoryview))
                                   else str(value).encode())
        return b"\n".join(out)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    home = tmp_path / "home"
    if request.param == "sqlite":
        made: Backend = SQLiteBackend("sqlite", "", home)
        try:
            yield made
        finally:
            made.close()
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    dbname = server.create_database()
    made = PostgresBackend("postgresql", server.url(dbname), home, server=server, dbname=dbname)
    try:
        yield made
    finally:
        made.close()
        server.drop_database(dbname)


@pytest.fixture
def state(backend: Backend) -> StateStore:
    return backend.open()
