"""The Node.js buildpack's ``otel`` layer: OpenTelemetry auto-instrumentation with no code change.

Layout of ``/layers/noops_node/otel``:

* ``node_modules/`` — ``@opentelemetry/api`` and ``@opentelemetry/auto-instrumentations-node``
  at the versions of ``otel_data/node/package.json``, installed by ``npm ci`` from the
  ``package-lock.json`` shipped with noops (every transitive package pinned and hashed, so the
  layer is the same on every machine). Node resolves them from this directory, apart from the
  app's own ``node_modules``: nothing the app pins can clash with them.
* ``boot/register.js`` — preloaded by every ``node`` of the app; loads upstream's
  ``build/src/register.js`` only when the runtime configured telemetry (see that file: inert
  without ``OTEL_*`` endpoint settings or with ``OTEL_SDK_DISABLED=true``).
* ``env.launch/`` — CNB env files the launcher applies: ``NODE_OPTIONS`` gets
  ``--require /layers/noops_node/otel/boot/register.js`` prepended;
  ``OTEL_EXPORTER_OTLP_PROTOCOL`` defaults to ``http/protobuf`` and
  ``OTEL_NODE_RESOURCE_DETECTORS`` to ``env,host,os,process`` (the default, ``all``, also asks
  cloud metadata servers, which only slows start-up outside those clouds).

The layer is keyed by the lockfile, the preload script and the stack's Node.js version; it is
independent of the app, so every Node.js app on the same stack shares one blob.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from noops.build import sbom
from noops.build.buildpacks.base import BuildContext, LayerOut
from noops.build.container import chown_tree
from noops.build.stacks import CNB_GID, CNB_UID
from noops.errors import BuildError

__all__ = ["otel_layer"]

LAYER = "otel"
_DATA = Path(__file__).parent / "otel_data" / "node"
_FILES = ("package.json", "package-lock.json", "register.js")


def otel_layer(ctx: BuildContext, node: str) -> LayerOut:
    """The ``otel`` launch layer (built, or reused by diffID when its inputs are unchanged)."""
    sha = hashlib.sha256(node.encode())
    for name in _FILES:
        sha.update(b"\0" + name.encode() + b"\0" + (_DATA / name).read_bytes())
    key = "sha256:" + sha.hexdigest()
    layer = ctx.cached(LAYER, key)
    if layer is not None:
        return layer
    host = ctx.layer_dir(LAYER)
    root = ctx.container_layer_path(LAYER)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(_DATA / name, host / name)
    (host / "boot").mkdir()
    shutil.copyfile(_DATA / "register.js", host / "boot" / "register.js")
    env = host / "env.launch"
    env.mkdir()
    (env / "NODE_OPTIONS.prepend").write_text(f"--require {root}/boot/register.js")
    (env / "NODE_OPTIONS.delim").write_text(" ")
    (env / "OTEL_EXPORTER_OTLP_PROTOCOL.default").write_text("http/protobuf")
    (env / "OTEL_NODE_RESOURCE_DETECTORS.default").write_text("env,host,os,process")
    chown_tree(host, CNB_UID, CNB_GID)
    ctx.log(f"node: installing OpenTelemetry auto-instrumentation into {root}")
    # --ignore-scripts: nothing in the tree needs an install script (protobufjs' only prints)
    ctx.run(["npm", "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund",
             "--cache", ctx.cache_dir("npm")],
            what="npm ci (OpenTelemetry auto-instrumentation)", cwd=root)
    register = host / "node_modules/@opentelemetry/auto-instrumentations-node/build/src/register.js"
    if not register.is_file():  # the preload would silently do nothing
        raise BuildError(f"{register.relative_to(host)} is missing from the OpenTelemetry layer: "
                         "the package's layout changed; update otel_data/node/register.js")
    layer = LayerOut(LAYER, key, launch=True, metadata={
        "auto-instrumentations-node": _version("@opentelemetry/auto-instrumentations-node"),
        "node": node})
    layer.components = sbom.npm_packages((_DATA / "package-lock.json").read_text())
    return layer


def _version(package: str) -> str:
    data = json.loads((_DATA / "package.json").read_text())
    return str(data["dependencies"][package])
