"""The Node.js buildpack: ``npm ci`` (or Yarn) from the lockfile into a ``node_modules`` layer.

``node_modules`` lives in ``/layers/noops_node/modules`` keyed by the lockfile; the app gets a
``node_modules`` symlink to it. OpenTelemetry auto-instrumentation has a layer of its own,
``otel`` (see :mod:`noops.build.buildpacks.otel_node`). The start command bypasses npm (which
does not forward signals): ``scripts.start`` of the form ``node FILE`` runs node directly, any
other start script runs through the shell; without one, the first of server.js, app.js,
main.js, index.js.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from noops.appspec import ProcessDef
from noops.build import sbom
from noops.build.buildpacks import otel_node
from noops.build.buildpacks.base import BuildContext, BuildOutput, DetectResult, LayerOut
from noops.errors import BuildError

__all__ = ["NodeBuildpack"]

_ENTRY_FILES = ("server.js", "app.js", "main.js", "index.js")


def _package_json(app_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((app_dir / "package.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BuildError(f"package.json is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BuildError("package.json must hold a JSON object")
    return data


def _start_process(app_dir: Path, package: dict[str, Any]) -> ProcessDef | None:
    start = str((package.get("scripts") or {}).get("start") or "").strip()
    if start:
        words = shlex.split(start)
        if len(words) == 2 and words[0] == "node" and not any(c in start for c in "&|;$<>"):
            return ProcessDef("web", ("node", words[1]), True)
        return ProcessDef("web", (start,), False)
    main = package.get("main")
    candidates = list(_ENTRY_FILES) + ([str(main)] if main else [])
    for name in candidates:
        if (app_dir / name).is_file():
            return ProcessDef("web", ("node", name), True)
    return None


class NodeBuildpack:
    id = "noops/node"
    version = "0.1.0"
    stack = "node"
    looks_for = "package.json (with package-lock.json or yarn.lock), or server.js/app.js/main.js/index.js"

    def detect(self, app_dir: Path) -> DetectResult:
        if (app_dir / "package.json").is_file():
            lock = next((n for n in ("package-lock.json", "npm-shrinkwrap.json", "yarn.lock")
                         if (app_dir / n).is_file()), None)
            return DetectResult(True, f"found package.json ({lock or 'no lockfile'})")
        for name in _ENTRY_FILES:
            if (app_dir / name).is_file():
                return DetectResult(True, f"found {name}")
        return DetectResult(False, f"no {self.looks_for}")

    def build(self, ctx: BuildContext) -> BuildOutput:
        out = BuildOutput()
        package = _package_json(ctx.app_dir) if (ctx.app_dir / "package.json").is_file() else {}
        process = _start_process(ctx.app_dir, package)
        if process:
            out.processes.append(process)
        deps = package.get("dependencies") or {}
        node = ctx.tool_version("nodejs")
        if not deps:
            ctx.log("node: no dependencies to install")
            out.layers.append(otel_node.otel_layer(ctx, node))
            return out
        lockname = next((n for n in ("package-lock.json", "npm-shrinkwrap.json", "yarn.lock")
                         if (ctx.app_dir / n).is_file()), None)
        if lockname is None:
            raise BuildError(
                "package.json has dependencies but no lockfile: run `npm install` to create "
                "package-lock.json and commit it, so builds are reproducible"
            )
        lock_text = (ctx.app_dir / lockname).read_text()
        key = f"{self.version}|{node}|{lockname}|{lock_text}|{json.dumps(deps, sort_keys=True)}"
        modules = ctx.container_layer_path("modules")
        layer = ctx.cached("modules", key)
        if layer is None:
            layer = LayerOut("modules", key, launch=True, metadata={"lockfile": lockname, "node": node})
            host = ctx.layer_dir("modules")
            for name in ("package.json", lockname):
                (host / name).write_bytes((ctx.app_dir / name).read_bytes())
            if lockname == "yarn.lock":
                cmd = ["yarnpkg", "install", "--frozen-lockfile", "--production",
                       "--non-interactive", "--cache-folder", ctx.cache_dir("yarn")]
            else:
                cmd = ["npm", "ci", "--omit=dev", "--no-audit", "--no-fund",
                       "--cache", ctx.cache_dir("npm")]
            ctx.log(f"node: installing dependencies from {lockname} into {modules}")
            ctx.run(cmd, what=f"{cmd[0]} install from {lockname}; its message is above", cwd=modules)
            if lockname != "yarn.lock":
                layer.components = sbom.npm_packages(lock_text)
        # the source copy never carries node_modules (see export.copy_source)
        os.symlink(f"{modules}/node_modules", ctx.app_dir / "node_modules")
        out.layers.append(layer)
        out.layers.append(otel_node.otel_layer(ctx, node))
        return out
