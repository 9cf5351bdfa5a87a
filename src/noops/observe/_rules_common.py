"""What deploy markers, probes and alerts share: their SQLite file, errors, durations, times.

The three classes (:mod:`.markers`, :mod:`.probes`, :mod:`.alerts`) keep their definitions and
events in one SQLite file (``$NOOPS_HOME/observe/rules.db``, WAL mode); each class opens its own
connection and owns its own tables. Times are stored as float seconds since the Unix epoch (UTC)
and returned as ISO 8601 strings in JSON.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from noops import durations
from noops.errors import NoopsError, UsageError

__all__ = [
    "RuleNotFound",
    "RuleStore",
    "RuleUsageError",
    "compile_json_path",
    "epoch",
    "iso",
    "match_json_path",
    "parse_duration",
    "to_datetime",
]


class RuleUsageError(UsageError):
    """A marker, probe or alert definition was refused (exit 2, HTTP 400)."""


class RuleNotFound(NoopsError):
    """No marker, probe or alert with that id (exit 2, HTTP 404)."""

    exit_code = 2
    http_status = 404


def parse_duration(value: str | float | int, what: str = "duration") -> float:
    """Seconds from ``30s``, ``500ms``, ``2m``, ``1h``, ``7d`` or a bare number of seconds
    (:func:`noops.durations.parse_duration`); a bad one is a :class:`RuleUsageError`."""
    return durations.parse_duration(value, what, error=RuleUsageError)


def epoch(moment: datetime | float | int | None) -> float:
    """Seconds since the epoch; ``None`` means now; a naive datetime is taken as UTC."""
    if moment is None:
        return datetime.now(UTC).timestamp()
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    return float(moment)


def to_datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def iso(seconds: float | None) -> str | None:
    return None if seconds is None else to_datetime(seconds).isoformat().replace("+00:00", "Z")


_JSON_STEP: Final = re.compile(r'\.([A-Za-z_$][\w$-]*)|\[(\d+)\]|\[(-\d+)\]|\["((?:[^"\\]|\\.)*)"\]')


def compile_json_path(path: str) -> list[str | int]:
    """Steps of a JSON path in the dotted subset ``$.a.b[0]["odd key"]`` (the leading ``$`` and
    ``.`` are optional: ``status`` means ``$.status``). Raises :class:`RuleUsageError`."""
    text = str(path).strip()
    rest = text[1:] if text.startswith("$") else text
    if rest and rest[0] not in ".[":
        rest = "." + rest
    steps: list[str | int] = []
    pos = 0
    while pos < len(rest):
        match = _JSON_STEP.match(rest, pos)
        if not match:
            raise RuleUsageError(f"bad JSON path {text!r} near {rest[pos:]!r}; write e.g. "
                                 "$.status, $.checks[0].ok or $[\"odd key\"]")
        key, index, negative, quoted = match.groups()
        if key is not None:
            steps.append(key)
        elif quoted is not None:
            steps.append(quoted.replace('\\"', '"').replace("\\\\", "\\"))
        else:
            steps.append(int(index if index is not None else negative))
        pos = match.end()
    if not steps:
        raise RuleUsageError(f"bad JSON path {text!r}: it selects nothing; write e.g. $.status")
    return steps


def match_json_path(doc: Any, steps: list[str | int]) -> tuple[bool, Any]:
    """(found, value) of ``steps`` in a parsed JSON document."""
    value = doc
    for step in steps:
        if isinstance(step, int):
            if not isinstance(value, list) or not -len(value) <= step < len(value):
                return False, None
            value = value[step]
        else:
            if not isinstance(value, dict) or step not in value:
                return False, None
            value = value[step]
    return True, value


class RuleStore:
    """One connection to the rules database, serialised by a lock (the daemon calls from its
    event loop and from worker threads). ``schema`` is run once (``CREATE … IF NOT EXISTS``)."""

    def __init__(self, path: Path | str, schema: str) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = sqlite3.connect(str(self.path), check_same_thread=False,
                                        isolation_level=None, timeout=30)
            self._con.row_factory = sqlite3.Row
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=NORMAL")
            self._con.execute("PRAGMA foreign_keys=ON")
            self._con.executescript(schema)
        except (OSError, sqlite3.Error) as exc:
            raise NoopsError(f"cannot open the observability rules database {self.path}: {exc}; "
                             "check that NOOPS_HOME is writable") from exc

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE … COMMIT, rolled back on error)."""
        with self._lock:
            try:
                self._con.execute("BEGIN IMMEDIATE")
                try:
                    yield self._con
                    self._con.execute("COMMIT")
                except BaseException:
                    self._con.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise NoopsError(f"observability rules database {self.path}: {exc}") from exc

    def query(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._con.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise NoopsError(f"observability rules database {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._con.close()
