"""What each backend promises about itself: SQLite pragmas and file modes, PostgreSQL sessions."""

from __future__ import annotations

import stat

import pytest

from helpers import free_port
from noops.errors import UsageError
from noops.state import SecretBox, StateError, open_state

pytestmark = pytest.mark.state


def test_sqlite_runs_wal_with_full_sync_and_foreign_keys(tmp_path):
    from noops.state.sqlite import SQLiteStateStore

    store = SQLiteStateStore(tmp_path / "state" / "noops.db", SecretBox(tmp_path / "key"))
    try:
        conn = store._conn()  # white box: the pragmas are per connection
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    finally:
        store.close()
    assert stat.S_IMODE((tmp_path / "state" / "noops.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_sqlite_url_and_default_path(tmp_path):
    home = tmp_path / "home"
    store = open_state("", home)
    store.close()
    assert (home / "state" / "noops.db").is_file()
    other = tmp_path / "elsewhere.db"
    open_state(f"sqlite://{other}", home).close()
    assert other.is_file()


def test_unknown_state_url_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"NOOPS_STATE_URL='mysql://x' is not a state URL: use "
                                         "postgresql://"):
        open_state("mysql://x", tmp_path)


def test_postgres_sessions_force_synchronous_commit(postgres_server, tmp_path):
    from noops.state.postgres import PostgresStateStore

    dbname = postgres_server.create_database()
    postgres_server.admin(f"ALTER DATABASE {dbname} SET synchronous_commit = off")
    store = PostgresStateStore(postgres_server.url(dbname), SecretBox(tmp_path / "key"))
    try:
        with store._pool.connection() as conn:  # white box: the setting is per session
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
    finally:
        store.close()
        postgres_server.drop_database(dbname)


def test_unreachable_postgres_is_a_clear_error_without_the_password(tmp_path):
    port = free_port()  # nothing listens there
    url = f"postgresql://noops:topsecretpw@127.0.0.1:{port}/noops?connect_timeout=2"
    with pytest.raises(StateError, match=rf"cannot connect to PostgreSQL at noops@127.0.0.1:{port}/"
                                         "noops: .*Check NOOPS_STATE_URL") as info:
        open_state(url, tmp_path)
    assert "topsecretpw" not in str(info.value)
    assert info.value.exit_code == 10
