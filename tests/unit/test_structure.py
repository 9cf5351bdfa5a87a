"""The public surface is what ``__all__`` says, and dependencies point one way (DESIGN.md)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

SUBSYSTEMS = ["noops.oci", "noops.build", "noops.runtime", "noops.errors", "noops.settings",
              "noops.appspec", "noops.state", "noops.gate"]


@pytest.mark.parametrize("name", SUBSYSTEMS)
def test_all_names_exist_and_have_one_home(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported, f"{name} has no __all__"
    assert len(exported) == len(set(exported))
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"


@pytest.mark.parametrize(("module", "forbidden"), [
    ("noops.oci", ("noops.build", "noops.runtime", "noops.cli")),
    ("noops.build", ("noops.runtime", "noops.cli")),
    ("noops.runtime", ("noops.build", "noops.cli")),
    ("noops.errors", ("noops.oci", "noops.build", "noops.settings")),
    ("noops.settings", ("noops.oci", "noops.build")),
    ("noops.state", ("noops.build", "noops.runtime", "noops.gate", "noops.cli", "noops.daemon")),
    ("noops.runtime", ("noops.gate", "noops.state", "noops.daemon")),
    ("noops.gate", ("noops.runtime", "noops.build", "noops.cli", "noops.state", "noops.daemon")),
])
def test_dependencies_point_one_way(module: str, forbidden: tuple[str, ...]) -> None:
    code = (f"import sys, {module}; "
            "print('\\n'.join(m for m in sys.modules if m.startswith('noops')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    for name in forbidden:
        assert not any(m == name or m.startswith(name + ".") for m in loaded), (module, name)
