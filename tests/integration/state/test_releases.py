"""Releases: gap-free versions (also under concurrent writers), immutability, the status machine."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from state_helpers import digest, new_release

from noops.errors import UsageError
from noops.state import ReleaseStatus, TransitionError

pytestmark = pytest.mark.state

HERE = Path(__file__).resolve().parent


def test_versions_count_up_per_app_without_gaps(state):
    state.create_app("shop")
    state.create_app("blog")
    made = [new_release(state, "shop", n).version for n in range(1, 6)]
    assert made == [1, 2, 3, 4, 5]
    assert new_release(state, "blog", 9).version == 1
    assert [r.version for r in state.releases("shop")] == [5, 4, 3, 2, 1]
    assert [r.version for r in state.releases("shop", limit=2)] == [5, 4]


def test_a_refused_release_allocates_no_version(state):
    state.create_app("shop")
    new_release(state, "shop", 1)
    with pytest.raises(UsageError, match="no config version 7"):
        new_release(state, "shop", 2, config_version=7)
    with pytest.raises(UsageError, match="not JSON-serialisable"):
        new_release(state, "shop", 2, spec={"bad": object()})
    assert new_release(state, "shop", 2).version == 2


def test_release_fields_round_trip_and_are_frozen(state):
    state.create_app("shop")
    version = state.set_config("shop", {"LOG_LEVEL": "info"})
    spec = {"processes": {"web": {"command": ["gunicorn", "app:app"]}}, "health": {"path": "/h"},
            "unicode": "héllo ✓"}
    made = state.create_release("shop", image_ref="registry.example/shop@" + digest(3),
                                image_digest=digest(3), config_version=version,
                                formation={"web": 2, "worker": 0}, spec=spec,
                                description="deploy by alice")

    again = state.release("shop", 1)
    assert again == made
    assert again.status is ReleaseStatus.PENDING
    assert again.formation == {"web": 2, "worker": 0}
    assert again.spec == spec
    assert again.config_version == version
    with pytest.raises(AttributeError):
        again.status = ReleaseStatus.ACTIVE  # type: ignore[misc]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("image_digest", "latest", "is not a digest"),
    ("image_ref", "", "image_ref must not be empty"),
    ("formation", {"web": -1}, "formation count of web must be an integer >= 0"),
    ("formation", {"web": "2"}, "must be an integer"),
    ("config_version", -1, "config_version must be an integer >= 0"),
    ("description", "a\x00b", "NUL"),
])
def test_invalid_release_fields_are_refused(state, field, value, message):
    state.create_app("shop")
    with pytest.raises(UsageError, match=message):
        new_release(state, "shop", 1, **{field: value})
    assert state.releases("shop") == []


def test_unknown_release_names_the_latest(state):
    state.create_app("shop")
    with pytest.raises(UsageError, match=r"no release v1 \(it has none yet\)"):
        state.release("shop", 1)
    new_release(state, "shop")
    with pytest.raises(UsageError, match=r"no release v4 \(the latest is v1\)"):
        state.release("shop", 4)


def test_concurrent_writers_get_unique_consecutive_versions(backend):
    """8 threads over two store objects ("replicas" of the daemon) create 40 releases at once."""
    replicas = [backend.open(), backend.open()]
    replicas[0].create_app("shop")
    threads_n, per_thread = 8, 5
    start = threading.Barrier(threads_n)
    got: list[list[int]] = [[] for _ in range(threads_n)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        store = replicas[i % 2]
        try:
            start.wait()
            for n in range(per_thread):
                got[i].append(new_release(store, "shop", i * 100 + n).version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors, errors
    everything = sorted(v for versions in got for v in versions)
    assert everything == list(range(1, threads_n * per_thread + 1))
    for versions in got:
        assert versions == sorted(versions)  # each writer sees its own versions grow
    stored = replicas[1].releases("shop")
    assert sorted(r.version for r in stored) == everything
    # each version holds what its writer wrote (no row was overwritten by another writer)
    assert len({r.image_digest for r in stored}) == len(stored)


def test_concurrent_processes_get_unique_consecutive_versions(backend):
    backend.open().create_app("shop")
    go = backend.home / "go"
    code = (
        "import sys, time, os\n"
        "from pathlib import Path\n"
        "from noops.state import open_state\n"
        "from state_helpers import new_release\n"
        "store = open_state(sys.argv[1], sys.argv[2])\n"
        "while not Path(sys.argv[3]).exists(): time.sleep(0.005)\n"
        "print(' '.join(str(new_release(store, 'shop', int(sys.argv[4]) + n).version)"
        " for n in range(10)))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", code, backend.url, str(backend.home), str(go),
                               str(base)], stdout=subprocess.PIPE, text=True, env=env)
             for base in (1000, 2000)]
    time.sleep(0.3)  # let both open their store before the start signal
    go.touch()
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    versions = sorted(int(v) for out in outputs for v in out.split())
    assert versions == list(range(1, 21))


LEGAL_PATHS = [
    [ReleaseStatus.ACTIVE, ReleaseStatus.SUPERSEDED],
    [ReleaseStatus.ACTIVE, ReleaseStatus.ROLLED_BACK],
    [ReleaseStatus.FAILED],
]


@pytest.mark.parametrize("path", LEGAL_PATHS, ids=lambda p: "-".join(s.value for s in p))
def test_legal_status_moves(state, path):
    state.create_app("shop")
    new_release(state, "shop")
    for status in path:
        assert state.set_release_status("shop", 1, status).status is status
        assert state.release("shop", 1).status is status


ILLEGAL = [
    ([], ReleaseStatus.SUPERSEDED, "pending and cannot become superseded: it can only become "
                                   "active or failed"),
    ([], ReleaseStatus.PENDING, "pending and cannot become pending"),
    ([ReleaseStatus.ACTIVE], ReleaseStatus.FAILED, "active and cannot become failed"),
    ([ReleaseStatus.ACTIVE], ReleaseStatus.PENDING, "active and cannot become pending"),
    ([ReleaseStatus.FAILED], ReleaseStatus.ACTIVE,
     "failed and cannot become active: failed is final; deploy or roll back"),
    ([ReleaseStatus.ACTIVE, ReleaseStatus.SUPERSEDED], ReleaseStatus.ACTIVE,
     "superseded and cannot become active: superseded is final"),
    ([ReleaseStatus.ACTIVE, ReleaseStatus.ROLLED_BACK], ReleaseStatus.SUPERSEDED,
     "rolled-back and cannot become superseded: rolled-back is final"),
]


@pytest.mark.parametrize(("before", "move", "message"), ILLEGAL,
                         ids=lambda v: v.value if isinstance(v, ReleaseStatus) else None)
def test_illegal_status_moves_are_refused(state, before, move, message):
    state.create_app("shop")
    new_release(state, "shop")
    for status in before:
        state.set_release_status("shop", 1, status)
    current = state.release("shop", 1)

    with pytest.raises(TransitionError, match=f"release v1 of app shop is {message}") as info:
        state.set_release_status("shop", 1, move)
    assert info.value.exit_code == 10
    assert info.value.http_status == 409
    assert state.release("shop", 1) == current


def test_unknown_status_is_a_usage_error(state):
    state.create_app("shop")
    new_release(state, "shop")
    with pytest.raises(UsageError, match="a release status is one of pending, active"):
        state.set_release_status("shop", 1, "running")  # type: ignore[arg-type]


def test_activating_retires_the_previous_active_release(state):
    state.create_app("shop")
    for n in (1, 2, 3):
        new_release(state, "shop", n)
    assert state.active_release("shop") is None

    state.set_release_status("shop", 1, ReleaseStatus.ACTIVE)
    state.set_release_status("shop", 2, ReleaseStatus.ACTIVE)
    assert state.active_release("shop").version == 2
    assert state.release("shop", 1).status is ReleaseStatus.SUPERSEDED

    # a rollback: the running release is marked rolled-back, not superseded
    state.set_release_status("shop", 3, ReleaseStatus.ACTIVE, retire_as=ReleaseStatus.ROLLED_BACK)
    assert [r.status for r in state.releases("shop")] == [
        ReleaseStatus.ACTIVE, ReleaseStatus.ROLLED_BACK, ReleaseStatus.SUPERSEDED]


def test_concurrent_activations_leave_exactly_one_active(backend):
    replicas = [backend.open(), backend.open()]
    replicas[0].create_app("shop")
    for n in range(1, 9):
        new_release(replicas[0], "shop", n)
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def activate(version: int) -> None:
        start.wait()
        try:
            replicas[version % 2].set_release_status("shop", version, ReleaseStatus.ACTIVE)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=activate, args=(v,)) for v in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors, errors
    statuses = [r.status for r in replicas[1].releases("shop")]
    assert statuses.count(ReleaseStatus.ACTIVE) == 1
    assert statuses.count(ReleaseStatus.SUPERSEDED) == 7


def test_pinned_digests_keep_newest_per_app_and_every_active_or_pending(state):
    state.create_app("shop")
    state.create_app("blog")
    for n in range(1, 8):  # shop: images 1..7
        new_release(state, "shop", n)
    for n in range(1, 8):
        state.set_release_status("shop", n, ReleaseStatus.FAILED if n != 2 else ReleaseStatus.ACTIVE)
    new_release(state, "blog", 101)  # pending, old
    for n in range(102, 106):
        new_release(state, "blog", n)
        state.set_release_status("blog", n - 100, ReleaseStatus.FAILED)
    # blog: 101 pending (v1), 102..105 failed

    assert state.pinned_digests(keep_per_app=3) == {
        digest(5), digest(6), digest(7),  # newest three of shop
        digest(2),  # active, however old
        digest(103), digest(104), digest(105),  # newest three of blog
        digest(101),  # pending: a rollout may be using it
    }
    assert state.pinned_digests(keep_per_app=0) == {digest(2), digest(101)}
    assert len(state.pinned_digests()) == 12  # default keeps 10 per app: all of them


def test_pinned_digests_count_a_shared_image_once(state):
    state.create_app("shop")
    new_release(state, "shop", 1)
    new_release(state, "shop", 1, description="restart with new config")
    assert state.pinned_digests(1) == {digest(1)}
    with pytest.raises(UsageError, match="keep_per_app"):
        state.pinned_digests(-1)
