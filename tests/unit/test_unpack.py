"""Unpacking layers: whiteouts become overlayfs whiteouts; hostile tars cannot escape."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from noops.errors import ImageError
from noops.oci.compress import compress_file
from noops.oci.image import Image
from noops.oci.layer import LayerSpec, write_tar
from noops.oci.model import LAYER_GZIP, LAYER_ZSTD, Descriptor
from noops.oci.store import ImageStore
from noops.oci.unpack import LayerCache

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking keeps owners: needs root")


def _raw_layer(store: ImageStore, tmp: Path, members: list[tuple[tarfile.TarInfo, bytes]],
               compression: str = "gzip") -> tuple[Descriptor, str]:
    raw = tmp / "raw.tar"
    with tarfile.open(raw, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    import hashlib

    diff_id = "sha256:" + hashlib.sha256(raw.read_bytes()).hexdigest()
    with store.blob_writer() as fh:
        digest, size = compress_file(raw, fh, compression)
    store.commit_blob(fh, digest)
    return Descriptor(LAYER_GZIP if compression == "gzip" else LAYER_ZSTD, digest, size), diff_id


def _image(layers: list[tuple[Descriptor, str]]) -> Image:
    config = {"rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]}}
    manifest = {"layers": [desc.to_json() for desc, _ in layers]}
    return Image(Descriptor("x", "sha256:" + "0" * 64, 0), manifest, config)


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_whiteouts_and_modes(tmp_path: Path, compression: str) -> None:
    store = ImageStore(tmp_path / "s")
    opaque_dir = tarfile.TarInfo("etc/conf.d")
    opaque_dir.type = tarfile.DIRTYPE
    layer = _raw_layer(store, tmp_path, [
        _file("bin/tool", b"#!", 0o4755), (opaque_dir, b""),
        _file("etc/conf.d/.wh..wh..opq", b""), _file("etc/.wh.old.conf", b""),
    ], compression)
    [path] = LayerCache(tmp_path / "layers", store).ensure(_image([layer]))
    assert stat.S_IMODE((path / "bin/tool").stat().st_mode) == 0o4755
    whiteout = (path / "etc/old.conf").lstat()
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(path / "etc/conf.d", "trusted.overlay.opaque") == b"y"
    assert not (path / "etc/.wh.old.conf").exists()


@pytest.mark.parametrize("members", [
    [_file("../escape")],
    [_file("/abs/../../escape")],
    "symlink",
])
def test_hostile_layers_cannot_write_outside(tmp_path: Path, members: object) -> None:
    store = ImageStore(tmp_path / "s")
    if members == "symlink":
        link = tarfile.TarInfo("evil")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
        members = [(link, b""), _file("evil/escape")]
    layer = _raw_layer(store, tmp_path, members)  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="could not be unpacked"):
        LayerCache(tmp_path / "layers", store).ensure(_image([layer]))
    assert not (tmp_path / "escape").exists()
    assert not list((tmp_path / "layers").glob("[0-9a-f]*"))


def test_layer_written_by_noops_round_trips(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    spec = LayerSpec(uid=1000, gid=1000)
    spec.add_file("workspace/app.py", b"print(1)\n", 0o644)
    spec.add_symlink("workspace/link", "app.py")
    tar = write_tar(spec, tmp_path / "l.tar")
    desc, _ = store.add_layer(tar, "zstd")
    [path] = LayerCache(tmp_path / "layers", store).ensure(_image([(desc, tar.diff_id)]))
    assert (path / "workspace/app.py").read_bytes() == b"print(1)\n"
    assert (path / "workspace/app.py").stat().st_uid == 1000
    assert os.readlink(path / "workspace/link") == "app.py"
