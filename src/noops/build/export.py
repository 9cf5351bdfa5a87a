"""Export: assemble the app image in CNB layer order and write it to the local store.

Order (reference: lifecycle ``phase/exporter.go``): run image layers → buildpack launch layers →
one SBOM layer → the app layer (``/workspace``) → the launcher → the launch config → process
types (``/cnb/process/<type>`` → launcher). Every layer is a reproducible tar (see
:mod:`noops.oci.layer`) owned by the CNB user, except the launcher, config and process-type
layers (root, read-only to the app). A layer whose diffID is already stored is not compressed
again. Labels carry the keys ``pack inspect``, ``pack rebase`` and ``pack sbom download`` read.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from noops import __version__
from noops.appspec import ProcessDef
from noops.build.stacks import CNB_GID, CNB_UID
from noops.errors import ImageError
from noops.oci.image import Image
from noops.oci.layer import LayerSpec, TarResult, write_tar
from noops.oci.model import Descriptor
from noops.oci.store import ImageStore

__all__ = [
    "BUILD_LABEL",
    "LAUNCHER_VERSION",
    "LIFECYCLE_LABEL",
    "PLATFORM_API",
    "ExportedLayer",
    "ImageLayerPlan",
    "export_image",
]

LIFECYCLE_LABEL = "io.buildpacks.lifecycle.metadata"
BUILD_LABEL = "io.buildpacks.build.metadata"
PROJECT_LABEL = "io.buildpacks.project.metadata"
PLATFORM_API = "0.15"
LAUNCHER_VERSION = "1.0.0"


def bp_dir(bp_id: str) -> str:
    return bp_id.replace("/", "_")


@dataclass
class ImageLayerPlan:
    """A buildpack layer to export: built now (``host_dir``) or reused by diffID."""

    bp_id: str
    bp_version: str
    name: str
    metadata: dict[str, Any]
    host_dir: Path | None = None
    diff_id: str | None = None


@dataclass
class ExportedLayer:
    name: str
    diff_id: str
    digest: str
    size: int
    new_blob: bool
    rebuilt: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "diff_id": self.diff_id, "digest": self.digest,
                "size": self.size, "new_blob": self.new_blob, "rebuilt": self.rebuilt}


@dataclass
class ExportResult:
    manifest: Descriptor
    layers: list[ExportedLayer] = field(default_factory=list)
    bp_layer_diffs: dict[tuple[str, str], str] = field(default_factory=dict)


class _Exporter:
    def __init__(self, store: ImageStore, work: Path, compression: str, epoch: int) -> None:
        self.store, self.work, self.compression, self.epoch = store, work, compression, epoch
        self.layers: list[Descriptor] = []
        self.diff_ids: list[str] = []
        self.history: list[dict[str, Any]] = []
        self.report: list[ExportedLayer] = []
        self._n = 0

    def _created(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.epoch))

    def add_spec(self, spec: LayerSpec, name: str, created_by: str) -> str:
        spec.mtime = self.epoch
        self._n += 1
        tar: TarResult = write_tar(spec, self.work / f"layer-{self._n}.tar")
        desc, new = self.store.add_layer(tar, self.compression)
        tar.path.unlink()
        return self._append(desc, tar.diff_id, name, created_by, new, True)

    def add_existing(self, diff_id: str, name: str, created_by: str) -> str:
        desc = (self.store.layer_for_diff_id(diff_id, self.compression)
                or self.store.layer_for_diff_id(diff_id))
        if desc is None:
            raise ImageError(f"layer {name} ({diff_id}) is no longer stored; rebuild with --clear-cache")
        return self._append(desc, diff_id, name, created_by, False, False)

    def _append(self, desc: Descriptor, diff_id: str, name: str, created_by: str, new: bool,
                rebuilt: bool) -> str:
        self.layers.append(desc)
        self.diff_ids.append(diff_id)
        self.history.append({"created": self._created(), "created_by": created_by})
        self.report.append(ExportedLayer(name, diff_id, desc.digest, desc.size, new, rebuilt))
        return diff_id


def _process_json(p: ProcessDef, bp_id: str, default: bool) -> dict[str, Any]:
    return {"type": p.type, "command": list(p.command), "args": [], "direct": p.direct,
            "working-dir": "/workspace", "default": default, "buildpack-id": bp_id}


def export_image(
    store: ImageStore,
    *,
    run_image: Image,
    run_ref: str,
    bp_layers: list[ImageLayerPlan],
    buildpacks: list[tuple[str, str]],
    processes: list[ProcessDef],
    process_bp: str,
    app_dir: Path,
    sboms: dict[str, bytes],
    launcher: Path,
    compression: str,
    epoch: int,
    work: Path,
) -> ExportResult:
    """Write the app image; return its manifest descriptor and a per-layer report."""
    ex = _Exporter(store, work, compression, epoch)
    for desc, diff_id, hist in zip(run_image.layers, run_image.diff_ids,
                                   _history(run_image), strict=True):
        ex._append(desc, diff_id, "run image", hist, False, False)

    lifecycle_bps: dict[str, dict[str, Any]] = {}
    layer_paths: list[str] = []
    result_diffs: dict[tuple[str, str], str] = {}
    for plan in bp_layers:
        created_by = f"Layer: '{plan.name}', Created by buildpack: {plan.bp_id}@{plan.bp_version}"
        if plan.host_dir is not None:
            spec = LayerSpec(uid=CNB_UID, gid=CNB_GID)
            spec.add_tree(plan.host_dir, f"layers/{bp_dir(plan.bp_id)}/{plan.name}")
            diff = ex.add_spec(spec, f"{plan.bp_id}:{plan.name}", created_by)
        else:
            assert plan.diff_id is not None
            diff = ex.add_existing(plan.diff_id, f"{plan.bp_id}:{plan.name}", created_by)
        result_diffs[(plan.bp_id, plan.name)] = diff
        layer_paths.append(f"/layers/{bp_dir(plan.bp_id)}/{plan.name}")
        entry = lifecycle_bps.setdefault(plan.bp_id, {"key": plan.bp_id, "version": plan.bp_version,
                                                      "layers": {}})
        entry["layers"][plan.name] = {"sha": diff, "data": plan.metadata, "launch": True,
                                      "build": False, "cache": False}

    sbom_spec = LayerSpec(uid=CNB_UID, gid=CNB_GID)
    for rel, data in sorted(sboms.items()):
        sbom_spec.add_file(f"layers/sbom/launch/{rel}", data)
    sbom_diff = ex.add_spec(sbom_spec, "sbom", "Software Bill-of-Materials")

    app_spec = LayerSpec(uid=CNB_UID, gid=CNB_GID)
    app_spec.add_tree(app_dir, "workspace")
    app_diff = ex.add_spec(app_spec, "app", "Application Layer")

    launcher_spec = LayerSpec(uid=0, gid=0)
    launcher_spec.add_dir("cnb", 0o755)
    launcher_spec.add_dir("cnb/lifecycle", 0o755)
    launcher_spec.add_file("cnb/lifecycle/launcher", launcher.read_bytes(), 0o755)
    launcher_diff = ex.add_spec(launcher_spec, "launcher", "Buildpacks Launcher")

    default = "web" if any(p.type == "web" for p in processes) else processes[0].type
    proc_json = [_process_json(p, process_bp, p.type == default) for p in processes]
    launch_config = {"processes": proc_json, "layers": layer_paths, "env": {}}
    metadata_toml = {
        "processes": proc_json,
        "buildpacks": [{"id": i, "version": v, "api": "0.12"} for i, v in buildpacks],
    }
    config_spec = LayerSpec(uid=0, gid=0)
    config_spec.add_file("layers/config/metadata.toml", tomli_w.dumps(metadata_toml).encode())
    config_spec.add_file("layers/config/launch.json",
                         json.dumps(launch_config, indent=2, sort_keys=True).encode() + b"\n")
    config_diff = ex.add_spec(config_spec, "config", "Buildpacks Application Launcher Config")

    types_spec = LayerSpec(uid=0, gid=0)
    types_spec.add_dir("cnb/process", 0o755)
    for p in processes:
        types_spec.add_symlink(f"cnb/process/{p.type}", "/cnb/lifecycle/launcher")
    types_diff = ex.add_spec(types_spec, "process-types", "Buildpacks Process Types")

    run_labels = run_image.labels
    lifecycle = {
        "app": [{"sha": app_diff}],
        "sbom": {"sha": sbom_diff},
        "config": {"sha": config_diff},
        "launcher": {"sha": launcher_diff},
        "process-types": {"sha": types_diff},
        "buildpacks": list(lifecycle_bps.values()),
        "runImage": {"topLayer": run_image.diff_ids[-1], "reference": run_image.digest,
                     "image": run_ref, "mirrors": []},
        "stack": {"runImage": {"image": run_ref, "mirrors": []}},
    }
    build_md = {
        "processes": [{"type": p["type"], "command": p["command"], "args": p["args"],
                       "direct": p["direct"], "working-dir": p["working-dir"],
                       "buildpackID": p["buildpack-id"]} for p in proc_json],
        "buildpacks": [{"id": i, "version": v, "homepage": "https://noops.dev/buildpacks"}
                       for i, v in buildpacks],
        "launcher": {"version": LAUNCHER_VERSION,
                     "source": {"git": {"repository": "noops", "commit": __version__}}},
    }
    labels = dict(run_labels)
    labels.update({
        LIFECYCLE_LABEL: json.dumps(lifecycle, sort_keys=True, separators=(",", ":")),
        BUILD_LABEL: json.dumps(build_md, sort_keys=True, separators=(",", ":")),
        PROJECT_LABEL: "{}",
        "io.buildpacks.rebasable": "true",
    })
    for key in ("dev.noops.stack.kind", "io.buildpacks.base.description"):
        labels.pop(key, None)
    run_env = run_image.env
    path = run_env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env = {**run_env, "CNB_LAYERS_DIR": "/layers", "CNB_APP_DIR": "/workspace",
           "CNB_PLATFORM_API": PLATFORM_API, "CNB_DEPRECATION_MODE": "quiet",
           "PATH": f"/cnb/process:/cnb/lifecycle:{path}"}
    created = ex._created()
    config: dict[str, Any] = {
        "created": created,
        "architecture": run_image.config.get("architecture", "amd64"),
        "os": run_image.config.get("os", "linux"),
        "config": {
            "User": run_image.user or f"{CNB_UID}:{CNB_GID}",
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Entrypoint": [f"/cnb/process/{default}"],
            "WorkingDir": "/workspace",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": ex.diff_ids},
        "history": ex.history,
    }
    manifest = store.write_image(config, ex.layers)
    return ExportResult(manifest, ex.report, result_diffs)


def _history(image: Image) -> list[str]:
    hist = [h for h in image.config.get("history", []) if not h.get("empty_layer")]
    if len(hist) != len(image.layers):
        return ["run image layer"] * len(image.layers)
    return [str(h.get("created_by", "run image layer")) for h in hist]


def copy_source(src: Path, dest: Path) -> None:
    """Copy an app's source for building, leaving out VCS data, local venvs and build debris."""
    ignore = shutil.ignore_patterns(".git", ".hg", ".svn", "__pycache__", "*.pyc", ".venv",
                                    "venv", "node_modules", ".noops", ".pytest_cache",
                                    ".mypy_cache", ".ruff_cache", ".DS_Store")
    shutil.copytree(src, dest, ignore=ignore, symlinks=True)
