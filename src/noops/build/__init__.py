"""Source folder in, OCI image out: stacks, buildpacks, the lifecycle, rebase and SBOMs."""

from noops.build.inspect import image_sbom, inspect_image
from noops.build.lifecycle import BuildReport, DetectReport, build_image, detect
from noops.build.rebase import RebaseResult, rebase_image
from noops.build.stacks import STACKS, StackImages, build_stack, ensure_stack, stack_refs

__all__ = [
    "STACKS",
    "BuildReport",
    "DetectReport",
    "RebaseResult",
    "StackImages",
    "build_image",
    "build_stack",
    "detect",
    "ensure_stack",
    "image_sbom",
    "inspect_image",
    "rebase_image",
    "stack_refs",
]
