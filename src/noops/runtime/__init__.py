"""Running images under runc: ``noops run`` now; the supervisor, releases and rollouts later."""

from noops.runtime.local import run_foreground

__all__ = ["run_foreground"]
