"""``noops run IMAGE``: one container in the foreground, for trying an image locally.

The image's layers are mounted read-only (overlay; writes land in a throw-away upper directory
and the root is read-only to the app anyway), the app runs as the image's non-root user with a
private ``/tmp``, on the host network with ``PORT`` set to the chosen port. Ctrl-C (SIGINT) or
SIGTERM is forwarded by runc to the app; the container and its mounts are always removed.

This is a developer's runner, outside the platform: no network namespace, no instance monitor,
so no mTLS and no gateway in front (the port is the app's own, on 127.0.0.1 of the host), and no
``NOOPS_GATEWAY_URL`` (there is no front door to call other apps through). Everything deployed
with ``noops deploy`` runs behind mTLS instead (see :mod:`noops.runtime.instances`).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from noops.errors import ContainerError, ImageError
from noops.oci.bundle import ContainerSpec, Runc, write_config
from noops.oci.image import Image
from noops.oci.store import ImageStore
from noops.oci.unpack import LayerCache, mount_rootfs, unmount
from noops.settings import Settings

__all__ = ["container_spec_for", "image_user", "prepare_rootfs", "run_foreground"]


def image_user(image: Image) -> tuple[int, int]:
    user = image.user or "1000:1000"
    uid_s, _, gid_s = user.partition(":")
    try:
        uid = int(uid_s)
        return uid, int(gid_s) if gid_s else uid
    except ValueError as exc:
        raise ImageError(f"image user {user!r} is not numeric uid:gid; noops runs numeric users "
                         "only") from exc


def container_spec_for(image: Image, *, port: int, process_type: str | None,
                       env: dict[str, str]) -> ContainerSpec:
    cfg = image.config.get("config") or {}
    entrypoint = list(cfg.get("Entrypoint") or [])
    args = entrypoint + list(cfg.get("Cmd") or [])
    if process_type:
        args = [f"/cnb/process/{process_type}"]
    if not args:
        raise ImageError("the image has no entrypoint or command to run")
    full_env = dict(image.env)
    full_env.update({"PORT": str(port), "HOME": "/tmp"})
    full_env.update(env)
    uid, gid = image_user(image)
    return ContainerSpec(args=args, env=full_env, cwd=cfg.get("WorkingDir") or "/", uid=uid,
                         gid=gid, readonly_rootfs=True, host_network=True)


def prepare_rootfs(settings: Settings, store: ImageStore, image: Image, work: Path) -> Path:
    layers = LayerCache(settings.home / "layers", store).ensure(image)
    rootfs = work / "rootfs"
    mount_rootfs(layers, rootfs, upper=work / "upper")
    return rootfs


def run_foreground(settings: Settings, store: ImageStore, ref: str, *, port: int = 8080,
                   process_type: str | None = None, env: dict[str, str] | None = None,
                   log: Callable[[str], None] = lambda _m: None) -> int:
    """Run ``ref`` until it exits or is interrupted; return its exit code."""
    image = store.image(ref)
    runc = Runc(settings.get("runc"))
    tmp_root = settings.home / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=tmp_root, prefix="run-"))
    container_id = f"noops-run-{uuid.uuid4().hex[:12]}"
    try:
        rootfs = prepare_rootfs(settings, store, image, work)
        spec = container_spec_for(image, port=port, process_type=process_type, env=env or {})
        write_config(work / "bundle", rootfs, spec)
        log(f"running {ref} ({image.digest[:19]}) on http://127.0.0.1:{port}/ — Ctrl-C stops it")
        proc = runc.popen(work / "bundle", container_id, stdin=subprocess.DEVNULL)

        def forward(signum: int, _frame: FrameType | None) -> None:
            runc.kill(container_id, signal.Signals(signum).name.removeprefix("SIG"))

        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = proc.wait()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        return code
    except OSError as exc:
        raise ContainerError(f"could not run {ref}: {exc}") from exc
    finally:
        runc.delete(container_id)
        unmount(work / "rootfs")
        shutil.rmtree(work, ignore_errors=True)
