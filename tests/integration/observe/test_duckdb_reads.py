"""DuckDB's reads run on a cursor per thread, each a snapshot: they neither wait for a write in
progress (an insert, a compaction) nor see it before it commits."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from store_harness import T0, make_dataset

from noops.observe.store import DuckDBStore, StoreError, schema
from noops.observe.store._rows import to_arrow

START, END = T0, T0 + timedelta(minutes=10)


def _count(store: DuckDBStore) -> int:
    return sum(s["count"] for s in store.services(START, END))


def test_a_read_during_a_write_sees_the_last_commit_without_waiting(tmp_path: Path) -> None:
    data = make_dataset(traces=40, seed=3, minutes=3)
    half = len(data.spans) // 2
    store = DuckDBStore(tmp_path / "t.duckdb")
    try:
        store.insert_spans(data.spans[:half])
        before = _count(store)
        seen: list[Any] = []

        def read() -> None:
            try:
                seen.append(_count(store))
            except Exception as exc:  # reported below, not lost in the thread
                seen.append(exc)

        def during(_con: Any) -> None:
            # Inside the insert's transaction, with the write lock held: a reader on another
            # thread answers now, from the last committed state.
            reader = threading.Thread(target=read)
            reader.start()
            reader.join(30)
            assert not reader.is_alive(), "a read waited for the write to finish"

        store._insert_arrow("otel_traces", to_arrow("otel_traces", schema.TRACES,
                                                    data.spans[half:]), then=during)
        assert seen == [before]
        assert _count(store) > before
    finally:
        store.close()


def test_reader_cursors_of_ended_threads_are_closed_and_close_ends_all(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "t.duckdb")
    store.insert_spans(make_dataset(traces=5, seed=1, minutes=1).spans)
    for _ in range(5):  # threads that read once and end, as a thread pool's may
        t = threading.Thread(target=store.services, args=(START, END))
        t.start()
        t.join()
    store.services(START, END)
    assert len(store._reads.by_thread) <= 2  # the last ended thread's and this one's
    store.close()
    with pytest.raises(StoreError, match="closed"):
        _read_in_a_new_thread(store)


def _read_in_a_new_thread(store: DuckDBStore) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            store.services(START, END)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]


def test_close_interrupts_a_running_read_and_closes_everything(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "t.duckdb")
    failed: list[BaseException] = []
    started = threading.Event()

    def long_read() -> None:
        try:
            with store._reader():
                started.set()
            store._rows("SELECT count(*) FROM range(100000000000) a")  # minutes of work
        except BaseException as exc:
            failed.append(exc)

    reader = threading.Thread(target=long_read)
    reader.start()
    started.wait(10)
    time.sleep(0.3)  # the query is running
    store.close()  # interrupts it, waits for it, closes every connection
    reader.join(30)
    assert not reader.is_alive()
    assert len(failed) == 1 and isinstance(failed[0], StoreError)
    with pytest.raises(StoreError, match="closed"):
        store.services(START, END)
    DuckDBStore(tmp_path / "t.duckdb").close()  # the file was let go


def test_a_read_method_sees_one_state_of_the_store(tmp_path: Path) -> None:
    """The statements of one read method run in one transaction: a commit made between them
    is not seen by the later ones."""
    store = DuckDBStore(tmp_path / "t.duckdb")
    try:
        with store._snapshot():
            before = store._rows("SELECT count(*) FROM otel_traces")
            store.insert_spans(make_dataset(traces=5, seed=1, minutes=1).spans)
            during = store._rows("SELECT count(*) FROM otel_traces")
        after = store._rows("SELECT count(*) FROM otel_traces")
        assert before == during == [(0,)] and after[0][0] > 0
    finally:
        store.close()
