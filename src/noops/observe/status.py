"""Public status pages: which apps publish one, and the read-only figures it shows.

Contract
--------
``StatusPages(db_path, probes, store)`` owns the ``status_pages`` table of the rules database.

* An app's page is off until :meth:`StatusPages.enable` (``noops status-page enable APP``); a page
  that is off is indistinguishable from an app that does not exist (:class:`RuleNotFound`), so
  the public route never tells which apps run here.
* :meth:`StatusPages.page` shows only what is meant for the public: the page title, an overall
  state, and per probe of the app its *name*, whether its last check passed, when, its last
  response time, uptime % over 24 h / 7 d / 30 d and one bar per UTC day for the last 30 days.
  Probe targets, errors, trace ids, alert rules and anything about users never appear.
* Uptime is read from the probes' ``noops.probe.up`` gauge in the telemetry store (so the
  store's retention bounds the history): the share of checks that passed, per day and weighted
  by checks over a period; a day without checks has ``None``.
* Overall state: ``operational`` when every probe's last check passed, ``down`` when all
  failed, ``degraded`` otherwise, ``unknown`` without probes or results.
"""

from __future__ import annotations

import builtins
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from noops.observe._rules_common import RuleNotFound, RuleStore, RuleUsageError, iso
from noops.observe.probes import Probes
from noops.observe.store.base import GaugePoint, TelemetryStore

__all__ = ["StatusPages"]

DAYS: Final = 30
_DAY_S: Final = 86_400
_APP: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS status_pages (
    app TEXT PRIMARY KEY, title TEXT NOT NULL, enabled_at REAL NOT NULL
);
"""


def _check_app(app: str) -> str:
    if not _APP.match(app):
        raise RuleUsageError(f"{app!r} is not an app name (lower-case letters, digits and '-')")
    return app


class StatusPages:
    """See the module contract. Reads of the store block: call :meth:`page` from a thread."""

    def __init__(self, db_path: Path | str, probes: Probes, store: TelemetryStore) -> None:
        self.db = RuleStore(db_path, _SCHEMA)
        self.probes, self.store = probes, store

    def enable(self, app: str, title: str | None = None) -> dict[str, Any]:
        """Publish ``app``'s page (again: a new title replaces the old one)."""
        title = (title or app).strip()
        if not 1 <= len(title) <= 80 or not title.isprintable():
            raise RuleUsageError("a status page title is 1 to 80 printable characters")
        with self.db.tx() as con:
            con.execute("INSERT INTO status_pages (app, title, enabled_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (app) DO UPDATE SET title = excluded.title",
                        (_check_app(app), title, time.time()))
        return self.get(app)

    def disable(self, app: str) -> None:
        with self.db.tx() as con:
            if not con.execute("DELETE FROM status_pages WHERE app = ?", (app,)).rowcount:
                raise RuleNotFound(f"{app} has no public status page")

    def get(self, app: str) -> dict[str, Any]:
        rows = self.db.query("SELECT * FROM status_pages WHERE app = ?", (app,))
        if not rows:
            raise RuleNotFound(f"{app} has no public status page; publish one with "
                               f"`noops status-page enable {app}`")
        return {"app": rows[0]["app"], "title": rows[0]["title"],
                "enabled_at": iso(rows[0]["enabled_at"]), "path": f"/status/{rows[0]['app']}"}

    def list(self) -> builtins.list[dict[str, Any]]:
        return [self.get(r["app"]) for r in self.db.query("SELECT app FROM status_pages ORDER BY app")]

    def page(self, app: str, now: float | None = None) -> dict[str, Any]:
        """The public figures of ``app``'s page (see the contract); :class:`RuleNotFound` when
        it is not published."""
        head = self.get(app)
        now = time.time() if now is None else now
        today = int(now) // _DAY_S * _DAY_S
        end = datetime.fromtimestamp(now, UTC)
        start = datetime.fromtimestamp(today - (DAYS - 1) * _DAY_S, UTC)
        daily = self.store.gauge_series("noops.probe.up", start, end, service=app, by="probe.id",
                                        step_s=_DAY_S)
        recent = self.store.gauge_series("noops.probe.up", end - timedelta(days=1), end,
                                         service=app, by="probe.id", step_s=3600)
        days = [today - i * _DAY_S for i in range(DAYS - 1, -1, -1)]
        components = []
        for probe in self.probes.list(app=app):
            key = str(probe.id)
            mine = {p["bucket_s"]: p for p in daily if p["group"] == key}
            last = self.probes.results(probe.id, limit=1)
            components.append({
                "name": probe.name,
                "up": last[0].ok if last else None,
                "checked_at": iso(last[0].at) if last else None,
                "response_ms": round(last[0].duration_ms, 1) if last else None,
                "uptime_pct": {
                    "24h": _pct([p for p in recent if p["group"] == key]),
                    "7d": _pct([mine[d] for d in days[-7:] if d in mine]),
                    "30d": _pct(list(mine.values())),
                },
                "days": [{"day": datetime.fromtimestamp(d, UTC).date().isoformat(),
                          "uptime_pct": _pct([mine[d]]) if d in mine else None} for d in days],
            })
        states = [c["up"] for c in components if c["up"] is not None]
        overall = ("unknown" if not states else "operational" if all(states)
                   else "down" if not any(states) else "degraded")
        return {**head, "state": overall, "components": components, "generated_at": iso(now)}

    def close(self) -> None:
        self.db.close()


def _pct(points: builtins.list[GaugePoint]) -> float | None:
    checks = sum(p["count"] for p in points)
    if not checks:
        return None
    return round(100.0 * sum(p["avg"] * p["count"] for p in points) / checks, 2)
