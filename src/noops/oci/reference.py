"""Image references: ``[registry/]repository[:tag][@digest]``.

A name is *remote* when its first component looks like a host (has a ``.`` or ``:``, or is
``localhost``); otherwise it names an image in the local store, where a missing tag means
``latest``, as everywhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from noops.errors import UsageError

__all__ = ["Reference", "normalize_local", "parse_reference"]

_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    registry: str  # "" for the local store
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    @property
    def reference(self) -> str:
        """What goes in ``/v2/<repo>/manifests/<reference>``."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_reference(text: str) -> Reference:
    raw = text.strip()
    if not raw:
        raise UsageError("an image reference is empty; use NAME[:TAG] or REGISTRY/NAME[:TAG]")
    digest = None
    if "@" in raw:
        raw, digest = raw.rsplit("@", 1)
        if not _DIGEST.match(digest):
            raise UsageError(f"{text!r}: digest must be sha256:<64 hex digits>")
    registry = ""
    first, sep, rest = raw.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, raw = first, rest
    tag = None
    name, sep, maybe_tag = raw.rpartition(":")
    if sep:
        raw, tag = name, maybe_tag
        if not _TAG.match(tag):
            raise UsageError(f"{text!r}: tag {tag!r} is not valid (letters, digits, _ . -)")
    if not _REPO.match(raw):
        raise UsageError(
            f"{text!r}: repository {raw!r} is not valid: use lowercase letters, digits and "
            "separators (. _ - /), e.g. myapp or team/myapp:1.2"
        )
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, raw, tag, digest)


def normalize_local(text: str) -> str:
    """``name`` → ``name:latest``; validates the name. Used as the local store's tag key."""
    ref = parse_reference(text)
    if ref.digest:
        raise UsageError(f"{text!r}: a tag name cannot carry a digest")
    return f"{ref.name}:{ref.tag}"
