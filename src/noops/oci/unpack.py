"""Layers on disk: each layer extracted once, by diffID, and stacked with overlayfs.

An image's root filesystem is never copied: every layer is unpacked once into
``<root>/<diffID hex>/`` (OCI whiteouts converted to overlayfs whiteouts) and a container's rootfs
is an overlay mount of those directories, read-only or with a throw-away upper directory. A
rebased image shares every app layer directory with the image it came from.

Extraction refuses members that would land outside the layer directory (absolute names, ``..``,
or paths through symlinks that point outside), so a hostile image cannot write to the host.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

from noops.errors import ContainerError, ImageError
from noops.oci.compress import decompressing_reader
from noops.oci.image import Image
from noops.oci.model import Descriptor
from noops.oci.store import ImageStore

__all__ = ["LayerCache", "mount_rootfs", "unmount"]

_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


def _safe_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's tar filter checks (no absolute paths, nothing outside dest), modes kept."""
    checked = tarfile.tar_filter(member, dest)
    if member.isreg() or member.isdir():
        return checked.replace(mode=member.mode & 0o7777, deep=False)
    return checked


class LayerCache:
    """Extracted layers by diffID under ``root``; safe to share between processes."""

    def __init__(self, root: Path, store: ImageStore) -> None:
        self.root = Path(root)
        self.store = store
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, diff_id: str) -> Path:
        return self.root / diff_id.split(":", 1)[1]

    def ensure(self, image: Image) -> list[Path]:
        """Extract every layer of ``image`` not yet on disk; return their dirs, bottom first."""
        if len(image.layers) != len(image.diff_ids):
            raise ImageError(
                f"image {image.digest} is inconsistent: {len(image.layers)} layers but "
                f"{len(image.diff_ids)} diff_ids"
            )
        return [self._ensure_one(d, diff) for d, diff in zip(image.layers, image.diff_ids, strict=True)]

    def gc(self, live_diff_ids: set[str]) -> tuple[list[str], int]:
        """Remove unpacked layers no live image uses and no mounted root filesystem holds."""
        mounts = Path("/proc/self/mounts").read_text() if Path("/proc/self/mounts").exists() else ""
        live = {d.split(":", 1)[1] for d in live_diff_ids}
        removed: list[str] = []
        freed = 0
        with open(self.root / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for path in self.root.iterdir():
                if path.name.startswith(".") or path.name in live or str(path) in mounts:
                    continue
                freed += sum(f.lstat().st_size for f in path.rglob("*"))
                shutil.rmtree(path, ignore_errors=True)
                removed.append("sha256:" + path.name)
        return removed, freed

    def _ensure_one(self, desc: Descriptor, diff_id: str) -> Path:
        target = self.path(diff_id)
        if target.is_dir():
            return target
        with open(self.root / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.is_dir():
                return target
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".x-"))
            try:
                self._extract(desc, tmp)
                os.replace(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return target

    def _extract(self, desc: Descriptor, dest: Path) -> None:
        opaque: list[Path] = []
        dest_s = str(dest)
        with self.store.open_blob(desc.digest) as raw:
            reader = decompressing_reader(raw, desc.media_type)
            try:
                with tarfile.open(fileobj=reader, mode="r|") as tar:
                    for member in tar:
                        name = member.name.lstrip("/")
                        base = os.path.basename(name)
                        parent = dest / os.path.dirname(name)
                        if base == _OPAQUE:
                            parent.mkdir(parents=True, exist_ok=True)
                            opaque.append(parent)
                            continue
                        if base.startswith(_WHITEOUT):
                            _safe_member(member, dest_s)  # same path checks as real members
                            parent.mkdir(parents=True, exist_ok=True)
                            os.mknod(parent / base[len(_WHITEOUT):], stat.S_IFCHR | 0o000, os.makedev(0, 0))
                            continue
                        if member.ischr() or member.isblk() or member.isfifo():
                            continue
                        tar.extract(member, dest_s, set_attrs=True, numeric_owner=True,
                                    filter=_safe_member)
            except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
                raise ImageError(f"layer {desc.digest} could not be unpacked: {exc}") from exc
        for path in opaque:
            os.setxattr(path, "trusted.overlay.opaque", b"y")


def mount_rootfs(layers: list[Path], target: Path, *, upper: Path | None = None) -> None:
    """Mount ``layers`` (bottom first) at ``target`` with overlayfs.

    Without ``upper`` the mount is read-only; with it, writes go to ``upper`` (a work dir is
    made beside it) and the layers stay untouched.
    """
    target.mkdir(parents=True, exist_ok=True)
    lower = ":".join(str(p) for p in reversed(layers))
    if upper is None:
        if len(layers) == 1:
            _mount(["--bind", "-o", "ro", str(layers[0]), str(target)])
            _mount(["-o", "remount,bind,ro", str(target)])
            return
        _mount(["-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}", str(target)])
        return
    work = upper.parent / (upper.name + ".work")
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    _mount(["-t", "overlay", "overlay", "-o",
            f"lowerdir={lower},upperdir={upper},workdir={work}", str(target)])


def unmount(target: Path) -> None:
    """Unmount ``target`` if mounted (lazily if still busy)."""
    if not os.path.ismount(target):
        return
    result = subprocess.run(["umount", str(target)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def _mount(args: list[str]) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ContainerError(
            f"mounting the image filesystem failed: {result.stderr.strip()}. noops needs root and "
            "overlayfs (modprobe overlay) to run containers."
        )
