"""Durability and schema: a kill -9 right after a call returns loses nothing; migrations run once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from state_helpers import digest

from noops.state import ReleaseStatus, StateError, open_state

pytestmark = pytest.mark.state

HERE = Path(__file__).resolve().parent

WRITER = """
import sys
from noops.state import ReleaseStatus, open_state
from state_helpers import new_release

store = open_state(sys.argv[1], sys.argv[2])
store.create_app("shop")
store.set_config("shop", {"LOG_LEVEL": "info"})
version = store.set_secrets("shop", {"DB_PASSWORD": "hunter2"})
new_release(store, "shop", 1, config_version=version)
store.set_release_status("shop", 1, ReleaseStatus.ACTIVE)
print("written", flush=True)
n = 0
while True:  # every id printed was returned by add_event, so it must survive the kill
    n += 1
    print(store.add_event("shop", "tick", str(n)).id, flush=True)
"""


def _child(backend) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", WRITER, backend.url, str(backend.home)],
                            stdout=subprocess.PIPE, text=True, env=env)


def test_kill_9_right_after_a_write_returns_loses_nothing(backend):
    proc = _child(backend)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "written\n"
    acknowledged = [int(proc.stdout.readline()) for _ in range(50)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    if backend.name == "sqlite":  # the writes are in the WAL, not yet checkpointed
        assert (backend.home / "state" / "noops.db-wal").stat().st_size > 0

    store = backend.open()
    assert [a.name for a in store.apps()] == ["shop"]
    release = store.release("shop", 1)
    assert release.status is ReleaseStatus.ACTIVE
    assert release.image_digest == digest(1)
    assert store.config("shop", release.config_version) == {"LOG_LEVEL": "info"}
    assert store.secrets("shop", release.config_version) == {"DB_PASSWORD": "hunter2"}
    stored = {e.id for e in store.events(app="shop", limit=100_000)}
    assert set(acknowledged) <= stored


def test_reopening_applies_no_migration_twice(backend):
    first = backend.open()
    first.create_app("shop")
    first.close()
    second = backend.open()
    assert [a.name for a in second.apps()] == ["shop"]
    assert backend.execute("SELECT version FROM noops_schema_migrations") == [(1,)]


def test_concurrent_first_opens_migrate_once(backend):
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_one() -> None:
        start.wait()
        try:
            backend.open()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert backend.execute("SELECT version FROM noops_schema_migrations") == [(1,)]


def test_a_newer_schema_is_refused(backend):
    backend.open().close()
    backend.execute("INSERT INTO noops_schema_migrations (version, applied_at) VALUES (?, ?)",
                    (99, 0))
    with pytest.raises(StateError, match=r"schema version 99, newer than this noops knows \(1\): "
                                         "upgrade noops"):
        backend.open()


def test_a_closed_store_says_so(backend):
    store = backend.open()
    store.close()
    store.close()  # idempotent
    with pytest.raises(StateError, match="closed"):
        store.apps()


def test_open_state_follows_the_settings(backend):
    from noops.settings import Settings

    env = {"NOOPS_STATE_URL": backend.url} if backend.url else {}
    settings = Settings(environ=env, overrides={"home": backend.home})
    store = open_state(settings)
    backend.opened.append(store)
    store.create_app("shop")
    assert [a.name for a in backend.open().apps()] == ["shop"]
    expected = "PostgresStateStore" if backend.name == "postgresql" else "SQLiteStateStore"
    assert type(store).__name__ == expected
