"""The Python buildpack's ``otel`` layer: OpenTelemetry auto-instrumentation with no code change.

Layout of ``/layers/noops_python/otel``:

* ``site/`` — ``opentelemetry-distro``, the OTLP/HTTP (protobuf) exporter and the instrumentation
  packages ``opentelemetry-bootstrap -a requirements`` names for the app's installed libraries,
  installed with ``pip install --target``. Distributions the app's own ``venv`` layer already
  holds are removed from ``site/``, and the install is constrained to the app's exact versions,
  so the app always imports its own ``protobuf``/``wrapt``/... and never a second copy. The
  one exception is the OpenTelemetry packages themselves (some libraries, e.g. FastAPI, depend
  on ``opentelemetry-api``): the SDK needs its own API release, and one API copy must serve the
  app and the SDK (its global tracer provider lives there), so the layer's copy comes first
  and the app's is shadowed. The API is backward compatible within 1.x; an app whose API is
  newer (major.minor) than the layer's gets no layer rather than an older API.
* ``boot/sitecustomize.py`` — starts the SDK when the runtime configured telemetry (see that
  module's docstring: inert without ``OTEL_*`` endpoint settings or with
  ``OTEL_SDK_DISABLED=true``).
* ``env.launch/`` — CNB env files the launcher applies: ``PYTHONPATH`` gets ``boot:site``
  prepended (the OTel Operator's injection, with a gate in front of upstream's
  ``sitecustomize``); ``OTEL_EXPORTER_OTLP_PROTOCOL`` defaults to ``http/protobuf``.

Logs: the ``logging`` instrumentation (one of the defaults bootstrap lists) attaches the
OTLP handler to the root logger itself, so records written inside a request carry its trace and
span ids. ``OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED`` is deliberately left unset: in
this contrib release it switches to the SDK's deprecated handler and logs a warning at every
start. The handler keeps ``logging.basicConfig`` working for the app (upstream removes itself
from the root logger while it runs).

The layer is keyed by the pinned OpenTelemetry versions, the stack's Python, the instrumentation
list and the app's versions of the distributions the layer shares with it: the ``venv`` layer is
never touched, and an app change that leaves those inputs alone reuses the layer by diffID.
When the app pins a shared dependency that the pinned OpenTelemetry release cannot use, the
build goes on without the layer and says why.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from noops.build import sbom
from noops.build.buildpacks.base import BuildContext, LayerOut
from noops.build.container import CommandFailed, chown_tree
from noops.build.stacks import CNB_GID, CNB_UID

__all__ = ["OTEL_CONTRIB_VERSION", "OTEL_SDK_VERSION", "bootstrap_requirements", "otel_layer"]

OTEL_SDK_VERSION = "1.45.1"
OTEL_CONTRIB_VERSION = "0.66b1"
CORE_REQUIREMENTS = (
    f"opentelemetry-distro=={OTEL_CONTRIB_VERSION}",
    f"opentelemetry-instrumentation=={OTEL_CONTRIB_VERSION}",
    f"opentelemetry-api=={OTEL_SDK_VERSION}",
    f"opentelemetry-sdk=={OTEL_SDK_VERSION}",
    f"opentelemetry-exporter-otlp-proto-http=={OTEL_SDK_VERSION}",
)
LAYER = "otel"
_DATA = Path(__file__).parent / "otel_data" / "python"


def norm(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _write_dists(target: Path, packages: dict[str, str]) -> None:
    """Metadata-only ``*.dist-info`` directories that make ``importlib.metadata`` see ``packages``."""
    target.mkdir(parents=True, exist_ok=True)
    for name, version in sorted(packages.items()):
        info = target / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def bootstrap_requirements(ctx: BuildContext, app_packages: dict[str, str]) -> list[str]:
    """What ``opentelemetry-bootstrap -a requirements`` prints for an environment holding exactly
    ``app_packages`` (normalised name → version), run for real in the build container.

    The app's ``venv`` layer may be reused and so absent from the build; the bootstrap tool
    only asks ``importlib.metadata`` for versions, so it runs against metadata-only copies of
    the app's distributions (``python3 -S``: the build image's own packages stay invisible).
    Results are cached per input under the buildpack's cache directory.
    """
    inputs = json.dumps([OTEL_CONTRIB_VERSION, sorted(app_packages.items())])
    results = ctx.cache_path("otel-bootstrap") / "results"
    cached = results / f"{_digest(inputs)}.json"
    if cached.is_file():
        return list(json.loads(cached.read_text()))
    tool = f"otel-bootstrap/{OTEL_CONTRIB_VERSION}"
    if not (ctx.cache_path(tool) / "opentelemetry").is_dir():
        ctx.run(["python3", "-m", "pip", "install", "--no-input", "--progress-bar", "off",
                 "--cache-dir", ctx.cache_dir("pip"), "--target", ctx.cache_dir(tool),
                 f"opentelemetry-instrumentation=={OTEL_CONTRIB_VERSION}"],
                what="installing opentelemetry-bootstrap")
    probe = f"otel-bootstrap/probe-{_digest(inputs)}"
    _write_dists(ctx.cache_path(probe), app_packages)
    try:
        out = ctx.run(
            ["python3", "-S", "-c",
             "from opentelemetry.instrumentation.bootstrap import run; run()",
             "-a", "requirements"],
            what="opentelemetry-bootstrap -a requirements",
            env={"PYTHONPATH": f"{ctx.cache_dir(probe)}:{ctx.cache_dir(tool)}"},
        )
    finally:
        shutil.rmtree(ctx.cache_path(probe), ignore_errors=True)
    wanted = sorted({line.strip() for line in out.splitlines()
                     if re.match(r"^opentelemetry-instrumentation-[\w.-]+==", line.strip())})
    results.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(wanted))
    tmp.replace(cached)
    return wanted


def _remove_dist(site: Path, info: Path) -> None:
    """Delete one installed distribution (its RECORD'ed files, then emptied directories)."""
    record = info / "RECORD"
    dirs: set[Path] = set()
    if record.is_file():
        for line in record.read_text().splitlines():
            rel = line.split(",", 1)[0]
            if not rel:
                continue
            path = (site / rel).resolve()
            if site.resolve() not in path.parents:
                continue  # entries like ../../bin/x point outside the target: never delete those
            if path.is_file() or path.is_symlink():
                path.unlink()
            dirs.add(path.parent)
    shutil.rmtree(info, ignore_errors=True)
    for directory in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        while directory != site.resolve() and directory.is_dir():
            leftovers = [p for p in directory.iterdir() if p.name != "__pycache__"]
            if leftovers:
                break
            shutil.rmtree(directory)
            directory = directory.parent


def _installed(site: Path) -> dict[str, Path]:
    found = {}
    for info in site.glob("*.dist-info"):
        meta = (info / "METADATA").read_text(errors="replace") if (info / "METADATA").is_file() else ""
        match = re.search(r"^Name:\s*(\S+)", meta, re.MULTILINE)
        if match:
            found[norm(match.group(1))] = info
    return found


def _is_otel(name: str) -> bool:
    return name.startswith("opentelemetry-")


def _newer_api(app_packages: dict[str, str]) -> str | None:
    """The app's own opentelemetry-api version when its major.minor is newer than the layer's."""
    theirs = app_packages.get("opentelemetry-api", "")
    match = re.match(r"(\d+)\.(\d+)", theirs)
    ours = re.match(r"(\d+)\.(\d+)", OTEL_SDK_VERSION)
    assert ours is not None
    if match and tuple(map(int, match.groups())) > tuple(map(int, ours.groups())):
        return theirs
    return None


def otel_layer(ctx: BuildContext, python: str, app_packages: dict[str, str]) -> LayerOut | None:
    """The ``otel`` launch layer for an app whose venv holds ``app_packages`` (None: left out)."""
    wanted = bootstrap_requirements(ctx, app_packages)
    base = json.dumps([OTEL_SDK_VERSION, OTEL_CONTRIB_VERSION, python, wanted])
    closure_file = ctx.cache_path("otel-closure") / f"{_digest(base)}.json"
    closure: list[str] = json.loads(closure_file.read_text()) if closure_file.is_file() else []
    shared = sorted((n, app_packages[n]) for n in closure if n in app_packages)
    key = json.dumps([base, shared, (_DATA / "sitecustomize.py").read_text()])
    if closure:
        layer = ctx.cached(LAYER, key)
        if layer is not None:
            return layer

    newer = _newer_api(app_packages)
    if newer:
        ctx.log(f"python: OpenTelemetry auto-instrumentation left out of this image: the app "
                f"installs opentelemetry-api {newer}, newer than the {OTEL_SDK_VERSION} this "
                "noops ships; the app builds and runs without automatic telemetry.")
        return None
    pins = {n: v for n, v in app_packages.items() if not _is_otel(n)}
    conflict = ctx.cache_path("otel-closure") / f"conflict-{_digest(base + str(pins))}"
    if conflict.is_file():
        ctx.log("python: OpenTelemetry auto-instrumentation left out of this image (as in the "
                f"last build): the app's pinned packages conflict with OpenTelemetry "
                f"{OTEL_SDK_VERSION}: {conflict.read_text().strip()}")
        return None
    host = ctx.layer_dir(LAYER)
    root = ctx.container_layer_path(LAYER)
    constraints = ctx.cache_path("otel-bootstrap") / f"constraints-{_digest(base + str(pins))}.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
    ctx.log(f"python: installing OpenTelemetry {OTEL_SDK_VERSION} auto-instrumentation "
            f"({len(wanted)} instrumentations) into {root}")
    try:
        ctx.run(["python3", "-m", "pip", "install", "--no-input", "--progress-bar", "off",
                 "--cache-dir", ctx.cache_dir("pip"), "--no-compile", "--target", f"{root}/site",
                 "-c", f"{ctx.cache_dir('otel-bootstrap')}/{constraints.name}",
                 *CORE_REQUIREMENTS, *wanted],
                what="pip install (OpenTelemetry auto-instrumentation)")
    except CommandFailed as exc:
        if "ResolutionImpossible" not in exc.output:
            raise  # no network, no such release...: as loud as a failed dependency install
        ctx.log("python: OpenTelemetry auto-instrumentation left out of this image: the app's "
                f"pinned packages conflict with OpenTelemetry {OTEL_SDK_VERSION} (pip's message "
                "is above). The app builds and runs without telemetry; relax the pins pip "
                "names to get it.")
        ctx.forget_layer(LAYER)
        causes = [line.strip() for line in exc.output.splitlines() if "requested" in line]
        conflict.write_text("; ".join(causes) or "see pip's message in a clean build")
        return None
    finally:
        constraints.unlink(missing_ok=True)

    site = host / "site"
    installed = _installed(site)
    for name, info in installed.items():
        if name in pins:  # the app's venv has this exact version (constraints)
            _remove_dist(site, info)
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts with a build-time shebang
    closure = sorted(installed)
    closure_file.parent.mkdir(parents=True, exist_ok=True)
    closure_file.write_text(json.dumps(closure))
    shared = sorted((n, app_packages[n]) for n in closure if n in app_packages)
    key = json.dumps([base, shared, (_DATA / "sitecustomize.py").read_text()])

    (host / "boot").mkdir()
    shutil.copyfile(_DATA / "sitecustomize.py", host / "boot" / "sitecustomize.py")
    env = host / "env.launch"
    env.mkdir()
    (env / "PYTHONPATH.prepend").write_text(f"{root}/boot:{root}/site")
    (env / "PYTHONPATH.delim").write_text(":")
    (env / "OTEL_EXPORTER_OTLP_PROTOCOL.default").write_text("http/protobuf")
    chown_tree(host, CNB_UID, CNB_GID)
    # Compiled where the files will live (pip --target compiles in a temporary directory, which
    # would leave random paths in the bytecode); SOURCE_DATE_EPOCH makes the .pyc files
    # hash-checked, so they are byte-identical on every build.
    ctx.run(["python3", "-m", "compileall", "-q", "-j", "0", f"{root}/site", f"{root}/boot"],
            what="compiling the OpenTelemetry layer")
    layer = LayerOut(LAYER, key, launch=True, metadata={
        "opentelemetry": OTEL_SDK_VERSION, "contrib": OTEL_CONTRIB_VERSION, "python": python,
        "instrumentations": wanted, "shared_with_app": [n for n, _ in shared]})
    layer.components = sbom.python_packages_from_site(site)
    return layer
