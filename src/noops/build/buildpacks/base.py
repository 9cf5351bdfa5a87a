"""What a buildpack is to noops: detect, then build layers and processes.

Buildpacks here are Python objects run in the noops process (no ``bin/detect`` executables), but
they follow the CNB contract: ``detect`` looks at the source and says yes or no *and why*;
``build`` writes layers under ``/layers/<buildpack id>/<layer>`` through the build container and
returns :class:`LayerOut` records with CNB ``launch``/``build``/``cache`` flags. A launch layer
whose ``key`` equals the key of a layer noops already built is *reused by diffID*: its command
is not run, and its blob is neither rebuilt, re-compressed nor re-uploaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from noops.appspec import ProcessDef

__all__ = [
    "BuildContext",
    "BuildOutput",
    "Buildpack",
    "DetectResult",
    "LayerOut",
    "hash_files",
]


@dataclass(frozen=True)
class DetectResult:
    passed: bool
    reason: str
    plan: dict[str, Any] = field(default_factory=dict)


@dataclass
class LayerOut:
    """One layer a buildpack produced (or wants reused).

    ``key`` identifies the layer's inputs (lockfile hash, tool versions...); ``reused`` is set
    by the lifecycle when a stored layer with the same key exists and nothing was built.
    ``sbom`` holds the CycloneDX components the layer contributes.
    """

    name: str
    key: str
    launch: bool = True
    build: bool = False
    cache: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    reused: bool = False
    components: list[Any] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class BuildOutput:
    layers: list[LayerOut] = field(default_factory=list)
    processes: list[ProcessDef] = field(default_factory=list)
    app_components: list[Any] = field(default_factory=list)


class BuildContext(Protocol):
    """What the lifecycle hands a buildpack's ``build``."""

    app_dir: Path  # host path of /workspace (a private copy of the source)
    plan: dict[str, Any]
    stack_id: str

    def layer_dir(self, name: str, create: bool = True) -> Path:
        """Host path of /layers/<bp>/<name> (created, and exported, unless ``create=False``)."""

    def container_layer_path(self, name: str) -> str:
        """Path of the layer inside the build container and the image."""

    def cached(self, name: str, key: str) -> LayerOut | None:
        """A previously built layer with this key, if its blob is still stored."""

    def run(self, args: list[str], *, what: str, env: dict[str, str] | None = None,
            cwd: str = "/workspace") -> str:
        """Run a command in the build container; raise BuildError with its output on failure."""

    def cache_dir(self, name: str) -> str:
        """Container path of a persistent cache directory (pip/npm/go caches)."""

    def cache_path(self, name: str) -> Path:
        """Host path of ``cache_dir(name)``, created (owned by the build user) if missing."""

    def forget_layer(self, name: str) -> None:
        """Drop a layer this build started (``layer_dir``) and will not report: deleted, not exported."""

    def tool_version(self, package: str) -> str:
        """The version of a Debian package in the build image ("" if absent)."""

    def tool_binary(self, name: str) -> Path:
        """Host path of one of noops' own Go tools (e.g. ``static_server``), built if needed."""

    def log(self, message: str) -> None: ...


class Buildpack(Protocol):
    id: str
    version: str
    stack: str
    looks_for: str  # shown when nothing detects: what this buildpack needs to see

    def detect(self, app_dir: Path) -> DetectResult: ...

    def build(self, ctx: BuildContext) -> BuildOutput: ...


def hash_files(app_dir: Path, names: list[str], extra: str = "") -> str:
    """A stable key over the named files (missing ones count as absent) and ``extra``."""
    sha = hashlib.sha256(extra.encode())
    for name in names:
        path = app_dir / name
        sha.update(name.encode() + b"\0")
        sha.update(path.read_bytes() if path.is_file() else b"<absent>")
        sha.update(b"\0")
    return "sha256:" + sha.hexdigest()


Logger = Callable[[str], None]
