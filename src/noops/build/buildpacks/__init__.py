"""The buildpacks noops ships, in detection order."""

from noops.build.buildpacks.base import Buildpack
from noops.build.buildpacks.go import GoBuildpack
from noops.build.buildpacks.node import NodeBuildpack
from noops.build.buildpacks.procfile import ProcfileDetector
from noops.build.buildpacks.python import PythonBuildpack
from noops.build.buildpacks.static import StaticBuildpack

__all__ = ["LANGUAGE_BUILDPACKS", "ProcfileDetector"]

# Detection order: the first language buildpack that passes builds the app; static comes last
# because many apps ship an index.html next to their real code.
LANGUAGE_BUILDPACKS: tuple[Buildpack, ...] = (
    PythonBuildpack(), NodeBuildpack(), GoBuildpack(), StaticBuildpack(),
)
