"""Small builders the state tests share (imported by name: this directory is on sys.path)."""

from __future__ import annotations

from typing import Any

from noops.state import Release, StateStore


def digest(n: int) -> str:
    """A well-formed, distinct image digest per ``n``."""
    return f"sha256:{n:064x}"


def new_release(store: StateStore, app: str, n: int = 1, **overrides: Any) -> Release:
    """Create a release of ``app`` with image ``n`` (config version 0 unless overridden)."""
    fields: dict[str, Any] = {
        "image_ref": f"localhost/{app}:build-{n}",
        "image_digest": digest(n),
        "config_version": 0,
        "formation": {"web": 1},
        "spec": {"processes": {"web": {"command": ["python", "app.py"]}}},
        "description": f"deploy {n}",
    }
    fields.update(overrides)
    return store.create_release(app, **fields)
