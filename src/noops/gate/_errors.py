"""The gate's error class (a branch of the :mod:`noops.errors` tree)."""

from __future__ import annotations

from noops.errors import NoopsError

__all__ = ["GateError"]


class GateError(NoopsError):
    """The gateway cannot start or was given an invalid route; the message says what to fix."""

    exit_code = 10
    http_status = 500
