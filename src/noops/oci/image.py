"""A stored image: manifest descriptor, manifest, config, and convenient views of them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from noops.oci.model import Descriptor

__all__ = ["Image"]


@dataclass(frozen=True)
class Image:
    descriptor: Descriptor
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def layers(self) -> list[Descriptor]:
        return [Descriptor.from_json(d) for d in self.manifest.get("layers", [])]

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.get("rootfs", {}).get("diff_ids", []))

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.config.get("config") or {}).get("Labels") or {})

    def label_json(self, key: str) -> Any:
        raw = self.labels.get(key)
        return json.loads(raw) if raw else None

    @property
    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in (self.config.get("config") or {}).get("Env") or []:
            key, _, value = item.partition("=")
            out[key] = value
        return out

    @property
    def user(self) -> str:
        return str((self.config.get("config") or {}).get("User") or "")

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)
