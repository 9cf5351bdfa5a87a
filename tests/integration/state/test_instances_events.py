"""Instance records (upsert, list, delete) and the append-only event log."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import replace

import pytest
from state_helpers import new_release

from noops.errors import UsageError
from noops.state import InstanceRecord

pytestmark = pytest.mark.state

T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def _instance(id_: str, app: str = "shop", ptype: str = "web", version: int = 1) -> InstanceRecord:
    return InstanceRecord(id=id_, app=app, release_version=version, process_type=ptype,
                          container_id=f"noops-{app}-{id_}", state="starting")


def test_upsert_list_and_delete_instances(state):
    state.create_app("shop")
    state.create_app("blog")
    new_release(state, "shop")
    new_release(state, "blog")
    web = _instance("w1")
    state.upsert_instance(web)
    state.upsert_instance(_instance("k1", ptype="worker"))
    state.upsert_instance(_instance("b1", app="blog"))

    assert state.instances("shop") == [web, _instance("k1", ptype="worker")]
    assert [i.id for i in state.instances()] == ["b1", "w1", "k1"]  # by app, type, id

    running = replace(web, state="running", pid=4242, started_at=T0, restarts=2,
                      last_exit_code=137, last_exit_at=T0 + dt.timedelta(seconds=3),
                      socket_path="/run/noops/shop/w1.sock")
    state.upsert_instance(running)
    assert state.instances("shop")[0] == running
    assert state.instances("shop")[0].started_at == T0  # microseconds and zone survive

    assert state.delete_instance("w1") is True
    assert state.delete_instance("w1") is False
    assert [i.id for i in state.instances()] == ["b1", "k1"]


def test_instance_of_unknown_release_or_app_is_refused(state):
    state.create_app("shop")
    with pytest.raises(UsageError, match="app shop has no release v1"):
        state.upsert_instance(_instance("w1"))
    with pytest.raises(UsageError, match="no app named ghost"):
        state.upsert_instance(_instance("w1", app="ghost"))
    new_release(state, "shop")
    with pytest.raises(UsageError, match="no time zone"):
        state.upsert_instance(replace(_instance("w1"), started_at=dt.datetime(2024, 1, 1)))
    assert state.instances() == []


def test_an_instance_can_move_to_a_new_release(state):
    state.create_app("shop")
    new_release(state, "shop", 1)
    new_release(state, "shop", 2)
    state.upsert_instance(_instance("w1", version=1))
    state.upsert_instance(_instance("w1", version=2))
    assert [(i.id, i.release_version) for i in state.instances()] == [("w1", 2)]


def test_events_are_ordered_and_paged_with_since_id(state):
    state.create_app("shop")
    state.create_app("blog")
    made = [state.add_event("shop", "deploy", "v1 deployed", {"version": 1}),
            state.add_event("blog", "config", "LOG_LEVEL set", {}),
            state.add_event(None, "platform", "daemon started", {"pid": 1}),
            state.add_event("shop", "deploy", "v2 deployed", {"version": 2, "by": "ålice"})]

    ids = [e.id for e in made]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert state.events() == made
    assert state.events(since_id=ids[1]) == made[2:]
    assert state.events(app="shop") == [made[0], made[3]]
    assert state.events(app="shop", since_id=ids[0]) == [made[3]]
    assert state.events(limit=2) == made[:2]
    assert state.events(limit=0) == []
    assert state.events(since_id=ids[-1]) == []
    assert made[3].data == {"version": 2, "by": "ålice"}
    assert made[0].created_at <= made[3].created_at


def test_event_data_must_be_json(state):
    with pytest.raises(UsageError, match="event data is not JSON-serialisable"):
        state.add_event(None, "x", "y", {"when": dt.datetime.now(dt.UTC)})
    with pytest.raises(UsageError, match="event kind must not be empty"):
        state.add_event(None, "", "y")
    assert state.events() == []


def test_concurrent_events_get_distinct_growing_ids(backend):
    replicas = [backend.open(), backend.open()]
    start = threading.Barrier(8)

    def write(i: int) -> None:
        start.wait()
        for n in range(10):
            replicas[i % 2].add_event(None, "test", f"{i}-{n}", {"i": i, "n": n})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    events = replicas[0].events(limit=1000)
    assert len(events) == 80
    assert [e.id for e in events] == sorted({e.id for e in events})
    for i in range(8):  # each writer's events keep its order
        assert [e.data["n"] for e in events if e.data["i"] == i] == list(range(10))


def test_polling_with_since_id_misses_nothing_under_concurrent_writers(backend):
    """A reader that remembers the last id it saw must eventually see every event."""
    writer_store, reader = backend.open(), backend.open()
    done = threading.Event()

    def write(i: int) -> None:
        for n in range(25):
            writer_store.add_event(None, "test", f"{i}-{n}")

    writers = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in writers:
        thread.start()
    seen: list[int] = []

    def poll() -> None:
        while True:
            last = done.is_set()
            batch = reader.events(since_id=seen[-1] if seen else 0, limit=1000)
            seen.extend(e.id for e in batch)
            if last and not batch:
                return

    polling = threading.Thread(target=poll)
    polling.start()
    for thread in writers:
        thread.join()
    done.set()
    polling.join()

    assert seen == sorted(seen)
    assert len(seen) == 100 == len(set(seen))
