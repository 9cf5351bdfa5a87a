"""Reproducible layer tars.

A :class:`LayerSpec` collects what a layer holds (host trees, generated files, symlinks) under
archive paths; :func:`write_tar` writes it the way the CNB lifecycle does (reference:
``archive/writer.go``): relative paths, parents first, sorted, every mtime the same instant
(1980-01-01T00:00:01Z unless ``SOURCE_DATE_EPOCH`` says otherwise), numeric owners only, no user
or group names. The same content therefore always has the same diffID, wherever and whenever
it is built. The diffID (sha256 of the uncompressed tar) is computed while the tar streams to
disk; compression happens later, and only for layers the store does not already hold.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from noops.errors import ImageError

__all__ = ["NORMALIZED_MTIME", "LayerSpec", "TarResult", "source_date_epoch", "write_tar"]

NORMALIZED_MTIME = 315532801  # 1980-01-01T00:00:01Z, the CNB lifecycle's normalized time
_CHUNK = 1 << 20


def source_date_epoch(environ: dict[str, str] | None = None) -> int:
    """``SOURCE_DATE_EPOCH`` if set (reproducible-builds.org), else the CNB normalized time."""
    raw = (environ if environ is not None else os.environ).get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return NORMALIZED_MTIME
    try:
        return int(raw)
    except ValueError as exc:
        raise ImageError(f"SOURCE_DATE_EPOCH={raw!r} is not a whole number of seconds") from exc


@dataclass
class _Entry:
    kind: bytes  # tarfile type
    mode: int
    uid: int
    gid: int
    source: Path | None = None
    data: bytes | None = None
    linkname: str = ""
    size: int = 0


def _arc(path: str) -> str:
    clean = PurePosixPath("/" + path.lstrip("/"))
    parts = [p for p in clean.parts[1:] if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"layer path {path!r} escapes the layer root")
    return "/".join(parts)


@dataclass
class LayerSpec:
    """What one layer contains, by archive path (relative, ``/``-separated).

    ``uid``/``gid`` are the owners given to entries added without explicit owners; directories
    implied by deeper entries are created with mode 0755 and those owners.
    """

    uid: int = 0
    gid: int = 0
    mtime: int = NORMALIZED_MTIME
    entries: dict[str, _Entry] = field(default_factory=dict)

    def add_dir(self, arcpath: str, mode: int = 0o755, uid: int | None = None,
                gid: int | None = None) -> None:
        self.entries[_arc(arcpath)] = _Entry(tarfile.DIRTYPE, mode, self._u(uid), self._g(gid))

    def add_file(self, arcpath: str, data: bytes, mode: int = 0o644, uid: int | None = None,
                 gid: int | None = None) -> None:
        self.entries[_arc(arcpath)] = _Entry(
            tarfile.REGTYPE, mode, self._u(uid), self._g(gid), data=data, size=len(data)
        )

    def add_symlink(self, arcpath: str, target: str, uid: int | None = None,
                    gid: int | None = None) -> None:
        self.entries[_arc(arcpath)] = _Entry(
            tarfile.SYMTYPE, 0o777, self._u(uid), self._g(gid), linkname=target
        )

    def add_tree(self, root: Path, arcdir: str = "", *, keep_owners: bool = False,
                 exclude: tuple[str, ...] = ()) -> None:
        """Add everything below host directory ``root`` under ``arcdir``.

        Owners become the spec's ``uid``/``gid`` unless ``keep_owners`` (root filesystems).
        Device nodes, sockets and FIFOs are left out: runc provides ``/dev``. Hard links inside
        the tree are kept as hard links. ``exclude`` names top-level entries of ``root`` to skip.
        """
        base = _arc(arcdir)
        seen_inodes: dict[tuple[int, int], str] = {}
        root = Path(root)
        if not root.is_dir():
            raise ImageError(f"{root} is not a directory")
        if base:
            self.entries.setdefault(base, self._dir_from(root.lstat(), keep_owners))
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d not in exclude]
                filenames = [f for f in filenames if f not in exclude]
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                host = os.path.join(dirpath, name)
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                arc = f"{base}/{rel}" if base else rel
                st = os.lstat(host)
                uid, gid = (st.st_uid, st.st_gid) if keep_owners else (self.uid, self.gid)
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISDIR(st.st_mode):
                    self.entries[arc] = _Entry(tarfile.DIRTYPE, mode, uid, gid)
                elif stat.S_ISLNK(st.st_mode):
                    self.entries[arc] = _Entry(
                        tarfile.SYMTYPE, 0o777, uid, gid, linkname=os.readlink(host)
                    )
                elif stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and key in seen_inodes:
                        self.entries[arc] = _Entry(
                            tarfile.LNKTYPE, mode, uid, gid, linkname=seen_inodes[key]
                        )
                        continue
                    if st.st_nlink > 1:
                        seen_inodes[key] = arc
                    self.entries[arc] = _Entry(
                        tarfile.REGTYPE, mode, uid, gid, source=Path(host), size=st.st_size
                    )
                # devices, sockets and FIFOs are intentionally not layered

    def _dir_from(self, st: os.stat_result, keep_owners: bool) -> _Entry:
        uid, gid = (st.st_uid, st.st_gid) if keep_owners else (self.uid, self.gid)
        return _Entry(tarfile.DIRTYPE, stat.S_IMODE(st.st_mode), uid, gid)

    def _u(self, uid: int | None) -> int:
        return self.uid if uid is None else uid

    def _g(self, gid: int | None) -> int:
        return self.gid if gid is None else gid

    def ordered(self) -> list[tuple[str, _Entry]]:
        """Entries with every parent directory present, parents first, then sorted."""
        full = dict(self.entries)
        for arc in list(full):
            parent = PurePosixPath(arc).parent
            while str(parent) not in (".", ""):
                full.setdefault(str(parent), _Entry(tarfile.DIRTYPE, 0o755, self.uid, self.gid))
                parent = parent.parent
        # Hard links must follow their target; sorting by path parts keeps parents first.
        return sorted(full.items(), key=lambda item: item[0].split("/"))


@dataclass(frozen=True)
class TarResult:
    path: Path
    diff_id: str
    size: int


class _HashingFile:
    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self._fh.write(data)


def write_tar(spec: LayerSpec, out: Path) -> TarResult:
    """Write ``spec`` as an uncompressed, reproducible tar at ``out``; return its diffID."""
    with open(out, "wb") as raw:
        sink = _HashingFile(raw)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for arc, entry in spec.ordered():
                info = tarfile.TarInfo(arc)
                info.type = entry.kind
                info.mode = entry.mode
                info.uid, info.gid = entry.uid, entry.gid
                info.uname = info.gname = ""
                info.mtime = spec.mtime
                info.linkname = entry.linkname
                if entry.kind == tarfile.REGTYPE:
                    info.size = entry.size
                    if entry.data is not None:
                        tar.addfile(info, io.BytesIO(entry.data))
                    else:
                        assert entry.source is not None
                        with open(entry.source, "rb") as fh:
                            tar.addfile(info, fh)
                else:
                    tar.addfile(info)
    return TarResult(out, "sha256:" + sink.sha.hexdigest(), sink.size)
