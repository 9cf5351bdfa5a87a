"""Uptime probes: HTTP(S) checks (status, text, JSON path), TCP connects and TLS certificate expiry.

Contract
--------
``Probes(db_path, store, client_cert=None, ca_file=None)`` owns the ``probes`` and
``probe_results`` tables of the rules database.

* Definitions are validated on :meth:`Probes.add` (a bad URL, an interval under 5 s or a bad JSON
  path is a :class:`~noops.observe._rules_common.RuleUsageError` and stores nothing).
* Results go to the telemetry store downsampled to one point per probe and minute
  (:data:`METRIC_STEP_S`), as ``otel_metrics_gauge`` rows: ``noops.probe.up`` (the share of the
  minute's checks that passed, 0…1), ``noops.probe.duration_ms`` (their mean),
  ``noops.probe.duration_max_ms``, ``noops.probe.tls_days_left`` (the least seen). ServiceName =
  the probe's app, else ``noops-probe``; Attributes ``probe.id``, ``probe.name``,
  ``probe.target``, ``probe.kind`` and ``probe.checks`` (how many checks the point sums up); the
  point's time is the minute's start. A minute is written once it is over (:meth:`Probes.flush`,
  called by :meth:`Probes.run_forever` every tick and by :meth:`Probes.close`), so a probe
  every 5 s writes 4 rows a minute, not 24, and the store's retention bounds them. SQLite keeps
  every check of the last ``keep_results`` per probe, for the API and probe-failure alerts.
* HTTP checks send a sampled W3C ``traceparent`` (a new trace per check) and write their own
  client span (ServiceName ``noops-probe``), so the request shows up in APM as a trace with a
  root and as an edge on the service map.
* ``localhost`` and ``*.localhost`` targets are connected on 127.0.0.1 with the name kept in
  ``Host`` and TLS SNI (the resolver may not know ``APP.localhost``).
* HTTPS and TLS checks trust the system roots plus ``ca_file`` and present ``client_cert``
  (certificate, key) when given: the front door is zero-trust. The files are re-read when their
  modification time changes, so a renewed certificate is picked up on the next round.
* :meth:`Probes.run_due` runs every due probe concurrently and returns their results;
  :meth:`Probes.run_forever` does the same on a one-second tick until ``stop`` is set, never
  running two checks of one probe at once. Intervals carry ``jitter`` (a fraction of the interval)
  so probes do not synchronise.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

import httpx

from noops.observe._probe_checks import (
    PROBE_SERVICE,
    Probe,
    ProbeResult,
    TlsFiles,
    check_http,
    check_socket,
    host_port,
)
from noops.observe._rules_common import (
    RuleNotFound,
    RuleStore,
    RuleUsageError,
    compile_json_path,
    epoch,
    parse_duration,
)
from noops.observe.store.base import TelemetryStore

__all__ = ["Probe", "ProbeKind", "ProbeResult", "Probes"]

log = logging.getLogger(__name__)

ProbeKind = Literal["http", "tcp", "tls"]
MIN_EVERY_S: Final = 5.0
METRIC_STEP_S: Final = 60
DEFAULT_TIMEOUT_S: Final = 10.0
_UNSET: Final = object()

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS probes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, target TEXT NOT NULL, app TEXT,
    every_s REAL NOT NULL, timeout_s REAL NOT NULL, expect_status INTEGER NOT NULL,
    expect_text TEXT, json_path TEXT, json_expect TEXT, tls_warn_days REAL NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS probe_results (
    probe_id INTEGER NOT NULL REFERENCES probes (id) ON DELETE CASCADE,
    at REAL NOT NULL, ok INTEGER NOT NULL, duration_ms REAL NOT NULL, status INTEGER,
    error TEXT NOT NULL, warning TEXT NOT NULL, tls_days_left REAL, trace_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS probe_results_probe_at ON probe_results (probe_id, at);
"""


@dataclass
class _Minute:
    """The checks of one probe in one minute, until the minute is written."""

    probe: Probe
    start: int
    checks: int = 0
    ups: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    tls_days: float | None = None

    def add(self, result: ProbeResult) -> None:
        self.checks += 1
        self.ups += int(result.ok)
        self.total_ms += result.duration_ms
        self.max_ms = max(self.max_ms, result.duration_ms)
        if result.tls_days_left is not None:
            self.tls_days = result.tls_days_left if self.tls_days is None else min(
                self.tls_days, result.tls_days_left)

    def rows(self) -> builtins.list[dict[str, Any]]:
        probe, service = self.probe, self.probe.app or PROBE_SERVICE
        ns = self.start * 1_000_000_000
        attrs = {"probe.id": str(probe.id), "probe.name": probe.name, "probe.target": probe.target,
                 "probe.kind": probe.kind, "probe.checks": str(self.checks)}
        base = {"ServiceName": service, "ResourceAttributes": {"service.name": service},
                "ScopeName": "noops.observe.probes", "Attributes": attrs,
                "StartTimeUnix": ns, "TimeUnix": ns}
        out = [{**base, "MetricName": "noops.probe.up", "MetricUnit": "1",
                "MetricDescription": "share of the minute's checks that passed",
                "Value": self.ups / self.checks},
               {**base, "MetricName": "noops.probe.duration_ms", "MetricUnit": "ms",
                "MetricDescription": "mean time the minute's checks took",
                "Value": self.total_ms / self.checks},
               {**base, "MetricName": "noops.probe.duration_max_ms", "MetricUnit": "ms",
                "MetricDescription": "longest check of the minute", "Value": self.max_ms}]
        if self.tls_days is not None:
            out.append({**base, "MetricName": "noops.probe.tls_days_left", "MetricUnit": "d",
                        "MetricDescription": "days until the server certificate expires",
                        "Value": self.tls_days})
        return out


def _probe(row: Any) -> Probe:
    return Probe(**{k: row[k] for k in row.keys()})  # noqa: SIM118 - sqlite3.Row


def _result(row: Any) -> ProbeResult:
    return ProbeResult(probe_id=row["probe_id"], at=row["at"], ok=bool(row["ok"]),
                       duration_ms=row["duration_ms"], status=row["status"], error=row["error"],
                       warning=row["warning"], tls_days_left=row["tls_days_left"],
                       trace_id=row["trace_id"])


def _validate_target(target: str, kind: str | None) -> tuple[str, str]:
    text = str(target).strip()
    if not text:
        raise RuleUsageError("a probe needs a URL (https://app.localhost:8443/) or tcp://HOST:PORT")
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if kind is None:
        kind = {"http": "http", "https": "http", "tcp": "tcp", "tls": "tls"}.get(scheme)
        if kind is None:
            raise RuleUsageError(f"bad probe URL {text!r}: use http(s)://…, tcp://HOST:PORT or "
                                 "tls://HOST[:PORT]")
    if kind == "http":
        try:
            url = httpx.URL(text)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise RuleUsageError(f"bad probe URL {text!r}: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise RuleUsageError(f"bad probe URL {text!r}: an HTTP probe needs http:// or https:// "
                                 "and a host")
        return "http", text
    if kind in ("tcp", "tls"):
        if scheme and scheme not in (kind, "https"):
            raise RuleUsageError(f"bad {kind} target {text!r}: write {kind}://HOST:PORT")
        host, port = host_port(text.replace("https://", "tls://", 1), kind)
        return kind, f"{kind}://{host}:{port}"
    raise RuleUsageError(f"unknown probe kind {kind!r}; use http, tcp or tls")


class Probes:
    """Probe definitions and results in ``db_path``; results also go to ``store`` as metrics."""

    def __init__(self, db_path: Path | str, store: TelemetryStore | None = None, *,
                 client_cert: tuple[Path | str, Path | str] | None = None,
                 ca_file: Path | str | None = None, keep_results: int = 100,
                 jitter: float = 0.1) -> None:
        self.db = RuleStore(db_path, _SCHEMA)
        self.store = store
        self.keep_results = max(1, int(keep_results))
        self.jitter = max(0.0, float(jitter))
        self._tls = TlsFiles(None, None)
        self.set_tls(client_cert=client_cert, ca_file=ca_file)
        self._next: dict[int, float] = {}
        self._inflight: set[int] = set()
        self._random = random.Random()  # noqa: S311 - scheduling jitter, not security
        self._minutes: dict[int, _Minute] = {}
        self._minutes_lock = threading.Lock()

    def set_tls(self, *, client_cert: tuple[Path | str, Path | str] | None = None,
                ca_file: Path | str | None = None) -> None:
        """Present ``client_cert`` = (certificate, key) PEM paths and trust ``ca_file`` as well
        as the system roots on HTTPS and TLS checks."""
        cert = (Path(client_cert[0]), Path(client_cert[1])) if client_cert else None
        self._tls = TlsFiles(cert, Path(ca_file) if ca_file else None)

    # -- definitions ------------------------------------------------------------------------------
    def add(self, target: str, *, every: str | float = "30s", expect_status: int = 200,
            expect_text: str | None = None, json_path: str | None = None,
            json_expect: Any = _UNSET, kind: str | None = None, name: str | None = None,
            app: str | None = None, timeout: str | float | None = None,
            tls_warn_days: float = 14.0) -> Probe:
        """Validate and store a probe. ``kind`` is inferred from the URL scheme (http/https,
        tcp, tls); ``json_expect`` is compared with the value at ``json_path`` (a string also
        matches the value's JSON text, so ``"true"`` matches ``true``)."""
        kind, target = _validate_target(target, kind)
        every_s = parse_duration(every, "--every")
        if every_s < MIN_EVERY_S:
            raise RuleUsageError(f"probe interval {every!r} is too short: the minimum is "
                                 f"{MIN_EVERY_S:g}s")
        timeout_s = (min(DEFAULT_TIMEOUT_S, every_s) if timeout is None
                     else parse_duration(timeout, "timeout"))
        if not 0 < timeout_s <= every_s:
            raise RuleUsageError(f"probe timeout must be above 0 and at most the interval "
                                 f"({every_s:g}s)")
        try:
            status = int(expect_status)
        except (TypeError, ValueError) as exc:
            raise RuleUsageError(f"expected status {expect_status!r} is not a number") from exc
        if not 100 <= status <= 599:
            raise RuleUsageError(f"expected status {status} is not an HTTP status (100-599)")
        if kind != "http" and (expect_text or json_path):
            raise RuleUsageError("--expect-text and --json-path apply to HTTP probes only")
        if json_path is not None:
            compile_json_path(json_path)
        elif json_expect is not _UNSET:
            raise RuleUsageError("an expected JSON value needs --json-path")
        if tls_warn_days < 0:
            raise RuleUsageError("tls_warn_days must not be negative")
        expect_json = None if json_expect is _UNSET else json.dumps(json_expect)
        label = (name or target).strip()
        with self.db.tx() as con:
            if con.execute("SELECT 1 FROM probes WHERE name = ?", (label,)).fetchone():
                raise RuleUsageError(f"a probe named {label!r} exists already; remove it first or "
                                     "choose another --name")
            cur = con.execute(
                "INSERT INTO probes (name, kind, target, app, every_s, timeout_s, expect_status, "
                "expect_text, json_path, json_expect, tls_warn_days, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (label, kind, target, app or None, every_s, timeout_s, status,
                 expect_text or None, json_path, expect_json, float(tls_warn_days), epoch(None)))
            row = con.execute("SELECT * FROM probes WHERE id = ?", (cur.lastrowid,)).fetchone()
        return _probe(row)

    def ensure(self, target: str, *, name: str, **options: Any) -> Probe:
        """The probe called ``name`` if it exists, else :meth:`add` it (idempotent: the platform
        calls this on every deploy for an app's default probe)."""
        rows = self.db.query("SELECT * FROM probes WHERE name = ?", (name,))
        return _probe(rows[0]) if rows else self.add(target, name=name, **options)

    def get(self, probe_id: int) -> Probe:
        rows = self.db.query("SELECT * FROM probes WHERE id = ?", (int(probe_id),))
        if not rows:
            raise RuleNotFound(f"no probe {probe_id}; `noops probes` lists them")
        return _probe(rows[0])

    def list(self, app: str | None = None) -> builtins.list[Probe]:
        if app:
            return [_probe(r) for r in self.db.query(
                "SELECT * FROM probes WHERE app = ? ORDER BY id", (app,))]
        return [_probe(r) for r in self.db.query("SELECT * FROM probes ORDER BY id")]

    def remove(self, probe_id: int) -> None:
        with self.db.tx() as con:
            if con.execute("DELETE FROM probes WHERE id = ?", (int(probe_id),)).rowcount == 0:
                raise RuleNotFound(f"no probe {probe_id}; `noops probes` lists them")
        self._next.pop(int(probe_id), None)

    def results(self, probe_id: int, limit: int = 100) -> builtins.list[ProbeResult]:
        """The probe's last results, newest first (at most ``keep_results`` are kept)."""
        self.get(probe_id)
        rows = self.db.query("SELECT * FROM probe_results WHERE probe_id = ? "
                             "ORDER BY at DESC, rowid DESC LIMIT ?", (int(probe_id), int(limit)))
        return [_result(r) for r in rows]

    # -- scheduling -------------------------------------------------------------------------------
    def _due(self, now: float) -> builtins.list[Probe]:
        due = []
        probes = self.list()
        live = {p.id for p in probes}
        for pid in builtins.list(self._next):
            if pid not in live:
                del self._next[pid]
        for probe in probes:
            if probe.id in self._inflight:
                continue
            first = self._next.get(probe.id)
            if first is None:  # first sighting: spread new probes over a fraction of the interval
                first = self._next[probe.id] = now + self._random.uniform(
                    0, self.jitter * probe.every_s)
            if first <= now:
                due.append(probe)
                spread = self.jitter * probe.every_s / 2
                self._next[probe.id] = now + probe.every_s + self._random.uniform(-spread, spread)
        return due

    async def run_due(self, now: datetime | float | None = None) -> builtins.list[ProbeResult]:
        """Run every probe due at ``now`` (all at once) and record their results."""
        due = self._due(epoch(now))
        if not due:
            return []
        return builtins.list(await asyncio.gather(*(self._guarded(p) for p in due)))

    async def run_forever(self, stop: asyncio.Event, tick_s: float = 1.0) -> None:
        """Start due checks every ``tick_s`` until ``stop`` is set; then wait for running ones."""
        tasks: set[asyncio.Task[ProbeResult]] = set()
        try:
            while not stop.is_set():
                try:
                    for probe in self._due(epoch(None)):
                        task = asyncio.create_task(self._guarded(probe))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    if self._flush_due():
                        await asyncio.to_thread(self.flush, time.time())
                except Exception:
                    log.exception("probe scheduling failed; retrying on the next tick")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=tick_s)
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _guarded(self, probe: Probe) -> ProbeResult:
        self._inflight.add(probe.id)
        try:
            return await self.check(probe)
        finally:
            self._inflight.discard(probe.id)

    # -- checks -----------------------------------------------------------------------------------
    async def check(self, probe: Probe | int) -> ProbeResult:
        """Run one check now, record it (SQLite ring, store metrics) and return it."""
        if isinstance(probe, int):
            probe = self.get(probe)
        at = time.time()
        try:
            if probe.kind == "http":
                result, span = await check_http(probe, self._tls, at)
            else:
                result, span = await check_socket(probe, self._tls, at), None
        except RuleUsageError as exc:  # unusable TLS files: a failed check that says why
            result, span = ProbeResult(probe.id, at, False, 0.0, error=str(exc)), None
        except Exception as exc:  # a prober must outlive any one target's misbehaviour
            log.exception("probe %s: unexpected failure", probe.name)
            result, span = ProbeResult(probe.id, at, False, 0.0,
                                       error=f"{type(exc).__name__}: {exc}"), None
        self._record(result)
        if self.store is not None:
            try:
                await asyncio.to_thread(self._export, probe, result, span)
            except Exception as exc:  # the result is kept in SQLite; telemetry is best effort
                log.warning("probe %s: cannot write its result to the telemetry store: %s",
                            probe.name, exc)
        return result

    # -- recording --------------------------------------------------------------------------------
    def _record(self, result: ProbeResult) -> None:
        with self.db.tx() as con:
            if not con.execute("SELECT 1 FROM probes WHERE id = ?", (result.probe_id,)).fetchone():
                return  # removed while it ran
            con.execute("INSERT INTO probe_results (probe_id, at, ok, duration_ms, status, error, "
                        "warning, tls_days_left, trace_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (result.probe_id, result.at, int(result.ok), result.duration_ms,
                         result.status, result.error, result.warning, result.tls_days_left,
                         result.trace_id))
            con.execute("DELETE FROM probe_results WHERE probe_id = ? AND rowid NOT IN (SELECT "
                        "rowid FROM probe_results WHERE probe_id = ? ORDER BY at DESC, rowid DESC "
                        "LIMIT ?)", (result.probe_id, result.probe_id, self.keep_results))

    def _export(self, probe: Probe, result: ProbeResult, span: dict[str, Any] | None) -> None:
        assert self.store is not None
        start = int(result.at) // METRIC_STEP_S * METRIC_STEP_S
        with self._minutes_lock:
            minute = self._minutes.get(probe.id)
            done = None
            if minute is not None and minute.start != start:
                done = self._minutes.pop(probe.id)
            self._minutes.setdefault(probe.id, _Minute(probe, start)).add(result)
        if done is not None:
            self.store.insert_metrics("gauge", done.rows())
        if span is not None:
            self.store.insert_spans([span])

    def flush(self, now: float | None = None) -> int:
        """Write the minutes that are over at ``now`` (every minute with ``None``); returns how
        many points were written. Blocking (the store): call it from a thread."""
        with self._minutes_lock:
            due = [m for m in self._minutes.values()
                   if now is None or m.start + METRIC_STEP_S <= now]
            for m in due:
                del self._minutes[m.probe.id]
        rows = [row for m in due for row in m.rows()]
        if rows and self.store is not None:
            self.store.insert_metrics("gauge", rows)
        return len(due)

    def _flush_due(self) -> bool:
        now = time.time()
        with self._minutes_lock:
            return any(m.start + METRIC_STEP_S <= now for m in self._minutes.values())

    def close(self) -> None:
        """Write the minutes still open, then close the database."""
        try:
            self.flush()
        except Exception as exc:  # the store may already be gone; the SQLite ring keeps results
            log.warning("probes: cannot write the last minute of results: %s", exc)
        self.db.close()
