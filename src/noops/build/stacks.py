"""Stacks: the build and run base images, made from Debian packages by mmdebstrap.

Each stack is a pair. The *build* image holds the toolchain a buildpack drives (pip, npm, go);
the *run* image holds only what the app needs at run time, and it, not a buildpack layer, holds
the language runtime, so a rebase onto a patched run image patches the interpreter too. Run
images are non-root (user ``cnb``, 1000:1000) and carry the ``io.buildpacks.base.*`` labels and
``io.buildpacks.rebasable=true``. Each image gets a moving tag (``noops/run-python:stable``) and an
immutable one named for its content (``noops/run-python:bookworm-<diffID prefix>``).

The ``static`` run image has no shell and no package manager: it serves Go binaries and static
sites. Packages are unpacked from the host's configured apt sources (or ``NOOPS_DEBIAN_MIRROR``),
``SOURCE_DATE_EPOCH`` is honoured, and downloaded ``.deb`` files are kept in a cache under
``NOOPS_HOME`` so rebuilding a stack downloads only what changed.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noops.errors import BuildError, ImageError, ToolMissingError, UsageError
from noops.oci.image import Image
from noops.oci.layer import LayerSpec, source_date_epoch, write_tar
from noops.oci.store import ImageStore
from noops.settings import Settings

__all__ = [
    "CNB_GID", "CNB_UID", "STACKS", "StackDef", "StackImages", "build_stack", "ensure_stack",
    "stack_refs",
]

CNB_UID = 1000
CNB_GID = 1000
_DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class StackDef:
    id: str
    description: str
    build_packages: tuple[str, ...]
    run_packages: tuple[str, ...]
    run_variant: str  # mmdebstrap variant of the run image: "essential" (has a shell) or "extract"


STACKS: dict[str, StackDef] = {
    "python": StackDef(
        "python", "Python 3 (Debian's python3) for pip, Poetry, uv and Pipenv apps",
        ("python3", "python3-venv", "python3-pip", "python3-dev", "gcc", "libc6-dev",
         "ca-certificates", "netbase"),
        ("python3", "ca-certificates", "tzdata", "netbase"),
        "essential",
    ),
    "node": StackDef(
        "node", "Node.js (Debian's nodejs) for npm and Yarn apps",
        ("nodejs", "npm", "yarnpkg", "ca-certificates", "netbase"),
        ("nodejs", "ca-certificates", "tzdata", "netbase"),
        "essential",
    ),
    "static": StackDef(
        "static", "No shell, no interpreter: Go binaries and static sites",
        ("golang-go", "ca-certificates", "netbase"),
        ("base-files", "netbase", "tzdata", "media-types", "ca-certificates"),
        "extract",
    ),
}


@dataclass(frozen=True)
class StackImages:
    stack: str
    build: str  # immutable tag of the build image
    run: str  # immutable tag of the run image
    build_digest: str
    run_digest: str
    seconds: float


def stack_refs(stack: str) -> tuple[str, str]:
    """The moving tags of a stack's (build, run) images."""
    return f"noops/build-{stack}:stable", f"noops/run-{stack}:stable"


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _mmdebstrap(settings: Settings, variant: str, packages: tuple[str, ...], target: Path,
                cache: Path, log: Callable[[str], None]) -> None:
    binary = shutil.which(settings.get("mmdebstrap"))
    if binary is None:
        raise ToolMissingError("mmdebstrap", "mmdebstrap", "it builds the stack images")
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        binary, "--mode=root", f"--variant={variant}", "--include=" + ",".join(packages),
        "--skip=cleanup/apt/cache", "--aptopt=Acquire::Retries 3",
        "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives",
        f"--setup-hook=sync-in {cache} /var/cache/apt/archives/",
    ]
    cmd += [f"--dpkgopt={opt}" for opt in _DPKG_EXCLUDES]
    cmd += [settings.get("debian_suite"), str(target)]
    mirror = settings.get("debian_mirror")
    if mirror:
        cmd.append(mirror)
    env = dict(settings.environ)
    env["SOURCE_DATE_EPOCH"] = str(source_date_epoch(env))
    log(f"mmdebstrap {variant}: {' '.join(packages)}")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise BuildError(
            f"building the {variant} root filesystem with mmdebstrap failed:\n{tail}\n"
            "Check that the apt sources (or NOOPS_DEBIAN_MIRROR) are reachable."
        )
    archives = target / "var/cache/apt/archives"
    for deb in archives.glob("*.deb"):
        dest = cache / deb.name
        if not dest.exists():
            shutil.copy2(deb, dest)


def _debs_to_status(target: Path) -> None:
    """For the extract variant (no dpkg run): a dpkg status file so SBOMs see the packages."""
    stanzas = []
    for deb in sorted((target / "var/cache/apt/archives").glob("*.deb")):
        fields = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True,
                                check=True).stdout.rstrip("\n")
        lines = fields.splitlines()
        lines.insert(1, "Status: install ok installed")
        stanzas.append("\n".join(lines))
    status = target / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True, exist_ok=True)
    status.write_text("\n\n".join(stanzas) + "\n")


def _finish_rootfs(target: Path, variant: str) -> None:
    if variant == "extract":
        _debs_to_status(target)
        etc = target / "etc"
        shared = target / "usr/share/ca-certificates/mozilla"
        bundle = etc / "ssl/certs/ca-certificates.crt"
        bundle.parent.mkdir(parents=True, exist_ok=True)
        bundle.write_bytes(b"".join(p.read_bytes() for p in sorted(shared.glob("*.crt"))))
        (etc / "passwd").write_text(
            "root:x:0:0:root:/root:/sbin/nologin\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
        )
        (etc / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    # the CNB user: what build steps and apps run as
    with open(target / "etc/passwd", "a") as fh:
        fh.write(f"cnb:x:{CNB_UID}:{CNB_GID}:cnb:/home/cnb:/usr/sbin/nologin\n")
    with open(target / "etc/group", "a") as fh:
        fh.write(f"cnb:x:{CNB_GID}:\n")
    shutil.rmtree(target / "var/cache/apt/archives", ignore_errors=True)
    for binary_cache in (target / "var/cache/apt").glob("*.bin"):
        binary_cache.unlink()  # apt's caches differ on every run; apt rebuilds them
    (target / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    for sub in ("var/lib/apt/lists", "var/log", "tmp", "dev"):
        path = target / sub
        if path.is_dir():
            shutil.rmtree(path)
            path.mkdir()
            path.chmod(0o1777 if sub == "tmp" else 0o755)  # mkdir's mode is masked by umask
    for owned in ("home/cnb", "workspace", "layers"):
        path = target / owned
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, CNB_UID, CNB_GID)


def _labels(stack: StackDef, kind: str, released: str) -> dict[str, str]:
    return {
        "io.buildpacks.base.distro.name": "debian",
        "io.buildpacks.base.distro.version": "12",
        "io.buildpacks.base.maintainer": "noops",
        "io.buildpacks.base.homepage": "https://noops.dev/stacks",
        "io.buildpacks.base.description": f"noops {stack.id} {kind} image: {stack.description}",
        "io.buildpacks.base.released": released,
        "io.buildpacks.rebasable": "true",
        "io.buildpacks.stack.id": f"dev.noops.stacks.{stack.id}",
        "dev.noops.stack": stack.id,
        "dev.noops.stack.kind": kind,
    }


def _image_from_rootfs(store: ImageStore, rootfs: Path, stack: StackDef, kind: str,
                       compression: str, epoch: int, work: Path) -> tuple[str, str]:
    spec = LayerSpec(uid=0, gid=0, mtime=epoch)
    spec.add_tree(rootfs, keep_owners=True)
    tar = write_tar(spec, work / f"{kind}.tar")
    layer, _ = store.add_layer(tar, compression)
    tar.path.unlink()
    released = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    config: dict[str, Any] = {
        "created": released,
        "architecture": _arch(),
        "os": "linux",
        "config": {
            "User": f"{CNB_UID}:{CNB_GID}",
            "Env": [f"PATH={_PATH}", "LANG=C.UTF-8", f"CNB_USER_ID={CNB_UID}",
                    f"CNB_GROUP_ID={CNB_GID}", f"CNB_STACK_ID=dev.noops.stacks.{stack.id}"],
            "WorkingDir": "/workspace",
            "Labels": _labels(stack, kind, released),
        },
        "rootfs": {"type": "layers", "diff_ids": [tar.diff_id]},
        "history": [{"created": released, "created_by": f"noops stack build {stack.id} ({kind})"}],
    }
    manifest = store.write_image(config, [layer])
    moving = stack_refs(stack.id)[0 if kind == "build" else 1]
    immutable = moving.replace(":stable", f":bookworm-{tar.diff_id[7:19]}")
    store.tag(immutable, manifest)
    store.tag(moving, manifest)
    return immutable, manifest.digest


def build_stack(settings: Settings, store: ImageStore, stack_id: str,
                log: Callable[[str], None] = lambda _msg: None,
                kinds: tuple[str, ...] = ("build", "run")) -> StackImages:
    """Build (or rebuild) a stack's images (both, or only ``kinds``); move their ``stable`` tags.

    Rebuilding only the run image is how OS patches reach apps: ``noops rebase`` then moves
    each app onto it without a rebuild.
    """
    if stack_id not in STACKS:
        raise UsageError(f"unknown stack {stack_id!r}; choose one of {', '.join(STACKS)} or all")
    if os.geteuid() != 0:
        raise UsageError("building stacks needs root (mmdebstrap --mode=root); run as root")
    stack = STACKS[stack_id]
    started = time.monotonic()
    epoch = source_date_epoch(dict(settings.environ))
    compression = settings.get("compression")
    cache = settings.home / "cache" / "apt-archives" / settings.get("debian_suite")
    tmp_root = settings.home / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    results: dict[str, tuple[str, str]] = {}
    for kind, variant, packages in (
        ("build", "essential", stack.build_packages),
        ("run", stack.run_variant, stack.run_packages),
    ):
        if kind not in kinds:
            current = store.image(stack_refs(stack_id)[0 if kind == "build" else 1])
            results[kind] = (stack_refs(stack_id)[0 if kind == "build" else 1], current.digest)
            continue
        work = Path(tempfile.mkdtemp(dir=tmp_root, prefix=f"stack-{stack_id}-{kind}-"))
        try:
            rootfs = work / "rootfs"
            _mmdebstrap(settings, variant, packages, rootfs, cache, log)
            _finish_rootfs(rootfs, variant)
            results[kind] = _image_from_rootfs(store, rootfs, stack, kind, compression, epoch, work)
            status = rootfs / "var/lib/dpkg/status"
            cache = settings.home / "cache" / "os-status" / results[kind][1].split(":", 1)[1]
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(status.read_text(errors="replace") if status.is_file() else "")
            log(f"{kind} image {results[kind][0]} ({results[kind][1][:19]})")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return StackImages(stack_id, results["build"][0], results["run"][0], results["build"][1],
                       results["run"][1], round(time.monotonic() - started, 2))


def ensure_stack(settings: Settings, store: ImageStore, stack_id: str,
                 log: Callable[[str], None] = lambda _msg: None) -> tuple[Image, Image]:
    """The stack's (build, run) images, building the stack first if it is missing."""
    build_ref, run_ref = stack_refs(stack_id)
    try:
        return store.image(build_ref), store.image(run_ref)
    except ImageError:
        log(f"stack {stack_id} is not built yet; building it (once) from Debian packages")
        build_stack(settings, store, stack_id, log)
        return store.image(build_ref), store.image(run_ref)
