"""The Go buildpack: ``go build`` of every main package into a ``bin`` launch layer.

Runs on the ``static`` stack (no shell, no libc needed: ``CGO_ENABLED=0``). Each binary becomes
a process named after it, the first (or the one named after the module) is also ``web``. The
build cache is a cache directory, so rebuilds compile only what changed; the ``bin`` layer is
keyed by the Go sources, so an unchanged program is not rebuilt at all.
"""

from __future__ import annotations

import re
from pathlib import Path

from noops.appspec import ProcessDef
from noops.build import sbom
from noops.build.buildpacks.base import (
    BuildContext,
    BuildOutput,
    DetectResult,
    LayerOut,
    hash_files,
)
from noops.errors import BuildError

__all__ = ["GoBuildpack"]

_MODULE = re.compile(r"^module\s+(\S+)", re.MULTILINE)


class GoBuildpack:
    id = "noops/go"
    version = "0.1.0"
    stack = "static"
    looks_for = "go.mod"

    def detect(self, app_dir: Path) -> DetectResult:
        if (app_dir / "go.mod").is_file():
            return DetectResult(True, "found go.mod")
        return DetectResult(False, "no go.mod")

    def build(self, ctx: BuildContext) -> BuildOutput:
        gomod = (ctx.app_dir / "go.mod").read_text()
        match = _MODULE.search(gomod)
        if not match:
            raise BuildError("go.mod has no `module` line; run `go mod init <path>`")
        module = match.group(1)
        sources = sorted(str(p.relative_to(ctx.app_dir)) for p in ctx.app_dir.rglob("*")
                         if p.is_file() and (p.suffix in (".go", ".s", ".c", ".h")
                                             or p.name in ("go.mod", "go.sum")))
        go = ctx.tool_version("golang-go")
        key = hash_files(ctx.app_dir, sources, f"{self.version}|{go}")
        layer = ctx.cached("bin", key)
        bin_dir = ctx.container_layer_path("bin")
        if layer is None:
            layer = LayerOut("bin", key, launch=True, metadata={"module": module, "go": go})
            host = ctx.layer_dir("bin")
            ctx.log(f"go: building {module}")
            ctx.run(["go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=",
                     "-o", f"{bin_dir}/", "./..."],
                    what="go build; the compiler's message is above",
                    env={"CGO_ENABLED": "0", "GOCACHE": ctx.cache_dir("go-build"),
                         "GOMODCACHE": ctx.cache_dir("go-mod"), "GOFLAGS": "-mod=mod"})
            names = sorted(p.name for p in host.iterdir() if p.is_file())
            if not names:
                raise BuildError("go build produced no binary: the module has no `package main`")
            layer.metadata["binaries"] = names
            info = ctx.run(["go", "version", "-m", *[f"{bin_dir}/{n}" for n in names]],
                           what="reading module information")
            layer.components = sbom.go_modules(info)
        names = list(layer.metadata["binaries"])
        web = module.rsplit("/", 1)[-1]
        default = web if web in names else names[0]
        out = BuildOutput(layers=[layer])
        out.processes.append(ProcessDef("web", (f"{bin_dir}/{default}",), True))
        out.processes += [ProcessDef(n, (f"{bin_dir}/{n}",), True) for n in names if n != "web"]
        return out
