"""The static-site buildpack: a site folder served by noops' own small static file server.

Detects a ``Staticfile`` (``root: <dir>``, ``pushstate: enabled``), ``public/index.html`` or
``index.html``. The server (Go, built once per noops version and shared by every static app)
lives in a launch layer; the site is the app layer. Runs on the shell-less ``static`` stack.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from noops.appspec import ProcessDef
from noops.build.buildpacks.base import BuildContext, BuildOutput, DetectResult, LayerOut
from noops.errors import BuildError

__all__ = ["StaticBuildpack", "staticfile_options"]

_OPTION = re.compile(r"^\s*([A-Za-z_]+)\s*:\s*(.*?)\s*$")


def staticfile_options(app_dir: Path) -> dict[str, str]:
    path = app_dir / "Staticfile"
    options: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            match = _OPTION.match(line)
            if match and not line.lstrip().startswith("#"):
                options[match.group(1).lower()] = match.group(2)
    return options


def _site_root(app_dir: Path) -> str:
    root = staticfile_options(app_dir).get("root", "")
    if not root:
        root = "public" if (app_dir / "public" / "index.html").is_file() else "."
    resolved = (app_dir / root).resolve()
    if not resolved.is_relative_to(app_dir.resolve()) or not resolved.is_dir():
        raise BuildError(f"Staticfile root {root!r} is not a folder inside the app")
    return root


class StaticBuildpack:
    id = "noops/static"
    version = "0.1.0"
    stack = "static"
    looks_for = "Staticfile, public/index.html or index.html"

    def detect(self, app_dir: Path) -> DetectResult:
        for marker in ("Staticfile", "public/index.html", "index.html"):
            if (app_dir / marker).is_file():
                return DetectResult(True, f"found {marker}")
        return DetectResult(False, f"no {self.looks_for}")

    def build(self, ctx: BuildContext) -> BuildOutput:
        root = _site_root(ctx.app_dir)
        binary = ctx.tool_binary("static_server")
        key = f"{self.version}|{binary.name}|{binary.parent.name}"
        layer = ctx.cached("server", key)
        if layer is None:
            layer = LayerOut("server", key, launch=True, metadata={"server": binary.parent.name})
            target = ctx.layer_dir("server") / "bin"
            target.mkdir(parents=True)
            shutil.copy2(binary, target / "noops-static-server")
        server = f"{ctx.container_layer_path('server')}/bin/noops-static-server"
        site = "/workspace" if root in (".", "") else f"/workspace/{root.strip('/')}"
        args = [server, "-root", site]
        if staticfile_options(ctx.app_dir).get("pushstate", "").lower() == "enabled":
            args.append("-spa")
        return BuildOutput(layers=[layer], processes=[ProcessDef("web", tuple(args), True)])
