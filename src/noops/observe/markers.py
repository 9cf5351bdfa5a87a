"""Deploy markers: every release, config change, scale, rollback and rebase, with a before/after
comparison of the service's rate, error % and p95 from the telemetry store.

Contract
--------
``DeployMarkers(db_path, store)`` owns the ``markers`` table of the rules database.

* :meth:`DeployMarkers.record` is idempotent: a marker with the same ``fingerprint`` (or, without
  one, the same service, version and kind within ``dedup_window_s``, 10 minutes by default) is
  returned instead of a second one (``Marker.deduplicated`` is then true).
* At most ``keep`` markers (10 000) are kept; recording one deletes the oldest beyond that.
* :meth:`DeployMarkers.observe_spans` is the ingest hook for a ``service.version`` seen in
  telemetry: after the first call for a (service, version) pair it is a set lookup. It records a
  ``version`` marker only if no marker of any kind names that version yet, so a release recorded by
  the platform is not marked twice.
* :meth:`DeployMarkers.compare` reads entry-span figures (``TelemetryStore.services``) over
  ``[at - window, at)`` and ``[at, at + window)``. While the after-window is still running the
  figures cover ``[at, now)`` and ``complete`` is false ("not enough data yet").
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, get_args

from noops.observe._rules_common import (
    RuleNotFound,
    RuleStore,
    RuleUsageError,
    epoch,
    iso,
    to_datetime,
)
from noops.observe.store.base import TelemetryStore

__all__ = ["DeployMarkers", "Marker", "MarkerKind"]

MarkerKind = Literal["deploy", "config", "scale", "rollback", "rebase", "version", "external"]
KINDS: Final = frozenset(get_args(MarkerKind))
DEDUP_WINDOW_S: Final = 600.0
COMPARE_WINDOW: Final = timedelta(minutes=15)
KEEP: Final = 10_000  # markers kept (newest by id); older ones are deleted on insert
_SEEN_MAX: Final = 10_000  # bound the in-memory (service, version) cache of observe_spans

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS markers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL, version TEXT NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL,
    source TEXT NOT NULL, fingerprint TEXT, description TEXT NOT NULL,
    attributes TEXT NOT NULL, created REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS markers_fingerprint ON markers (fingerprint)
    WHERE fingerprint IS NOT NULL;
CREATE INDEX IF NOT EXISTS markers_service_at ON markers (service, at);
"""


@dataclass(frozen=True)
class Marker:
    id: int
    service: str
    version: str
    kind: str
    at: float  # seconds since the epoch, UTC
    source: str
    fingerprint: str | None
    description: str
    attributes: dict[str, str] = field(default_factory=dict)
    deduplicated: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "service": self.service, "version": self.version,
                "kind": self.kind, "at": iso(self.at), "at_epoch_s": self.at,
                "source": self.source, "fingerprint": self.fingerprint,
                "description": self.description, "attributes": self.attributes,
                "deduplicated": self.deduplicated}


def _marker(row: Any, deduplicated: bool = False) -> Marker:
    return Marker(id=row["id"], service=row["service"], version=row["version"], kind=row["kind"],
                  at=row["at"], source=row["source"], fingerprint=row["fingerprint"],
                  description=row["description"], attributes=json.loads(row["attributes"]),
                  deduplicated=deduplicated)


class DeployMarkers:
    """Deploy markers in ``db_path`` (SQLite, WAL), compared against ``store``."""

    def __init__(self, db_path: Path | str, store: TelemetryStore, *,
                 dedup_window_s: float = DEDUP_WINDOW_S, keep: int = KEEP) -> None:
        self.db = RuleStore(db_path, _SCHEMA)
        self.store = store
        self.dedup_window_s = dedup_window_s
        self.keep = max(1, int(keep))
        self._seen: set[tuple[str, str]] = set()
        self._seen_lock = threading.Lock()

    def record(self, service: str, version: str, kind: str = "deploy", *,
               at: datetime | float | None = None, source: str = "platform",
               fingerprint: str | None = None, description: str = "",
               attributes: dict[str, str] | None = None) -> Marker:
        """Record a marker (``at`` defaults to now) or return the one it duplicates."""
        service, version = str(service).strip(), str(version).strip()
        if not service:
            raise RuleUsageError("a deploy marker needs a service name")
        if not version:
            raise RuleUsageError("a deploy marker needs a version (a release, a git sha, a tag)")
        if kind not in KINDS:
            raise RuleUsageError(f"unknown marker kind {kind!r}; use one of {', '.join(sorted(KINDS))}")
        if attributes is not None and not (isinstance(attributes, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in attributes.items())):
            raise RuleUsageError("marker attributes must be an object of strings to strings")
        moment = epoch(at)
        fp = str(fingerprint).strip() or None if fingerprint is not None else None
        with self.db.tx() as con:
            if fp is not None:
                row = con.execute("SELECT * FROM markers WHERE fingerprint = ?", (fp,)).fetchone()
            else:
                row = con.execute(
                    "SELECT * FROM markers WHERE service = ? AND version = ? AND kind = ? "
                    "AND abs(at - ?) <= ? ORDER BY at DESC LIMIT 1",
                    (service, version, kind, moment, self.dedup_window_s)).fetchone()
            if row is not None:
                return _marker(row, deduplicated=True)
            cur = con.execute(
                "INSERT INTO markers (service, version, kind, at, source, fingerprint, "
                "description, attributes, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (service, version, kind, moment, source, fp, description,
                 json.dumps(attributes or {}, sort_keys=True), epoch(None)))
            row = con.execute("SELECT * FROM markers WHERE id = ?", (cur.lastrowid,)).fetchone()
            con.execute("DELETE FROM markers WHERE id <= (SELECT id FROM markers ORDER BY id DESC "
                        "LIMIT 1 OFFSET ?)", (self.keep,))
        with self._seen_lock:
            self._remember(service, version)
        return _marker(row)

    def get(self, marker_id: int) -> Marker:
        rows = self.db.query("SELECT * FROM markers WHERE id = ?", (int(marker_id),))
        if not rows:
            raise RuleNotFound(f"no deploy marker {marker_id}; `noops deploys` lists them")
        return _marker(rows[0])

    def list(self, service: str | None = None, since: datetime | float | None = None,
             limit: int = 100) -> list[Marker]:
        """Markers newest first, optionally of one service and at or after ``since``."""
        where, params = ["1"], list[Any]()
        if service:
            where.append("service = ?")
            params.append(service)
        if since is not None:
            where.append("at >= ?")
            params.append(epoch(since))
        rows = self.db.query(f"SELECT * FROM markers WHERE {' AND '.join(where)} "  # noqa: S608
                             "ORDER BY at DESC, id DESC LIMIT ?", [*params, int(limit)])
        return [_marker(r) for r in rows]

    def observe_spans(self, service: str, version: str) -> Marker | None:
        """Ingest hook: mark the first sighting of ``service.version`` (cheap after that)."""
        if not service or not version:
            return None
        key = (service, version)
        with self._seen_lock:
            if key in self._seen:
                return None
            self._remember(service, version)
        known = self.db.query("SELECT 1 FROM markers WHERE service = ? AND version = ? LIMIT 1",
                              (service, version))
        if known:
            return None
        return self.record(service, version, "version", source="telemetry",
                           description=f"new service.version {version} seen in telemetry")

    def _remember(self, service: str, version: str) -> None:
        if len(self._seen) >= _SEEN_MAX:
            self._seen.clear()
        self._seen.add((service, version))

    def compare(self, marker: Marker, window: timedelta = COMPARE_WINDOW,
                now: datetime | float | None = None) -> dict[str, Any]:
        """Rate, error % and p95 of ``marker.service`` before and after the marker."""
        if window <= timedelta(0):
            raise RuleUsageError("the comparison window must be positive")
        at, now_s, win_s = marker.at, epoch(now), window.total_seconds()
        before = self._figures(marker.service, at - win_s, at)
        out: dict[str, Any] = {"window_s": win_s, "before": before, "after": None,
                               "complete": now_s >= at + win_s, "note": ""}
        if now_s <= at:
            out["note"] = "not enough data yet: the marker is in the future"
            return out
        after_end = min(at + win_s, now_s)
        out["after"] = after = self._figures(marker.service, at, after_end)
        notes = []
        if not out["complete"]:
            notes.append(f"not enough data yet: the after-window is complete at "
                         f"{iso(at + win_s)} (figures so far)")
        if before["count"] == 0:
            notes.append("no traffic before the marker")
        if after["count"] == 0:
            notes.append("no traffic after the marker")
        if before["count"] and after["count"]:
            out["delta"] = {
                "rate_pct": _pct_change(before["rate_per_s"], after["rate_per_s"]),
                "error_pct_points": round(after["error_pct"] - before["error_pct"], 3),
                "p95_pct": _pct_change(before["p95_ms"], after["p95_ms"]),
            }
        out["note"] = "; ".join(notes)
        return out

    def _figures(self, service: str, start: float, end: float) -> dict[str, Any]:
        rows = self.store.services(to_datetime(start), to_datetime(end))
        row = next((r for r in rows if r["service"] == service), None)
        base: dict[str, Any] = {"start": iso(start), "end": iso(end)}
        if row is None:
            return {**base, "count": 0, "rate_per_s": 0.0, "error_pct": 0.0, "p95_ms": 0.0}
        return {**base, "count": row["count"], "rate_per_s": row["rate_per_s"],
                "error_pct": row["error_pct"], "p95_ms": row["p95_ms"]}

    def close(self) -> None:
        self.db.close()


def _pct_change(old: float, new: float) -> float | None:
    return None if old == 0 else round(100.0 * (new - old) / old, 2)
