"""The local image store: an OCI image layout directory (image-spec ``image-layout.md``).

Layout: ``oci-layout``, ``index.json`` (one manifest descriptor per tag, the tag in the
``org.opencontainers.image.ref.name`` annotation), ``blobs/sha256/<hex>``. Any tool that reads OCI
layouts (skopeo ``oci:``, umoci) can read it. Beside it, ``noops/`` keeps two indexes that make
layer reuse cheap: diffID → compressed blob, and blob → diffID.

Contract: blobs are written to a temporary file and renamed into place, so a reader never sees a
partial blob; ``index.json`` is rewritten atomically under an exclusive lock, so concurrent
taggers never lose each other's tags. Nothing is ever tagged before all its blobs are stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from noops.errors import ImageError
from noops.oci.compress import compress_file, media_type_for
from noops.oci.image import Image
from noops.oci.layer import TarResult
from noops.oci.model import (
    CONFIG,
    INDEX,
    MANIFEST,
    Descriptor,
    canonical_json,
    check_digest,
    sha256_digest,
)
from noops.oci.reference import normalize_local

__all__ = ["REF_NAME", "ImageStore"]

REF_NAME = "org.opencontainers.image.ref.name"


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs" / "sha256"
        self._meta = self.root / "noops"
        self._blobs.mkdir(parents=True, exist_ok=True)
        (self._meta / "diffids").mkdir(parents=True, exist_ok=True)
        (self._meta / "blob-diffids").mkdir(parents=True, exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists():
            self._atomic_write(layout, b'{"imageLayoutVersion":"1.0.0"}')
        if not (self.root / "index.json").exists():
            self._atomic_write(self.root / "index.json", self._index_bytes([]))

    # -- blobs ---------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self._blobs / check_digest(digest).split(":", 1)[1]

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError as exc:
            raise ImageError(f"blob {digest} is missing from {self.root}") from exc

    def read_blob(self, digest: str) -> bytes:
        with self.open_blob(digest) as fh:
            data = fh.read()
        if sha256_digest(data) != digest:
            raise ImageError(f"blob {digest} in {self.root} is corrupt (digest mismatch)")
        return data

    def read_json(self, digest: str) -> dict[str, Any]:
        try:
            value = json.loads(self.read_blob(digest))
        except json.JSONDecodeError as exc:
            raise ImageError(f"blob {digest} is not JSON") from exc
        if not isinstance(value, dict):
            raise ImageError(f"blob {digest} is not a JSON object")
        return value

    def put_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = sha256_digest(data)
        path = self.blob_path(digest)
        if not path.exists():
            self._atomic_write(path, data)
        return Descriptor(media_type, digest, len(data))

    def put_json(self, obj: Any, media_type: str) -> Descriptor:
        return self.put_bytes(canonical_json(obj), media_type)

    @contextlib.contextmanager
    def blob_writer(self) -> Iterator[BinaryIO]:
        """A temporary file inside the store, for streaming a blob in; see :meth:`commit_blob`."""
        fd, name = tempfile.mkstemp(dir=self._blobs, prefix=".tmp-")
        os.close(fd)
        try:
            with open(name, "wb") as fh:
                yield fh
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise

    def commit_blob(self, fh: BinaryIO, digest: str) -> None:
        """Move a finished :meth:`blob_writer` file to its digest's place."""
        os.replace(fh.name, self.blob_path(digest))

    # -- layers --------------------------------------------------------------------------
    def layer_for_diff_id(self, diff_id: str, compression: str | None = None) -> Descriptor | None:
        """A stored compressed blob with this diffID (any compression when None)."""
        hexid = check_digest(diff_id).split(":", 1)[1]
        kinds = [compression] if compression else ["gzip", "zstd", "other"]
        for kind in kinds:
            path = self._meta / "diffids" / f"{hexid}.{kind}"
            if path.exists():
                desc = Descriptor.from_json(json.loads(path.read_text()))
                if self.has_blob(desc.digest):
                    return desc
        return None

    def diff_id_of(self, blob_digest: str) -> str | None:
        path = self._meta / "blob-diffids" / check_digest(blob_digest).split(":", 1)[1]
        return path.read_text().strip() if path.exists() else None

    def record_layer(self, diff_id: str, desc: Descriptor) -> None:
        kind = (
            "gzip" if desc.media_type.endswith("gzip")
            else "zstd" if desc.media_type.endswith("zstd") else "other"
        )
        hexid = check_digest(diff_id).split(":", 1)[1]
        self._atomic_write(self._meta / "diffids" / f"{hexid}.{kind}", canonical_json(desc.to_json()))
        self._atomic_write(
            self._meta / "blob-diffids" / desc.digest.split(":", 1)[1], diff_id.encode()
        )

    def add_layer(self, tar: TarResult, compression: str) -> tuple[Descriptor, bool]:
        """Store a layer tar compressed; return its descriptor and whether it was new.

        A diffID the store already holds in that compression is not compressed again: the
        existing blob is reused byte for byte, so its digest does not depend on the compressor.
        """
        existing = self.layer_for_diff_id(tar.diff_id, compression)
        if existing is not None:
            return existing, False
        media_type = media_type_for(compression)
        with self.blob_writer() as fh:
            digest, size = compress_file(tar.path, fh, compression)
        os.replace(fh.name, self.blob_path(digest))
        desc = Descriptor(media_type, digest, size)
        self.record_layer(tar.diff_id, desc)
        return desc, True

    # -- images and tags -----------------------------------------------------------------
    def write_image(self, config: dict[str, Any], layers: list[Descriptor],
                    annotations: dict[str, str] | None = None) -> Descriptor:
        """Store config + manifest (every layer blob must already be present)."""
        for layer in layers:
            if not self.has_blob(layer.digest):
                raise ImageError(f"layer {layer.digest} is not in the store; cannot write image")
        config_desc = self.put_json(config, CONFIG)
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config_desc.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
        if annotations:
            manifest["annotations"] = dict(annotations)
        return self.put_json(manifest, MANIFEST)

    def image(self, ref: str) -> Image:
        desc = self.resolve(ref)
        manifest = self.read_json(desc.digest)
        if manifest.get("mediaType", MANIFEST) == INDEX or "manifests" in manifest:
            raise ImageError(f"{ref} is an image index; noops stores single-platform images")
        config = self.read_json(Descriptor.from_json(manifest["config"]).digest)
        return Image(desc, manifest, config)

    def resolve(self, ref: str) -> Descriptor:
        """A tag (``name[:tag]``), ``name@sha256:…`` or a bare manifest digest → descriptor."""
        ref = ref.strip()
        if "@" in ref or ref.startswith("sha256:"):
            digest = ref.rsplit("@", 1)[-1]
            check_digest(digest)
            if not self.has_blob(digest):
                raise ImageError(f"no image {ref} in the local store; see `noops images`")
            data = self.read_blob(digest)
            return Descriptor(json.loads(data).get("mediaType", MANIFEST), digest, len(data))
        name = normalize_local(ref)
        for entry in self._read_index():
            if entry.annotations.get(REF_NAME) == name:
                return Descriptor(entry.media_type, entry.digest, entry.size)
        raise ImageError(f"no image named {name} in the local store; see `noops images`")

    def tags(self) -> list[tuple[str, Descriptor]]:
        return sorted(
            (d.annotations[REF_NAME], d) for d in self._read_index() if REF_NAME in d.annotations
        )

    def tag(self, name: str, manifest: Descriptor) -> str:
        name = normalize_local(name)
        if not self.has_blob(manifest.digest):
            raise ImageError(f"cannot tag {name}: manifest {manifest.digest} is not stored")
        with self._locked_index() as entries:
            entries[:] = [e for e in entries if e.annotations.get(REF_NAME) != name]
            entries.append(
                Descriptor(manifest.media_type, manifest.digest, manifest.size, {REF_NAME: name})
            )
        return name

    def untag(self, name: str) -> bool:
        name = normalize_local(name)
        with self._locked_index() as entries:
            before = len(entries)
            entries[:] = [e for e in entries if e.annotations.get(REF_NAME) != name]
            return len(entries) != before

    # -- garbage collection --------------------------------------------------------------
    def reachable(self, keep: set[str] | frozenset[str] = frozenset()) -> tuple[set[str], set[str]]:
        """(blob digests, layer diffIDs) reachable from every tag plus the manifests in ``keep``."""
        blobs: set[str] = set()
        diff_ids: set[str] = set()
        roots = {d.digest for _, d in self.tags()} | {k for k in keep if self.has_blob(k)}
        for digest in roots:
            manifest = self.read_json(digest)
            blobs.add(digest)
            config = Descriptor.from_json(manifest["config"])
            blobs.add(config.digest)
            blobs.update(Descriptor.from_json(layer).digest for layer in manifest.get("layers", []))
            diff_ids.update(self.read_json(config.digest).get("rootfs", {}).get("diff_ids", []))
        return blobs, diff_ids

    def gc(self, keep: set[str] | frozenset[str] = frozenset(), *, dry_run: bool = False,
           min_age_s: float = 3600.0) -> tuple[list[str], int]:
        """Delete blobs no tag and no ``keep`` manifest reaches; return (digests, bytes freed).

        Blobs younger than ``min_age_s`` are kept, so a build or pull running right now (whose
        blobs are not tagged yet) is never robbed.
        """
        import time

        live, _ = self.reachable(keep)
        removed: list[str] = []
        freed = 0
        now = time.time()
        with open(self._meta / "index.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for path in self._blobs.iterdir():
                digest = "sha256:" + path.name
                if path.name.startswith(".") or digest in live:
                    continue
                st = path.stat()
                if now - st.st_mtime < min_age_s:
                    continue
                removed.append(digest)
                freed += st.st_size
                if not dry_run:
                    path.unlink()
                    (self._meta / "blob-diffids" / path.name).unlink(missing_ok=True)
        return removed, freed

    # -- internals -----------------------------------------------------------------------
    def _read_index(self) -> list[Descriptor]:
        try:
            data = json.loads((self.root / "index.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ImageError(f"{self.root}/index.json is unreadable: {exc}") from exc
        return [Descriptor.from_json(m) for m in data.get("manifests", [])]

    @contextlib.contextmanager
    def _locked_index(self) -> Iterator[list[Descriptor]]:
        with open(self._meta / "index.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read_index()
            yield entries
            entries.sort(key=lambda d: d.annotations.get(REF_NAME, ""))
            self._atomic_write(self.root / "index.json", self._index_bytes(entries))

    @staticmethod
    def _index_bytes(entries: list[Descriptor]) -> bytes:
        return json.dumps(
            {"schemaVersion": 2, "mediaType": INDEX, "manifests": [e.to_json() for e in entries]},
            indent=2,
        ).encode()

    @staticmethod
    def _atomic_write(path: Path, data: bytes) -> None:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(name, path)
