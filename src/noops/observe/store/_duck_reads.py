"""Reads of a :class:`~noops.observe.store.duckdb.DuckDBStore`: one cursor per thread.

A cursor is a connection of its own to the same database, reading a snapshot of the last
commit (MVCC), so reads run side by side and none waits for an insert, a compaction or another
read; only writes share the store's lock. Cursors are made from a connection that runs no
statement of its own, so making one never waits for a write either. A thread's cursor lives as
long as the thread (those of ended threads are closed when the next one is made); reads in
flight are counted, so that :meth:`ReadCursors.close` can interrupt them and wait.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from noops.observe.store.base import StoreError

__all__ = ["ReadCursors"]


class ReadCursors:
    """The read cursors of the database ``con`` is connected to; ``name`` is for messages."""

    def __init__(self, con: duckdb.DuckDBPyConnection, name: str) -> None:
        self.name = name
        self._factory = con.cursor()
        self._local = threading.local()
        self.by_thread: dict[threading.Thread, duckdb.DuckDBPyConnection] = {}
        self._lock = threading.Condition()  # also: reads in flight reached 0
        self._reading = 0
        self._closed = False

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """This thread's cursor, counted as in flight until the block ends; a DuckDB error in
        the block is a :class:`StoreError`."""
        with self._lock:
            if self._closed:
                raise StoreError(f"telemetry store ({self.name}) is closed")
            con = getattr(self._local, "con", None)
            if con is None:
                for gone in [t for t in self.by_thread if not t.is_alive()]:
                    self.by_thread.pop(gone).close()
                con = self._local.con = self._factory.cursor()
                self.by_thread[threading.current_thread()] = con
            self._reading += 1
        try:
            yield con
        except duckdb.Error as exc:
            raise StoreError(f"telemetry store ({self.name}): {exc}") from exc
        finally:
            with self._lock:
                self._reading -= 1
                self._lock.notify_all()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Run this thread's reads in the block in one read transaction: a method that reads
        in several statements sees one state of the store, not commits made in between."""
        with self.cursor() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield
            finally:
                con.execute("ROLLBACK")  # read only: nothing to keep

    def close(self, wait_s: float = 10.0) -> list[str]:
        """Refuse new reads, interrupt those running and wait for them (up to ``wait_s``), close
        every cursor; what failed to close, as messages."""
        with self._lock:
            self._closed = True
            for con in self.by_thread.values():
                con.interrupt()
            self._lock.wait_for(lambda: self._reading == 0, timeout=wait_s)
            cons = [*self.by_thread.values(), self._factory]
        failed = []
        for con in cons:
            try:
                con.close()
            except duckdb.Error as exc:
                failed.append(str(exc))
        return failed
