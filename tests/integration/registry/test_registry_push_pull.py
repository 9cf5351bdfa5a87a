"""Push and pull against a real docker-registry, checked with skopeo and umoci."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from noops.errors import RegistryError
from noops.oci.model import DOCKER_MANIFEST, INDEX, MANIFEST
from noops.oci.registry import pull, push, remote_image
from noops.oci.store import ImageStore

pytestmark = pytest.mark.registry

FILES = {"app/hello.txt": b"hello from noops\n", "app/run.sh": b"#!/bin/sh\necho hi\n"}
LABELS = {"io.noops.test": "yes", "org.opencontainers.image.title": "hello"}


def _blobs(store: ImageStore, name: str) -> list[str]:
    image = store.image(name)
    return [image.manifest["config"]["digest"], *(layer.digest for layer in image.layers)]


def test_push_is_visible_to_skopeo_with_labels(registry, store, make_image, skopeo):
    manifest = make_image(store, "app:1", FILES, LABELS)
    result = push(store, "app:1", f"{registry.host}/team/app:1", insecure=True)

    assert result.digest == manifest.digest
    assert result.reference == f"{registry.host}/team/app:1@{manifest.digest}"
    assert sorted(result.uploaded) == sorted(_blobs(store, "app:1"))
    assert result.mounted == [] and result.skipped == []
    out = skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/team/app:1")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["Labels"] == LABELS
    assert info["Digest"] == manifest.digest
    assert info["Layers"] == [layer.digest for layer in store.image("app:1").layers]


def test_pushed_image_copies_and_unpacks_with_skopeo_and_umoci(
    registry, store, make_image, skopeo, tmp_path
):
    if shutil.which("umoci") is None:
        pytest.fail("umoci is not installed: run `make deps` (apt-get install -y umoci)")
    make_image(store, "app:1", FILES, LABELS)
    push(store, "app:1", f"{registry.host}/app:v1", insecure=True)

    layout = tmp_path / "copied"
    out = skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/app:v1",
                 f"oci:{layout}:v1")
    assert out.returncode == 0, out.stderr
    bundle = tmp_path / "bundle"
    unpack = subprocess.run(["umoci", "unpack", "--image", f"{layout}:v1", str(bundle)],
                            capture_output=True, text=True, timeout=120)
    assert unpack.returncode == 0, unpack.stderr
    assert (bundle / "rootfs" / "app" / "hello.txt").read_bytes() == FILES["app/hello.txt"]
    assert (bundle / "rootfs" / "etc" / "os-release").read_bytes() == b"ID=noops-test\n"


def test_second_push_of_same_image_uploads_nothing(registry, store, make_image):
    make_image(store, "app:1", FILES, LABELS)
    push(store, "app:1", f"{registry.host}/app:1", insecure=True)
    events: list[tuple[str, str]] = []

    again = push(store, "app:1", f"{registry.host}/app:1", insecure=True,
                 progress=lambda digest, status, done, total: events.append((digest, status)))

    assert again.uploaded == [] and again.mounted == []
    assert sorted(again.skipped) == sorted(_blobs(store, "app:1"))
    assert [status for _, status in events] == ["skipped"] * 3 + ["manifest"]


def test_push_to_another_repository_mounts_known_blobs(registry, store, make_image, skopeo):
    make_image(store, "app:1", FILES, LABELS)
    push(store, "app:1", f"{registry.host}/first:1", insecure=True)

    second = push(store, "app:1", f"{registry.host}/second:1", insecure=True)

    assert sorted(second.mounted) == sorted(_blobs(store, "app:1"))
    assert second.uploaded == [] and second.skipped == []
    out = skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/second:1")
    assert out.returncode == 0, out.stderr
    # Without the store's memory of where blobs went, the same push has to upload.
    shutil.rmtree(store.root / "noops" / "remote-blobs")
    third = push(store, "app:1", f"{registry.host}/third:1", insecure=True)
    assert sorted(third.uploaded) == sorted(_blobs(store, "app:1"))
    assert third.mounted == []


def test_pull_into_fresh_store_keeps_digest_and_indexes_diff_ids(
    registry, store, make_image, tmp_path
):
    manifest = make_image(store, "app:1", FILES, LABELS)
    push(store, "app:1", f"{registry.host}/app:1", insecure=True)
    fresh = ImageStore(tmp_path / "fresh")

    desc = pull(f"{registry.host}/app:1", fresh, insecure=True)

    assert desc.digest == manifest.digest
    pulled = fresh.image(f"{registry.host}/app:1")
    assert pulled.digest == manifest.digest
    assert pulled.labels == LABELS
    original = store.image("app:1")
    for diff_id, layer in zip(original.diff_ids, original.layers, strict=True):
        found = fresh.layer_for_diff_id(diff_id)
        assert found is not None and found.digest == layer.digest
        assert fresh.read_blob(layer.digest) == store.read_blob(layer.digest)
    # By digest, under a local name of our choosing; blobs already stored are not fetched again.
    again = pull(f"{registry.host}/app@{manifest.digest}", fresh, tag_as="mine:2", insecure=True)
    assert again.digest == manifest.digest
    assert fresh.resolve("mine:2").digest == manifest.digest


def test_pull_image_written_by_skopeo_in_docker_format(registry, store, make_image, skopeo,
                                                      tmp_path):
    make_image(store, "app:1", FILES, LABELS)
    out = skopeo("copy", "--format", "v2s2", "--dest-tls-verify=false",
                 f"oci:{store.root}:app:1", f"docker://{registry.host}/docker-style:1")
    assert out.returncode == 0, out.stderr
    fresh = ImageStore(tmp_path / "fresh")

    desc = pull(f"{registry.host}/docker-style:1", fresh, insecure=True)

    assert desc.media_type == DOCKER_MANIFEST
    image = fresh.image(f"{registry.host}/docker-style:1")
    assert image.labels == LABELS
    assert all(fresh.layer_for_diff_id(d) is not None for d in image.diff_ids)


def test_remote_image_reads_manifest_and_config_without_layers(registry, store, make_image,
                                                               tmp_path):
    manifest = make_image(store, "app:1", FILES, LABELS)
    push(store, "app:1", f"{registry.host}/app:1", insecure=True)
    empty = ImageStore(tmp_path / "empty")

    image = remote_image(f"{registry.host}/app:1", insecure=True)

    assert image.digest == manifest.digest
    assert image.labels == LABELS
    assert image.diff_ids == store.image("app:1").diff_ids
    assert image.manifest == store.image("app:1").manifest
    assert list((empty.root / "blobs" / "sha256").iterdir()) == []


def test_index_resolves_to_the_requested_platform(registry, store, make_image, tmp_path):
    amd = make_image(store, "multi-amd:1", {"arch": b"amd64\n"}, {"arch": "amd64"})
    arm = make_image(store, "multi-arm:1", {"arch": b"arm64\n"}, {"arch": "arm64"}, arch="arm64")
    for name, desc in (("multi-amd:1", amd), ("multi-arm:1", arm)):
        push(store, name, f"{registry.host}/multi@{desc.digest}", insecure=True)
    index = {
        "schemaVersion": 2, "mediaType": INDEX,
        "manifests": [
            {**d.to_json(), "platform": {"os": "linux", "architecture": a}}
            for d, a in ((arm, "arm64"), (amd, "amd64"))
        ],
    }
    resp = httpx.put(f"http://{registry.host}/v2/multi/manifests/latest",
                     content=json.dumps(index).encode(), headers={"Content-Type": INDEX})
    assert resp.status_code == 201, resp.text

    assert remote_image(f"{registry.host}/multi", insecure=True,
                        platform="linux/amd64").digest == amd.digest
    fresh = ImageStore(tmp_path / "fresh")
    got = pull(f"{registry.host}/multi", fresh, insecure=True, platform="linux/arm64")
    assert got.digest == arm.digest and got.media_type == MANIFEST
    assert fresh.image(f"{registry.host}/multi:latest").labels == {"arch": "arm64"}
    with pytest.raises(RegistryError, match=r"no image for linux/s390x .*linux/arm64, linux/amd64"):
        remote_image(f"{registry.host}/multi", insecure=True, platform="linux/s390x")


def test_relative_upload_locations_work(start_registry, store, make_image, tmp_path: Path):
    relative = start_registry(relativeurls=True)
    upload = httpx.post(f"http://{relative.host}/v2/probe/blobs/uploads/")
    assert upload.headers["Location"].startswith("/v2/probe/blobs/uploads/")
    manifest = make_image(store, "app:1", FILES, LABELS)

    result = push(store, "app:1", f"{relative.host}/app:1", insecure=True)

    assert len(result.uploaded) == 3
    fresh = ImageStore(tmp_path / "fresh")
    assert pull(f"{relative.host}/app:1", fresh, insecure=True).digest == manifest.digest


def test_blobs_pulled_from_one_repository_are_mounted_when_pushed_to_another(
    registry, store, make_image, tmp_path
):
    make_image(store, "base:1", FILES, LABELS)
    push(store, "base:1", f"{registry.host}/base:1", insecure=True)
    fresh = ImageStore(tmp_path / "fresh")
    pull(f"{registry.host}/base:1", fresh, tag_as="pulled:1", insecure=True)

    result = push(fresh, "pulled:1", f"{registry.host}/app:1", insecure=True)

    assert sorted(result.mounted) == sorted(_blobs(fresh, "pulled:1"))
    assert result.uploaded == []


def test_large_layer_streams_in_chunks_both_ways(registry, store, make_image, tmp_path):
    big = os.urandom(5 * 1024 * 1024 + 123)  # incompressible: the blob stays > 5 MiB
    manifest = make_image(store, "big:1", {"data/big.bin": big}, LABELS)
    layer = store.image("big:1").layers[-1]
    sent: list[int] = []

    def progress(digest: str, status: str, done: int, total: int) -> None:
        if digest == layer.digest and status == "uploading":
            sent.append(done)
            assert total == layer.size

    push(store, "big:1", f"{registry.host}/big:1", insecure=True, progress=progress)

    assert len(sent) >= 5 and sent == sorted(sent) and sent[-1] == layer.size
    fresh = ImageStore(tmp_path / "fresh")
    assert pull(f"{registry.host}/big:1", fresh, insecure=True).digest == manifest.digest
    assert fresh.read_blob(layer.digest) == store.read_blob(layer.digest)
