"""The app manifest: ``noops.toml`` and the ``Procfile``.

``Procfile`` lines are ``type: command`` (regex ``^([A-Za-z0-9_-]+):\\s*(.+)$``, as Heroku and
the CNB procfile buildpack read them). ``noops.toml`` may declare processes too::

    [processes]
    web = "gunicorn app:app"
    worker = { command = ["python", "worker.py"], direct = true }

Start command precedence: Procfile > noops.toml > what the buildpack detected.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noops.errors import UsageError

__all__ = ["AppSpec", "ProcessDef", "load_appspec", "parse_procfile"]

_PROC_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
_PROC_TYPE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class ProcessDef:
    type: str
    command: tuple[str, ...]
    direct: bool = False
    source: str = "detected"  # "Procfile" | "noops.toml" | "detected"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "command": list(self.command), "direct": self.direct,
                "source": self.source}


@dataclass(frozen=True)
class AppSpec:
    processes: dict[str, ProcessDef] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


def parse_procfile(text: str, origin: str = "Procfile") -> dict[str, ProcessDef]:
    """Parse Procfile text; blank lines and ``#`` comments are allowed, anything else is not."""
    out: dict[str, ProcessDef] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _PROC_LINE.match(stripped)
        if not match:
            raise UsageError(
                f"{origin} line {number} is not `type: command`: {stripped!r}. "
                "Write e.g. `web: gunicorn app:app`."
            )
        out[match.group(1)] = ProcessDef(match.group(1), (match.group(2).strip(),), False, "Procfile")
    return out


def _process_from_toml(name: str, value: Any, path: Path) -> ProcessDef:
    if not _PROC_TYPE.match(name):
        raise UsageError(f"{path}: process type {name!r} may only use letters, digits, . _ -")
    if isinstance(value, str):
        return ProcessDef(name, (value,), False, "noops.toml")
    if isinstance(value, dict) and "command" in value:
        command = value["command"]
        direct = bool(value.get("direct", isinstance(command, list)))
        if isinstance(command, str):
            command = shlex.split(command) if direct else [command]
        if not (isinstance(command, list) and command and all(isinstance(c, str) for c in command)):
            raise UsageError(f"{path}: processes.{name}.command must be a string or list of strings")
        return ProcessDef(name, tuple(command), direct, "noops.toml")
    raise UsageError(
        f"{path}: processes.{name} must be a command string or a table with `command`"
    )


def load_appspec(app_dir: Path) -> AppSpec:
    """Read ``noops.toml`` and ``Procfile`` from ``app_dir``; the Procfile wins per type."""
    processes: dict[str, ProcessDef] = {}
    raw: dict[str, Any] = {}
    manifest = app_dir / "noops.toml"
    if manifest.is_file():
        try:
            raw = tomllib.loads(manifest.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{manifest} is not valid TOML: {exc}") from exc
        procs = raw.get("processes", {})
        if not isinstance(procs, dict):
            raise UsageError(f"{manifest}: [processes] must be a table of type = command")
        for name, value in procs.items():
            processes[name] = _process_from_toml(name, value, manifest)
    procfile = app_dir / "Procfile"
    if procfile.is_file():
        try:
            processes.update(parse_procfile(procfile.read_text()))
        except UnicodeDecodeError as exc:
            raise UsageError(f"{procfile} is not UTF-8 text") from exc
    return AppSpec(processes, raw)
