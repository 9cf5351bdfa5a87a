"""The app manifest: ``noops.toml`` and the ``Procfile``.

``Procfile`` lines are ``type: command`` (regex ``^([A-Za-z0-9_-]+):\\s*(.+)$``, as Heroku and
the CNB procfile buildpack read them). ``noops.toml`` declares everything else; every table is
optional and the defaults are the ones below (Kubernetes-like probe semantics: *startup* gates a
deploy, *readiness* gates routing, *liveness* restarts)::

    [processes]
    web = "gunicorn app:app"                          # shell form
    worker = { command = ["python", "worker.py"] }    # direct form

    [scale]
    web = 2                                           # or { min = 1, max = 5, cpu_percent = 70 }

    [health]                                          # HTTP checks on the web process's $PORT
    path = "/healthz"                                 # default "/"
    startup = { period_s = 1, timeout_s = 2, failures = 60 }
    readiness = { period_s = 2, timeout_s = 2, failures = 3, successes = 1 }
    liveness = { period_s = 10, timeout_s = 2, failures = 3 }

    [resources]
    memory = "256Mi"                                  # default 512Mi
    cpu = "500m"                                      # default 1 (one core)

    [env]
    LOG_LEVEL = "info"

    [routes]
    hosts = ["shop.example.com"]                      # plus APP.localhost, always

    [deploy]
    grace_s = 30                                      # SIGTERM → SIGKILL
    drain_s = 30                                      # retired instances keep in-flight requests

    [telemetry]
    enabled = true                                    # false: OTEL_SDK_DISABLED=true, no OTLP
                                                      # settings given to the app

Start command precedence: Procfile > noops.toml > what the buildpack detected. An invalid
manifest is rejected with the field and the reason.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noops.errors import UsageError

__all__ = [
    "AppSpec",
    "Probe",
    "ProcessDef",
    "Scale",
    "load_appspec",
    "parse_manifest",
    "parse_memory",
    "parse_procfile",
]

_PROC_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
_PROC_TYPE = re.compile(r"^[A-Za-z0-9_.-]+$")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|K|M|G|k)?$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
class Probe:
    period_s: float
    timeout_s: float
    failures: int
    successes: int = 1


@dataclass(frozen=True)
class Scale:
    count: int = 1
    min: int | None = None
    max: int | None = None
    cpu_percent: int | None = None


@dataclass(frozen=True)
class AppSpec:
    processes: dict[str, ProcessDef] = field(default_factory=dict)
    scale: dict[str, Scale] = field(default_factory=dict)
    health_path: str = "/"
    startup: Probe = Probe(1, 2, 60)
    readiness: Probe = Probe(2, 2, 3, 1)
    liveness: Probe = Probe(10, 2, 3)
    memory_bytes: int = 512 * 1024 * 1024
    cpu_millis: int = 1000
    env: dict[str, str] = field(default_factory=dict)
    hosts: tuple[str, ...] = ()
    grace_s: float = 30.0
    drain_s: float = 30.0
    telemetry: bool = True
    raw: dict[str, Any] = field(default_factory=dict)

    def count(self, process_type: str) -> int:
        return self.scale.get(process_type, Scale(1 if process_type == "web" else 0)).count


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
        out[match.group(1)] = ProcessDef(match.group(1), (match.group(2).strip(),), False,
                                         "Procfile")
    return out


def parse_memory(value: Any, where: str) -> int:
    """``"256Mi"``, ``"1G"``, ``268435456`` → bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _MEMORY.match(str(value).strip())
    if not match:
        raise UsageError(f"{where} must be a size like 256Mi or 1Gi, not {value!r}")
    number = float(match.group(1))
    unit = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "k": 1000, "M": 1000**2,
            "G": 1000**3, None: 1}[match.group(2)]
    size = int(number * unit)
    if size < 4 * 1024 * 1024:
        raise UsageError(f"{where} = {value!r} is below 4Mi; no app starts in that")
    return size


def _cpu(value: Any, where: str) -> int:
    text = str(value).strip()
    try:
        millis = int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)
    except ValueError as exc:
        raise UsageError(f"{where} must be cores (0.5, 2) or millicores (500m), not {value!r}") from exc
    if millis <= 0:
        raise UsageError(f"{where} must be more than 0")
    return millis


def _number(table: dict[str, Any], key: str, where: str, default: float, *, integer: bool = False,
            minimum: float = 0.0) -> Any:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{where}.{key} must be a number, not {value!r}")
    if value <= minimum and not (minimum == 0 and value > 0):
        raise UsageError(f"{where}.{key} must be more than {minimum:g}")
    if integer and int(value) != value:
        raise UsageError(f"{where}.{key} must be a whole number")
    return int(value) if integer else float(value)


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UsageError(f"{where}: [{key}] must be a table")
    return value


def _probe(health: dict[str, Any], name: str, default: Probe, where: str) -> Probe:
    table = health.get(name, {})
    if not isinstance(table, dict):
        raise UsageError(f"{where}: health.{name} must be a table like {{ period_s = 2 }}")
    unknown = set(table) - {"period_s", "timeout_s", "failures", "successes"}
    if unknown:
        raise UsageError(f"{where}: health.{name} has unknown keys {sorted(unknown)}; "
                         "use period_s, timeout_s, failures, successes")
    w = f"{where}: health.{name}"
    return Probe(_number(table, "period_s", w, default.period_s),
                 _number(table, "timeout_s", w, default.timeout_s),
                 _number(table, "failures", w, default.failures, integer=True),
                 _number(table, "successes", w, default.successes, integer=True))


def _process_from_toml(name: str, value: Any, where: str) -> ProcessDef:
    if not _PROC_TYPE.match(name):
        raise UsageError(f"{where}: process type {name!r} may only use letters, digits, . _ -")
    if isinstance(value, str) and value.strip():
        return ProcessDef(name, (value,), False, "noops.toml")
    if isinstance(value, dict) and "command" in value:
        command = value["command"]
        direct = bool(value.get("direct", isinstance(command, list)))
        if isinstance(command, str):
            command = shlex.split(command) if direct else [command]
        if not (isinstance(command, list) and command and all(isinstance(c, str) for c in command)):
            raise UsageError(f"{where}: processes.{name}.command must be a string or list of strings")
        return ProcessDef(name, tuple(command), direct, "noops.toml")
    raise UsageError(f"{where}: processes.{name} must be a command string or a table with `command`")


def _scale(name: str, value: Any, where: str) -> Scale:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100:
        return Scale(value)
    if isinstance(value, dict):
        lo: Any = value.get("min", 1)
        hi: Any = value.get("max", lo)
        cpu: Any = value.get("cpu_percent", 80)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi, cpu)):
            raise UsageError(f"{where}: scale.{name} min/max/cpu_percent must be whole numbers")
        if not 0 <= lo <= hi <= 100 or not 1 <= cpu <= 100:
            raise UsageError(f"{where}: scale.{name} needs 0 <= min <= max <= 100 and "
                             "1 <= cpu_percent <= 100")
        return Scale(lo, lo, hi, cpu)
    raise UsageError(f"{where}: scale.{name} must be a count from 0 to 100 or "
                     "{ min = 1, max = 5 }")


def parse_manifest(data: dict[str, Any], where: str = "noops.toml") -> AppSpec:
    """Validate a parsed ``noops.toml``; raise UsageError naming the field and the reason."""
    known = {"app", "processes", "scale", "health", "resources", "env", "routes", "deploy",
             "telemetry"}
    unknown = set(data) - known
    if unknown:
        raise UsageError(f"{where}: unknown table(s) {sorted(unknown)}; known: {sorted(known)}")
    processes = {n: _process_from_toml(n, v, where)
                 for n, v in _table(data, "processes", where).items()}
    scale = {n: _scale(n, v, where) for n, v in _table(data, "scale", where).items()}
    health = _table(data, "health", where)
    path = health.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in " \r\n"):
        raise UsageError(f"{where}: health.path must be a URL path starting with /, not {path!r}")
    defaults = AppSpec()
    resources = _table(data, "resources", where)
    env = _table(data, "env", where)
    for key, value in env.items():
        if not _ENV_KEY.match(key):
            raise UsageError(f"{where}: env key {key!r} is not a valid variable name")
        if not isinstance(value, str | int | float | bool):
            raise UsageError(f"{where}: env.{key} must be a string or number")
    routes = _table(data, "routes", where)
    hosts = routes.get("hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) and _HOST.match(h.lower())
                                              for h in hosts):
        raise UsageError(f"{where}: routes.hosts must be a list of host names like "
                         "\"shop.example.com\"")
    deploy = _table(data, "deploy", where)
    telemetry = _table(data, "telemetry", where)
    unknown_keys = set(telemetry) - {"enabled"}
    if unknown_keys:
        raise UsageError(f"{where}: telemetry has unknown keys {sorted(unknown_keys)}; the only "
                         "key is `enabled = true|false`")
    enabled = telemetry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise UsageError(f"{where}: telemetry.enabled must be true or false (no quotes), "
                         f"not {enabled!r}")
    return AppSpec(
        processes=processes,
        scale=scale,
        health_path=path,
        startup=_probe(health, "startup", defaults.startup, where),
        readiness=_probe(health, "readiness", defaults.readiness, where),
        liveness=_probe(health, "liveness", defaults.liveness, where),
        memory_bytes=parse_memory(resources["memory"], f"{where}: resources.memory")
        if "memory" in resources else defaults.memory_bytes,
        cpu_millis=_cpu(resources["cpu"], f"{where}: resources.cpu")
        if "cpu" in resources else defaults.cpu_millis,
        env={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()},
        hosts=tuple(h.lower() for h in hosts),
        grace_s=_number(deploy, "grace_s", f"{where}: deploy", defaults.grace_s),
        drain_s=_number(deploy, "drain_s", f"{where}: deploy", defaults.drain_s),
        telemetry=enabled,
        raw=data,
    )


def load_appspec(app_dir: Path) -> AppSpec:
    """Read ``noops.toml`` and ``Procfile`` from ``app_dir``; the Procfile wins per type."""
    data: dict[str, Any] = {}
    manifest = app_dir / "noops.toml"
    if manifest.is_file():
        try:
            data = tomllib.loads(manifest.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{manifest} is not valid TOML: {exc}") from exc
    spec = parse_manifest(data, str(manifest))
    procfile = app_dir / "Procfile"
    if procfile.is_file():
        try:
            spec.processes.update(parse_procfile(procfile.read_text()))
        except UnicodeDecodeError as exc:
            raise UsageError(f"{procfile} is not UTF-8 text") from exc
    return spec
