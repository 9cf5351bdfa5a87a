"""noops' own Go programs (the launcher, the static file server), built once inside the
``static`` build image under runc and kept under ``NOOPS_HOME/cache/tools``.

The build is reproducible (``-trimpath -buildvcs=false -ldflags=-s -w -buildid=``,
``CGO_ENABLED=0``), so the launcher layer of every image has the same diffID as long as the
sources and the Go toolchain stay the same.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from noops.build.container import BuildContainer, chown_tree
from noops.build.stacks import CNB_GID, CNB_UID, ensure_stack
from noops.oci.store import ImageStore
from noops.oci.unpack import LayerCache
from noops.settings import Settings

__all__ = ["TOOLS", "tool_binary"]

_HERE = Path(__file__).parent
TOOLS: dict[str, Path] = {
    "launcher": _HERE / "launcher",
    "static_server": _HERE / "buildpacks" / "static_server",
}


def _source_hash(src: Path, toolchain: str) -> str:
    sha = hashlib.sha256(toolchain.encode())
    for path in sorted(src.iterdir()):
        if path.is_file() and ((path.suffix == ".go" and not path.name.endswith("_test.go"))
                               or path.name == "go.mod"):
            sha.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()[:24]


def tool_binary(settings: Settings, store: ImageStore, layers: LayerCache, name: str,
                log: Callable[[str], None] = lambda _m: None) -> Path:
    """The compiled binary of one of noops' Go tools, building it if needed."""
    src = TOOLS[name]
    build_image, _ = ensure_stack(settings, store, "static", log)
    key = _source_hash(src, build_image.digest)
    target = settings.home / "cache" / "tools" / name / key / name
    if target.is_file():
        return target
    log(f"building noops {name} (once per noops version)")
    tmp_root = settings.home / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=tmp_root, prefix=f"tool-{name}-"))
    try:
        workspace, out, cache = work / "workspace", work / "layers", settings.home / "cache" / "go"
        shutil.copytree(src, workspace, ignore=shutil.ignore_patterns("*_test.go"))
        out.mkdir()
        cache.mkdir(parents=True, exist_ok=True)
        for path in (workspace, out, cache):
            chown_tree(path, CNB_UID, CNB_GID)
        with BuildContainer(settings, layers, build_image, workspace, out, cache, work,
                            log) as container:
            container.run(
                ["go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=",
                 "-o", f"/layers/{name}", "."],
                what=f"building noops {name}",
                env={"CGO_ENABLED": "0", "GOCACHE": "/cache/go-build", "GOPROXY": "off",
                     "GOFLAGS": "-mod=mod"},
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        shutil.copy2(out / name, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
