"""Instance logs as OpenTelemetry log records: what the monitors write, tailed and parsed.

Every instance's monitor (:mod:`noops.runtime.monitor`) writes ``<ISO time>Z <stream> <line>``
to ``$NOOPS_HOME/logs/<app>/<process>-<instance id>.log`` and rotates it to ``.1`` … ``.<keep>``.
:class:`LogShipper` reads what is new in those files and turns each line into an ``otel_logs``
row (the OTel Collector ClickHouse exporter's columns):

* ``ServiceName`` = the app; ``ResourceAttributes``: ``service.name``, ``service.instance.id``
  and ``noops.instance.id`` (the instance id), ``noops.process`` and, when known,
  ``service.version`` (``v<release>``) — the same keys the runtime gives the app's own SDK
  through ``OTEL_RESOURCE_ATTRIBUTES``, so both kinds of log record filter alike;
  ``ScopeName`` = ``noops.stdio``; ``LogAttributes['log.iostream']`` = ``stdout``, ``stderr``
  or ``noops`` (the monitor's own notes about the instance).
* A line that is a JSON object is structured: ``message``/``msg``/``body`` → ``Body``;
  ``level``/``severity``/``levelname`` (a name, or a pino/bunyan number 10…60) → severity;
  ``trace_id``/``traceId``/``otelTraceID`` and ``span_id``/``spanId``/``otelSpanID`` (hex) link
  the record to its trace; every other key goes to ``LogAttributes`` (non-strings as JSON).
* Any other line is its own ``Body``. Its severity is the level word it starts with, if any
  (``INFO``, ``[WARNING]``, ``ERROR:`` … in the first 64 characters, upper case); otherwise
  **stdout is INFO and stderr is WARN**: stderr is where runtimes write tracebacks and
  warnings, and a line whose logger named its level keeps that level, so ``--severity warn``
  finds a traceback without flooding on ordinary log lines.

Positions: :meth:`LogShipper.poll` returns rows and remembers where it stopped;
:meth:`LogShipper.commit` persists those positions (``offsets.json``, replaced atomically) once
the caller has stored the rows. After a restart reading resumes there, so nothing is shipped
twice unless the process dies between the store's commit and :meth:`commit`. A file is known by
its inode, so a rotation between two polls loses nothing (the rest of ``.1`` is read first).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["InstanceInfo", "LogShipper", "parse_line", "severity_of"]

Row = dict[str, Any]

SCOPE = "noops.stdio"
_MAX_READ_BYTES = 4 * 1024 * 1024  # per file and poll: a burst is shipped over several polls
_MAX_BODY = 64 * 1024
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_LEVEL_WORD = re.compile(r"\b(TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|CRITICAL|FATAL|PANIC)\b")
_SEVERITY: dict[str, tuple[str, int]] = {
    "trace": ("TRACE", 1), "debug": ("DEBUG", 5), "info": ("INFO", 9), "notice": ("INFO", 10),
    "warn": ("WARN", 13), "warning": ("WARN", 13), "error": ("ERROR", 17), "err": ("ERROR", 17),
    "critical": ("FATAL", 21), "crit": ("FATAL", 21), "fatal": ("FATAL", 21),
    "panic": ("FATAL", 21), "emerg": ("FATAL", 21), "alert": ("FATAL", 21),
}
# pino and bunyan write numbers: 10 trace, 20 debug, 30 info, 40 warn, 50 error, 60 fatal
_NUMERIC = {10: "trace", 20: "debug", 30: "info", 40: "warn", 50: "error", 60: "fatal"}
_DEFAULT = {"stdout": ("INFO", 9), "stderr": ("WARN", 13), "noops": ("INFO", 9),
            "noops-monitor": ("WARN", 13)}
_BODY_KEYS = ("message", "msg", "body")
_LEVEL_KEYS = ("level", "severity", "levelname", "log.level")
_TRACE_KEYS = ("trace_id", "traceId", "otelTraceID", "trace.id")
_SPAN_KEYS = ("span_id", "spanId", "otelSpanID", "span.id")


@dataclass(frozen=True)
class InstanceInfo:
    """What the log file's name does not say: the release an instance runs (``0``: unknown)."""

    app: str
    process: str
    release: int = 0


def severity_of(value: Any) -> tuple[str, int] | None:
    """A level name or pino/bunyan number → ``(SeverityText, SeverityNumber)``; None if unknown."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = _NUMERIC.get(int(value), "")
    if not isinstance(value, str):
        return None
    return _SEVERITY.get(value.strip().lower())


def _hex_id(value: Any, size: int) -> str:
    text = value if isinstance(value, str) else ""
    return text.lower() if len(text) == size * 2 and _HEX.match(text) and text.strip("0") else ""


def parse_line(stream: str, text: str) -> dict[str, Any]:
    """One log line → ``Body``, severity, trace/span ids and ``LogAttributes`` (see the module)."""
    attrs: dict[str, str] = {"log.iostream": stream}
    out: dict[str, Any] = {"Body": text, "TraceId": "", "SpanId": "", "LogAttributes": attrs}
    severity: tuple[str, int] | None = None
    record: Any = None
    if text.startswith("{") and text.endswith("}"):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
    if isinstance(record, dict):
        body_key = next((k for k in _BODY_KEYS if k in record), None)
        if body_key is not None:
            body = record.pop(body_key)
            out["Body"] = body if isinstance(body, str) else json.dumps(body)
        for key in _LEVEL_KEYS:
            if key in record:
                severity = severity_of(record[key])
                if severity is not None:
                    record.pop(key)
                    break
        for keys, column, size in ((_TRACE_KEYS, "TraceId", 16), (_SPAN_KEYS, "SpanId", 8)):
            for key in keys:
                if key in record and _hex_id(record[key], size):
                    out[column] = _hex_id(record.pop(key), size)
                    break
        for key, value in record.items():
            if key != "log.iostream":
                attrs[str(key)] = value if isinstance(value, str) else json.dumps(value)
    else:
        match = _LEVEL_WORD.search(text[:64])
        if match:
            severity = _SEVERITY[match.group(1).lower()]
    text_, number = severity or _DEFAULT.get(stream, ("INFO", 9))
    out["SeverityText"], out["SeverityNumber"] = text_, number
    if len(out["Body"]) > _MAX_BODY:
        out["Body"] = out["Body"][:_MAX_BODY]
    return out


def _split_name(app: str, stem: str) -> tuple[str, str] | None:
    """``<process>-<app>-<process>-<8 hex>`` → ``(process, instance id)``."""
    if len(stem) < len(app) + 12 or stem[-9] != "-":
        return None
    head = stem[:-9]  # <process>-<app>-<process>
    size, odd = divmod(len(head) - len(app) - 2, 2)
    if odd or size <= 0:
        return None
    process = head[:size]
    if head != f"{process}-{app}-{process}":
        return None
    return process, stem[size + 1:]


def _parse_stamp(stamp: bytes) -> int:
    try:
        moment = datetime.fromisoformat(stamp.decode().replace("Z", "+00:00"))
    except ValueError:
        return 0
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


class LogShipper:
    """Tails ``logs_dir/<app>/*.log`` into ``otel_logs`` rows; positions in ``state_path``.

    ``instances`` returns what is known about live instances by id (their release); it is
    remembered per file, so lines of an instance that has gone still carry its version.
    Not thread-safe: one caller polls and commits.
    """

    def __init__(self, logs_dir: Path, state_path: Path,
                 instances: Callable[[], Mapping[str, InstanceInfo]] | None = None) -> None:
        self.logs_dir, self.state_path = logs_dir, state_path
        self._instances = instances or (lambda: {})
        self._state: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, dict[str, Any]] = {}
        try:
            data = json.loads(state_path.read_text())
            self._state = {str(k): dict(v) for k, v in data.get("files", {}).items()}
        except (OSError, ValueError, AttributeError):
            self._state = {}

    def poll(self) -> list[Row]:
        """Rows for every complete line written since the last :meth:`commit`ted position."""
        rows: list[Row] = []
        live = self._instances()
        self._pending = {k: dict(v) for k, v in self._state.items()}
        seen: set[str] = set()
        for path in sorted(self.logs_dir.glob("*/*.log")):
            app = path.parent.name
            names = _split_name(app, path.name.removesuffix(".log"))
            if names is None:
                continue
            key = str(path)
            seen.add(key)
            entry = self._pending.setdefault(key, {"inode": 0, "offset": 0, "release": 0})
            info = live.get(names[1])
            if info is not None and info.release:
                entry["release"] = info.release
            resource = {"service.name": app, "service.instance.id": names[1],
                        "noops.instance.id": names[1], "noops.process": names[0]}
            if entry.get("release"):
                resource["service.version"] = f"v{entry['release']}"
            for chunk in self._read_new(path, entry):
                rows.extend(self._rows(app, resource, chunk))
        for key in list(self._pending):
            if key not in seen:  # the file and its rotations are gone
                self._pending.pop(key)
        return rows

    def commit(self) -> None:
        """The rows of the last :meth:`poll` are stored: persist the positions after them."""
        self._state = self._pending
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.tmp")
        tmp.write_text(json.dumps({"files": self._state}))
        os.replace(tmp, self.state_path)

    @staticmethod
    def _read_new(path: Path, entry: dict[str, Any]) -> list[bytes]:
        """Complete lines after ``entry``'s position, following rotations; advances ``entry``."""
        chain: list[tuple[Path, os.stat_result]] = []
        for candidate in [*(path.with_name(f"{path.name}.{n}") for n in range(9, 0, -1)), path]:
            try:
                chain.append((candidate, candidate.stat()))
            except FileNotFoundError:
                continue
        start = next((i for i, (_, st) in enumerate(chain) if st.st_ino == entry["inode"]), None)
        if start is None:  # first sight, or rotated out of reach: from the oldest file kept
            start, entry["offset"] = 0, 0
        out: list[bytes] = []
        budget = _MAX_READ_BYTES
        for i in range(start, len(chain)):
            candidate, st = chain[i]
            offset = entry["offset"] if i == start else 0
            if st.st_size <= offset:
                if i == len(chain) - 1 or st.st_size < offset:
                    entry["inode"], entry["offset"] = st.st_ino, min(offset, st.st_size)
                continue
            try:
                with open(candidate, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(min(st.st_size - offset, budget))
            except FileNotFoundError:
                break
            end = data.rfind(b"\n") + 1  # a line being written now is read next time
            entry["inode"], entry["offset"] = st.st_ino, offset + end
            out.append(data[:end])
            budget -= end
            if budget <= 0 or end < len(data):
                break
        return out

    @staticmethod
    def _rows(app: str, resource: dict[str, str], chunk: bytes) -> list[Row]:
        rows: list[Row] = []
        for raw in chunk.split(b"\n"):
            if not raw:
                continue
            stamp, _, rest = raw.partition(b" ")
            stream, _, line = rest.partition(b" ")
            ts = _parse_stamp(stamp)
            if not ts:  # not a monitor line (cannot happen unless the file was edited)
                ts, stream, line = 0, b"stdout", raw
            fields = parse_line(stream.decode(errors="replace"),
                                line.decode(errors="replace").rstrip("\r"))
            rows.append({"Timestamp": ts or 1, "ServiceName": app, "ScopeName": SCOPE,
                         "ResourceAttributes": resource, **fields})
        return rows
