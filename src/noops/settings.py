"""Every noops setting, declared once.

Each :class:`Setting` names its key, its environment variable (``NOOPS_*``), its default and its
help text. A value is looked up in this order: an explicit override (a CLI flag), the environment,
the settings file (``$NOOPS_HOME/config.toml``, table ``[noops]``), the default. ``Settings``
takes the environment as an argument, so nothing deep inside noops reads ``os.environ``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noops.errors import UsageError

__all__ = ["SETTINGS", "Setting", "Settings", "default_home"]


def default_home(uid: int | None = None) -> Path:
    """``/var/lib/noops`` for root, else ``~/.local/share/noops``."""
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return Path("/var/lib/noops")
    return Path.home() / ".local" / "share" / "noops"


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


@dataclass(frozen=True)
class Setting:
    key: str
    default: Callable[[], Any]
    help: str
    parse: Callable[[str], Any] = str

    @property
    def env(self) -> str:
        return "NOOPS_" + self.key.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("home", default_home, "Where noops keeps images, caches and state.", Path),
    Setting("runc", lambda: "runc", "The OCI runtime binary (runc)."),
    Setting("mmdebstrap", lambda: "mmdebstrap", "Builds the Debian stack root filesystems."),
    Setting("debian_suite", lambda: "bookworm", "Debian release the stacks are built from."),
    Setting(
        "debian_mirror",
        lambda: "",
        "Debian mirror for stack builds; empty uses the host's configured apt sources.",
    ),
    Setting(
        "compression",
        lambda: "gzip",
        "Layer compression: gzip (compatible, isal-accelerated) or zstd (smaller, faster; "
        "needs image-spec 1.1 clients).",
    ),
    Setting(
        "build_ca_bundle",
        lambda: "/etc/ssl/certs/ca-certificates.crt",
        "CA bundle made visible to build containers so package managers trust the host's "
        "proxies; empty to use the build image's own.",
    ),
    Setting(
        "build_network",
        lambda: True,
        "Give build containers the host network so package managers can download.",
        _bool,
    ),
    Setting(
        "state_url",
        lambda: "",
        "Platform state: empty for SQLite under NOOPS_HOME, or postgresql://… to share it.",
    ),
    Setting("frontdoor_port", lambda: 8443, "HTTPS port of the front door (127.0.0.1).", int),
    Setting(
        "svid_ttl_s",
        lambda: 3600,
        "Lifetime of each instance's workload certificate (SPIFFE X.509-SVID); renewed at "
        "half-life. Shorter limits how long a leaked key is useful.",
        int,
    ),
    Setting(
        "restart_backoff_s",
        lambda: 10.0,
        "First restart delay after a crash; doubles up to 300 s, resets after 10 min healthy.",
        float,
    ),
    Setting(
        "otlp_port",
        lambda: 4318,
        "Port of the OTLP/HTTP receiver on 127.0.0.1 (also serves the platform's /metrics); "
        "0 turns the TCP port off. Apps always reach the receiver on 127.0.0.1:4318 inside "
        "their own network namespace, through $NOOPS_HOME/run/otlp.sock.",
        int,
    ),
    Setting(
        "otlp_grpc_port",
        lambda: 4317,
        "Port of the OTLP/gRPC receiver on 127.0.0.1 (the same store and write-ahead log as "
        "OTLP/HTTP, for SDKs and collectors that speak gRPC); 0 turns it off.",
        int,
    ),
    Setting(
        "telemetry_store",
        lambda: "duckdb",
        "Where telemetry is stored: duckdb (one file under NOOPS_HOME/telemetry), chdb (embedded "
        "ClickHouse under NOOPS_HOME/telemetry) or clickhouse://user:password@host:8123/database "
        "(a ClickHouse server, the OTel Collector exporter's tables).",
    ),
    Setting("retention_traces_days", lambda: 7.0, "Days spans are kept (older ones are deleted).",
            float),
    Setting("retention_logs_days", lambda: 7.0, "Days log records are kept.", float),
    Setting("retention_metrics_days", lambda: 30.0, "Days metric points are kept.", float),
    Setting(
        "environment",
        lambda: "production",
        "deployment.environment.name given to every app's telemetry (OTEL_RESOURCE_ATTRIBUTES).",
    ),
    Setting(
        "metrics_interval_s",
        lambda: 15.0,
        "How often each instance's CPU, memory and restarts are recorded as metrics.",
        float,
    ),
)

_BY_KEY = {s.key: s for s in SETTINGS}


class Settings:
    """Resolved settings: ``Settings(environ=os.environ, overrides={"home": ...})``."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self._environ = dict(os.environ if environ is None else environ)
        self._overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        for key in self._overrides:
            if key not in _BY_KEY:
                raise UsageError(f"unknown setting {key!r}")
        self._file: dict[str, Any] | None = None
        self._cache: dict[str, Any] = {}

    def _file_values(self) -> dict[str, Any]:
        if self._file is None:
            self._file = {}
            home = self._resolve(_BY_KEY["home"], use_file=False)
            path = Path(home) / "config.toml"
            if path.is_file():
                try:
                    data = tomllib.loads(path.read_text())
                except tomllib.TOMLDecodeError as exc:
                    raise UsageError(f"{path} is not valid TOML: {exc}") from exc
                self._file = dict(data.get("noops", {}))
        return self._file

    def _resolve(self, setting: Setting, *, use_file: bool = True) -> Any:
        if setting.key in self._overrides:
            return self._overrides[setting.key]
        raw = self._environ.get(setting.env)
        where = setting.env
        if raw is None and use_file:
            value = self._file_values().get(setting.key)
            if value is not None:
                return setting.parse(str(value)) if isinstance(value, str) else value
        if raw is None:
            return setting.default()
        try:
            return setting.parse(raw)
        except ValueError as exc:
            raise UsageError(f"{where}={raw!r} is not valid: {exc}") from exc

    def get(self, key: str) -> Any:
        if key not in self._cache:
            self._cache[key] = self._resolve(_BY_KEY[key])
        return self._cache[key]

    def source(self, key: str) -> str:
        """Where a setting's value came from: override, env, file or default."""
        setting = _BY_KEY[key]
        if key in self._overrides:
            return "override"
        if setting.env in self._environ:
            return "env"
        if key != "home" and key in self._file_values():
            return "file"
        return "default"

    @property
    def home(self) -> Path:
        return Path(self.get("home"))

    @property
    def environ(self) -> Mapping[str, str]:
        return self._environ
