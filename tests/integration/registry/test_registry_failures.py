"""Failures a user meets: clear RegistryErrors, and nothing tagged after a failed push or pull."""

from __future__ import annotations

import pytest

from noops.errors import RegistryError, UsageError
from noops.oci.registry import pull, push, remote_image
from noops.oci.store import ImageStore

pytestmark = pytest.mark.registry

FILES = {"app/hello.txt": b"hello\n" * 1000}
LABELS = {"io.noops.test": "failures"}


def test_stopped_registry_asks_whether_it_is_running(registry, store, make_image):
    make_image(store, "app:1", FILES, LABELS)
    registry.stop()

    with pytest.raises(RegistryError, match=rf"is the registry running at http://{registry.host}"):
        push(store, "app:1", f"{registry.host}/app:1", insecure=True)


def test_tls_to_a_plain_http_registry_suggests_insecure(registry):
    with pytest.raises(RegistryError, match=r"TLS with .*add --insecure"):
        remote_image(f"{registry.host}/app:1")


def test_unknown_image_is_a_clear_404(registry, tmp_path):
    fresh = ImageStore(tmp_path / "fresh")

    with pytest.raises(RegistryError, match=rf"404.*no image {registry.host}/nope:1 in the"):
        pull(f"{registry.host}/nope:1", fresh, insecure=True)

    assert fresh.tags() == []


def test_reference_without_registry_is_refused(store, make_image):
    make_image(store, "app:1", FILES, LABELS)

    with pytest.raises(UsageError, match=r"names no registry.*HOST\[:PORT\]/NAME"):
        push(store, "app:1", "app:1", insecure=True)


def test_corrupt_local_blob_fails_the_push_and_tags_nothing(registry, store, make_image):
    make_image(store, "app:1", FILES, LABELS)
    layer = store.image("app:1").layers[-1]
    path = store.blob_path(layer.digest)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(RegistryError, match=r"registry .* refused the push of app:1 \(400"):
        push(store, "app:1", f"{registry.host}/app:1", insecure=True)

    assert registry.manifest_status("app", "1") == 404
    with pytest.raises(RegistryError, match="no image"):
        remote_image(f"{registry.host}/app:1", insecure=True)


def test_registry_dying_mid_push_tags_nothing_and_the_retry_resumes(registry, store,
                                                                    make_image):
    make_image(store, "app:1", FILES, LABELS)
    done: list[str] = []

    def kill_after_first_upload(digest: str, status: str, sent: int, total: int) -> None:
        if status == "uploaded":
            done.append(digest)
            registry.stop()

    with pytest.raises(RegistryError, match="is the registry running"):
        push(store, "app:1", f"{registry.host}/app:1", insecure=True,
             progress=kill_after_first_upload)

    registry.start()  # same storage
    assert len(done) == 1
    assert registry.manifest_status("app", "1") == 404
    retry = push(store, "app:1", f"{registry.host}/app:1", insecure=True)
    assert retry.skipped == done and len(retry.uploaded) == 2
    assert registry.manifest_status("app", "1") == 200


def test_corrupted_registry_blob_is_rejected_on_pull_and_nothing_is_stored(
    registry, store, make_image, tmp_path
):
    make_image(store, "app:1", FILES, LABELS)
    push(store, "app:1", f"{registry.host}/app:1", insecure=True)
    layer = store.image("app:1").layers[-1]
    hexd = layer.digest.split(":", 1)[1]
    data_file = (registry.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2]
                 / hexd / "data")
    data = bytearray(data_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    data_file.write_bytes(bytes(data))
    fresh = ImageStore(tmp_path / "fresh")

    with pytest.raises(RegistryError, match=rf"blob {layer.digest} .*does not match"):
        pull(f"{registry.host}/app:1", fresh, insecure=True)

    assert fresh.tags() == []
    assert not fresh.has_blob(layer.digest)
    assert [p.name for p in (fresh.root / "blobs" / "sha256").iterdir()
            if p.name.startswith(".tmp-")] == []


def test_pushing_to_a_digest_that_is_not_the_image_is_refused(registry, store, make_image):
    make_image(store, "app:1", FILES, LABELS)
    other = "sha256:" + "0" * 64

    with pytest.raises(UsageError, match="push to a tag instead"):
        push(store, "app:1", f"{registry.host}/app@{other}", insecure=True)
