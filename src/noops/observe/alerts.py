"""Alert rules on error rate, p95/p99 latency, probe failures and SLO burn rate, with webhooks.

Contract
--------
``Alerts(db_path, store, probes=None)`` owns the ``alerts``, ``alert_state``, ``alert_events``
and ``alert_deliveries`` tables of the rules database.

Measuring (:meth:`Alerts.evaluate`)
    Service rules read the store's minute rollup (``TelemetryStore.timeseries``) over the last
    ``window_s`` of *complete* minutes before ``now`` (the running minute is partial and would
    understate rates). ``error_rate`` is ``100 * errors / requests`` (%); ``p95``/``p99`` (ms) is
    estimated from the per-minute p50/p95/p99 (:func:`window_quantile`; each within ±4.4 %). Fewer than
    ``min_requests`` requests in the window is "no data", which never breaches.
    ``slo`` (objective in %, e.g. 99.9 over 30 days) fires on the multi-window burn rates of the
    Google SRE workbook: error ratio / (1 - objective) above 14.4 over both 1 h and 5 min
    (2 % of a 30-day budget in an hour), or above 6 over both 6 h and 30 min.
    ``probe`` breaches when the probe's last ``threshold`` results all failed.
States
    ``ok → pending`` (breaching, waiting ``for_s``) ``→ firing → resolved`` (which behaves as
    ``ok``); ``pending`` falls back to ``ok`` when the breach ends early. Each ``firing`` starts an
    *episode*; exactly one ``firing`` and one ``resolved`` event exist per episode, whatever how
    often ``evaluate`` runs (the state is committed with the event).
Notifications (:meth:`Alerts.deliver`)
    Each event is queued once per webhook (an outbox row) and POSTed as JSON (see
    :func:`payload`) with an ``Idempotency-Key`` header; a non-2xx answer or a network error is
    retried with exponential backoff (5 s doubling, at most 5 min apart, 10 attempts), and a
    ``resolved`` notification waits until the ``firing`` one of the same alert and webhook is out.
Bounds
    Only the newest ``keep_events`` events (1000) are kept, with their delivery records.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import itertools
import json
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, get_args
from urllib.parse import urlsplit

import httpx

from noops.errors import NoopsError
from noops.observe._rules_common import (
    RuleNotFound,
    RuleStore,
    RuleUsageError,
    epoch,
    iso,
    parse_duration,
    to_datetime,
)
from noops.observe.probes import Probes
from noops.observe.store.base import TelemetryStore, TimeseriesPoint

__all__ = ["AlertEvent", "AlertKind", "AlertRule", "Alerts", "payload", "window_quantile"]

log = logging.getLogger(__name__)

AlertKind = Literal["error_rate", "p95", "p99", "probe", "slo"]
KINDS: Final = frozenset(get_args(AlertKind))
# (long window s, short window s, burn-rate factor): the SRE workbook's page conditions
BURN_WINDOWS: Final = ((3600.0, 300.0, 14.4), (21600.0, 1800.0, 6.0))
BACKOFF_S: Final = 5.0
BACKOFF_CAP_S: Final = 300.0
MAX_ATTEMPTS: Final = 10

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL, kind TEXT NOT NULL, service TEXT, endpoint TEXT, threshold REAL NOT NULL,
    probe_id INTEGER, for_s REAL NOT NULL, window_s REAL NOT NULL, min_requests INTEGER NOT NULL,
    webhooks TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_state (
    alert_id INTEGER PRIMARY KEY REFERENCES alerts (id) ON DELETE CASCADE,
    state TEXT NOT NULL, since REAL, episode TEXT, started REAL, value REAL,
    message TEXT NOT NULL, evaluated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE, alert_id INTEGER NOT NULL, status TEXT NOT NULL,
    episode TEXT NOT NULL, at REAL NOT NULL, payload TEXT NOT NULL,
    UNIQUE (episode, status)
);
CREATE TABLE IF NOT EXISTS alert_deliveries (
    event_id INTEGER NOT NULL REFERENCES alert_events (id) ON DELETE CASCADE,
    webhook TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL,
    next_at REAL NOT NULL, last_error TEXT NOT NULL, delivered_at REAL,
    PRIMARY KEY (event_id, webhook)
);
CREATE INDEX IF NOT EXISTS alert_deliveries_due ON alert_deliveries (status, next_at);
"""


@dataclass(frozen=True)
class AlertRule:
    id: int
    name: str
    kind: str
    service: str | None
    endpoint: str | None
    threshold: float  # % (error_rate), ms (p95/p99), failures in a row (probe), objective % (slo)
    probe_id: int | None
    for_s: float
    window_s: float
    min_requests: int
    webhooks: tuple[str, ...]
    created: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "service": self.service,
                "endpoint": self.endpoint, "threshold": self.threshold,
                "unit": _UNITS[self.kind], "probe_id": self.probe_id, "for_s": self.for_s,
                "window_s": self.window_s, "min_requests": self.min_requests,
                "webhooks": [redact_url(w) for w in self.webhooks], "created": iso(self.created)}


@dataclass(frozen=True)
class AlertEvent:
    uid: str
    alert_id: int
    status: str  # firing | resolved
    episode: str
    at: float
    payload: dict[str, Any]


_UNITS: Final = {"error_rate": "%", "p95": "ms", "p99": "ms", "probe": "failures",
                 "slo": "% objective"}


def _rule(row: Any) -> AlertRule:
    return AlertRule(id=row["id"], name=row["name"], kind=row["kind"], service=row["service"],
                     endpoint=row["endpoint"], threshold=row["threshold"],
                     probe_id=row["probe_id"], for_s=row["for_s"], window_s=row["window_s"],
                     min_requests=row["min_requests"], webhooks=tuple(json.loads(row["webhooks"])),
                     created=row["created"])


def _number(value: str | float | int, kind: str) -> float:
    """A threshold from ``5%``, ``300ms``, ``1.5s``, ``99.9`` or a number."""
    if isinstance(value, bool):
        raise RuleUsageError(f"threshold {value!r} is not a number")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if kind in ("p95", "p99") and text and text[-1].isalpha():
        return parse_duration(text, f"--{kind}") * 1000.0
    try:
        return float(text.removesuffix("%"))
    except ValueError as exc:
        raise RuleUsageError(f"threshold {value!r} is not a number (e.g. 5%, 300ms, 99.9)") from exc


def _webhook(url: str) -> str:
    try:
        parsed = httpx.URL(str(url).strip())
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise RuleUsageError(f"bad webhook URL {url!r}: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise RuleUsageError(f"bad webhook URL {url!r}: it needs http:// or https:// and a host")
    return str(parsed)


def _minute_cdf(v: float, point: TimeseriesPoint) -> float:
    """A minute's latency distribution, piecewise linear through its p50/p95/p99."""
    knots = ((0.0, 0.0), (point["p50_ms"], 0.5), (point["p95_ms"], 0.95), (point["p99_ms"], 0.99))
    for (x0, y0), (x1, y1) in itertools.pairwise(knots):
        if v < x1:
            return y0 + (y1 - y0) * (v - x0) / (x1 - x0) if x1 > x0 else y0
    return 1.0


def window_quantile(points: Sequence[TimeseriesPoint], q: float) -> float:
    """Estimate the ``q`` latency quantile (ms) of a window from its per-minute rollup points:
    the value where the request-weighted mixture of the minutes' distributions reaches ``q``
    (exact when every minute looks the same; a burst of slow minutes is not averaged away)."""
    total = sum(p["count"] for p in points)
    if total == 0:
        return 0.0
    lo, hi = 0.0, max(p["p99_ms"] for p in points)
    for _ in range(60):
        mid = (lo + hi) / 2
        if sum(p["count"] * _minute_cdf(mid, p) for p in points) >= q * total:
            hi = mid
        else:
            lo = mid
    return hi


def payload(rule: AlertRule, status: str, uid: str, episode: str, at: float,
            started: float | None, value: float | None, message: str) -> dict[str, Any]:
    """The JSON body POSTed to webhooks. ``fingerprint`` is stable for one alert episode (firing
    and resolved share it); ``id`` is unique per notification, also sent as Idempotency-Key."""
    fingerprint = hashlib.sha256(f"{rule.id}:{episode}".encode()).hexdigest()[:16]
    return {"id": uid, "fingerprint": fingerprint, "status": status, "alert": rule.to_json(),
            "service": rule.service, "endpoint": rule.endpoint, "value": value,
            "threshold": rule.threshold, "unit": _UNITS[rule.kind], "message": message,
            "started_at": iso(started), "resolved_at": iso(at) if status == "resolved" else None,
            "at": iso(at)}


class Alerts:
    """Alert rules, their state and notifications in ``db_path``; measured from ``store`` (and
    ``probes`` for probe rules)."""

    def __init__(self, db_path: Path | str, store: TelemetryStore,
                 probes: Probes | None = None, *, http_timeout_s: float = 5.0,
                 keep_events: int = 1000) -> None:
        self.db = RuleStore(db_path, _SCHEMA)
        self.store = store
        self.probes = probes
        self.http_timeout_s = http_timeout_s
        self.keep_events = max(1, int(keep_events))

    # -- rules ------------------------------------------------------------------------------------
    def add(self, kind: str, service: str | None = None, *, threshold: str | float | None = None,
            endpoint: str | None = None, probe_id: int | None = None, for_: str | float = "0s",
            window: str | float = "5m", min_requests: int = 10,
            webhooks: builtins.list[str] | tuple[str, ...] = (), name: str | None = None,
            ) -> AlertRule:
        """Validate and store a rule. ``threshold``: error % for ``error_rate`` (``"5%"``), ms for
        ``p95``/``p99`` (``"300ms"``), consecutive failures for ``probe`` (default 3), the
        objective in % for ``slo`` (``99.9``)."""
        if kind not in KINDS:
            raise RuleUsageError(f"unknown alert kind {kind!r}; use one of {', '.join(sorted(KINDS))}")
        if kind == "probe":
            if probe_id is None:
                raise RuleUsageError("a probe alert needs the probe id (`noops probes` lists them)")
            if self.probes is not None:
                probe = self.probes.get(int(probe_id))
                service = service or probe.app or probe.name
            value = _number(3 if threshold is None else threshold, kind)
            if value < 1 or value != int(value):
                raise RuleUsageError("a probe alert fires after N failed checks in a row: N must "
                                     "be a whole number of at least 1")
        else:
            if not service:
                raise RuleUsageError(f"a {kind} alert needs a service name")
            if threshold is None:
                raise RuleUsageError(f"a {kind} alert needs a threshold")
            value = _number(threshold, kind)
            if kind == "error_rate" and not 0 <= value < 100:
                raise RuleUsageError("an error-rate threshold is a percentage from 0 to below 100")
            if kind in ("p95", "p99") and value <= 0:
                raise RuleUsageError(f"a {kind} threshold must be above 0 ms")
            if kind == "slo" and not 0 < value < 100:
                raise RuleUsageError("an SLO objective is a percentage between 0 and 100, "
                                     "e.g. 99.9")
        for_s = parse_duration(for_, "--for")
        window_s = max(60.0, math.ceil(parse_duration(window, "window") / 60) * 60)
        if int(min_requests) < 1:
            raise RuleUsageError("min_requests must be at least 1")
        hooks = [_webhook(u) for u in webhooks]
        label = name or f"{service} {kind} {threshold if threshold is not None else ''}".strip()
        with self.db.tx() as con:
            cur = con.execute(
                "INSERT INTO alerts (name, kind, service, endpoint, threshold, probe_id, for_s, "
                "window_s, min_requests, webhooks, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (label, kind, service, endpoint or None, value,
                 None if probe_id is None else int(probe_id), for_s, window_s, int(min_requests),
                 json.dumps(hooks), epoch(None)))
            con.execute("INSERT INTO alert_state (alert_id, state, message, evaluated) "
                        "VALUES (?, 'ok', '', 0)", (cur.lastrowid,))
            row = con.execute("SELECT * FROM alerts WHERE id = ?", (cur.lastrowid,)).fetchone()
        return _rule(row)

    def get(self, alert_id: int) -> AlertRule:
        rows = self.db.query("SELECT * FROM alerts WHERE id = ?", (int(alert_id),))
        if not rows:
            raise RuleNotFound(f"no alert {alert_id}; `noops alerts` lists them")
        return _rule(rows[0])

    def list(self) -> builtins.list[AlertRule]:
        return [_rule(r) for r in self.db.query("SELECT * FROM alerts ORDER BY id")]

    def remove(self, alert_id: int) -> None:
        """Delete a rule and its state; its past events stay in the history."""
        with self.db.tx() as con:
            if con.execute("DELETE FROM alerts WHERE id = ?", (int(alert_id),)).rowcount == 0:
                raise RuleNotFound(f"no alert {alert_id}; `noops alerts` lists them")

    def states(self) -> builtins.list[dict[str, Any]]:
        """Every rule with its current state, value and message (for the API)."""
        out = []
        for rule in self.list():
            row = self.db.query("SELECT * FROM alert_state WHERE alert_id = ?", (rule.id,))
            st = row[0] if row else None
            out.append({**rule.to_json(), "state": st["state"] if st else "ok",
                        "since": iso(st["since"]) if st else None,
                        "value": st["value"] if st else None,
                        "message": st["message"] if st else "",
                        "evaluated": iso(st["evaluated"]) if st and st["evaluated"] else None})
        return out

    def events(self, alert_id: int | None = None, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """Notifications newest first, each with its delivery state per webhook."""
        where, params = ("WHERE alert_id = ?", [int(alert_id)]) if alert_id is not None else ("", [])
        rows = self.db.query(f"SELECT * FROM alert_events {where} "  # noqa: S608
                             "ORDER BY id DESC LIMIT ?", [*params, int(limit)])
        out = []
        for r in rows:
            deliveries = self.db.query("SELECT webhook, status, attempts, last_error, delivered_at "
                                       "FROM alert_deliveries WHERE event_id = ?", (r["id"],))
            out.append({**json.loads(r["payload"]), "alert_id": r["alert_id"],
                        "deliveries": [{"webhook": redact_url(d["webhook"]), "status": d["status"],
                                        "attempts": d["attempts"],
                                        "last_error": _redacted(d["last_error"], d["webhook"]),
                                        "delivered_at": iso(d["delivered_at"])}
                                       for d in deliveries]})
        return out

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, now: datetime | float | None = None) -> builtins.list[AlertEvent]:
        """Measure every rule at ``now``, move its state, and queue notifications for the
        firing/resolved events it produced (returned). Blocking: call it from a thread."""
        at = epoch(now)
        events: builtins.list[AlertEvent] = []
        for rule in self.list():
            try:
                value, breach, message = self._measure(rule, at)
            except NoopsError as exc:
                value, breach, message = None, False, f"cannot measure: {exc}"
            event = self._step(rule, at, value, breach, message)
            if event is not None:
                events.append(event)
        if events:
            self._prune()
        return events

    def _measure(self, rule: AlertRule, now: float) -> tuple[float | None, bool, str]:
        if rule.kind == "probe":
            return self._measure_probe(rule)
        end = math.floor(now / 60) * 60  # complete minutes only
        if rule.kind == "slo":
            return self._measure_slo(rule, end)
        points = self._points(rule, end - rule.window_s, end)
        count = sum(p["count"] for p in points)
        window = f"last {rule.window_s / 60:g} min"
        if count < rule.min_requests:
            return None, False, f"no data: {count} requests in the {window} (< {rule.min_requests})"
        if rule.kind == "error_rate":
            value = 100.0 * sum(p["errors"] for p in points) / count
            what = f"error rate {value:.2f}%"
            unit = "%"
        else:
            value = window_quantile(points, 0.95 if rule.kind == "p95" else 0.99)
            what = f"{rule.kind} {value:.1f} ms"
            unit = " ms"
        breach = value > rule.threshold
        return value, breach, (f"{rule.service}: {what} over the {window} "
                               f"({'above' if breach else 'within'} {rule.threshold:g}{unit})")

    def _points(self, rule: AlertRule, start: float, end: float) -> builtins.list[TimeseriesPoint]:
        assert rule.service is not None
        return self.store.timeseries(rule.service, to_datetime(start), to_datetime(end),
                                     endpoint=rule.endpoint)

    def _measure_slo(self, rule: AlertRule, end: float) -> tuple[float | None, bool, str]:
        budget = 1.0 - rule.threshold / 100.0
        longest = max(w for w, _, _ in BURN_WINDOWS)
        points = self._points(rule, end - longest, end)

        def burn(window_s: float) -> float:
            inside = [p for p in points if p["minute_ns"] >= (end - window_s) * 1e9]
            count = sum(p["count"] for p in inside)
            if count < rule.min_requests:
                return 0.0
            return sum(p["errors"] for p in inside) / count / budget

        parts, breach = [], False
        for long_s, short_s, factor in BURN_WINDOWS:
            long_burn, short_burn = burn(long_s), burn(short_s)
            breach = breach or (long_burn > factor and short_burn > factor)
            parts.append(f"{long_s / 3600:g}h {long_burn:.1f}x / {short_s / 60:g}m "
                         f"{short_burn:.1f}x (page above {factor:g}x)")
        value = burn(BURN_WINDOWS[0][0])
        return value, breach, (f"{rule.service}: SLO {rule.threshold:g}% error-budget burn "
                               + "; ".join(parts))

    def _measure_probe(self, rule: AlertRule) -> tuple[float | None, bool, str]:
        if self.probes is None or rule.probe_id is None:
            return None, False, "no probes attached to the alert evaluator"
        needed = int(rule.threshold)
        try:
            results = self.probes.results(rule.probe_id, limit=needed)
        except RuleNotFound:
            return None, False, f"probe {rule.probe_id} was removed"
        failed = 0
        for r in results:
            if r.ok:
                break
            failed += 1
        breach = len(results) >= needed and failed >= needed
        last = results[0].error if results and not results[0].ok else "ok"
        return float(failed), breach, (f"probe {rule.probe_id}: {failed} failed check(s) in a row "
                                       f"(fires at {needed}); last: {last}")

    def _step(self, rule: AlertRule, at: float, value: float | None, breach: bool,
              message: str) -> AlertEvent | None:
        """Move the state machine of one rule; commit the state with any event it produces."""
        with self.db.tx() as con:
            st = con.execute("SELECT * FROM alert_state WHERE alert_id = ?", (rule.id,)).fetchone()
            if st is None:  # removed meanwhile
                return None
            state, since, episode, started = st["state"], st["since"], st["episode"], st["started"]
            event: AlertEvent | None = None
            if state in ("ok", "resolved") and breach:
                state, since = "pending", at
            elif state == "pending" and not breach:
                state, since = "ok", at
            if state == "pending" and breach and at - since >= rule.for_s:
                state, started, episode = "firing", since, uuid.uuid4().hex
                event = self._event(con, rule, "firing", episode, at, started, value, message)
                since = at
            elif state == "firing" and not breach:
                event = self._event(con, rule, "resolved", episode, at, started, value, message)
                state, since = "resolved", at
            con.execute("UPDATE alert_state SET state = ?, since = ?, episode = ?, started = ?, "
                        "value = ?, message = ?, evaluated = ? WHERE alert_id = ?",
                        (state, since, episode, started, value, message, at, rule.id))
        return event

    @staticmethod
    def _event(con: Any, rule: AlertRule, status: str, episode: str, at: float,
               started: float | None, value: float | None, message: str) -> AlertEvent:
        uid = uuid.uuid4().hex
        body = payload(rule, status, uid, episode, at, started, value, message)
        cur = con.execute("INSERT INTO alert_events (uid, alert_id, status, episode, at, payload) "
                          "VALUES (?, ?, ?, ?, ?, ?)",
                          (uid, rule.id, status, episode, at, json.dumps(body)))
        for hook in rule.webhooks:
            con.execute("INSERT INTO alert_deliveries (event_id, webhook, status, attempts, "
                        "next_at, last_error) VALUES (?, ?, 'pending', 0, ?, '')",
                        (cur.lastrowid, hook, at))
        return AlertEvent(uid, rule.id, status, episode, at, body)

    def _prune(self) -> None:
        """Keep the newest ``keep_events`` events (and any still being delivered)."""
        with self.db.tx() as con:
            con.execute("DELETE FROM alert_events WHERE id <= (SELECT id FROM alert_events "
                        "ORDER BY id DESC LIMIT 1 OFFSET ?) AND NOT EXISTS (SELECT 1 FROM "
                        "alert_deliveries d WHERE d.event_id = alert_events.id "
                        "AND d.status = 'pending')", (self.keep_events,))

    # -- notifications ----------------------------------------------------------------------------
    def deliver(self, now: datetime | float | None = None) -> builtins.list[dict[str, Any]]:
        """POST every notification due at ``now``; returns what was attempted (webhook, event
        id, outcome). Blocking: call it from a thread."""
        at = epoch(now)
        out: builtins.list[dict[str, Any]] = []
        due = self._due(at)
        if not due:
            return out
        with httpx.Client(timeout=self.http_timeout_s) as client:
            # A delivered notification can unblock the next one of the same alert and webhook
            # (firing before resolved), so ask again until nothing is due; failures move
            # next_at past ``at``, so this ends.
            while due:
                out += [self._post(client, row, at) for row in due]
                due = self._due(at)
        return out

    def _due(self, at: float) -> builtins.list[Any]:
        return self.db.query(
            "SELECT d.event_id, d.webhook, d.attempts, e.uid, e.payload FROM alert_deliveries d "
            "JOIN alert_events e ON e.id = d.event_id WHERE d.status = 'pending' AND "
            "d.next_at <= ? AND NOT EXISTS (SELECT 1 FROM alert_deliveries d2 JOIN alert_events e2 "
            "ON e2.id = d2.event_id WHERE d2.webhook = d.webhook AND e2.alert_id = e.alert_id "
            "AND d2.event_id < d.event_id AND d2.status = 'pending') ORDER BY d.event_id",
            (at,))

    def _post(self, client: httpx.Client, row: Any, at: float) -> dict[str, Any]:
        error = ""
        try:
            resp = client.post(row["webhook"], content=row["payload"],
                               headers={"content-type": "application/json",
                                        "idempotency-key": row["uid"],
                                        "user-agent": "noops-alerts/1"})
            if not 200 <= resp.status_code < 300:
                error = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        attempts = row["attempts"] + 1
        if not error:
            status, next_at = "delivered", at
        elif attempts >= MAX_ATTEMPTS:
            status, next_at = "failed", at
            log.warning("alert webhook %s gave up after %d attempts: %s",
                        redact_url(row["webhook"]), attempts, _redacted(error, row["webhook"]))
        else:
            status, next_at = "pending", at + min(BACKOFF_S * 2 ** (attempts - 1), BACKOFF_CAP_S)
        with self.db.tx() as con:
            con.execute("UPDATE alert_deliveries SET status = ?, attempts = ?, next_at = ?, "
                        "last_error = ?, delivered_at = ? WHERE event_id = ? AND webhook = ?",
                        (status, attempts, next_at, error, at if status == "delivered" else None,
                         row["event_id"], row["webhook"]))
        return {"event": row["uid"], "webhook": row["webhook"], "status": status,
                "attempts": attempts, "error": error}

    async def run_forever(self, stop: asyncio.Event, every_s: float = 15.0) -> None:
        """Evaluate and deliver every ``every_s`` (in a worker thread) until ``stop`` is set."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.evaluate)
                await asyncio.to_thread(self.deliver)
            except Exception:
                log.exception("alert evaluation failed; retrying in %.0f s", every_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)

    def close(self) -> None:
        self.db.close()


def redact_url(url: str) -> str:
    """A webhook URL as shown and logged: its path and query are often the credential (Slack,
    Teams, PagerDuty), so only the scheme, the host and the last four characters remain."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        return "…"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/…{url[-4:]}"


def _redacted(text: str | None, url: str) -> str | None:
    return text.replace(url, redact_url(url)) if text else text
