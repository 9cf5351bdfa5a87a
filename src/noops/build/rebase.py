"""``noops rebase``: put an app on a newer run image by manifest surgery, no rebuild.

As the CNB lifecycle's rebaser does (reference: images.md §1.4): the layers up to
``runImage.topLayer`` are replaced by the new run image's layers, every layer above is kept byte
for byte (same blobs, same diffIDs), ``os``/``architecture`` come from the new base,
``runImage.topLayer``/``reference`` and the base labels are updated. Validation (each skipped by
``--force``): the app is rebasable, os/arch match, the distro matches, and the new run image is
the one the app names (``runImage.image``, tag included) or one of its mirrors.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from noops.build.export import LIFECYCLE_LABEL
from noops.errors import ImageError, RebaseError
from noops.oci.image import Image
from noops.oci.reference import normalize_local, parse_reference
from noops.oci.store import ImageStore
from noops.settings import Settings

__all__ = ["RebaseResult", "rebase_image"]

_BASE_LABEL_PREFIXES = ("io.buildpacks.base.", "io.buildpacks.stack.", "dev.noops.stack")


@dataclass(frozen=True)
class RebaseResult:
    name: str
    old_digest: str
    digest: str
    run_image: str
    run_digest: str
    swapped: int
    kept: int
    seconds: float
    pushed: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _validate(app: Image, base: Image, md: dict[str, Any], run_name: str) -> None:
    labels, base_labels = app.labels, base.labels
    if labels.get("io.buildpacks.rebasable", "true") == "false":
        raise RebaseError("the image says io.buildpacks.rebasable=false: a buildpack put files "
                          "below the app that depend on the old base. Rebuild it, or --force.")
    for key in ("os", "architecture"):
        if app.config.get(key) != base.config.get(key):
            raise RebaseError(f"{key} differs: image is {app.config.get(key)}, new run image is "
                              f"{base.config.get(key)}. Pick a run image for the same platform.")
    for key in ("io.buildpacks.base.distro.name", "io.buildpacks.base.distro.version"):
        if key in base_labels and labels.get(key) != base_labels.get(key):
            raise RebaseError(f"{key} differs: image has {labels.get(key)!r}, new run image has "
                              f"{base_labels[key]!r}. Rebuild for a new distro release, or --force.")
    run = md.get("runImage") or {}
    allowed = {_strip_digest(x) for x in [run.get("image"), *(run.get("mirrors") or [])] if x}
    if allowed and _strip_digest(run_name) not in allowed:
        raise RebaseError(
            f"the image was built on {run.get('image')}; {run_name} is neither that nor a mirror. "
            "Use a moving tag like noops/run-python:stable, or --force."
        )
    if base_labels.get("io.buildpacks.rebasable") == "false":
        raise RebaseError(f"{run_name} is marked io.buildpacks.rebasable=false")


def _strip_digest(name: str) -> str:
    ref = parse_reference(name)
    return f"{ref.name}:{ref.tag or 'latest'}"


def rebase_image(settings: Settings, store: ImageStore, ref: str, *, run_image: str | None = None,
                 force: bool = False, tag: str | None = None, insecure: bool = False) -> RebaseResult:
    """Rebase ``ref`` (local, or a registry reference) onto ``run_image``; tag the result.

    A registry image is pulled, rebased locally (only the new base's blobs are new) and pushed
    back to the same reference; the registry already has the app layers, so only the new base
    blobs, config and manifest travel.
    """
    started = time.monotonic()
    remote = parse_reference(ref).registry != ""
    if remote:
        from noops.oci.registry import pull

        pull(ref, store, tag_as=None, insecure=insecure)
        local_name = str(parse_reference(ref))
    else:
        local_name = normalize_local(ref)
    app = store.image(ref if not remote else local_name)
    md = app.label_json(LIFECYCLE_LABEL)
    if not md or "runImage" not in md or "topLayer" not in md["runImage"]:
        raise RebaseError(f"{ref} has no io.buildpacks.lifecycle.metadata runImage.topLayer: "
                          "only buildpack-built images can be rebased; rebuild it with noops build")
    run = md["runImage"]
    run_name = run_image or run.get("image") or ""
    if not run_name:
        raise RebaseError("no run image named: pass --run-image")
    try:
        base = store.image(run_name)
    except ImageError:
        if parse_reference(run_name).registry:
            from noops.oci.registry import pull

            pull(run_name, store, insecure=insecure)
            base = store.image(str(parse_reference(run_name)))
        else:
            raise
    if not force:
        _validate(app, base, md, run_name)
    try:
        top = app.diff_ids.index(run["topLayer"])
    except ValueError as exc:
        raise RebaseError(f"runImage.topLayer {run['topLayer']} is not a layer of {ref}") from exc
    kept_layers, kept_diffs = app.layers[top + 1:], app.diff_ids[top + 1:]
    history = app.config.get("history", [])
    new_history = list(base.config.get("history", [])) + list(history[top + 1:])

    config = json.loads(json.dumps(app.config))
    for key in ("os", "architecture", "os.version", "variant"):
        if key in base.config:
            config[key] = base.config[key]
    config["rootfs"] = {"type": "layers", "diff_ids": base.diff_ids + kept_diffs}
    config["history"] = new_history
    labels = {k: v for k, v in app.labels.items() if not k.startswith(_BASE_LABEL_PREFIXES)}
    labels.update({k: v for k, v in base.labels.items() if k.startswith(_BASE_LABEL_PREFIXES)})
    labels.pop("dev.noops.stack.kind", None)
    labels.pop("io.buildpacks.base.description", None)
    run = dict(run, topLayer=base.diff_ids[-1], reference=base.digest, image=run.get("image"))
    md["runImage"] = run
    md.setdefault("stack", {})["runImage"] = {"image": run.get("image"),
                                              "mirrors": run.get("mirrors", [])}
    labels[LIFECYCLE_LABEL] = json.dumps(md, sort_keys=True, separators=(",", ":"))
    labels["dev.noops.rebased-from"] = app.digest
    config.setdefault("config", {})["Labels"] = labels
    manifest = store.write_image(config, base.layers + kept_layers,
                                 app.manifest.get("annotations"))
    name = normalize_local(tag) if tag else local_name
    pushed = None
    if remote and not tag:
        from noops.oci.registry import push

        pushed = push(store, manifest.digest, ref, insecure=insecure).reference
    else:
        store.tag(name, manifest)
    return RebaseResult(name, app.digest, manifest.digest, run_name, base.digest,
                        top + 1, len(kept_layers), round(time.monotonic() - started, 3), pushed)
