"""Reading built images back: what ``noops inspect`` and ``noops sbom`` show."""

from __future__ import annotations

import json
import tarfile
from typing import Any

from noops.build import sbom
from noops.build.export import BUILD_LABEL, LIFECYCLE_LABEL
from noops.errors import ImageError
from noops.oci.compress import decompressing_reader
from noops.oci.image import Image
from noops.oci.store import ImageStore
from noops.settings import Settings

__all__ = ["freshness", "image_sbom", "inspect_image", "read_layer_file"]


def inspect_image(store: ImageStore, ref: str) -> dict[str, Any]:
    image = store.image(ref)
    lifecycle = image.label_json(LIFECYCLE_LABEL) or {}
    build = image.label_json(BUILD_LABEL) or {}
    history = [h for h in image.config.get("history", []) if not h.get("empty_layer")]
    if len(history) != len(image.layers):
        history = [{}] * len(image.layers)
    layers = [
        {"diff_id": diff, "digest": desc.digest, "size": desc.size, "media_type": desc.media_type,
         "created_by": h.get("created_by", "")}
        for desc, diff, h in zip(image.layers, image.diff_ids, history, strict=True)
    ]
    entrypoint = (image.config.get("config") or {}).get("Entrypoint") or []
    return {
        "reference": ref,
        "digest": image.digest,
        "created": image.config.get("created"),
        "os": image.config.get("os"),
        "architecture": image.config.get("architecture"),
        "user": image.user,
        "entrypoint": entrypoint,
        "default_process": entrypoint[0].rsplit("/", 1)[-1] if entrypoint else None,
        "runImage": lifecycle.get("runImage"),
        "processes": build.get("processes", []),
        "buildpacks": build.get("buildpacks", []),
        "labels": image.labels,
        "env": image.env,
        "layers": layers,
        "size": image.size,
    }


def freshness(store: ImageStore, ref: str) -> dict[str, Any]:
    """How fresh the OS under an image is: its stack (``dev.noops.stack``), distro, when that
    run image was released, and whether the run image it was built on (``runImage.image``) now
    has another top layer in ``store``, i.e. ``noops rebase`` would patch it. ``rebase_available``
    is None for an image not built by noops or whose run image is not in the store."""
    image = store.image(ref)
    labels = image.labels
    run = (image.label_json(LIFECYCLE_LABEL) or {}).get("runImage") or {}
    current = None
    if run.get("image") and run.get("topLayer"):
        try:
            current = store.image(run["image"]).diff_ids[-1]
        except (ImageError, IndexError):
            current = None
    distro = " ".join(v for v in (labels.get("io.buildpacks.base.distro.name"),
                                  labels.get("io.buildpacks.base.distro.version")) if v)
    return {
        "digest": image.digest,
        "created": image.config.get("created"),
        "stack": labels.get("dev.noops.stack"),
        "distro": distro or None,
        "base_released": labels.get("io.buildpacks.base.released"),
        "run_image": run.get("image"),
        "run_top_layer": run.get("topLayer"),
        "rebase_available": None if current is None else current != run.get("topLayer"),
    }


def read_layer_file(store: ImageStore, image: Image, diff_id: str, path: str) -> bytes | None:
    """One file's bytes from the layer with ``diff_id`` (None if the layer lacks it)."""
    try:
        index = image.diff_ids.index(diff_id)
    except ValueError as exc:
        raise ImageError(f"image {image.digest} has no layer {diff_id}") from exc
    desc = image.layers[index]
    with store.open_blob(desc.digest) as raw, tarfile.open(
        fileobj=decompressing_reader(raw, desc.media_type), mode="r|"
    ) as tar:
        for member in tar:
            if member.name.lstrip("./") == path.lstrip("/") and member.isreg():
                fh = tar.extractfile(member)
                return fh.read() if fh else None
    return None


def image_sbom(settings: Settings, store: ImageStore, ref: str) -> dict[str, Any]:
    """The image's CycloneDX SBOM from its SBOM layer.

    If the image was rebased since it was built, its OS packages are read again from the run
    image it now sits on, so the SBOM describes what is really in the image.
    """
    image = store.image(ref)
    lifecycle = image.label_json(LIFECYCLE_LABEL) or {}
    sha = (lifecycle.get("sbom") or {}).get("sha")
    if not sha:
        raise ImageError(f"{ref} has no SBOM layer (was it built by noops or a CNB lifecycle?)")
    data = read_layer_file(store, image, sha, "layers/sbom/launch/noops/sbom.cdx.json")
    if data is None:
        raise ImageError(f"{ref}: the SBOM layer has no layers/sbom/launch/noops/sbom.cdx.json")
    doc: dict[str, Any] = json.loads(data)
    run = lifecycle.get("runImage") or {}
    rebased = image.labels.get("dev.noops.rebased-from")
    if rebased and run.get("topLayer"):
        status = b""
        top_index = image.diff_ids.index(run["topLayer"])
        for diff in reversed(image.diff_ids[: top_index + 1]):
            found = read_layer_file(store, image, diff, "var/lib/dpkg/status")
            if found is not None:
                status = found
                break
        others = [c for c in doc.get("components", [])
                  if not any(p.get("name") == "noops:source" and p.get("value") == "dpkg"
                             for p in c.get("properties", []))]
        os_doc = sbom.cyclonedx(sbom.os_packages(status.decode(errors="replace")),
                                subject_name="run image", tool_version="")
        doc["components"] = sorted(others + os_doc.get("components", []),
                                   key=lambda c: (c.get("type", ""), c.get("purl", "")))
    return doc
