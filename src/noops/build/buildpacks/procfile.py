"""The Procfile "buildpack": it builds nothing; its processes override the detected ones."""

from __future__ import annotations

from pathlib import Path

from noops.appspec import load_appspec
from noops.build.buildpacks.base import DetectResult

__all__ = ["ProcfileDetector"]


class ProcfileDetector:
    id = "noops/procfile"
    version = "0.1.0"
    looks_for = "Procfile or [processes] in noops.toml"

    def detect(self, app_dir: Path) -> DetectResult:
        spec = load_appspec(app_dir)
        if not spec.processes:
            return DetectResult(False, f"no {self.looks_for}")
        where = sorted({p.source for p in spec.processes.values()})
        types = ", ".join(sorted(spec.processes))
        return DetectResult(True, f"{' and '.join(where)} declares {types}")
