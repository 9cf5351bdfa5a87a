"""``noops build``: detect → build → export in one process, no daemon, runc as the engine.

:func:`build_image` is the public entry point. It never tags anything until the whole image is
stored, so a failed build leaves the store's tags as they were.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noops import __version__
from noops.appspec import ProcessDef, load_appspec
from noops.build import sbom
from noops.build.buildpacks import LANGUAGE_BUILDPACKS, ProcfileDetector
from noops.build.buildpacks.base import BuildOutput, Buildpack, LayerOut
from noops.build.container import BuildContainer, chown_tree
from noops.build.export import ImageLayerPlan, bp_dir, copy_source, export_image
from noops.build.stacks import CNB_GID, CNB_UID, ensure_stack, stack_refs
from noops.build.tools import tool_binary
from noops.errors import BuildError, DetectError, UsageError
from noops.oci.image import Image
from noops.oci.layer import source_date_epoch
from noops.oci.reference import normalize_local
from noops.oci.store import ImageStore
from noops.oci.unpack import LayerCache
from noops.settings import Settings

__all__ = ["BuildReport", "DetectReport", "build_image", "detect", "dpkg_status", "os_status"]

Log = Callable[[str], None]


@dataclass
class DetectReport:
    buildpack: Buildpack
    explanations: list[dict[str, Any]]
    processes: dict[str, ProcessDef]


@dataclass
class BuildReport:
    name: str
    digest: str
    stack: str
    buildpack: str
    processes: list[dict[str, Any]]
    layers: list[dict[str, Any]]
    commands: list[str]
    detect: list[dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)
    pushed: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "digest": self.digest, "stack": self.stack,
                "buildpack": self.buildpack, "processes": self.processes, "layers": self.layers,
                "commands": self.commands, "detect": self.detect, "timings": self.timings,
                "pushed": self.pushed}


def detect(app_dir: Path) -> DetectReport:
    """Run every detector in order; explain each; pick the first language buildpack that passes."""
    if not app_dir.is_dir():
        raise UsageError(f"{app_dir} is not a folder; point noops build at your app's source folder")
    procfile = ProcfileDetector()
    explanations = []
    proc = procfile.detect(app_dir)
    explanations.append({"buildpack": procfile.id, "passed": proc.passed, "reason": proc.reason})
    chosen: Buildpack | None = None
    for bp in LANGUAGE_BUILDPACKS:
        result = bp.detect(app_dir)
        explanations.append({"buildpack": bp.id, "passed": result.passed, "reason": result.reason,
                             "skipped": chosen is not None and result.passed})
        if result.passed and chosen is None:
            chosen = bp
    if chosen is None:
        looked = "\n".join(f"  - {bp.id}: looks for {bp.looks_for}" for bp in LANGUAGE_BUILDPACKS)
        raise DetectError(
            f"no buildpack recognises {app_dir}. noops looked for:\n{looked}\n"
            "Add one of these (e.g. a requirements.txt or package.json), or a Procfile "
            "next to one of them."
        )
    declared = load_appspec(app_dir).processes
    if declared and "web" not in declared:
        sources = " and ".join(sorted({p.source for p in declared.values()}))
        raise BuildError(
            f"no `web` process: {sources} declares {', '.join(sorted(declared))} but not web. "
            "Add a line like `web: gunicorn app:app` so noops knows what serves HTTP."
        )
    return DetectReport(chosen, explanations, declared)


def dpkg_status(layer_dirs: list[Path]) -> str:
    """The dpkg status file of an unpacked image (top-most layer that has one)."""
    for layer in reversed(layer_dirs):
        path = layer / "var/lib/dpkg/status"
        if path.is_file():
            return path.read_text(errors="replace")
    return ""


def _package_version(status: str, package: str) -> str:
    for stanza in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                      if ": " in line and not line.startswith(" "))
        if fields.get("Package") == package:
            return fields.get("Version", "")
    return ""


def os_status(settings: Settings, store: ImageStore, image: Image) -> str:
    """The dpkg status of a base image, cached by digest (stack builds fill the cache)."""
    cache = settings.home / "cache" / "os-status" / image.digest.split(":", 1)[1]
    if cache.is_file():
        return cache.read_text()
    from noops.build.inspect import read_layer_file

    text = ""
    for diff in reversed(image.diff_ids):
        found = read_layer_file(store, image, diff, "var/lib/dpkg/status")
        if found is not None:
            text = found.decode(errors="replace")
            break
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(text)
    return text


class _Context:
    """The :class:`BuildContext` a buildpack's ``build`` gets."""

    def __init__(self, settings: Settings, store: ImageStore, layers: LayerCache, bp: Buildpack,
                 container: BuildContainer, app_dir: Path, layers_dir: Path, build_status: str,
                 log: Log) -> None:
        self.settings, self.store, self.layer_cache = settings, store, layers
        self.bp, self.container, self.app_dir = bp, container, app_dir
        self.layers_dir, self.build_status, self._log = layers_dir, build_status, log
        self.plan: dict[str, Any] = {}
        self.stack_id = bp.stack
        self.built: dict[str, Path] = {}

    def _key_path(self, name: str, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.settings.home / "cache" / "layer-keys" / bp_dir(self.bp.id) / name / digest

    def layer_dir(self, name: str, create: bool = True) -> Path:
        path = self.layers_dir / bp_dir(self.bp.id) / name
        if create:
            path.mkdir(parents=True, exist_ok=True)
            chown_tree(path.parent, CNB_UID, CNB_GID)
            self.built[name] = path
        return path

    def container_layer_path(self, name: str) -> str:
        return f"/layers/{bp_dir(self.bp.id)}/{name}"

    def cached(self, name: str, key: str) -> LayerOut | None:
        path = self._key_path(name, key)
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if self.store.layer_for_diff_id(record["diff_id"]) is None:
            return None
        layer = LayerOut(name, key, launch=True, metadata=record["metadata"], reused=True,
                         components=[_component_from_json(c) for c in record["components"]])
        layer.metadata["diff_id"] = record["diff_id"]
        self._log(f"{self.bp.id}: reusing layer {name} ({record['diff_id'][:19]}): inputs unchanged")
        return layer

    def remember(self, layer: LayerOut, diff_id: str) -> None:
        path = self._key_path(layer.name, layer.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"diff_id": diff_id, "metadata": layer.metadata,
                  "components": [dataclasses.asdict(c) for c in layer.components]}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, sort_keys=True))
        tmp.replace(path)

    def run(self, args: list[str], *, what: str, env: dict[str, str] | None = None,
            cwd: str = "/workspace") -> str:
        return self.container.run(args, what=what, env=env, cwd=cwd)

    def cache_dir(self, name: str) -> str:
        return f"/cache/{name}"

    def cache_path(self, name: str) -> Path:
        root = Path(self.container.cache)
        path = root / name
        missing = [p for p in (path, *path.parents) if root in p.parents and not p.exists()]
        for directory in reversed(missing):
            directory.mkdir()
            os.chown(directory, CNB_UID, CNB_GID)
        return path

    def forget_layer(self, name: str) -> None:
        path = self.built.pop(name, None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    def tool_version(self, package: str) -> str:
        return _package_version(self.build_status, package)

    def tool_binary(self, name: str) -> Path:
        return tool_binary(self.settings, self.store, self.layer_cache, name, self._log)

    def log(self, message: str) -> None:
        self._log(message)


def _processes(detected: list[ProcessDef], declared: dict[str, ProcessDef]) -> list[ProcessDef]:
    merged = {p.type: p for p in detected}
    merged.update(declared)  # Procfile > noops.toml (merged by load_appspec) > detected
    if not merged:
        raise BuildError("no start command: add a Procfile with a `web:` line, e.g. "
                         "`web: python3 app.py`")
    if "web" not in merged:
        raise BuildError("no `web` process could be found: add a Procfile with a `web:` line")
    return [merged["web"], *(merged[t] for t in sorted(merged) if t != "web")]


def build_image(
    settings: Settings,
    source: Path,
    *,
    tag: str | None = None,
    log: Log = lambda _m: None,
) -> BuildReport:
    """Build ``source`` into an image in the local store, tagged ``tag`` (default: folder name)."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    source = source.resolve()
    name = normalize_local(tag or _default_name(source))
    report = detect(source)
    for item in report.explanations:
        mark = "pass" if item["passed"] else "fail"
        log(f"detect {item['buildpack']}: {mark} — {item['reason']}")
    bp = report.buildpack
    timings["detect_s"] = round(time.monotonic() - started, 3)

    store = ImageStore(settings.home / "images")
    layer_cache = LayerCache(settings.home / "layers", store)
    build_image_, run_image = ensure_stack(settings, store, bp.stack, log)
    run_ref = stack_refs(bp.stack)[1]
    launcher = tool_binary(settings, store, layer_cache, "launcher", log)
    tmp_root = settings.home / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=tmp_root, prefix="build-"))
    try:
        app_dir, layers_dir = work / "workspace", work / "layers"
        copy_source(source, app_dir)
        layers_dir.mkdir()
        cache_dir = settings.home / "cache" / "build" / bp_dir(bp.id)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for path in (app_dir, layers_dir, cache_dir):
            chown_tree(path, CNB_UID, CNB_GID)
        t0 = time.monotonic()
        build_dirs = layer_cache.ensure(build_image_)
        with BuildContainer(settings, layer_cache, build_image_, app_dir, layers_dir, cache_dir,
                            work, log) as container:
            ctx = _Context(settings, store, layer_cache, bp, container, app_dir, layers_dir,
                           dpkg_status(build_dirs), log)
            output: BuildOutput = bp.build(ctx)
        timings["build_s"] = round(time.monotonic() - t0, 3)
        processes = _processes(output.processes, report.processes)

        t0 = time.monotonic()
        os_components = sbom.os_packages(os_status(settings, store, run_image))
        plans, sboms, all_components = [], {}, list(os_components)
        for layer in output.layers:
            host = None if layer.reused else ctx.built.get(layer.name)
            if host is None and not layer.reused:
                raise BuildError(f"{bp.id} reported layer {layer.name} but wrote nothing")
            plans.append(ImageLayerPlan(bp.id, bp.version, layer.name,
                                        {k: v for k, v in layer.metadata.items() if k != "diff_id"},
                                        host, layer.metadata.get("diff_id")))
            all_components += layer.components
            if layer.components:
                doc = sbom.cyclonedx(layer.components, subject_name=f"{bp.id}:{layer.name}",
                                     tool_version=_version())
                sboms[f"{bp_dir(bp.id)}/{layer.name}/sbom.cdx.json"] = sbom.dumps(doc)
        whole = sbom.cyclonedx(all_components, subject_name=name.rsplit(":", 1)[0],
                               subject_version=name.rsplit(":", 1)[1], tool_version=_version())
        sboms["noops/sbom.cdx.json"] = sbom.dumps(whole)
        chown_tree(app_dir, CNB_UID, CNB_GID)
        result = export_image(
            store, run_image=run_image, run_ref=run_ref, bp_layers=plans,
            buildpacks=[(bp.id, bp.version)], processes=processes, process_bp=bp.id,
            app_dir=app_dir, sboms=sboms, launcher=launcher,
            compression=settings.get("compression"),
            epoch=source_date_epoch(dict(settings.environ)), work=work,
        )
        for layer in output.layers:
            if not layer.reused:
                ctx.remember(layer, result.bp_layer_diffs[(bp.id, layer.name)])
        timings["export_s"] = round(time.monotonic() - t0, 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    store.tag(name, result.manifest)
    timings["total_s"] = round(time.monotonic() - started, 3)
    return BuildReport(
        name=name, digest=result.manifest.digest, stack=bp.stack, buildpack=bp.id,
        processes=[p.to_json() for p in processes],
        layers=[layer.to_json() for layer in result.layers],
        commands=container.commands_run, detect=report.explanations, timings=timings,
    )


def _version() -> str:
    return __version__


def _component_from_json(data: dict[str, Any]) -> sbom.Component:
    return sbom.Component(**{**data, "licenses": tuple(data.get("licenses") or ())})


def _default_name(source: Path) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in source.name.lower())
    return cleaned.strip("-_.") or "app"
