"""The OCI layout store: blobs, layers reused by diffID, tags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from noops.errors import ImageError, UsageError
from noops.oci.layer import LayerSpec, write_tar
from noops.oci.model import LAYER_GZIP, LAYER_ZSTD
from noops.oci.store import ImageStore


def _image(store: ImageStore, tmp: Path, content: bytes, compression: str = "gzip") -> str:
    spec = LayerSpec()
    spec.add_file("hello.txt", content)
    tar = write_tar(spec, tmp / "l.tar")
    desc, _ = store.add_layer(tar, compression)
    config = {"architecture": "amd64", "os": "linux",
              "rootfs": {"type": "layers", "diff_ids": [tar.diff_id]}}
    return store.write_image(config, [desc]).digest


def test_layout_is_oci(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((tmp_path / "s" / "index.json").read_text())["manifests"] == []
    digest = _image(store, tmp_path, b"hi")
    store.tag("app:1", store.resolve(digest))
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "app:1"


def test_layer_reused_by_diff_id_not_recompressed(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    spec = LayerSpec()
    spec.add_file("a", b"a" * 10000)
    first, new1 = store.add_layer(write_tar(spec, tmp_path / "1.tar"), "gzip")
    second, new2 = store.add_layer(write_tar(spec, tmp_path / "2.tar"), "gzip")
    assert (new1, new2) == (True, False)
    assert first == second and first.media_type == LAYER_GZIP
    zstd, new3 = store.add_layer(write_tar(spec, tmp_path / "3.tar"), "zstd")
    assert new3 and zstd.media_type == LAYER_ZSTD and zstd.digest != first.digest
    assert store.diff_id_of(first.digest) == store.diff_id_of(zstd.digest)


def test_tags_move_and_resolve(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    one = store.resolve(_image(store, tmp_path, b"1"))
    two = store.resolve(_image(store, tmp_path, b"2"))
    store.tag("app", one)
    assert store.resolve("app:latest").digest == one.digest
    store.tag("app:latest", two)
    assert store.resolve("app").digest == two.digest
    assert [n for n, _ in store.tags()] == ["app:latest"]
    assert store.untag("app")
    with pytest.raises(ImageError, match="no image named app:latest"):
        store.resolve("app")


def test_bad_names_and_missing_blobs(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    with pytest.raises(UsageError, match="repository"):
        store.resolve("Bad Name")
    with pytest.raises(ImageError, match="in the local store"):
        store.resolve("sha256:" + "0" * 64)


def test_corrupt_blob_is_detected(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    digest = _image(store, tmp_path, b"x")
    store.blob_path(digest).write_bytes(b"{}")
    with pytest.raises(ImageError, match="corrupt"):
        store.image(digest)


def test_gc_keeps_tagged_and_pinned_images(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    tagged = store.resolve(_image(store, tmp_path, b"tagged"))
    pinned = store.resolve(_image(store, tmp_path, b"pinned"))
    orphan = store.resolve(_image(store, tmp_path, b"orphan"))
    store.tag("app:1", tagged)
    assert store.gc(min_age_s=3600)[0] == []  # everything is too young to collect
    removed, freed = store.gc({pinned.digest}, min_age_s=0)
    assert orphan.digest in removed and freed > 0
    assert store.image("app:1").digest == tagged.digest
    assert store.image(pinned.digest).digest == pinned.digest
    assert not store.has_blob(orphan.digest)
