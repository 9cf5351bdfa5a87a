"""How the gatekeeper's records reach the audit log (:mod:`noops.gate.audit`).

On the front door's event loop, records are chained and written (to the page cache) by the
loop itself, in batches: :data:`WRITE_GATHER_S` after the first record of a batch (one ``write``
for all); a thread only makes them durable (``fdatasync``), at most once every
:data:`SYNC_GATHER_S`. The loop never waits
for the disk, and no second thread competes with it for the interpreter while requests flow:
with the lines built on a writer thread instead, the two threads handing the GIL to each other
cost the front door about three times the writer's own CPU per request. Records made on other
threads (the IdP refresher's) go to that thread, which writes them itself.

Outside an event loop (set-up, tests), a record is written and synced at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

from noops.gate.audit import AuditLog, RecordTemplate, json_fragment

__all__ = ["SYNC_GATHER_S", "WRITE_GATHER_S", "DecisionRecorder"]

log = logging.getLogger("noops.gate")

WRITE_GATHER_S: Final = 0.002
"""Records wait this long on the loop to be written together (a ``write`` costs as much as
formatting a few records); a batch of :data:`_WRITE_AT_MOST` is written at once."""
_WRITE_AT_MOST: Final = 512
SYNC_GATHER_S: Final = 0.005
"""After a sync the thread waits this long before the next, so a busy gateway syncs at most
~200 times a second whatever its request rate. A written record is durable within about this
long plus one sync."""
_HEX_ID: Final = "0123456789abcdef-"
_SYNC: Final = "sync"


class DecisionRecorder:
    """The gatekeeper's way into its :class:`AuditLog`. :meth:`record` and :meth:`repeat`
    belong to one thread, the front door's event loop (or a caller without one);
    :meth:`from_thread` to any other."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        # records not written yet: fragments, or (template, (time, request id as JSON))
        self._pending: list[Mapping[str, str] | tuple[RecordTemplate, tuple[float, str]]] = []
        self._sync_asked = False
        self._q: queue.SimpleQueue[tuple[str, Mapping[str, Any]] | str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
        self._thread.start()

    def record(self, record: Mapping[str, Any]) -> dict[str, str]:
        """Record ``record``; returns its fragments (:meth:`AuditLog.fragments`)."""
        fragments = self.audit.fragments(record)
        self._add(fragments)
        return fragments

    def repeat(self, template: RecordTemplate, now: float, request_id: str) -> None:
        """Record a reused decision: ``template`` with this request's time and id."""
        # the front door's ids (hex and "-") are canonical JSON as they are; others are escaped
        rid = json_fragment(request_id) if request_id.strip(_HEX_ID) else f'"{request_id}"'
        self._add((template, (now, rid)))

    def from_thread(self, record: Mapping[str, Any]) -> None:
        """Record ``record`` from a thread other than the loop's."""
        self._q.put(("r", record))

    def close(self) -> None:
        """Write what is pending, sync, and stop the thread."""
        self.flush(sync=True)
        self._q.put(None)
        self._thread.join(timeout=5)
        self.audit.close()

    def _add(self, item: Mapping[str, str] | tuple[RecordTemplate, tuple[float, str]]) -> None:
        pending = self._pending
        pending.append(item)
        if len(pending) == 1:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush(sync=True)
                return
            loop.call_later(WRITE_GATHER_S, self.flush)
        elif len(pending) >= _WRITE_AT_MOST:
            self.flush()  # the timer then finds nothing to write

    def flush(self, sync: bool = False) -> None:
        """Chain and write the pending records; ``sync`` before returning, else soon after."""
        items, self._pending = self._pending, []
        if not items:
            return
        try:
            self.audit.append_fragments(items, sync=sync)
        except Exception:
            log.exception("audit write failed; %d record(s) lost", len(items))
            return
        if not sync and not self._sync_asked:
            self._sync_asked = True
            self._q.put(_SYNC)

    def _run(self) -> None:
        while True:
            items = [self._q.get()]
            while True:
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            records = [item[1] for item in items if isinstance(item, tuple)]
            try:
                if records:
                    self.audit.append_fragments([self.audit.fragments(r) for r in records])
                if _SYNC in items:
                    self._sync_asked = False  # before the sync: later writes ask for another
                    self.audit.sync()
            except Exception:
                log.exception("audit write failed; %d record(s) lost", len(records))
            if None in items:
                return
            time.sleep(SYNC_GATHER_S)
