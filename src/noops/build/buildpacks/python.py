"""The Python buildpack: pip, PEP 621, Poetry, uv and Pipenv projects, installed into a venv layer.

Dependencies go into one launch layer, ``/layers/noops_python/venv``, keyed by the resolved
requirement list and the stack's Python version: an unchanged lockfile means no install at all.
OpenTelemetry auto-instrumentation goes into a second one, ``otel`` (see
:mod:`noops.build.buildpacks.otel_python`), which never changes the venv.
The interpreter itself is the run image's ``/usr/bin/python3``, so a rebase patches it.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from noops.appspec import ProcessDef
from noops.build import sbom
from noops.build.buildpacks import otel_python
from noops.build.buildpacks.base import BuildContext, BuildOutput, DetectResult, LayerOut
from noops.errors import BuildError

__all__ = ["PythonBuildpack", "requirements_for"]

_ENTRY_MODULES = ("main.py", "app.py", "server.py", "wsgi.py", "asgi.py")
_APP_OBJECT = re.compile(r"^(\w+)\s*(?::[^=]+)?=\s*(?:flask\.)?(Flask|FastAPI|Starlette|Quart|Sanic)\(",
                         re.MULTILINE)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _poetry_constraint(name: str, spec: Any) -> str:
    if isinstance(spec, dict):
        spec = spec.get("version", "*")
    spec = str(spec).strip()
    if spec in ("", "*"):
        return name
    if spec.startswith("^") or spec.startswith("~"):
        caret = spec[0] == "^"
        base = spec.lstrip("^~=").strip()
        parts = [int(p) if p.isdigit() else 0 for p in base.split(".")]
        while len(parts) < 3:
            parts.append(0)
        if caret:
            idx = next((i for i, p in enumerate(parts) if p != 0), len(parts) - 1)
        else:
            idx = 1 if len(base.split(".")) > 1 else 0
        upper = parts[: idx + 1]
        upper[idx] += 1
        return f"{name}>={base},<{'.'.join(map(str, upper))}"
    if spec[0].isdigit():
        return f"{name}=={spec}"
    return f"{name}{spec}"


def _lock_pins(path: Path, skip: set[str]) -> list[str]:
    data = tomllib.loads(path.read_text())
    pins = []
    for pkg in data.get("package", []):
        source = pkg.get("source", {})
        if _norm(pkg["name"]) in skip or source.get("editable") or source.get("virtual"):
            continue
        if pkg.get("category", "main") not in ("main",) and path.name == "poetry.lock":
            continue
        pins.append(f"{pkg['name']}=={pkg['version']}")
    return sorted(pins, key=str.lower)


def requirements_for(app_dir: Path) -> tuple[str, list[str], str]:
    """(installer, pip arguments, requirements text) for the project in ``app_dir``."""
    if (app_dir / "requirements.txt").is_file():
        return "pip", ["-r", "/workspace/requirements.txt"], (app_dir / "requirements.txt").read_text()
    if (app_dir / "pyproject.toml").is_file():
        try:
            project = tomllib.loads((app_dir / "pyproject.toml").read_text())
        except tomllib.TOMLDecodeError as exc:
            raise BuildError(f"pyproject.toml is not valid TOML: {exc}") from exc
        name = _norm(str(project.get("project", {}).get("name", "")))
        poetry = project.get("tool", {}).get("poetry")
        if (app_dir / "uv.lock").is_file():
            reqs = _lock_pins(app_dir / "uv.lock", {name})
            installer = "uv"
        elif (app_dir / "poetry.lock").is_file():
            reqs = _lock_pins(app_dir / "poetry.lock", {name})
            installer = "poetry"
        elif poetry:
            deps = dict(poetry.get("dependencies", {}))
            deps.pop("python", None)
            reqs = [_poetry_constraint(k, v) for k, v in sorted(deps.items())]
            installer = "poetry"
        else:
            reqs = [str(d) for d in project.get("project", {}).get("dependencies", [])]
            installer = "pip (pyproject.toml)"
        return installer, reqs, "\n".join(reqs)
    if (app_dir / "Pipfile.lock").is_file():
        try:
            lock = json.loads((app_dir / "Pipfile.lock").read_text())
        except json.JSONDecodeError as exc:
            raise BuildError(f"Pipfile.lock is not valid JSON: {exc}; run `pipenv lock`") from exc
        reqs = sorted(f"{k}{v.get('version', '')}" for k, v in lock.get("default", {}).items())
        return "pipenv", reqs, "\n".join(reqs)
    if (app_dir / "Pipfile").is_file():
        pipfile = tomllib.loads((app_dir / "Pipfile").read_text())
        reqs = sorted(
            k if v in ("*", {}) else f"{k}{v if isinstance(v, str) else v.get('version', '')}"
            for k, v in pipfile.get("packages", {}).items()
        )
        return "pipenv", reqs, "\n".join(reqs)
    return "none", [], ""


def _default_process(app_dir: Path, requirements: str) -> ProcessDef | None:
    deps = {_norm(re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0])
            for line in requirements.splitlines() if line.strip() and not line.startswith("-")}
    for module in _ENTRY_MODULES:
        path = app_dir / module
        if not path.is_file():
            continue
        source = path.read_text(errors="replace")
        match = _APP_OBJECT.search(source)
        obj = match.group(1) if match else "app"
        framework = match.group(2) if match else ""
        stem = module[:-3]
        if framework in ("FastAPI", "Starlette", "Quart") and "uvicorn" in deps:
            cmd = ("uvicorn", f"{stem}:{obj}", "--host", "0.0.0.0", "--port", "$PORT")
            return ProcessDef("web", cmd, True)
        if "gunicorn" in deps and framework in ("Flask", ""):
            cmd = ("gunicorn", "--bind", "0.0.0.0:$PORT", "--access-logfile", "-", f"{stem}:{obj}")
            return ProcessDef("web", cmd, True)
        return ProcessDef("web", ("python3", module), True)
    return None


class PythonBuildpack:
    id = "noops/python"
    version = "0.1.0"
    stack = "python"
    looks_for = "requirements.txt, pyproject.toml, Pipfile, or main.py/app.py/server.py"

    def detect(self, app_dir: Path) -> DetectResult:
        for marker in ("requirements.txt", "pyproject.toml", "Pipfile"):
            if (app_dir / marker).is_file():
                return DetectResult(True, f"found {marker}")
        for module in _ENTRY_MODULES[:3]:
            if (app_dir / module).is_file():
                return DetectResult(True, f"found {module} (no dependency file: stdlib only)")
        return DetectResult(False, f"no {self.looks_for}")

    def build(self, ctx: BuildContext) -> BuildOutput:
        installer, args, text = requirements_for(ctx.app_dir)
        out = BuildOutput()
        default = _default_process(ctx.app_dir, text)
        if default:
            out.processes.append(default)
        python = ctx.tool_version("python3")
        if installer == "none":
            ctx.log("python: no dependencies to install")
            self._add_otel(ctx, out, python, {})
            return out
        key = f"{self.version}|{python}|{installer}|{text}"
        layer = ctx.cached("venv", key)
        if layer is None:
            layer = LayerOut("venv", key, launch=True,
                             metadata={"installer": installer, "python": python})
            venv = ctx.container_layer_path("venv")
            ctx.layer_dir("venv")
            ctx.log(f"python: installing dependencies ({installer}) into {venv}")
            ctx.run(["python3", "-m", "venv", "--without-pip", venv], what="creating the venv")
            ctx.run(
                ["python3", "-m", "pip", "--python", f"{venv}/bin/python3", "install",
                 "--no-input", "--progress-bar", "off", "--cache-dir", ctx.cache_dir("pip"),
                 *args],
                what=f"pip install ({installer}); pip's message is above",
            )
            site = next(ctx.layer_dir("venv", create=False).glob("lib/python3*/site-packages"))
            layer.components = sbom.python_packages_from_site(site)
        out.layers.append(layer)
        self._add_otel(ctx, out, python,
                       {otel_python.norm(c.name): c.version for c in layer.components
                        if c.version})
        return out

    @staticmethod
    def _add_otel(ctx: BuildContext, out: BuildOutput, python: str,
                  app_packages: dict[str, str]) -> None:
        """Add the ``otel`` layer (after the venv, so its env applies on top)."""
        layer = otel_python.otel_layer(ctx, python, app_packages)
        if layer is not None:
            out.layers.append(layer)
